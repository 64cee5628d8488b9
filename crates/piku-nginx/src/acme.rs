//! Built-in ACME (RFC 8555) issuance with HTTP-01, replacing piku's acme.sh calls.
//!
//! The challenge files go to `acme/.well-known/acme-challenge/<token>`, which every app's
//! nginx config serves on its HTTP port (`location ^~ /.well-known/acme-challenge { root
//! acme; }`). Before telling the CA to validate, we fetch the file through nginx ourselves:
//! a config that is not live yet (piku#242: the reload is asynchronous) fails here with a
//! clear message instead of burning the CA's failed-validation allowance.
//!
//! The account key is kept in `acme/account.json` (mode 0600) with the directory URL it
//! belongs to; a different `PIKU_ACME_DIRECTORY` makes a new account. The certificate's key
//! (ECDSA P-256) and chain replace `nginx/<app>.{key,crt}` atomically; the caller reloads
//! nginx. Renewal is the supervisor's job: [`crate::needs_renewal`] says when.

use std::path::{Path, PathBuf};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::NginxError;
use crate::settings::NginxSettings;
use crate::tls::{certificate_info, write_key_and_chain};

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where and as whom to ask for certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeConfig {
    /// `PIKU_ACME_DIRECTORY`; default Let's Encrypt production.
    pub directory_url: String,
    /// `PIKU_ACME_EMAIL`: the account's contact, optional.
    pub email: Option<String>,
    /// `PIKU_ACME_CA`: a PEM root to trust for the directory's own HTTPS instead of the
    /// system's roots (a private CA, or pebble in tests).
    pub directory_ca: Option<PathBuf>,
    /// How long to wait for the CA to validate and issue.
    pub timeout: Duration,
    /// How long to retry fetching our own challenge through nginx before giving up.
    pub self_check_timeout: Duration,
}

impl Default for AcmeConfig {
    fn default() -> AcmeConfig {
        AcmeConfig {
            directory_url: LETS_ENCRYPT_DIRECTORY.into(),
            email: None,
            directory_ca: None,
            timeout: Duration::from_secs(90),
            self_check_timeout: Duration::from_secs(10),
        }
    }
}

impl AcmeConfig {
    /// From the process environment (`PIKU_ACME_DIRECTORY`, `PIKU_ACME_EMAIL`, `PIKU_ACME_CA`).
    pub fn from_env() -> AcmeConfig {
        AcmeConfig::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> AcmeConfig {
        let var = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        AcmeConfig {
            directory_url: var("PIKU_ACME_DIRECTORY")
                .unwrap_or_else(|| LETS_ENCRYPT_DIRECTORY.into()),
            email: var("PIKU_ACME_EMAIL"),
            directory_ca: var("PIKU_ACME_CA").map(PathBuf::from),
            ..AcmeConfig::default()
        }
    }
}

/// A certificate the CA issued and we installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The names in the certificate.
    pub names: Vec<String>,
    /// Server names HTTP-01 cannot prove (wildcards, `_`), left out of the certificate.
    pub skipped: Vec<String>,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The names HTTP-01 can prove, and those it cannot.
pub fn acme_names(server_names: &[String]) -> (Vec<String>, Vec<String>) {
    server_names.iter().cloned().partition(|n| {
        !(n == "_"
            || n.starts_with("*.")
            || n.starts_with('.')
            || n.parse::<std::net::IpAddr>().is_ok())
    })
}

/// Obtains a certificate for the app's server names through HTTP-01 and writes it to
/// `nginx/<app>.{key,crt}`. nginx must already serve the app's config (with any certificate,
/// e.g. the self-signed one) on its HTTP port. The caller reloads nginx afterwards.
pub async fn issue_certificate(
    settings: &NginxSettings,
    config: &AcmeConfig,
) -> Result<Issued, NginxError> {
    let (names, skipped) = acme_names(&settings.server_names);
    if names.is_empty() {
        return Err(NginxError::Acme(format!(
            "none of {:?} can be validated over HTTP-01 (wildcards need DNS-01)",
            settings.server_names
        )));
    }
    let webroot = settings
        .root
        .acme()
        .join(".well-known")
        .join("acme-challenge");
    std::fs::create_dir_all(&webroot).map_err(NginxError::io(&webroot))?;
    let account = account(&settings.root.acme(), config).await?;
    let mut files = ChallengeFiles(Vec::new());

    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(acme_error("new order"))?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(acme_error("authorization"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(NginxError::Acme(format!(
                    "authorization is {other:?}, not pending"
                )));
            }
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| NginxError::Acme("the CA offers no http-01 challenge".into()))?;
        let token = challenge.token.clone();
        // The token becomes a file name: refuse anything but base64url.
        if token.is_empty()
            || !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(NginxError::Acme(format!(
                "unsafe challenge token {token:?}"
            )));
        }
        let key_auth = challenge.key_authorization().as_str().to_owned();
        let path = webroot.join(&token);
        // Public (nginx serves it), and never written through a planted symlink.
        piku_fs::write_atomic(&path, key_auth.as_bytes(), piku_fs::MODE_PUBLIC)
            .map_err(NginxError::io(&path))?;
        files.0.push(path);
        let host = challenge.identifier().to_string();
        self_check(
            settings,
            &host,
            &token,
            &key_auth,
            config.self_check_timeout,
        )
        .await?;
        challenge
            .set_ready()
            .await
            .map_err(acme_error("challenge ready"))?;
    }

    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(config.timeout);
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(acme_error("waiting for validation"))?;
    if status != OrderStatus::Ready {
        let why = order
            .state()
            .error
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| format!("order is {status:?}"));
        return Err(NginxError::Acme(format!("validation failed: {why}")));
    }
    let key_pem = order.finalize().await.map_err(acme_error("finalize"))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(acme_error("certificate"))?;
    write_key_and_chain(
        &settings.key_path(),
        &settings.crt_path(),
        &key_pem,
        &chain_pem,
    )?;
    let info = certificate_info(&settings.crt_path())?;
    Ok(Issued {
        names,
        skipped,
        not_after: info.not_after,
    })
}

/// [`issue_certificate`] for callers without a tokio runtime (the deploy pipeline).
pub fn issue_certificate_blocking(
    settings: &NginxSettings,
    config: &AcmeConfig,
) -> Result<Issued, NginxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NginxError::Acme(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(issue_certificate(settings, config))
}

fn acme_error(step: &'static str) -> impl Fn(instant_acme::Error) -> NginxError {
    move |e| NginxError::Acme(format!("{step}: {}", one_line(&e.to_string())))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Loads the account stored for this directory, or registers a new one and stores it.
async fn account(acme_dir: &Path, config: &AcmeConfig) -> Result<Account, NginxError> {
    // instant-acme builds rustls configs with the process-wide provider; make sure there is
    // one even if another crate in the process enabled a second rustls backend.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = || match &config.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let stored_path = acme_dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&stored_path)
        && let Ok(stored) = serde_json::from_str::<StoredAccount>(&text)
        && stored.directory == config.directory_url
    {
        return builder()
            .map_err(acme_error("client"))?
            .from_credentials(stored.credentials)
            .await
            .map_err(acme_error("account"));
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()
        .map_err(acme_error("client"))?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory_url.clone(),
            None,
        )
        .await
        .map_err(acme_error("new account"))?;
    let stored = StoredAccount {
        directory: config.directory_url.clone(),
        credentials,
    };
    let text = serde_json::to_string_pretty(&stored)
        .map_err(|e| NginxError::Acme(format!("account: {e}")))?;
    write_private(&stored_path, &text)?;
    Ok(account)
}

fn write_private(path: &Path, text: &str) -> Result<(), NginxError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(NginxError::io(&tmp))?;
    file.write_all(text.as_bytes())
        .map_err(NginxError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(NginxError::io(path))
}

/// Fetches the challenge through nginx on the app's HTTP listener, retrying until `timeout`
/// (a reload may still be on its way).
async fn self_check(
    settings: &NginxSettings,
    host: &str,
    token: &str,
    expected: &str,
    timeout: Duration,
) -> Result<(), NginxError> {
    let ip = match settings.listen.ipv4.as_str() {
        "0.0.0.0" | "*" => "127.0.0.1",
        ip => ip,
    };
    let addr = format!("{ip}:{}", settings.listen.http_port);
    let request = format!(
        "GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: String;
    loop {
        match fetch(&addr, &request).await {
            Ok(body) if body.ends_with(expected) => return Ok(()),
            Ok(body) => last = one_line(body.lines().next().unwrap_or("empty response")),
            Err(e) => last = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NginxError::Acme(format!(
                "the challenge for {host} is not served by nginx on {addr} ({last}); is the app's nginx config live?"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fetch(addr: &str, request: &str) -> std::io::Result<String> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

/// Challenge files, removed when issuance ends (however it ends).
struct ChallengeFiles(Vec<PathBuf>);

impl Drop for ChallengeFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_go_to_http01() {
        let names: Vec<String> = [
            "a.example",
            "*.b.example",
            "_",
            ".c.example",
            "10.0.0.1",
            "d",
        ]
        .map(String::from)
        .to_vec();
        let (ok, skipped) = acme_names(&names);
        assert_eq!(ok, ["a.example", "d"]);
        assert_eq!(skipped, ["*.b.example", "_", ".c.example", "10.0.0.1"]);
    }

    #[test]
    fn config_from_vars() {
        let c = AcmeConfig::from_vars(|_| None);
        assert_eq!(c.directory_url, LETS_ENCRYPT_DIRECTORY);
        assert_eq!(c.email, None);
        let c = AcmeConfig::from_vars(|k| match k {
            "PIKU_ACME_DIRECTORY" => Some("https://127.0.0.1:14000/dir".into()),
            "PIKU_ACME_EMAIL" => Some(" ops@example.com ".into()),
            "PIKU_ACME_CA" => Some("/tmp/ca.pem".into()),
            _ => None,
        });
        assert_eq!(c.directory_url, "https://127.0.0.1:14000/dir");
        assert_eq!(c.email.as_deref(), Some("ops@example.com"));
        assert_eq!(c.directory_ca, Some(PathBuf::from("/tmp/ca.pem")));
    }
}
