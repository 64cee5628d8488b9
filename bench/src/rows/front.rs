//! `piku-bench front` (issue 4 §6, issue 13 item 3): the cost of the HTTP front. One app with
//! one `web` process runs under our `piku-supervisor` with a front on a Unix socket; one real
//! nginx serves three loopback ports: A proxies straight to the instance's own port, B to the
//! glue's socket, C to a second nginx on a Unix socket that proxies to the instance — the
//! same extra hop as B, made by nginx, as a reference for what any user-space hop costs on
//! this machine (keepalive upstreams everywhere). `wrk` loads A, B, C in turn, round after
//! round; the table gives the medians, the ratios to A (with their spread over the rounds),
//! the glue's CPU per request and the supervisor's RSS idle and under load through B.
//!
//! The app is [`serve_app`], a small threaded keep-alive HTTP/1.1 server inside this binary
//! (`piku-bench front-app`): a Python app would be the bottleneck and hide the glue's cost.
//!
//! Over 500 lines on purpose: the three paths' nginx configs, the load loop and the report share
//! one fixture and read best together; splitting them would scatter one measurement.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use piku_proto::{
    AppSettings, AppSpec, FrontSpec, InstanceState, ProcessSpec, Request, Response, Role,
};

use crate::driver::ours::Ours;
use crate::driver::{Driver, signal};

/// The heading of the section this command owns in `BENCHMARKS.md`.
pub const SECTION: &str = "## HTTP front: nginx → app vs nginx → glue → app";

const APP: &str = "frontbench";

/// One `wrk` run, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkRun {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// `Non-2xx or 3xx responses` (wrk counts statuses above 399).
    pub bad_status: u64,
    /// connect + read + write + timeout.
    pub socket_errors: u64,
}

impl WrkRun {
    pub fn errors(&self) -> u64 {
        self.bad_status + self.socket_errors
    }
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`, `1.50m`) in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        "h" => v * 3_600_000.0,
        _ => return None,
    })
}

/// Reads `wrk --latency` output. Requests/s and the 50 %/99 % lines are required; error
/// lines are absent when there were none.
pub fn parse_wrk(text: &str) -> Result<WrkRun> {
    let mut requests = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut bad_status = 0;
    let mut socket_errors = 0;
    for line in text.lines().map(str::trim) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("50%"), Some(v)) => p50 = wrk_ms(v),
            (Some("99%"), Some(v)) => p99 = wrk_ms(v),
            (Some("Requests/sec:"), Some(v)) => rps = v.parse::<f64>().ok(),
            (Some(n), Some("requests")) => requests = n.parse::<u64>().ok(),
            _ => {}
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            bad_status = rest.trim().parse().context("wrk's non-2xx count")?;
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                let n = part.split_whitespace().nth(1).unwrap_or("0");
                socket_errors += n
                    .parse::<u64>()
                    .with_context(|| format!("wrk socket errors: {part:?}"))?;
            }
        }
    }
    match (requests, rps, p50, p99) {
        (Some(requests), Some(rps), Some(p50_ms), Some(p99_ms)) => Ok(WrkRun {
            requests,
            rps,
            p50_ms,
            p99_ms,
            bad_status,
            socket_errors,
        }),
        _ => bail!("wrk output lacks requests, Requests/sec or the 50%/99% latency lines:\n{text}"),
    }
}

/// The benchmark app: answers every request with a short 200, keeping connections open.
/// Listens on `127.0.0.1:$PORT`; one thread per connection (nginx keeps a few open).
pub fn serve_app() -> Result<()> {
    let port: u16 = std::env::var("PORT")
        .context("PORT is not set")?
        .parse()
        .context("PORT is not a port")?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = answer_requests(conn);
        });
    }
    Ok(())
}

const APP_BODY: &[u8] = b"ok\n";

/// Answers GET-style requests (no bodies) on one connection until the peer closes it.
fn answer_requests(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        APP_BODY.len()
    );
    let mut reply = reply.into_bytes();
    reply.extend_from_slice(APP_BODY);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Every complete header block is one request (pipelined ones answered in order).
        let mut answers = 0;
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            answers += 1;
        }
        if buf.len() > 64 * 1024 {
            return Ok(()); // not a request this app expects
        }
        for _ in 0..answers {
            conn.write_all(&reply)?;
        }
    }
}

/// Durations and repetitions of one benchmark run.
struct Load {
    secs: u32,
    rounds: usize,
}

/// What `piku-bench front` measured.
struct Figures {
    a: Vec<WrkRun>,
    b: Vec<WrkRun>,
    c: Vec<WrkRun>,
    rss_idle_kib: u64,
    rss_load_kib: u64,
    glue_cpu_secs: f64,
    /// CPU of the second nginx (master and worker) during the C runs.
    hop_cpu_secs: f64,
    load_start: String,
    load_end: String,
    date: String,
    quick: bool,
    load: Load,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

fn summarize(runs: &[WrkRun]) -> Summary {
    let pick = |f: fn(&WrkRun) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    Summary {
        rps: pick(|r| r.rps),
        p50: pick(|r| r.p50_ms),
        p99: pick(|r| r.p99_ms),
        errors: runs.iter().map(WrkRun::errors).sum(),
    }
}

/// VmRSS of a process, in KiB.
fn vm_rss_kib(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A child we started, killed by pid when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the front nginx sends each path.
struct Paths<'a> {
    port_a: u16,
    port_b: u16,
    port_c: u16,
    app_port: u16,
    /// The glue's socket (B).
    glue: &'a Path,
    /// The second nginx's socket (C).
    hop: &'a Path,
}

/// The front nginx (one worker): A, B and C as the module docs say.
fn nginx_conf(dir: &Path, p: &Paths) -> String {
    nginx_http(
        dir,
        &format!(
            "\x20 upstream direct {{ server 127.0.0.1:{app}; keepalive 32; }}\n\
             \x20 upstream glue {{ server unix:{glue}; keepalive 32; }}\n\
             \x20 upstream hop {{ server unix:{hop}; keepalive 32; }}\n\
             \x20 server {{ listen 127.0.0.1:{a}; location / {{ proxy_pass http://direct; {PROXY} }} }}\n\
             \x20 server {{ listen 127.0.0.1:{b}; location / {{ proxy_pass http://glue; {PROXY} }} }}\n\
             \x20 server {{ listen 127.0.0.1:{c}; location / {{ proxy_pass http://hop; {PROXY} }} }}\n",
            app = p.app_port,
            glue = p.glue.display(),
            hop = p.hop.display(),
            a = p.port_a,
            b = p.port_b,
            c = p.port_c,
        ),
    )
}

/// The second nginx (its own master and one worker, as the glue is its own process): the
/// middle hop of C, from a Unix socket to the instance, configured as the front's upstreams are.
fn hop_conf(dir: &Path, p: &Paths) -> String {
    nginx_http(
        dir,
        &format!(
            "\x20 upstream direct {{ server 127.0.0.1:{app}; keepalive 32; }}\n\
             \x20 server {{ listen unix:{hop}; location / {{ proxy_pass http://direct; {PROXY} }} }}\n",
            app = p.app_port,
            hop = p.hop.display(),
        ),
    )
}

const PROXY: &str = "proxy_http_version 1.1; proxy_set_header Connection \"\"; \
                     proxy_set_header Host $host; proxy_buffering on;";

fn nginx_http(dir: &Path, servers: &str) -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into());
    let d = dir.display();
    format!(
        "user {user};\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n\
         \x20 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         {servers}}}\n"
    )
}

/// Starts nginx on `conf` with `dir` as its prefix, logging to `dir/nginx.log`.
fn start_nginx(dir: &Path, conf: &str) -> Result<Owned> {
    fs::create_dir_all(dir)?;
    let path = dir.join("nginx.conf");
    fs::write(&path, conf)?;
    let log = File::create(dir.join("nginx.log"))?;
    let child = Command::new("/usr/sbin/nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting /usr/sbin/nginx")?;
    Ok(Owned(child))
}

/// Asks an nginx we started to finish (SIGQUIT), then the drop kills it if it lingers.
fn stop_nginx(nginx: Owned) -> Result<()> {
    signal(nginx.0.id() as i32, Signal::SIGQUIT);
    let t0 = Instant::now();
    let mut nginx = nginx;
    while t0.elapsed() < Duration::from_secs(5) {
        if nginx.0.try_wait()?.is_some() {
            break;
        }
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs wrk against `url`, killed if it overruns its window by 30 s.
fn wrk(url: &str, secs: u32, out: &Path) -> Result<WrkRun> {
    let file = File::create(out)?;
    let child = Command::new("wrk")
        .args([
            "-t2",
            "-c16",
            &format!("-d{secs}s"),
            "--latency",
            "--timeout",
            "5s",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting wrk (Debian package `wrk`)")?;
    let mut child = Owned(child);
    let deadline = Duration::from_secs(u64::from(secs) + 30);
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait()? {
            let text = fs::read_to_string(out)?;
            if !status.success() {
                bail!("wrk {url} failed ({status}): {text}");
            }
            return parse_wrk(&text);
        }
        if t0.elapsed() > deadline {
            bail!("wrk {url} did not finish within {} s", deadline.as_secs());
        }
        sleep(Duration::from_millis(50));
    }
}

fn app_spec(workdir: &Path, app_bin: &Path, sock: &Path) -> AppSpec {
    let env = [("PIKU_APP", APP), ("PATH", "/usr/bin:/bin")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AppSpec {
        app: APP.into(),
        release: "v1".into(),
        workdir: workdir.to_path_buf(),
        env,
        processes: vec![ProcessSpec {
            kind: "web".into(),
            command: format!("{} front-app", app_bin.display()),
            role: Role::Web,
            count: 1,
        }],
        settings: AppSettings {
            stop_grace_ms: 3000,
            front: Some(FrontSpec {
                unix_socket: Some(sock.to_path_buf()),
                ..FrontSpec::default()
            }),
            ..AppSettings::default()
        },
    }
}

/// The instance's own port once it runs and the front routes to it.
fn wait_front(ours: &Ours, deadline: Duration) -> Result<u16> {
    let t0 = Instant::now();
    loop {
        let apps = ours.status(Some(APP))?;
        let ready = apps.first().and_then(|a| {
            let inst = a.instances.first()?;
            let routed = a.front.as_ref().is_some_and(|f| !f.backends.is_empty());
            (inst.state == InstanceState::Running && routed)
                .then_some(inst.port)
                .flatten()
        });
        if let Some(port) = ready {
            return Ok(port);
        }
        if t0.elapsed() > deadline {
            bail!("the app did not run behind its front within {deadline:?}: {apps:?}");
        }
        sleep(Duration::from_millis(50));
    }
}

/// `piku-bench front`: measures, prints, and (with `markdown`) writes the section.
pub fn run(supervisor_bin: &Path, markdown: Option<&Path>, quick: bool, keep: bool) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("piku-bench-front-")
        .tempdir()?;
    let base = tmp.path().to_path_buf();
    let load = if quick {
        Load { secs: 3, rounds: 1 }
    } else {
        Load {
            secs: 10,
            rounds: 3,
        }
    };
    let result = measure(&base, supervisor_bin, load, quick);
    if keep {
        println!("kept {}", tmp.keep().display());
    }
    let figures = result?;
    let text = render(&figures);
    println!("\n{text}");
    if let Some(md) = markdown {
        let old = fs::read_to_string(md).unwrap_or_default();
        fs::write(md, replace_section(&old, &text))
            .with_context(|| format!("writing {}", md.display()))?;
        println!("wrote the front section of {}", md.display());
    }
    Ok(())
}

fn measure(base: &Path, supervisor_bin: &Path, load: Load, quick: bool) -> Result<Figures> {
    let load_start = loadavg();
    let date = chrono_free_date();
    let app_bin = std::env::current_exe().context("locating piku-bench")?;
    let workdir = base.join("app");
    fs::create_dir_all(&workdir)?;
    let mut ours = Ours::start(base, supervisor_bin)?;
    let figures = (|| -> Result<Figures> {
        let root = base.join("piku");
        fs::create_dir_all(root.join("nginx"))?;
        let sock = root.join("nginx").join("bench.sock");
        let spec = app_spec(&workdir, &app_bin, &sock);
        if let Response::Error { message } = ours.call(&Request::Apply(Box::new(spec)))? {
            bail!("apply refused: {message}");
        }
        let app_port = wait_front(&ours, Duration::from_secs(30))?;
        let daemon = ours.root();
        ours.tracker().sweep(daemon);

        let ngx = base.join("nginx");
        let hop_dir = base.join("nginx-hop");
        let ports = (free_port()?, free_port()?, free_port()?);
        if ports.0 == ports.1 || ports.1 == ports.2 || ports.0 == ports.2 {
            bail!("got the same free port twice");
        }
        let hop_sock = hop_dir.join("hop.sock");
        let paths = Paths {
            port_a: ports.0,
            port_b: ports.1,
            port_c: ports.2,
            app_port,
            glue: &sock,
            hop: &hop_sock,
        };
        let hop = start_nginx(&hop_dir, &hop_conf(&hop_dir, &paths))?;
        let nginx = start_nginx(&ngx, &nginx_conf(&ngx, &paths))?;
        let serving = |port: u16| crate::http::serves(port, Duration::from_secs(1));
        let t0 = Instant::now();
        while !(serving(paths.port_a) && serving(paths.port_b) && serving(paths.port_c)) {
            if t0.elapsed() > Duration::from_secs(15) {
                let log = fs::read_to_string(ngx.join("nginx.log")).unwrap_or_default();
                let hop_log = fs::read_to_string(hop_dir.join("nginx.log")).unwrap_or_default();
                bail!("nginx did not serve all three paths within 15 s: {log}{hop_log}");
            }
            sleep(Duration::from_millis(100));
        }
        let url = |p: u16| format!("http://127.0.0.1:{p}/");
        // Warm every path (connections, page cache) before measuring.
        for (name, port) in [
            ("a", paths.port_a),
            ("b", paths.port_b),
            ("c", paths.port_c),
        ] {
            wrk(&url(port), 2, &base.join(format!("wrk-warm-{name}.txt")))?;
        }
        sleep(Duration::from_secs(1));
        let rss_idle_kib = vm_rss_kib(daemon).unwrap_or(0);

        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let mut rss_load_kib = 0;
        let mut glue_ticks = 0;
        let mut hop_ticks = 0;
        let hop_pids = crate::procfs::tree(hop.0.id() as i32);
        let hop_cpu = || crate::procfs::cpu_ticks(&hop_pids);
        for round in 0..load.rounds {
            let run = wrk(
                &url(paths.port_a),
                load.secs,
                &base.join(format!("wrk-a{round}.txt")),
            )?;
            println!("  A round {round}: {run:?}");
            a.push(run);
            let stop = Arc::new(AtomicBool::new(false));
            let peak = Arc::new(AtomicU64::new(0));
            let sampler = {
                let (stop, peak) = (stop.clone(), peak.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(kib) = vm_rss_kib(daemon) {
                            peak.fetch_max(kib, Ordering::Relaxed);
                        }
                        sleep(Duration::from_millis(100));
                    }
                })
            };
            let cpu0 = crate::procfs::Stat::read(daemon).map_or(0, |s| s.cpu_ticks);
            let run = wrk(
                &url(paths.port_b),
                load.secs,
                &base.join(format!("wrk-b{round}.txt")),
            );
            let cpu1 = crate::procfs::Stat::read(daemon).map_or(0, |s| s.cpu_ticks);
            stop.store(true, Ordering::Relaxed);
            let _ = sampler.join();
            let run = run?;
            println!("  B round {round}: {run:?}");
            b.push(run);
            glue_ticks += cpu1.saturating_sub(cpu0);
            rss_load_kib = rss_load_kib.max(peak.load(Ordering::Relaxed));
            let cpu0 = hop_cpu();
            let run = wrk(
                &url(paths.port_c),
                load.secs,
                &base.join(format!("wrk-c{round}.txt")),
            )?;
            hop_ticks += hop_cpu().saturating_sub(cpu0);
            println!("  C round {round}: {run:?}");
            c.push(run);
        }
        stop_nginx(nginx)?;
        stop_nginx(hop)?;
        Ok(Figures {
            a,
            b,
            c,
            rss_idle_kib,
            rss_load_kib,
            glue_cpu_secs: glue_ticks as f64 / crate::procfs::ticks_per_sec(),
            hop_cpu_secs: hop_ticks as f64 / crate::procfs::ticks_per_sec(),
            load_start: load_start.clone(),
            load_end: loadavg(),
            date: date.clone(),
            quick,
            load,
        })
    })();
    let daemon = ours.root();
    ours.tracker().sweep(daemon);
    let shut = ours.shutdown();
    let figures = figures?;
    if let Ok(s) = shut
        && s.leftovers > 0
    {
        eprintln!(
            "  {} process(es) outlived the supervisor and were killed by pid",
            s.leftovers
        );
    }
    Ok(figures)
}

/// UTC date and time from `date -u` (the crate has no date library).
fn chrono_free_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Per-round ratios `of[i] / to[i]` of one figure, as "r1, r2, r3".
fn round_ratios(of: &[WrkRun], to: &[WrkRun], figure: fn(&WrkRun) -> f64) -> (Vec<f64>, String) {
    let ratios: Vec<f64> = of
        .iter()
        .zip(to)
        .map(|(x, base)| figure(x) / figure(base))
        .collect();
    let text = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    (ratios, text)
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}–{hi:.2}")
}

/// One "Ratio X/A" line: medians' ratios, then each round's and their spread.
fn ratio_line(label: &str, of: &[WrkRun], a: &[WrkRun]) -> String {
    let (x, base) = (summarize(of), summarize(a));
    let (rps, rps_rounds) = round_ratios(of, a, |r| r.rps);
    let (p99, p99_rounds) = round_ratios(of, a, |r| r.p99_ms);
    format!(
        "- Ratio {label}: req/s **{:.2}** (rounds {rps_rounds}; spread {}), p50 {:.2}, \
         p99 **{:.2}** (rounds {p99_rounds}; spread {}).",
        x.rps / base.rps,
        spread(&rps),
        x.p50 / base.p50,
        x.p99 / base.p99,
        spread(&p99),
    )
}

fn render(f: &Figures) -> String {
    let (a, b, c) = (summarize(&f.a), summarize(&f.b), summarize(&f.c));
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION}\n");
    let _ = writeln!(
        s,
        "Measured {} with `piku-bench front{}` (release builds; `scripts/bench` runs it after the \
         other rows). One app, one `web` instance (a small threaded keep-alive HTTP/1.1 server, \
         `piku-bench front-app`), under `piku-supervisor` with a front on a Unix socket; one nginx \
         (1 worker) with keepalive upstreams: **A** proxies to the instance's own port, **B** to \
         the glue's socket, **C** to a second nginx (its own process, 1 worker) on a Unix socket \
         that proxies to the instance — the same extra hop as B, made by nginx. \
         Load: `wrk -t2 -c16 -d{}s --latency`, A, B and C in turn, {} round(s); medians shown. \
         Everything on 127.0.0.1; wrk, nginx, the glue and the app share the machine's {} cores.\n",
        f.date,
        if f.quick { " --quick" } else { "" },
        f.load.secs,
        f.load.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let _ = writeln!(s, "| path | req/s | p50 (ms) | p99 (ms) | errors |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for (name, x) in [
        ("A: nginx → app", &a),
        ("B: nginx → glue → app", &b),
        ("C: nginx → nginx → app", &c),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.2} | {:.2} | {} |",
            x.rps, x.p50, x.p99, x.errors
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{} Goal (issue 13): req/s ≥ 0.90, p99 ≤ 1.15.",
        ratio_line("B/A", &f.b, &f.a)
    );
    let _ = writeln!(
        s,
        "{} The same hop made by nginx, for reference.",
        ratio_line("C/A", &f.c, &f.a)
    );
    let b_requests: u64 = f.b.iter().map(|r| r.requests).sum();
    let c_requests: u64 = f.c.iter().map(|r| r.requests).sum();
    let _ = writeln!(
        s,
        "- CPU of the hop: the glue **{:.1} µs per request** through B ({:.1} s of \
         piku-supervisor CPU over {} requests); the second nginx {:.1} µs per request through C \
         ({:.1} s over {} requests). piku-supervisor VmRSS: {:.1} MiB idle, {:.1} MiB max under \
         load through B.",
        f.glue_cpu_secs * 1e6 / b_requests.max(1) as f64,
        f.glue_cpu_secs,
        b_requests,
        f.hop_cpu_secs * 1e6 / c_requests.max(1) as f64,
        f.hop_cpu_secs,
        c_requests,
        f.rss_idle_kib as f64 / 1024.0,
        f.rss_load_kib as f64 / 1024.0,
    );
    let runs = |v: &[WrkRun]| {
        v.iter()
            .map(|r| format!("{:.0}/{:.2}/{:.2}", r.rps, r.p50_ms, r.p99_ms))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "- Each run (req/s / p50 / p99): A {}; B {}; C {}.",
        runs(&f.a),
        runs(&f.b),
        runs(&f.c)
    );
    let _ = writeln!(
        s,
        "- Machine load (`/proc/loadavg`): {} at start, {} at end.",
        f.load_start, f.load_end
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busiest = [&f.load_start, &f.load_end]
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    if busiest > cores {
        let _ = writeln!(
            s,
            "- The machine was busy with other work (1-minute load up to {busiest:.1} on {cores:.0} cores): \
             absolute figures are noisy; the paths alternate, so the ratios are the steadier figures."
        );
    }
    let _ = writeln!(
        s,
        "- Reading: wrk, nginx, the app and the hop share {cores:.0} cores and every path is \
         CPU-bound, so a path's req/s follows the total CPU it costs per request. A hop costs two \
         more socket reads and writes per request (and the wake-ups of the processes on either \
         side), most of it in the kernel; C shows what that costs when nginx itself makes the \
         hop, so B/A cannot be expected above C/A by much: the gap between B and C is the glue's \
         own share."
    );
    s
}

/// `doc` with this command's section replaced by `section` (appended when absent). The
/// section runs from its heading to the next `## ` heading or the end.
pub fn replace_section(doc: &str, section: &str) -> String {
    let section = section.trim_end();
    let Some(start) = doc.find(SECTION) else {
        let sep = if doc.is_empty() || doc.ends_with("\n\n") {
            ""
        } else if doc.ends_with('\n') {
            "\n"
        } else {
            "\n\n"
        };
        return format!("{doc}{sep}{section}\n");
    };
    let after = start + SECTION.len();
    let end = doc[after..]
        .find("\n## ")
        .map_or(doc.len(), |i| after + i + 1);
    let rest = &doc[end..];
    let gap = if rest.is_empty() { "\n" } else { "\n\n" };
    format!("{}{section}{gap}{rest}", &doc[..start])
}

/// This command's section of `doc`, if it has one (for reports that rewrite the whole file).
pub fn section_of(doc: &str) -> Option<&str> {
    let start = doc.find(SECTION)?;
    let after = start + SECTION.len();
    let end = doc[after..]
        .find("\n## ")
        .map_or(doc.len(), |i| after + i + 1);
    Some(doc[start..end].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUT: &str = "Running 10s test @ http://127.0.0.1:40001/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms  502.31us  21.87ms   92.10%
    Req/Sec     7.81k   612.00     9.02k    71.50%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.60ms
     99%    2.50s
  155432 requests in 10.00s, 24.01MB read
  Socket errors: connect 1, read 2, write 0, timeout 4
  Non-2xx or 3xx responses: 3
Requests/sec:  15540.31
Transfer/sec:      2.40MB
";

    #[test]
    fn parses_wrk_latency_output() {
        let r = parse_wrk(WRK_OUT).unwrap();
        assert_eq!(r.requests, 155_432);
        assert_eq!(r.rps, 15540.31);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(r.p99_ms, 2500.0);
        assert_eq!(r.bad_status, 3);
        assert_eq!(r.socket_errors, 7);
        assert_eq!(r.errors(), 10);
    }

    #[test]
    fn clean_wrk_run_has_no_errors_and_missing_lines_fail() {
        let clean: String = WRK_OUT
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_wrk(&clean).unwrap().errors(), 0);
        let no_p99: String = WRK_OUT
            .lines()
            .filter(|l| !l.trim_start().starts_with("99%"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(parse_wrk(&no_p99).is_err());
        assert_eq!(wrk_ms("1.50m"), Some(90_000.0));
        assert_eq!(wrk_ms("3.00xs"), None);
    }

    fn run(rps: f64, p99_ms: f64) -> WrkRun {
        WrkRun {
            requests: 1,
            rps,
            p50_ms: 1.0,
            p99_ms,
            bad_status: 0,
            socket_errors: 0,
        }
    }

    #[test]
    fn ratios_are_given_per_round_with_their_spread() {
        let a = [run(100.0, 2.0), run(200.0, 2.0), run(100.0, 4.0)];
        let b = [run(80.0, 2.0), run(180.0, 3.0), run(70.0, 4.0)];
        let line = ratio_line("B/A", &b, &a);
        assert!(
            line.contains("req/s **0.80** (rounds 0.80, 0.90, 0.70; spread 0.70–0.90)"),
            "{line}"
        );
        assert!(
            line.contains("p99 **1.50** (rounds 1.00, 1.50, 1.00; spread 1.00–1.50)"),
            "{line}"
        );
    }

    #[test]
    fn section_is_replaced_in_place_or_appended() {
        let new = format!("{SECTION}\n\nnew figures\n");
        let doc = "# T\n\n## A\n\na\n";
        let once = replace_section(doc, &new);
        assert_eq!(
            once,
            format!("# T\n\n## A\n\na\n\n{SECTION}\n\nnew figures\n")
        );
        let middle = format!("# T\n\n{SECTION}\n\nold\n\n## Z\n\nz\n");
        assert_eq!(
            replace_section(&middle, &new),
            format!("# T\n\n{SECTION}\n\nnew figures\n\n## Z\n\nz\n")
        );
        assert_eq!(replace_section(&once, &new), once);
        assert_eq!(
            section_of(&middle),
            Some(format!("{SECTION}\n\nold").as_str())
        );
        assert_eq!(section_of(doc), None);
    }

    #[test]
    fn app_answers_pipelined_requests_on_one_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            answer_requests(c).unwrap();
        });
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.windows(3).filter(|w| w == b"ok\n").count() < 2 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count(),
            2
        );
        drop(c);
        t.join().unwrap();
    }
}
