//! `wsgi: module:app` without the uWSGI emperor: the server that runs it, chosen with
//! `PIKU_WSGI_SERVER` (`uwsgi`, the default, one uWSGI per instance; `granian`; `gunicorn`;
//! `waitress`), installed into the app's venv by the build and run by the supervisor as a web
//! process on the instance's `$PORT`.
//!
//! piku's uWSGI knobs map onto it: `UWSGI_PROCESSES` → worker processes, `UWSGI_THREADS` →
//! threads per worker, `UWSGI_MAX_REQUESTS` → restart a worker after that many requests (only
//! when the app sets it: recycling is off by default), `UWSGI_ASYNCIO=N` → the entry is an
//! ASGI app (`async def app(scope, receive, send)`), which granian serves with at most N
//! requests in flight per worker. Every request is logged, one line each, as piku's uWSGI does.

use std::path::Path;

use piku_model::EnvMap;

use crate::error::DeployError;
use crate::settings::number;

/// The server a `wsgi:` entry gets when `PIKU_WSGI_SERVER` is unset: uWSGI, one per instance,
/// from the `pyuwsgi` wheels (x86_64 and aarch64; nothing to compile on the server).
///
/// Chosen from `piku-bench wsgi` on a 2-core box (BENCHMARKS.md, "Python web apps"; plain
/// WSGI app through nginx and the front, medians of 3 alternating rounds; the 2026-12-06 06:49
/// run, every server on a connection per request). The front, not the server, sets the pace
/// there: uWSGI 9.1k req/s, granian 11.5k, waitress 6.7k, gunicorn
/// 2.8–4.2k, p99 3.4–3.8 ms for uWSGI and granian. What separates uWSGI and granian is memory
/// and start-up: the whole tree (daemon + server) is 16.7 MiB with uWSGI against 38.9 with
/// granian (which always runs a Python supervisor process beside its worker, redundant under
/// ours), an extra instance adds 6.4 MiB against 22.7, and a new instance answers in 29 ms
/// against 92. That memory is what puts a formation under piku's emperor tree (0.70× its
/// PSS), on the 512 MB boards piku is for. granian stays one setting away
/// (`PIKU_WSGI_SERVER=granian`) and serves ASGI apps.
pub const DEFAULT: Server = Server::Uwsgi;

/// A WSGI server we know how to install and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Uwsgi,
    Granian,
    Gunicorn,
    Waitress,
}

/// Every server, in the order `PIKU_WSGI_SERVER`'s error lists them.
pub const ALL: [Server; 4] = [
    Server::Uwsgi,
    Server::Granian,
    Server::Gunicorn,
    Server::Waitress,
];

/// The per-request log line, in the spirit of piku's uWSGI `log-format` (client, time,
/// request line, status, referer, user agent, milliseconds). Behind the front every
/// connection comes from the supervisor, so the client is the `X-Forwarded-For` it adds.
const GRANIAN_ACCESS_LOG: &str = "%(header{x-forwarded-for})s - [%(time)s] \
     \"%(method)s %(path)s %(protocol)s\" %(status)d \"%(header{referer})s\" \
     \"%(header{user-agent})s\" %(dt_ms).0fms";
const GUNICORN_ACCESS_LOG: &str =
    "%({x-forwarded-for}i)s - %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\" %(M)sms";
/// piku's own `log-format` line, for uWSGI.
const UWSGI_LOG_FORMAT: &str = "%(addr) - %(user) [%(ltime)] \"%(method) %(uri) %(proto)\" \
     %(status) %(size) \"%(referer)\" \"%(uagent)\" %(msecs)ms";

/// Worker processes per instance when `UWSGI_PROCESSES` is unset, on a box with `cpus` cores.
///
/// One per two cores, at least one: a worker keeps about one core busy (the GIL), and nginx
/// and the supervisor's front take the other on the small boxes piku is for (2–4 cores,
/// 0.5–2 GiB), where a second worker per instance costs a master process and a second copy of
/// the app's memory. `ps:scale wsgi=N` adds instances, each with its own worker.
///
/// What one worker leaves on the table, and why not more (2 cores, 2026-12-06): an app that
/// keeps Python busy gets one core, the benchmark's Flask page 643 req/s against 1056 with
/// `UWSGI_PROCESSES=2` (BENCHMARKS.md, "Python web apps"; the plain app is paced by the front
/// and gains nothing). Copy-on-write does not make the second worker cheap: Python's reference
/// counts unshare the forked worker's pages as it serves, so the Flask tree (uWSGI alone) is
/// 28.7 MiB with one worker and no master, 41.4 idle with a master and two, 58.9 once both
/// have served (plain app: 10.3, 15.2, 18.2). uWSGI's cheaper (`--cheaper 1`, up to one worker
/// per core) would start with one, but its master costs 2.2 MiB (plain) to 5.6 (Flask) on
/// every instance, its busyness algorithm forks the second worker after one second of four
/// requests in flight (so most apps would soon run two: the formation, warmed by one
/// second of load, went from 0.74× piku's PSS to 0.92×, over its 0.8× goal), connections
/// beyond one worker's threads wait in the listen queue for that fork (about a second), and
/// it cannot take a threaded worker back: a cheaped worker's threads each serve one more request, and one
/// holding a kept-alive connection then stops reading it without closing it, so the front's
/// next request on it hangs until the worker dies (uWSGI 2.0.30: a request on such a
/// connection timed out after 5 s; the worker lingers up to its 60 s reload mercy). An app
/// that wants the cores sets `UWSGI_PROCESSES`; one that is only sometimes busy is better
/// served by more instances started and drained by the supervisor, whose front can take an
/// instance out of the pool before stopping it.
pub fn default_workers(cpus: usize) -> u32 {
    u32::try_from((cpus / 2).max(1)).unwrap_or(1)
}

/// Threads per worker when `UWSGI_THREADS` is unset: piku's 4, so an app that waits on a
/// database or an API keeps serving others meanwhile.
pub const DEFAULT_THREADS: u32 = 4;

/// How many workers, threads and recycled requests an instance runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tuning {
    workers: u32,
    threads: u32,
    /// `UWSGI_MAX_REQUESTS` when the app set it (and not to 0).
    max_requests: Option<u32>,
    /// `UWSGI_ASYNCIO`: an ASGI app, and how many requests each worker takes at once.
    asgi_tasks: Option<u32>,
}

impl Tuning {
    fn from_env(env: &EnvMap, cpus: usize, warnings: &mut Vec<String>) -> Tuning {
        let workers = number(env, "UWSGI_PROCESSES", default_workers(cpus), warnings).max(1);
        let threads = number(env, "UWSGI_THREADS", DEFAULT_THREADS, warnings).max(1);
        let max_requests = match number(env, "UWSGI_MAX_REQUESTS", 0u32, warnings) {
            0 => None,
            n => Some(n),
        };
        let asgi_tasks = asgi_tasks(env);
        if let Some(text) = env.get("UWSGI_ASYNCIO")
            && asgi_tasks.is_none()
        {
            warnings.push(format!(
                "Warning: UWSGI_ASYNCIO='{text}' is not a number of tasks; serving the \
                 'wsgi:' entry as a WSGI app"
            ));
        }
        Tuning {
            workers,
            threads,
            max_requests,
            asgi_tasks,
        }
    }
}

/// `UWSGI_ASYNCIO` as a number of tasks, when it is one: the app is ASGI.
fn asgi_tasks(env: &EnvMap) -> Option<u32> {
    env.get("UWSGI_ASYNCIO")?
        .trim()
        .parse::<u32>()
        .ok()
        .map(|n| n.max(1))
}

impl Server {
    /// The server `PIKU_WSGI_SERVER` asks for; when unset, [`DEFAULT`], or granian for an
    /// ASGI app (`UWSGI_ASYNCIO`), since it is the one that serves ASGI.
    pub fn from_env(env: &EnvMap) -> Result<Server, DeployError> {
        match env.get("PIKU_WSGI_SERVER").map(|s| s.trim()) {
            None | Some("") if asgi_tasks(env).is_some() => Ok(Server::Granian),
            None | Some("") => Ok(DEFAULT),
            Some(name) => Server::from_name(name).ok_or_else(|| {
                let names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
                DeployError::refused(format!(
                    "PIKU_WSGI_SERVER='{name}' is not one of {}",
                    names.join(", ")
                ))
            }),
        }
    }

    pub fn from_name(name: &str) -> Option<Server> {
        ALL.into_iter().find(|s| s.name() == name)
    }

    /// The package pip installs: uWSGI from the `pyuwsgi` wheels, the others by their name.
    pub fn package(self) -> &'static str {
        match self {
            Server::Uwsgi => "pyuwsgi",
            other => other.name(),
        }
    }

    /// Its name, as `PIKU_WSGI_SERVER` and `release.json` say it.
    pub fn name(self) -> &'static str {
        match self {
            Server::Granian => "granian",
            Server::Gunicorn => "gunicorn",
            Server::Waitress => "waitress",
            Server::Uwsgi => "uwsgi",
        }
    }

    /// The executable the package puts in the venv's `bin`.
    pub fn executable(self) -> &'static str {
        match self {
            Server::Granian => "granian",
            Server::Gunicorn => "gunicorn",
            Server::Waitress => "waitress-serve",
            Server::Uwsgi => "uwsgi",
        }
    }

    /// The command line serving `module` (`pkg.module:app`) on `$BIND_ADDRESS:$PORT`, which
    /// the supervisor runs through `sh` because of the `$`. Worker counts fit this machine.
    pub fn command(
        self,
        venv: &Path,
        module: &str,
        env: &EnvMap,
        warnings: &mut Vec<String>,
    ) -> String {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.command_for(venv, module, env, cpus, warnings)
    }

    /// The most requests the front should have on one instance at once, when this server needs
    /// a bound: uWSGI with keep-alive pins a thread to each open connection (until it closes or
    /// idles past uWSGI's 4 s socket timeout), so a connection beyond its processes × threads
    /// waits in its listen queue for a thread; bounded, the front keeps at most that many
    /// connections busy and the rest of the requests wait in the front, oldest first. `None`:
    /// the front's own cap (the others take requests from any connection).
    pub fn max_in_flight(self, env: &EnvMap) -> Option<u32> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.max_in_flight_for(env, cpus)
    }

    fn max_in_flight_for(self, env: &EnvMap, cpus: usize) -> Option<u32> {
        match self {
            Server::Uwsgi => {
                // Warnings about the knobs are given once, with the command line.
                let t = Tuning::from_env(env, cpus, &mut Vec::new());
                Some(t.workers.saturating_mul(t.threads))
            }
            Server::Granian | Server::Gunicorn | Server::Waitress => None,
        }
    }

    fn command_for(
        self,
        venv: &Path,
        module: &str,
        env: &EnvMap,
        cpus: usize,
        warnings: &mut Vec<String>,
    ) -> String {
        let exe = quote(&venv.join("bin").join(self.executable()).to_string_lossy());
        let module = quote(module);
        let t = Tuning::from_env(env, cpus, warnings);
        if t.asgi_tasks.is_some() && self != Server::Granian {
            warnings.push(format!(
                "Warning: UWSGI_ASYNCIO asks for an ASGI app, which {} does not serve; it is \
                 served as WSGI (PIKU_WSGI_SERVER=granian serves ASGI)",
                self.name()
            ));
        }
        match self {
            Server::Granian => {
                if let Some(n) = t.max_requests {
                    warnings.push(format!(
                        "Warning: UWSGI_MAX_REQUESTS={n} is not applied: granian cannot restart \
                         a worker after a number of requests (PIKU_WSGI_SERVER=gunicorn or uwsgi can)"
                    ));
                }
                let mut cmd = format!(
                    "{exe} --host \"$BIND_ADDRESS\" --port \"$PORT\" --workers {}",
                    t.workers
                );
                match t.asgi_tasks {
                    // ASGI runs every request on the worker's event loop: no thread pool.
                    Some(tasks) => {
                        cmd.push_str(&format!(" --interface asgi --backpressure {tasks}"))
                    }
                    None => cmd.push_str(&format!(
                        " --interface wsgi --blocking-threads {} --no-ws",
                        t.threads
                    )),
                }
                cmd.push_str(&format!(
                    " --access-log --access-log-fmt {} {module}",
                    quote(GRANIAN_ACCESS_LOG)
                ));
                cmd
            }
            Server::Gunicorn => {
                let mut cmd = format!(
                    "{exe} --bind \"$BIND_ADDRESS:$PORT\" --workers {} --threads {}",
                    t.workers, t.threads
                );
                if let Some(n) = t.max_requests {
                    // Jitter, so that the workers do not all restart at once.
                    let jitter = (n / 16).max(1);
                    cmd.push_str(&format!(
                        " --max-requests {n} --max-requests-jitter {jitter}"
                    ));
                }
                cmd.push_str(&format!(
                    " --access-logfile - --access-logformat {} {module}",
                    quote(GUNICORN_ACCESS_LOG)
                ));
                cmd
            }
            // waitress is one process with a thread pool, and logs no requests.
            Server::Waitress => {
                if t.workers > 1 && env.contains_key("UWSGI_PROCESSES") {
                    warnings.push(
                        "Warning: waitress runs one process; UWSGI_PROCESSES is not applied \
                         (ps:scale adds instances)"
                            .to_owned(),
                    );
                }
                format!(
                    "{exe} --listen=\"$BIND_ADDRESS:$PORT\" --threads={} {module}",
                    t.threads
                )
            }
            // --http11-socket: keep-alive between the front and uWSGI. uWSGI ties a thread to
            // each open connection until it closes or idles past its 4 s socket timeout, so a
            // connection beyond processes × threads would wait in the listen queue for seconds
            // (a fifth connection to 4 threads waited 4.0 s): the front bounds the requests in
            // flight on an instance to processes × threads (`max_in_flight`), so it never has
            // more connections busy than there are threads, and it drops idle ones after 1 s.
            // Against a connection per request (`--http-socket`, `Connection: close`), same run,
            // plain WSGI app through nginx: 1.69× the req/s, p99 0.86× (`piku-bench wsgi`).
            // --die-on-term: uWSGI reloads on SIGTERM, the signal the supervisor stops with.
            // --need-app: an app that does not import exits (and fails the deploy) instead of
            // answering every request with an error.
            // A master only where one is needed: several workers, or recycling them.
            Server::Uwsgi => {
                let master = t.workers > 1 || t.max_requests.is_some();
                let mut cmd = exe;
                if master {
                    cmd.push_str(" --master");
                }
                cmd.push_str(&format!(
                    " --die-on-term --need-app --http11-socket \"$BIND_ADDRESS:$PORT\" \
                     --processes {} --threads {} --enable-threads",
                    t.workers, t.threads
                ));
                if let Some(n) = t.max_requests {
                    cmd.push_str(&format!(" --max-requests {n}"));
                }
                cmd.push_str(&format!(
                    " --log-x-forwarded-for --log-format {} --module {module}",
                    quote(UWSGI_LOG_FORMAT)
                ));
                cmd
            }
        }
    }
}

/// Single-quotes `text` for `sh` unless it is plain.
fn quote(text: &str) -> String {
    shell_words::quote(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn command(server: Server, pairs: &[(&str, &str)], cpus: usize) -> (String, Vec<String>) {
        let mut warnings = Vec::new();
        let cmd = server.command_for(
            Path::new("/p/deps/x"),
            "app:app",
            &env(pairs),
            cpus,
            &mut warnings,
        );
        (cmd, warnings)
    }

    /// The words `sh` would pass to the server.
    fn argv(cmd: &str) -> Vec<String> {
        shell_words::split(cmd).unwrap()
    }

    #[test]
    fn uwsgi_is_the_default_one_process_keeping_connections_alive_on_a_small_box() {
        assert_eq!(Server::from_env(&EnvMap::new()).unwrap(), Server::Uwsgi);
        assert_eq!(Server::Uwsgi.package(), "pyuwsgi");
        assert_eq!(Server::Granian.package(), "granian");
        let (cmd, warnings) = command(Server::Uwsgi, &[], 2);
        assert!(warnings.is_empty(), "{warnings:?}");
        let argv = argv(&cmd);
        assert_eq!(argv[0], "/p/deps/x/bin/uwsgi");
        let joined = argv.join(" ");
        assert!(
            joined.starts_with(
                "/p/deps/x/bin/uwsgi --die-on-term --need-app --http11-socket $BIND_ADDRESS:$PORT \
                 --processes 1 --threads 4 --enable-threads"
            ),
            "{cmd}"
        );
        assert!(
            !cmd.contains("--master") && !cmd.contains("max-requests"),
            "{cmd}"
        );
        assert_eq!(argv[argv.len() - 2..], ["--module", "app:app"]);
        // Several workers get a master to look after them.
        let (cmd, _) = command(Server::Uwsgi, &[("UWSGI_PROCESSES", "2")], 2);
        assert!(cmd.contains("/uwsgi --master --die-on-term"), "{cmd}");
    }

    #[test]
    fn the_front_sends_uwsgi_no_more_requests_than_it_has_threads() {
        assert_eq!(Server::Uwsgi.max_in_flight_for(&env(&[]), 2), Some(4));
        assert_eq!(Server::Uwsgi.max_in_flight_for(&env(&[]), 8), Some(16));
        let env = env(&[("UWSGI_PROCESSES", "3"), ("UWSGI_THREADS", "2")]);
        assert_eq!(Server::Uwsgi.max_in_flight_for(&env, 2), Some(6));
        for other in [Server::Granian, Server::Gunicorn, Server::Waitress] {
            assert_eq!(other.max_in_flight_for(&env, 2), None);
        }
    }

    #[test]
    fn granian_serves_wsgi_with_a_bounded_thread_pool() {
        let (cmd, warnings) = command(Server::Granian, &[], 2);
        assert!(warnings.is_empty(), "{warnings:?}");
        let argv = argv(&cmd);
        assert_eq!(argv[0], "/p/deps/x/bin/granian");
        let joined = argv.join(" ");
        assert!(
            joined.contains(
                "--host $BIND_ADDRESS --port $PORT --workers 1 --interface wsgi --blocking-threads 4"
            ),
            "{cmd}"
        );
        assert!(joined.contains("--access-log --access-log-fmt"), "{cmd}");
        assert_eq!(argv.last().map(String::as_str), Some("app:app"));
    }

    #[test]
    fn worker_and_thread_counts_fit_the_box_unless_the_app_sets_them() {
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(2), 1);
        assert_eq!(default_workers(8), 4);
        let (cmd, _) = command(Server::Granian, &[], 8);
        assert!(cmd.contains("--workers 4 "), "{cmd}");
        let (cmd, _) = command(
            Server::Granian,
            &[("UWSGI_PROCESSES", "3"), ("UWSGI_THREADS", "8")],
            2,
        );
        assert!(
            cmd.contains("--workers 3 --interface wsgi --blocking-threads 8"),
            "{cmd}"
        );
        let (cmd, warnings) = command(Server::Gunicorn, &[("UWSGI_THREADS", "lots")], 2);
        assert!(cmd.contains("--workers 1 --threads 4"), "{cmd}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn requests_recycle_workers_only_when_the_app_asks() {
        for server in [Server::Gunicorn, Server::Uwsgi] {
            let (cmd, _) = command(server, &[], 2);
            assert!(!cmd.contains("--max-requests"), "{cmd}");
            let (cmd, _) = command(server, &[("UWSGI_MAX_REQUESTS", "0")], 2);
            assert!(!cmd.contains("--max-requests"), "{cmd}");
        }
        let (cmd, _) = command(Server::Gunicorn, &[("UWSGI_MAX_REQUESTS", "1024")], 2);
        assert!(
            cmd.contains("--max-requests 1024 --max-requests-jitter 64"),
            "{cmd}"
        );
        let (cmd, _) = command(Server::Uwsgi, &[("UWSGI_MAX_REQUESTS", "500")], 2);
        assert!(cmd.contains("--max-requests 500 "), "{cmd}");
        assert!(
            cmd.contains("--master"),
            "recycling needs uWSGI's master: {cmd}"
        );
        let (cmd, warnings) = command(Server::Granian, &[("UWSGI_MAX_REQUESTS", "500")], 2);
        assert!(!cmd.contains("500"), "{cmd}");
        assert!(
            warnings[0].contains("UWSGI_MAX_REQUESTS=500"),
            "{warnings:?}"
        );
    }

    #[test]
    fn every_server_logs_requests() {
        for server in [Server::Granian, Server::Gunicorn, Server::Uwsgi] {
            let (cmd, _) = command(server, &[], 2);
            let argv = argv(&cmd);
            let flag = match server {
                Server::Granian => "--access-log-fmt",
                Server::Gunicorn => "--access-logformat",
                _ => "--log-format",
            };
            let at = argv.iter().position(|a| a == flag).expect(flag);
            assert!(argv[at + 1].contains("ms"), "{cmd}");
        }
        let (cmd, _) = command(Server::Uwsgi, &[], 2);
        assert!(cmd.contains("--die-on-term"), "{cmd}");
    }

    #[test]
    fn uwsgi_asyncio_serves_an_asgi_app_with_granian() {
        assert_eq!(
            Server::from_env(&env(&[("UWSGI_ASYNCIO", "100")])).unwrap(),
            Server::Granian
        );
        assert_eq!(
            Server::from_env(&env(&[
                ("UWSGI_ASYNCIO", "100"),
                ("PIKU_WSGI_SERVER", "uwsgi")
            ]))
            .unwrap(),
            Server::Uwsgi
        );
        assert_eq!(
            Server::from_env(&env(&[("UWSGI_ASYNCIO", "many")])).unwrap(),
            DEFAULT
        );
        let (cmd, warnings) = command(Server::Granian, &[("UWSGI_ASYNCIO", "100")], 2);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(
            cmd.contains("--interface asgi --backpressure 100 "),
            "{cmd}"
        );
        assert!(!cmd.contains("--blocking-threads"), "{cmd}");
        let (cmd, warnings) = command(Server::Granian, &[("UWSGI_ASYNCIO", "yes")], 2);
        assert!(cmd.contains("--interface wsgi"), "{cmd}");
        assert!(warnings[0].contains("UWSGI_ASYNCIO='yes'"), "{warnings:?}");
        let (_, warnings) = command(Server::Gunicorn, &[("UWSGI_ASYNCIO", "10")], 2);
        assert!(warnings[0].contains("granian serves ASGI"), "{warnings:?}");
    }

    #[test]
    fn the_server_is_chosen_by_piku_wsgi_server() {
        let pick = |v: &str| Server::from_env(&env(&[("PIKU_WSGI_SERVER", v)]));
        assert_eq!(pick("waitress").unwrap(), Server::Waitress);
        assert_eq!(pick("gunicorn").unwrap(), Server::Gunicorn);
        let err = pick("mod_wsgi").unwrap_err().to_string();
        assert!(err.contains("uwsgi, granian, gunicorn, waitress"), "{err}");
        let (cmd, _) = command(Server::Waitress, &[], 2);
        assert_eq!(
            cmd,
            "/p/deps/x/bin/waitress-serve --listen=\"$BIND_ADDRESS:$PORT\" --threads=4 app:app"
        );
        let mut warnings = Vec::new();
        let cmd = Server::Gunicorn.command_for(
            Path::new("/my piku/x"),
            "app:app",
            &EnvMap::new(),
            2,
            &mut warnings,
        );
        assert!(cmd.starts_with("'/my piku/x/bin/gunicorn' "), "{cmd}");
    }
}
