//! ACME end to end: pebble (Debian's ACME test server) validates HTTP-01 through the real nginx
//! serving the app's config, issues a certificate, and nginx serves it. Names resolve through
//! pebble-challtestsrv's DNS, which answers 127.0.0.1 for every name.

mod common;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Site, curl_https, free_port, start_backend, wait_for};
use piku_nginx::{
    AcmeConfig, CertStatus, Reload, certificate_info, configure, issue_certificate_blocking,
    needs_renewal,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A child process stopped by PID (SIGTERM, then SIGKILL) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA and a `localhost` / 127.0.0.1 certificate for pebble's own HTTPS (Debian ships none).
/// Returns (ca.pem, cert.pem, key.pem).
fn pebble_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

fn wait_for_port(what: &str, port: u16) {
    wait_for(what, || TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[test]
fn pebble_issues_a_certificate_and_nginx_serves_it() {
    let site = Site::new();
    let dir = site.tmp.path().join("pebble");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = pebble_tls(&dir);

    let dns_port = free_port();
    let challtest_mgmt = free_port();
    let _dns = Guard(
        Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtest_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble)"),
    );
    wait_for_port("pebble-challtestsrv", challtest_mgmt);

    let acme_port = free_port();
    let mgmt_port = free_port();
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": site.http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    let config_path = dir.join("pebble-config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let pebble_log = dir.join("pebble.log");
    let _pebble = Guard(
        Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(std::fs::File::create(&pebble_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (Debian package pebble)"),
    );
    wait_for_port("pebble", acme_port);

    // The app is live with its self-signed certificate: HTTP-01 goes through this config.
    let nginx = site.start_nginx();
    let app = site.app("shop");
    let settings = site.settings(&app, &site.env("shop.example.com", &[]));
    start_backend(&settings.socket_path());
    let done = nginx.reloaded(|| configure(&settings, &site.command()).unwrap());
    assert_eq!(done.certificate, CertStatus::Created);

    let acme = AcmeConfig {
        directory_url: format!("https://localhost:{acme_port}/dir"),
        email: Some("ops@example.com".into()),
        directory_ca: Some(ca.clone()),
        ..AcmeConfig::default()
    };
    // An app whose config is not live is caught by our own check, before the CA is asked to
    // validate (piku#242: acme.sh raced the asynchronous reload).
    let not_live = site.settings(&site.app("draft"), &site.env("draft.example.com", &[]));
    let quick = AcmeConfig {
        self_check_timeout: Duration::from_millis(500),
        ..acme.clone()
    };
    let err = issue_certificate_blocking(&not_live, &quick)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not served by nginx"), "{err}");
    assert!(!not_live.crt_path().exists());

    let issued = issue_certificate_blocking(&settings, &acme).unwrap_or_else(|e| {
        panic!(
            "{e}\npebble log:\n{}",
            std::fs::read_to_string(&pebble_log).unwrap_or_default()
        )
    });
    assert_eq!(issued.names, ["shop.example.com"]);
    let info = certificate_info(&settings.crt_path()).unwrap();
    assert!(!info.self_signed);
    assert_eq!(info.names, ["shop.example.com"]);
    assert_eq!(info.not_after, issued.not_after);
    assert!(!needs_renewal(&settings.crt_path(), 30));
    assert!(needs_renewal(&settings.crt_path(), 365 * 100));
    let account = site.root.acme().join("account.json");
    assert_eq!(
        std::fs::metadata(&account).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The challenge file is cleaned up.
    let webroot = site.root.acme().join(".well-known/acme-challenge");
    assert_eq!(std::fs::read_dir(&webroot).unwrap().count(), 0);

    // nginx serves the new certificate after a reload, and it verifies against pebble's root.
    assert_eq!(
        nginx.reloaded(|| site.command().reload().unwrap()),
        Reload::Done
    );
    // pebble 2.4 serves its management API with a throw-away certificate: -k on loopback.
    let root_pem = Command::new("curl")
        .args(["-sSk"])
        .arg(format!("https://localhost:{mgmt_port}/roots/0"))
        .output()
        .unwrap();
    assert!(
        root_pem.status.success(),
        "{}",
        String::from_utf8_lossy(&root_pem.stderr)
    );
    let pebble_root = dir.join("pebble-root.pem");
    std::fs::write(&pebble_root, &root_pem.stdout).unwrap();
    let (ok, body, err) = curl_https(
        "shop.example.com",
        site.https_port,
        "/paid",
        Some(&pebble_root),
    );
    assert!(ok, "{err}");
    assert!(body.starts_with("backend shop.example.com /paid"), "{body}");

    // A redeploy keeps the CA's certificate (no self-signed overwrite), and a second issuance
    // reuses the stored account.
    let again = configure(&settings, &site.command()).unwrap();
    assert_eq!(again.certificate, CertStatus::Kept);
    let account_before = std::fs::read_to_string(&account).unwrap();
    issue_certificate_blocking(&settings, &acme).unwrap();
    assert_eq!(std::fs::read_to_string(&account).unwrap(), account_before);
}
