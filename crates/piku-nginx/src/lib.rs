//! piku's nginx front: each app with `NGINX_SERVER_NAME` gets `$PIKU_ROOT/nginx/<app>.conf`,
//! which a main nginx config includes (`nginx/piku.conf` in the repository), proxying to the
//! supervisor's HTTP front on `nginx/<app>.sock`.
//!
//! - [`settings`]: `NGINX_*` ENV values → typed, validated [`NginxSettings`].
//! - [`render`](mod@render): settings → config text.
//! - [`install`](mod@install): the check, atomic swap and reload of one app's config; [`remove`].
//! - [`check`]: the isolated `nginx -t` (a private user + network namespace, so the piku user
//!   can check `listen 80`).
//! - [`reload`](mod@reload): the full `nginx -T`, SIGHUP and the sign that nginx loaded it.
//! - [`watch`]: reloads by the root-owned `piku-nginx.path` watcher (or `sudo`) and the status
//!   a deploy waits for.
//! - [`version`]: what the nginx binary supports (`nginx -V`).
//! - [`tls`]: self-signed certificates, expiry ([`needs_renewal`]), atomic key/chain writes.
//! - [`acme`]: certificates from an ACME CA over HTTP-01.
//! - [`cloudflare`]: the bundled Cloudflare ranges for `NGINX_CLOUDFLARE_ACL`.
//! - [`standalone`]: a main config around `nginx/piku.conf` for an nginx of one's own (tests,
//!   demo).
//!
//! The deploy pipeline calls [`NginxSettings::from_env`] then [`configure`] (or the steps
//! separately: [`ensure_self_signed`], [`render()`], [`install()`]); the supervisor calls
//! [`needs_renewal`] and [`issue_certificate`].

pub mod acme;
pub mod check;
pub mod cloudflare;
pub mod error;
pub mod install;
pub mod reload;
pub mod render;
pub mod settings;
pub mod standalone;
pub mod tls;
pub mod version;
pub mod watch;

pub use acme::{
    AcmeConfig, Issued, LETS_ENCRYPT_DIRECTORY, acme_names, issue_certificate,
    issue_certificate_blocking,
};
pub use check::Verdict;
pub use error::NginxError;
pub use install::{
    InstallOutcome, NginxCommand, Reload, ReloadMode, install, nginx_problem, remove,
};
pub use render::{conf_id, render};
pub use settings::{
    CacheSettings, Listen, NginxSettings, SettingsErrors, StaticPath, conf_path, crt_path,
    key_path, socket_path,
};
pub use tls::{
    CertInfo, CertStatus, certificate_info, certificate_names, ensure_self_signed, needs_renewal,
    needs_renewal_at, write_key_and_chain,
};
pub use version::{Http2Style, NginxFeatures};

/// What [`configure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configured {
    pub install: InstallOutcome,
    pub certificate: CertStatus,
}

/// The whole per-deploy step: detect nginx's features, make sure a certificate exists
/// (self-signed if nothing better), render, check, install and reload.
pub fn configure(settings: &NginxSettings, nginx: &NginxCommand) -> Result<Configured, NginxError> {
    let mut settings = settings.clone();
    settings.features = nginx.features()?;
    let certificate = ensure_self_signed(&settings)?;
    let mut install = install(&settings.app, &settings.root, &render(&settings), nginx)?;
    // Same config but a new certificate: nginx only reads certificates on reload.
    if !install.changed && certificate == CertStatus::Created {
        install.reload = nginx
            .reload()
            .unwrap_or_else(|e| Reload::Failed(e.to_string()));
    }
    Ok(Configured {
        install,
        certificate,
    })
}
