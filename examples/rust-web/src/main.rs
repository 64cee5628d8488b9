//! A web app on the standard library's TcpListener, parsing requests with `httparse`.
//! piku builds it with `cargo install` and runs the binary, which is on PATH by its name.

use std::io::{Read, Write};
use std::net::TcpListener;

fn version() -> String {
    if let Ok(v) = std::env::var("VERSION") {
        return v;
    }
    std::fs::read_to_string("VERSION")
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() -> std::io::Result<()> {
    let addr = format!(
        "{}:{}",
        std::env::var("BIND_ADDRESS").unwrap_or_else(|_| "127.0.0.1".into()),
        std::env::var("PORT").unwrap_or_else(|_| "5000".into())
    );
    let listener = TcpListener::bind(&addr)?;
    eprintln!("listening on {addr}");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap_or(0);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let path = match request.parse(&buf[..n]) {
            Ok(_) => request.path.unwrap_or("/").to_owned(),
            Err(_) => "/".to_owned(),
        };
        let body = format!(
            "hello from {} rust {}\n",
            std::env::var("APP").unwrap_or_default(),
            version()
        );
        let status = if path == "/" { "200 OK" } else { "404 Not Found" };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}
