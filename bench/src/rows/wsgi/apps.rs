//! The two apps `piku-bench wsgi` serves, and the venv they and the candidate servers run
//! from. A plain WSGI callable shows each server's own cost per request; a small Flask page
//! (routing, a Jinja template, a query argument) shows how much of it is left once the app
//! does some work.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use piku_deploy::runtime::python::wsgi::{ALL, Server};

/// The plain WSGI app: piku-baseline's test app, one short text body.
const PLAIN_PY: &str = r#"import os
APP = os.environ.get("PIKU_APP", "bench")
def application(environ, start_response):
    body = ("hello from %s\n" % APP).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// A small Flask app: one route rendering a template with a query argument and a loop.
const FLASK_PY: &str = r#"from flask import Flask, render_template_string, request
app = Flask(__name__)
PAGE = ("<!doctype html><title>{{ title }}</title><h1>{{ title }}</h1>"
        "<ul>{% for i in items %}<li>item {{ i }}</li>{% endfor %}</ul>")
@app.route("/")
def index():
    return render_template_string(PAGE, title="hello " + request.args.get("name", "world"), items=range(10))
"#;

/// A WSGI app that misbehaves on request (`piku-bench robust`, as `examples/python-faulty`):
/// `/wedge` never answers, `/crash` ends its worker after noting the delivery in
/// `crashes-<PIKU_APP>.log` (a replayed request shows as a second line), `/big?mb=N` streams
/// N MiB, `POST /upload` answers the body's length and SHA-256 (read 1 MiB at a time).
const FAULTY_PY: &str = r#"import hashlib, os, time
APP = os.environ.get("PIKU_APP", "bench")
MIB = 1 << 20
def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/wedge":
        while True:
            time.sleep(60)
    if path == "/crash":
        with open("crashes-%s.log" % APP, "a") as f:
            f.write("crash in pid %d\n" % os.getpid())
        os._exit(3)
    if path == "/big":
        size = int(environ.get("QUERY_STRING", "mb=1").split("=")[-1]) * MIB
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return (b"x" * MIB for _ in range(size // MIB))
    if path == "/upload":
        digest, total, stream = hashlib.sha256(), 0, environ["wsgi.input"]
        while True:
            chunk = stream.read(MIB)
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
        body = ("%d %s\n" % (total, digest.hexdigest())).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    body = ("hello from %s\n" % APP).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// An ASGI app, to check that the ASGI path starts (not measured against uWSGI: piku has none).
const ASGI_PY: &str = r#"async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b"hello from asgi\n"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"#;

/// One of the benchmark's apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Plain,
    Flask,
    /// Only in `piku-bench robust`.
    Faulty,
}

impl App {
    pub const ALL: [App; 2] = [App::Plain, App::Flask];

    pub fn name(self) -> &'static str {
        match self {
            App::Plain => "plain",
            App::Flask => "flask",
            App::Faulty => "faulty",
        }
    }

    /// What a `wsgi:` line would say.
    pub fn module(self) -> &'static str {
        match self {
            App::Plain => "plain:application",
            App::Flask => "flaskapp:app",
            App::Faulty => "faulty:application",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            App::Plain => "plain WSGI app",
            App::Flask => "small Flask app",
            App::Faulty => "faulty WSGI app",
        }
    }
}

/// Writes the apps' sources into `dir` (every app's working directory).
pub fn write_sources(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in [
        ("plain.py", PLAIN_PY),
        ("flaskapp.py", FLASK_PY),
        ("asgiapp.py", ASGI_PY),
        ("faulty.py", FAULTY_PY),
    ] {
        fs::write(dir.join(name), text)?;
    }
    Ok(dir.to_path_buf())
}

/// Checks that `venv` has Flask and every server's executable, naming what is missing.
pub fn check_venv(venv: &Path) -> Result<()> {
    let bin = venv.join("bin");
    let mut missing: Vec<&str> = ALL
        .iter()
        .filter(|s| !bin.join(s.executable()).is_file())
        .map(|s| s.package())
        .collect();
    if !bin.join("flask").is_file() {
        missing.push("flask");
    }
    if !missing.is_empty() {
        bail!(
            "the bench venv {} lacks {} (scripts/bench creates it: python3 -m venv + pip install \
             granian gunicorn pyuwsgi waitress flask)",
            venv.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The version of each server in the venv, for the report (`name version`).
pub fn versions(venv: &Path) -> Vec<String> {
    let mut names: Vec<&str> = ALL.iter().map(|s: &Server| s.package()).collect();
    names.push("flask");
    names
        .into_iter()
        .map(|name| {
            let version = std::process::Command::new(venv.join("bin/python"))
                .args([
                    "-c",
                    "import sys, importlib.metadata as m; print(m.version(sys.argv[1]))",
                    name,
                ])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|| "?".into());
            format!("{name} {version}")
        })
        .collect()
}
