//! The git plumbing sshd and the post-receive hook call: `git-receive-pack <app>`,
//! `git-upload-pack <app>`, `git-hook <app>`. The work is in `crate::deploy`.
//!
//! git sends the path part of `piku@host:app` quoted (`git-receive-pack 'app'`); the shell-word
//! split in `main.rs` removes the quotes. The name is then used exactly: `piku@host:app.git`
//! is the app `app.git`, as in piku (which kept the suffix too), so a remote written either way
//! keeps reaching the app it always reached. `piku@host:/app` or `~/app` is refused by the
//! app-name rule. The app need not exist: the first push creates it. The work is in
//! `piku_deploy::git`.

use piku_deploy::git;

use super::Ctx;
use super::args::Args;

pub fn receive_pack(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("git-receive-pack", words);
    let app = args.app()?;
    args.finish()?;
    Ok(git::receive_pack(&ctx.root, &app)?)
}

pub fn upload_pack(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("git-upload-pack", words);
    let app = args.app()?;
    args.finish()?;
    Ok(git::upload_pack(&ctx.root, &app)?)
}

pub fn hook(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("git-hook", words);
    let app = args.app()?;
    args.finish()?;
    git::hook(&ctx.root, &app, &mut std::io::stdin().lock())?;
    Ok(0)
}
