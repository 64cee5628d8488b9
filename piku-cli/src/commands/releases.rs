//! `deploy <app>`, `releases <app>`, `rollback <app> [release]` and the internal
//! `acme:renew <app>`; the work is in `piku-deploy`, this module only reads the arguments and
//! shows the release list.

use piku_deploy::{front, pipeline, releases};

use super::Ctx;
use super::args::Args;
use crate::output::{self, Table};

pub fn deploy(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("deploy", words);
    let app = args.existing_app(ctx)?;
    args.finish()?;
    pipeline::rebuild(&ctx.root, &app)?;
    Ok(0)
}

pub fn acme_renew(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("acme:renew", words);
    let app = args.existing_app(ctx)?;
    args.finish()?;
    front::acme::renew_certificate(&ctx.root, &app)?;
    Ok(0)
}

pub fn releases(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("releases", words);
    let json = args.flag("--json");
    let app = args.existing_app(ctx)?;
    args.finish()?;
    let releases = releases::list(&ctx.root, &app)?;
    if json {
        output::json(&releases)?;
        return Ok(0);
    }
    if releases.is_empty() {
        output::say(format_args!("No releases of '{app}' yet."));
        return Ok(0);
    }
    let mut table = Table::new(&["release", "status", "created", "commit", "message"]);
    for r in &releases {
        let id = if r.live {
            format!("* {}", r.id)
        } else {
            format!("  {}", r.id)
        };
        table.row(vec![
            id,
            r.status.clone(),
            r.created.clone(),
            r.commit.chars().take(12).collect(),
            r.message.clone().unwrap_or_default(),
        ]);
    }
    output::print_text(&table.render());
    Ok(0)
}

pub fn rollback(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("rollback", words);
    let app = args.existing_app(ctx)?;
    let release = args.next();
    args.finish()?;
    releases::rollback(&ctx.root, &app, release.as_deref())?;
    Ok(0)
}
