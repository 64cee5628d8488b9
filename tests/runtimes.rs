//! Every runtime end to end: the example app of each is pushed over the real sshd and git,
//! built by the real toolchain (`scripts/install-test-deps` installs them from Debian's
//! packages; uv and poetry from PyPI), and must answer over HTTP; then a code-only redeploy
//! must answer with the new version. Each test prints one `runtime timing |` line with the two
//! push times (run with `--nocapture` to collect them).
//!
//! What the machines running these tests cannot reach shapes the examples: the Go module
//! proxy (the Go app uses only the standard library), RubyGems (the Ruby app's Gemfile has no
//! gems), Maven Central and Clojars (the Maven and Leiningen apps name Debian's packaged
//! repository, `/usr/share/maven-repo`, in their own build files; the Gradle app has no
//! dependencies). crates.io, PyPI and npm are reachable and used.

use std::fs;
use std::time::Duration;

use piku_e2e::{AppRepo, Piku, Run, make_app_repo};

/// The first push of `example` as `app`; panics unless it succeeded and the app answers a body
/// starting with `hello from <app> <tool> v1`.
fn first_deploy(piku: &Piku, example: &str, app: &str, tool: &str) -> (AppRepo, Run) {
    let repo = make_app_repo(example);
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    expect_version(piku, app, tool, "v1");
    assert_runs_as_server_account(piku, app);
    (repo, push)
}

/// A code-only redeploy to `v2`; returns the push.
fn redeploy(piku: &Piku, repo: &AppRepo, app: &str, tool: &str) -> Run {
    repo.set_version("v2");
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    expect_version(piku, app, tool, "v2");
    push
}

#[track_caller]
fn expect_version(piku: &Piku, app: &str, tool: &str, version: &str) -> (u16, String) {
    let want = format!("hello from {app} {tool} {version}");
    piku.expect_serving(app, |b| b.contains(&want), &want)
}

fn report(runtime: &str, first: &Run, again: &Run) {
    eprintln!(
        "runtime timing | {runtime} | first deploy {:.1} s | redeploy {:.1} s",
        first.elapsed.as_secs_f64(),
        again.elapsed.as_secs_f64()
    );
}

/// The app's web process runs as the account the server side runs as, never as root when the
/// tests are root.
#[track_caller]
fn assert_runs_as_server_account(piku: &Piku, app: &str) {
    let instances = piku.instances(app);
    let pid = instances
        .iter()
        .find_map(|i| i.pid.filter(|_| i.state == "running"))
        .unwrap_or_else(|| panic!("no running instance of {app}: {instances:?}"));
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok());
    assert_eq!(
        uid,
        Some(piku.owner.uid.as_raw()),
        "{app}'s process {pid} does not run as {}",
        piku.owner.name
    );
}

#[test]
fn go_app_builds_with_go_build_and_a_broken_commit_keeps_it_serving() {
    let piku = Piku::start();
    let app = "goweb";
    let (repo, first) = first_deploy(&piku, "go-web", app, "go");
    assert!(first.combined().contains("Go app detected"), "{first}");
    let again = redeploy(&piku, &repo, app, "go");
    report("Go", &first, &again);

    // A compile error fails the push with go's own error line; v2 keeps serving, same process.
    let (port, before) = expect_version(&piku, app, "go", "v2");
    let pids: Vec<_> = piku.instances(app).iter().map(|i| i.pid).collect();
    repo.write(
        "broken.go",
        "package main\n\nfunc broken() { undefinedCall() }\n",
    );
    repo.commit("does not compile");
    let push = piku.git_push(repo.path(), app);
    push.assert_failed();
    assert!(
        push.combined().contains("undefined: undefinedCall"),
        "go's error is not in the push output: {push}"
    );
    let (port_after, after) = expect_version(&piku, app, "go", "v2");
    assert_eq!((port, &before), (port_after, &after));
    let pids_after: Vec<_> = piku.instances(app).iter().map(|i| i.pid).collect();
    assert_eq!(pids, pids_after, "the failed build restarted the app");
}

#[test]
fn rust_app_builds_from_crates_io_and_a_redeploy_reuses_the_compiled_dependencies() {
    let piku = Piku::start();
    let app = "rustweb";
    let (repo, first) = first_deploy(&piku, "rust-web", app, "rust");
    assert!(
        first.combined().contains("Compiling httparse"),
        "the first build did not compile the crates.io dependency: {first}"
    );
    let again = redeploy(&piku, &repo, app, "rust");
    // Only the app's own crate is compiled again: the target directory is the app's, kept
    // between releases. (VERSION is not a source file, so touch one.)
    repo.write(
        "src/main.rs",
        &(fs::read_to_string(repo.path().join("src/main.rs")).expect("main.rs")
            + "\n// a code change\n"),
    );
    repo.set_version("v3");
    let code_change = piku.git_push(repo.path(), app);
    code_change.assert_ok();
    expect_version(&piku, app, "rust", "v3");
    let out = code_change.combined();
    assert!(
        out.contains("Compiling rust-web") && !out.contains("Compiling httparse"),
        "a code change did not rebuild only the app's crate: {code_change}"
    );
    report("Rust", &first, &again);
    eprintln!(
        "runtime timing | Rust, a source change | redeploy {:.1} s",
        code_change.elapsed.as_secs_f64()
    );
}

#[test]
fn ruby_app_runs_bundle_install() {
    let piku = Piku::start();
    let app = "rubyweb";
    let (repo, first) = first_deploy(&piku, "ruby-web", app, "ruby");
    assert!(first.combined().contains("bundle install"), "{first}");
    let again = redeploy(&piku, &repo, app, "ruby");
    assert!(
        again.combined().contains("Reusing the bundle"),
        "an unchanged Gemfile was bundled again: {again}"
    );
    report("Ruby", &first, &again);
}

#[test]
fn rack_app_is_served_by_puma_for_an_rwsgi_entry() {
    let piku = Piku::start();
    let app = "rackweb";
    let (repo, first) = first_deploy(&piku, "ruby-rack", app, "rack");
    let (_, body) = expect_version(&piku, app, "rack", "v1");
    assert!(body.contains("puma"), "not served by puma: {body}");
    let again = redeploy(&piku, &repo, app, "rack");
    report("Ruby (Rack, rwsgi)", &first, &again);
}

#[test]
fn php_app_is_served_by_php_fpm_behind_the_instances_nginx() {
    let piku = Piku::start();
    let app = "phpweb";
    let (repo, first) = first_deploy(&piku, "php-web", app, "php");
    assert!(first.combined().contains("PHP app detected"), "{first}");
    let (port, _) = expect_version(&piku, app, "php", "v1");
    // nginx serves the docroot's files itself and sends unknown paths to index.php.
    let css = piku_e2e::http_get(port, "/style.css").expect("GET /style.css");
    assert_eq!(
        css,
        (200, "body { font-family: sans-serif; }\n".to_string())
    );
    let fallback = piku_e2e::http_get(port, "/some/route").expect("GET /some/route");
    assert!(
        fallback.1.starts_with("hello from phpweb php v1"),
        "{fallback:?}"
    );
    let again = redeploy(&piku, &repo, app, "php");
    report("PHP (php-fpm)", &first, &again);

    // php-fpm leaves the instance's process group and hides its environment; it must still
    // go with its instance: v1's once the switch has drained it, v2's when the server stops.
    let (port_v2, _) = expect_version(&piku, app, "php", "v2");
    let fpm_of = |port: u16| php_fpm_masters(&format!("/piku-php-{app}-{port}/"));
    let gone = |port: u16| {
        piku_e2e::wait_until(Duration::from_secs(60), || {
            fpm_of(port).is_empty().then_some(())
        })
    };
    assert!(
        !fpm_of(port_v2).is_empty(),
        "no php-fpm for v2 on {port_v2}"
    );
    if port != port_v2 {
        assert!(
            gone(port).is_some(),
            "v1's php-fpm outlived its instance: {:?}",
            fpm_of(port)
        );
    }
    drop(piku);
    assert!(
        gone(port_v2).is_some(),
        "php-fpm outlived the server: {:?}",
        fpm_of(port_v2)
    );
    // The instances' run directories stay (until a start on the same port): the test's go.
    for port in [port, port_v2] {
        let _ = fs::remove_dir_all(std::env::temp_dir().join(format!("piku-php-{app}-{port}")));
    }
}

/// PIDs of php-fpm master processes whose config path contains `marker`.
fn php_fpm_masters(marker: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("php-fpm: master") && cmdline.contains(marker)
        })
        .collect()
}

#[test]
fn node_app_installs_from_npm_and_node_version_is_checked() {
    let piku = Piku::start();
    let app = "nodeweb";
    let (repo, first) = first_deploy(&piku, "node-web", app, "node");
    let again = redeploy(&piku, &repo, app, "node");
    report("Node", &first, &again);

    // The installed major version is honoured and said.
    let installed = local_node_version();
    let major = installed
        .trim_start_matches('v')
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    repo.write("ENV", &format!("NODE_VERSION={major}\n"));
    repo.set_version("v3");
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    assert!(
        push.combined().contains(&format!(
            "NODE_VERSION={major}: the server's Node is {installed}"
        )),
        "{push}"
    );
    expect_version(&piku, app, "node", "v3");

    // One that is not installed is refused, naming both; v3 keeps serving.
    repo.write("ENV", "NODE_VERSION=4\n");
    repo.set_version("v4");
    let push = piku.git_push(repo.path(), app);
    push.assert_failed();
    assert!(
        push.combined().contains(&format!(
            "NODE_VERSION=4 asks for Node 4, but the server's node is {installed}"
        )),
        "{push}"
    );
    expect_version(&piku, app, "node", "v3");
}

/// `node --version` as the server account runs it (Debian's nodejs is on everyone's PATH).
fn local_node_version() -> String {
    let out = std::process::Command::new("node")
        .arg("--version")
        .output()
        .expect("node --version");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn python_uv_app_uses_the_interpreter_of_python_version() {
    let piku = Piku::start();
    let app = "uvweb";
    let (repo, first) = first_deploy(&piku, "python-uv", app, "uv");
    assert!(first.combined().contains("uv sync"), "{first}");
    // .python-version says 3.11, which Debian bookworm's python3.11 is.
    let (_, body) = expect_version(&piku, app, "uv", "v1");
    assert!(body.contains("(python 3.11)"), "{body}");
    let again = redeploy(&piku, &repo, app, "uv");
    assert!(
        again.combined().contains("Reusing the virtualenv"),
        "{again}"
    );
    report("Python (uv)", &first, &again);
}

#[test]
fn python_poetry_app_installs_with_poetry_and_names_a_missing_interpreter() {
    let piku = Piku::start();
    let app = "poetryweb";
    let (repo, first) = first_deploy(&piku, "python-poetry", app, "poetry");
    assert!(first.combined().contains("poetry install"), "{first}");
    let again = redeploy(&piku, &repo, app, "poetry");
    report("Python (poetry)", &first, &again);

    // A version the server lacks: one line names it and the interpreter used, and it deploys.
    repo.write(".python-version", "3.9\n");
    repo.set_version("v3");
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    assert!(
        push.combined().contains(
            "Python 3.9 (from .python-version) is not installed on the server (no 'python3.9'); \
             using python3"
        ),
        "{push}"
    );
    expect_version(&piku, app, "poetry", "v3");
}

/// A JVM app: first deploy (its build tool's `success` line in the push), a redeploy.
fn jvm_app(example: &str, app: &str, tool: &str, success: &str, label: &str) {
    let piku = Piku::start();
    let (repo, first) = first_deploy(&piku, example, app, tool);
    assert!(first.combined().contains(success), "{first}");
    let again = redeploy(&piku, &repo, app, tool);
    report(label, &first, &again);
}

#[test]
fn java_maven_app_builds_from_debians_maven_repository() {
    jvm_app(
        "java-maven",
        "mavenweb",
        "maven",
        "BUILD SUCCESS",
        "Java (Maven)",
    );
}

#[test]
fn java_gradle_app_builds_with_debians_gradle() {
    jvm_app(
        "java-gradle",
        "gradleweb",
        "gradle",
        "BUILD SUCCESSFUL",
        "Java (Gradle)",
    );
}

#[test]
fn clojure_leiningen_app_builds_an_uberjar_from_debians_clojure() {
    jvm_app(
        "clojure-lein",
        "leinweb",
        "clojure",
        "Created",
        "Clojure (Leiningen)",
    );
}

#[test]
fn static_and_generic_apps_deploy_without_a_build() {
    let piku = Piku::start();
    let repo = make_app_repo("static-site");
    let first = piku.git_push(repo.path(), "site");
    first.assert_ok();
    repo.write("public/VERSION.txt", "v2\n");
    repo.commit("v2");
    let again = piku.git_push(repo.path(), "site");
    again.assert_ok();
    report("static", &first, &again);

    let repo = make_app_repo("web-python");
    let first = piku.git_push(repo.path(), "generic");
    first.assert_ok();
    assert!(first.combined().contains("Generic app detected"), "{first}");
    piku.expect_serving("generic", |b| b.contains("version=v1"), "v1");
    repo.set_version("v2");
    let again = piku.git_push(repo.path(), "generic");
    again.assert_ok();
    piku.expect_serving("generic", |b| b.contains("version=v2"), "v2");
    report("generic", &first, &again);
}

#[test]
fn a_missing_toolchain_is_refused_naming_what_to_install() {
    let piku = Piku::start();
    // No `go` on the build's PATH: the operator's PATH as an app would set it.
    let repo = make_app_repo("go-web");
    repo.write("ENV", "PATH=/nonexistent\n");
    repo.commit("no toolchain on PATH");
    let push = piku.git_push(repo.path(), "nogo");
    push.assert_failed();
    assert!(
        push.combined().contains(
            "Go app needs 'go', which is not installed on the server (Debian/Ubuntu: apt-get \
             install golang)"
        ),
        "{push}"
    );

    // A deps.edn app: Debian has no Clojure CLI (its `clojure` package, when installed, is
    // only clojure.main), so either way the refusal says where the CLI comes from.
    let repo = make_app_repo("clojure-lein");
    repo.write("deps.edn", "{:paths [\"src\"]}\n");
    repo.commit("a Clojure CLI project");
    let push = piku.git_push(repo.path(), "clicli");
    push.assert_failed();
    let out = push.combined();
    assert!(
        out.contains("Clojure CLI app")
            && out.contains("https://clojure.org/guides/install_clojure"),
        "{push}"
    );
    assert!(piku.instances("clicli").is_empty());
}

#[test]
fn django_app_gets_collectstatic_like_on_heroku() {
    let piku = Piku::start();
    let app = "django";
    let (repo, first) = first_deploy(&piku, "django-web", app, "django");
    let out = first.combined();
    assert!(
        out.contains("Running manage.py collectstatic --noinput") && out.contains("copied to"),
        "collectstatic did not run: {first}"
    );
    // runtime.txt asks for python-3.11, which is installed: no complaint.
    assert!(!out.contains("is not installed on the server"), "{first}");
    let (port, body) = expect_version(&piku, app, "django", "v1");
    assert!(body.contains("(python 3.11)"), "{body}");
    // The page links the hashed file from the manifest, and whitenoise serves it.
    let css = body
        .split('"')
        .find(|s| s.starts_with("/static/hello/site.") && s.ends_with(".css"))
        .unwrap_or_else(|| panic!("no hashed stylesheet link in {body:?}"))
        .to_string();
    assert_eq!(
        piku_e2e::http_get(port, &css).map(|(s, _)| s).ok(),
        Some(200),
        "{css} is not served"
    );
    let again = redeploy(&piku, &repo, app, "django");
    assert!(
        again.combined().contains("Running manage.py collectstatic"),
        "collectstatic is not run on every deploy: {again}"
    );
    report("Python (pip, Django)", &first, &again);

    // A collectstatic failure (a stylesheet naming a file that does not exist, which the
    // manifest storage refuses) fails the push with Django's own message; v2 keeps serving.
    repo.write(
        "hello/static/hello/site.css",
        "body { background: url(\"missing.png\"); }\n",
    );
    repo.set_version("v3");
    let push = piku.git_push(repo.path(), app);
    push.assert_failed();
    assert!(
        push.combined().contains("could not be found")
            && push
                .combined()
                .contains("DISABLE_COLLECTSTATIC=1 skips this step"),
        "{push}"
    );
    expect_version(&piku, app, "django", "v2");

    // DISABLE_COLLECTSTATIC=1 skips the step (and this app, needing its manifest, then fails
    // its pages: the reason the step exists).
    repo.write("ENV", "DISABLE_COLLECTSTATIC=1\n");
    repo.commit("skip collectstatic");
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    assert!(
        push.combined()
            .contains("DISABLE_COLLECTSTATIC is set: not running manage.py collectstatic"),
        "{push}"
    );
    let status = piku_e2e::wait_until(Duration::from_secs(60), || {
        let ports = piku.web_ports(app);
        let port = *ports.first()?;
        match piku_e2e::http_get(port, "/") {
            Ok((500, _)) => Some(500),
            _ => None,
        }
    });
    assert_eq!(
        status,
        Some(500),
        "without collectstatic the manifest storage should fail the page"
    );
}
