//! The app's certificate files `nginx/<app>.{key,crt}`: a self-signed one when nothing better
//! exists, reading a certificate's names and expiry, and writing a key + chain atomically.
//!
//! Self-signed certificates use an ECDSA P-256 key made by `rcgen`: generating it takes well
//! under a millisecond, where piku's `openssl req -newkey rsa:4096` cost 0.5–3.6 s on every
//! first deploy (piku-baseline §5.10).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::error::NginxError;
use crate::settings::NginxSettings;

/// What a certificate file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
    /// Issuer equals subject: ours from [`ensure_self_signed`], never from a CA.
    pub self_signed: bool,
    /// DNS names of the subjectAltName extension.
    pub names: Vec<String>,
}

impl CertInfo {
    pub fn expires(&self) -> SystemTime {
        match u64::try_from(self.not_after) {
            Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
            Err(_) => UNIX_EPOCH,
        }
    }
}

/// What [`ensure_self_signed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatus {
    /// A usable certificate was there (a CA-issued one, or a self-signed one for these names).
    Kept,
    /// A new self-signed key and certificate were written.
    Created,
}

/// Reads the first certificate of a PEM file.
pub fn certificate_info(crt: &Path) -> Result<CertInfo, NginxError> {
    let bytes = std::fs::read(crt).map_err(NginxError::io(crt))?;
    let bad = |message: String| NginxError::Certificate {
        path: crt.to_path_buf(),
        message,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                names.push((*n).to_owned());
            }
        }
    }
    Ok(CertInfo {
        not_after: cert.validity().not_after.timestamp(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        names,
    })
}

/// True when the certificate expires within `days` days (or cannot be read: a missing or
/// broken certificate needs replacing too).
pub fn needs_renewal(crt: &Path, days: u32) -> bool {
    needs_renewal_at(crt, days, SystemTime::now())
}

/// [`needs_renewal`] at a given time, for tests and schedulers.
pub fn needs_renewal_at(crt: &Path, days: u32, now: SystemTime) -> bool {
    let Ok(info) = certificate_info(crt) else {
        return true;
    };
    let margin = Duration::from_secs(u64::from(days) * 86_400);
    info.expires() <= now + margin
}

/// The DNS names a certificate for these `server_name`s must carry: `_` is dropped, `.x`
/// (nginx: x and its subdomains) becomes `x` and `*.x`.
pub fn certificate_names(server_names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |n: String| {
        if !out.contains(&n) {
            out.push(n);
        }
    };
    for name in server_names {
        if name == "_" {
            continue;
        }
        match name.strip_prefix('.') {
            Some(base) => {
                add(base.to_owned());
                add(format!("*.{base}"));
            }
            None => add(name.clone()),
        }
    }
    out
}

/// Makes sure `nginx/<app>.{key,crt}` exist so the TLS server can start: keeps a CA-issued
/// certificate, and a self-signed one that already covers the names; otherwise writes a new
/// self-signed one (valid 365 days, like piku's).
pub fn ensure_self_signed(settings: &NginxSettings) -> Result<CertStatus, NginxError> {
    let key = settings.key_path();
    let crt = settings.crt_path();
    let names = certificate_names(&settings.server_names);
    if key.exists()
        && let Ok(info) = certificate_info(&crt)
    {
        let same_names =
            names.len() == info.names.len() && names.iter().all(|n| info.names.contains(n));
        if !info.self_signed || same_names {
            return Ok(CertStatus::Kept);
        }
    }
    let (key_pem, crt_pem) = self_signed(&names, &crt)?;
    write_key_and_chain(&key, &crt, &key_pem, &crt_pem)?;
    Ok(CertStatus::Created)
}

/// A new P-256 key and a self-signed certificate for `names` (PEM texts).
fn self_signed(names: &[String], crt: &Path) -> Result<(String, String), NginxError> {
    let bad = |e: rcgen::Error| NginxError::Certificate {
        path: crt.to_path_buf(),
        message: e.to_string(),
    };
    let names = if names.is_empty() {
        vec!["localhost".to_owned()]
    } else {
        names.to_vec()
    };
    let mut params = CertificateParams::new(names.clone()).map_err(bad)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Piku");
    dn.push(DnType::OrganizationalUnitName, "Self-Signed");
    dn.push(DnType::CommonName, names[0].clone());
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let key = KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    Ok((key.serialize_pem(), cert.pem()))
}

/// Replaces `key` and `crt` with new contents, each atomically (temp file + rename); the key is
/// mode 0600. The key goes first so nginx never pairs a new certificate with an old key for
/// longer than the two renames.
pub fn write_key_and_chain(
    key: &Path,
    crt: &Path,
    key_pem: &str,
    crt_pem: &str,
) -> Result<(), NginxError> {
    let key_tmp = write_temp(key, key_pem, 0o600)?;
    let crt_tmp = write_temp(crt, crt_pem, 0o644)?;
    std::fs::rename(&key_tmp, key).map_err(NginxError::io(key))?;
    std::fs::rename(&crt_tmp, crt).map_err(NginxError::io(crt))?;
    Ok(())
}

fn write_temp(path: &Path, text: &str, mode: u32) -> Result<PathBuf, NginxError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(NginxError::io(dir))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(NginxError::io(&tmp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(NginxError::io(&tmp))?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use piku_model::{AppName, EnvMap, PikuRoot};

    fn settings(root: &Path, names: &str) -> NginxSettings {
        let env: EnvMap = [("NGINX_SERVER_NAME".to_owned(), names.to_owned())].into();
        let app: AppName = "blog".parse().unwrap();
        NginxSettings::from_env(&app, &PikuRoot::new(root), &env, true, None)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn names_for_the_certificate() {
        let names: Vec<String> = ["a.example", "_", ".b.example", "*.c.example", "a.example"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            certificate_names(&names),
            ["a.example", "b.example", "*.b.example", "*.c.example"]
        );
    }

    #[test]
    fn self_signed_is_created_kept_and_renewed_for_new_names() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path(), "blog.example www.blog.example");
        assert_eq!(ensure_self_signed(&s).unwrap(), CertStatus::Created);
        let info = certificate_info(&s.crt_path()).unwrap();
        assert!(info.self_signed);
        assert_eq!(info.names, ["blog.example", "www.blog.example"]);
        let key_mode = std::fs::metadata(s.key_path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
            0o600
        );
        let year = Duration::from_secs(365 * 86_400);
        let expires = info.expires().duration_since(SystemTime::now()).unwrap();
        assert!(expires <= year && expires > year - Duration::from_secs(86_400));

        assert_eq!(ensure_self_signed(&s).unwrap(), CertStatus::Kept);
        let s2 = settings(tmp.path(), "blog.example shop.example");
        assert_eq!(ensure_self_signed(&s2).unwrap(), CertStatus::Created);
        assert_eq!(
            certificate_info(&s2.crt_path()).unwrap().names,
            ["blog.example", "shop.example"]
        );
        // A missing key means the pair is unusable.
        std::fs::remove_file(s2.key_path()).unwrap();
        assert_eq!(ensure_self_signed(&s2).unwrap(), CertStatus::Created);
        assert!(!s2.crt_path().with_extension("crt.tmp").exists());
    }

    #[test]
    fn a_ca_issued_certificate_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path(), "blog.example");
        // A leaf signed by a separate CA: issuer != subject.
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Test CA");
        let ca_key = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["other.example".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        write_key_and_chain(
            &s.key_path(),
            &s.crt_path(),
            &leaf_key.serialize_pem(),
            &leaf.pem(),
        )
        .unwrap();
        assert!(!certificate_info(&s.crt_path()).unwrap().self_signed);
        assert_eq!(ensure_self_signed(&s).unwrap(), CertStatus::Kept);
    }

    #[test]
    fn renewal_is_due_within_the_margin() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path(), "blog.example");
        assert!(
            needs_renewal(&s.crt_path(), 30),
            "a missing certificate needs one"
        );
        ensure_self_signed(&s).unwrap();
        let now = SystemTime::now();
        assert!(!needs_renewal_at(&s.crt_path(), 30, now));
        assert!(needs_renewal_at(&s.crt_path(), 366, now));
        assert!(needs_renewal_at(
            &s.crt_path(),
            30,
            now + Duration::from_secs(340 * 86_400)
        ));
        std::fs::write(s.crt_path(), "not a certificate").unwrap();
        assert!(needs_renewal(&s.crt_path(), 30));
        let e = certificate_info(&s.crt_path()).unwrap_err().to_string();
        assert!(
            e.contains("not a PEM certificate") && !e.contains('\n'),
            "{e}"
        );
    }
}
