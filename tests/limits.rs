//! Resource limits end to end: `config:set` of `PIKU_MEMORY_MAX` on a pushed WSGI app
//! (the Flask example under the default server, uWSGI: a master and two workers per instance), what `ps` then shows, and a
//! malformed limit refused with nothing changed.
//!
//! What the supervisor does with limits (cgroups, the OOM killer, the soft mark) is tested
//! in `supervisor/tests/limits.rs`; this is the user's path to it. The Flask app needs PyPI.

use std::fs;

use piku_e2e::{Piku, get_ok, make_app_repo};
use serde_json::Value;

/// PSS of `pid` in bytes (`/proc/<pid>/smaps_rollup`).
fn pss(pid: u64) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The processes of process group `pgid`.
fn group(pgid: u64) -> Vec<u64> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u64>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(2)?.parse::<u64>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

fn wsgi(ps: &Value) -> &Value {
    ps["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "wsgi" && p["state"] == "running")
        .unwrap_or_else(|| panic!("no running wsgi instance: {ps}"))
}

#[test]
fn memory_max_on_a_wsgi_app_and_what_ps_shows() {
    let piku = Piku::start();
    let app = "capped";
    let repo = make_app_repo("python-wsgi");
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(app, |b| b == "hello from capped v1\n", "the Flask page");

    let set = piku.ssh(&format!("config:set {app} PIKU_MEMORY_MAX=256M"));
    set.assert_ok();
    let (port, _) = piku.expect_serving(app, |b| b == "hello from capped v1\n", "the Flask page");
    // This host either enforces it, or says it does not.
    let warned = set
        .combined()
        .contains("Warning: PIKU_MEMORY_MAX=256M is not enforced on this host");
    let ps = piku.ssh(&format!("ps {app}"));
    ps.assert_ok();
    assert!(
        ps.stdout.contains("; limits per instance: memory 256M"),
        "{ps}"
    );
    let json = piku.ps_json(app).unwrap();
    assert_eq!(json["limits"]["memory_max_bytes"], 256u64 << 20, "{json}");
    let instance = wsgi(&json);
    let pid = instance["pid"].as_u64().unwrap();
    let members = group(pid);
    let by_pss: u64 = members.iter().map(|p| pss(*p)).sum();
    let shown = instance["memory_bytes"].as_u64().unwrap();
    let leader_rss = instance["rss_bytes"].as_u64().unwrap();
    // uWSGI forks its workers after loading the app: most pages are shared, so the group's PSS
    // is close to the master's RSS; what shows the workers are counted is that the total is
    // more than the master's own share.
    let leader_pss = pss(pid);
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let memory_cgroup = cgroup
        .lines()
        .find(|l| l.contains(":memory:") && l.contains("/piku-"));
    println!(
        "uWSGI (master + {} workers): ps memory {:.1} MiB ({}), master's RSS {:.1} MiB, \
         master's PSS {:.1} MiB, PSS summed over the group from /proc {:.1} MiB",
        members.len() - 1,
        shown as f64 / 1048576.0,
        if memory_cgroup.is_some() {
            "its memory cgroup's working set"
        } else {
            "PSS of its process group"
        },
        leader_rss as f64 / 1048576.0,
        leader_pss as f64 / 1048576.0,
        by_pss as f64 / 1048576.0
    );
    assert_eq!(members.len(), 3, "a master and two workers: {members:?}");
    assert!(
        shown > leader_pss * 3 / 2,
        "the workers count: {shown} vs the master's PSS {leader_pss}"
    );
    assert!(
        shown > by_pss / 2 && shown < by_pss * 2,
        "ps {shown} vs /proc {by_pss}"
    );
    if !warned {
        let line = memory_cgroup.expect("an enforced limit puts the instance in a memory cgroup");
        assert!(line.contains(&format!("/{app}.app/wsgi.1@")), "{line}");
    }
    assert_eq!(
        json["memory_bytes"].as_u64().map(|t| t >= shown),
        Some(true),
        "{json}"
    );

    // A malformed limit: one line, nothing saved, nothing restarted.
    let bad = piku.ssh(&format!("config:set {app} PIKU_MEMORY_MAX=lots"));
    assert!(!bad.success(), "{bad}");
    assert!(
        bad.stderr
            .trim()
            .starts_with("Error: PIKU_MEMORY_MAX='lots' must be a size"),
        "{bad}"
    );
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{bad}");
    assert_eq!(
        piku.ssh(&format!("config:get {app} PIKU_MEMORY_MAX"))
            .stdout,
        "256M\n"
    );
    assert_eq!(wsgi(&piku.ps_json(app).unwrap())["pid"].as_u64(), Some(pid));
    assert_eq!(get_ok(port, "/").as_deref(), Some("hello from capped v1\n"));
}
