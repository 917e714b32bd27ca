//! A stand-in container image for the process kubelet's tests, driven by its
//! environment:
//!
//! * `FIXTURE_EXIT_CODE`: exit at once with this code (a crash-looping container).
//! * `WRITE_FILE`: write this file first, and fail (exit 2, saying why) when
//!   that is refused (an image that writes where its security context forbids).
//! * `LISTEN_ADDR` (`ip:port`): serve HTTP there: `/readyz` and `/healthz` answer
//!   200, `/env` answers the environment as sorted `NAME=value` lines, anything
//!   else 404.
//! * `SIGTERM_MARKER`: a file to write on SIGTERM, so a test can tell a graceful
//!   stop from a SIGKILL.
//! * `SIGTERM_DELAY_MS`: how long to keep running after SIGTERM (default 0), to
//!   test grace periods.

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("probe-fixture: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, String> {
    if let Ok(code) = std::env::var("FIXTURE_EXIT_CODE") {
        let code: u8 = code
            .parse()
            .map_err(|e| format!("FIXTURE_EXIT_CODE={code:?}: {e}"))?;
        println!("probe-fixture: exiting with {code} as told");
        return Ok(ExitCode::from(code));
    }
    if let Ok(path) = std::env::var("WRITE_FILE") {
        std::fs::write(&path, "state\n").map_err(|e| format!("cannot write {path}: {e}"))?;
        println!("probe-fixture: wrote {path}");
    }
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    if let Ok(addr) = std::env::var("LISTEN_ADDR") {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        println!("probe-fixture: listening on {addr}");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
    }
    terminate.recv().await;
    println!("probe-fixture: got SIGTERM");
    if let Ok(path) = std::env::var("SIGTERM_MARKER") {
        std::fs::write(&path, "SIGTERM\n").map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    let delay = match std::env::var("SIGTERM_DELAY_MS") {
        Ok(ms) => ms
            .parse()
            .map_err(|e| format!("SIGTERM_DELAY_MS={ms:?}: {e}"))?,
        Err(_) => 0,
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    println!("probe-fixture: exiting after SIGTERM");
    Ok(ExitCode::SUCCESS)
}

async fn serve(mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the request head; a probe's is small.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/readyz" | "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/env" => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            ("200 OK", vars.join("\n") + "\n")
        }
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}
