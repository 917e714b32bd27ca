//! A read-only HTTP server of one directory on the machine's loopback: how
//! media made on this machine reaches an assembly worker in a real container,
//! which sees none of the machine's files (its `file://` is its own `/tmp`).
//! Exposed to pods with [`crate::node::Node::expose_loopback_port`].
//!
//! GET and HEAD of plain files only; one thread per connection, each answer
//! closes its connection. Enough for a worker fetching a few inputs.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// Longest request head read before the connection is dropped.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The running server; stops accepting when dropped.
#[derive(Debug)]
pub struct MediaServer {
    port: u16,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
}

impl MediaServer {
    /// Serves the files under `dir` at `http://127.0.0.1:<port>/<path>`.
    pub fn start(dir: &Path) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let accepting = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let root = dir.to_path_buf();
        thread::Builder::new()
            .name(format!("drover-media-{port}"))
            .spawn(move || {
                for stream in accepting.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let root = root.clone();
                    let _ = thread::Builder::new()
                        .name("drover-media-conn".into())
                        .spawn(move || {
                            let _ = answer(stream, &root);
                        });
                }
            })?;
        Ok(Self {
            port,
            listener,
            stop,
        })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for MediaServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on a socket this value owns only wakes its accept loop.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Get {
        path: PathBuf,
        head: bool,
    },
    /// Not a GET or HEAD.
    Method,
    /// A path outside the directory, or not a path.
    BadPath,
}

/// Reads the request line: `GET /a/b.wav HTTP/1.1` -> `a/b.wav`, refusing
/// `..` and anything else that could leave the directory.
fn parse_request_line(line: &str) -> Request {
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Request::BadPath;
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::Method,
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let Some(relative) = path.strip_prefix('/') else {
        return Request::BadPath;
    };
    let relative = Path::new(relative);
    if relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Request::BadPath;
    }
    Request::Get {
        path: relative.to_path_buf(),
        head,
    }
}

fn answer(stream: TcpStream, root: &Path) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // The rest of the head, up to its blank line.
    let mut read = line.len();
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header)?;
        read += n;
        if n == 0 || header == "\r\n" || header == "\n" || read > MAX_HEAD_BYTES {
            break;
        }
    }
    let mut stream = stream;
    match parse_request_line(&line) {
        Request::Get { path, head } => match File::open(root.join(&path)) {
            Ok(mut file) if file.metadata()?.is_file() => {
                let length = file.metadata()?.len();
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
                )?;
                if !head {
                    io::copy(&mut file, &mut stream)?;
                }
                Ok(())
            }
            _ => status(&mut stream, "404 Not Found"),
        },
        Request::Method => status(&mut stream, "405 Method Not Allowed"),
        Request::BadPath => status(&mut stream, "400 Bad Request"),
    }
}

fn status(stream: &mut TcpStream, status: &str) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_file_path_is_served_relative_to_the_directory() {
        assert_eq!(
            parse_request_line("GET /media/intro.wav?x=1 HTTP/1.1\r\n"),
            Request::Get {
                path: PathBuf::from("media/intro.wav"),
                head: false
            }
        );
        assert!(matches!(
            parse_request_line("HEAD /a HTTP/1.1"),
            Request::Get { head: true, .. }
        ));
    }

    #[test]
    fn nothing_outside_the_directory_is_served() {
        for line in [
            "GET /../etc/passwd HTTP/1.1",
            "GET /a/../../b HTTP/1.1",
            "GET / HTTP/1.1",
            "GET relative HTTP/1.1",
            "GET //etc/passwd HTTP/1.1",
            "",
        ] {
            assert_eq!(parse_request_line(line), Request::BadPath, "{line}");
        }
        assert_eq!(parse_request_line("PUT /a HTTP/1.1"), Request::Method);
    }

    #[test]
    fn it_serves_a_file_and_refuses_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("drover-media-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("a.wav"), b"RIFF1234").expect("file");
        let server = MediaServer::start(&dir).expect("server");
        let get = |path: &str| {
            let mut stream =
                TcpStream::connect((Ipv4Addr::LOCALHOST, server.port())).expect("connect");
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("read");
            answer
        };
        let found = get("/a.wav");
        assert!(found.starts_with("HTTP/1.1 200 OK"), "{found}");
        assert!(found.ends_with("\r\n\r\nRIFF1234"), "{found}");
        assert!(get("/b.wav").starts_with("HTTP/1.1 404"));
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
