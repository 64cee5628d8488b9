//! A front on a TCP port in front of fixed instances, to load it with `wrk` while tuning
//! (`piku-bench front` and `wsgi` measure the real path; this one is for quick iterations):
//!
//! ```text
//! cargo run --release -p hyper-proxy-glue --example relay -- 127.0.0.1:8080 4 127.0.0.1:9001 ...
//! ```
//!
//! Arguments: the address to listen on (`unix:PATH` for a Unix socket, as nginx reaches the
//! front), the most requests in flight per instance, then one address per instance. `RUST_LOG`
//! picks the log level (e.g. `hyper_proxy_glue=trace`). For instruction counts per request,
//! run it under `valgrind --tool=callgrind` and load it with a fixed number of requests.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use hyper_proxy_glue::{Backend, Front, FrontConfig};
use tokio::net::{TcpListener, UnixListener};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .context("usage: relay LISTEN MAX_IN_FLIGHT INSTANCE...")?;
    let max_in_flight: usize = args
        .next()
        .context("MAX_IN_FLIGHT")?
        .parse()
        .context("MAX_IN_FLIGHT")?;
    let backends = args
        .enumerate()
        .map(|(n, addr)| {
            let addr: SocketAddr = addr.parse().context("INSTANCE")?;
            Ok(Backend::new(format!("web.{}", n + 1), addr))
        })
        .collect::<Result<Vec<_>>>()?;
    // As the supervisor runs it: two worker threads (`RELAY_WORKERS` to try another count).
    let workers = std::env::var("RELAY_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let front = Front::new(FrontConfig {
            max_in_flight_per_backend: max_in_flight,
            ..FrontConfig::default()
        });
        front.set_backends(backends);
        match listen.strip_prefix("unix:") {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                front.serve_unix(UnixListener::bind(path)?).await;
            }
            None => {
                let listen: SocketAddr = listen.parse().context("LISTEN")?;
                front.serve_tcp(TcpListener::bind(listen).await?).await;
            }
        }
        Ok(())
    })
}
