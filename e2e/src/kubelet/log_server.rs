//! The kubelet's container log endpoint, `GET /containerLogs/{namespace}/
//! {pod}/{container}[?follow=true]`, served over TLS on loopback at the port
//! the Node advertises, so the apiserver's `pods/log` (`kubectl logs`, the
//! CLI's `logs`) reads a process pod's output as it would a real kubelet's.
//! `follow=true` streams what the process appends until the client goes.
//! The apiserver does not verify a kubelet's serving certificate unless told
//! to, so a self-signed one serves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use super::{KubeletError, Shared};

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// The most a request's head may be.
const MAX_HEAD: usize = 16 * 1024;

pub(crate) struct LogServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    port: u16,
}

impl LogServer {
    /// Binds a free loopback port with a fresh self-signed certificate.
    pub(crate) async fn bind() -> Result<Self, KubeletError> {
        let error =
            |what: &str, e: &dyn std::fmt::Display| KubeletError::LogServer(format!("{what}: {e}"));
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(|e| error("the serving certificate", &e))?;
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| error("TLS versions", &e))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| error("the TLS configuration", &e))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| error("binding a loopback port", &e))?;
        let port = listener
            .local_addr()
            .map_err(|e| error("the bound port", &e))?
            .port();
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            port,
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Answers requests until the kubelet's tasks are aborted.
    pub(crate) async fn serve(self, shared: Arc<Shared>) {
        loop {
            let Ok((tcp, _)) = self.listener.accept().await else {
                continue;
            };
            let acceptor = self.acceptor.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    answer(tls, &shared).await;
                }
            });
        }
    }
}

/// What a request asks for: `(namespace, pod, follow)`.
fn parse_request(head: &str) -> Option<(String, String, bool)> {
    let target = head
        .lines()
        .next()?
        .strip_prefix("GET ")?
        .split(' ')
        .next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut parts = path.strip_prefix("/containerLogs/")?.split('/');
    let (namespace, pod, _container) = (parts.next()?, parts.next()?, parts.next()?);
    let follow = query
        .split('&')
        .any(|q| q == "follow=true" || q == "follow=1");
    Some((namespace.to_owned(), pod.to_owned(), follow))
}

async fn answer<S>(mut stream: S, shared: &Shared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let request = parse_request(&String::from_utf8_lossy(&head));
    let path = request
        .as_ref()
        .and_then(|(namespace, pod, _)| shared.log_path_of(namespace, pod));
    let (Some((_, _, follow)), Some(path)) = (request, path) else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    let header = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n";
    if stream.write_all(header).await.is_err() {
        return;
    }
    let _ = copy_log(&mut stream, &path, follow).await;
    let _ = stream.shutdown().await;
}

/// Writes the log file, then (when following) what is appended to it,
/// until a write fails because the client went away.
async fn copy_log<S>(stream: &mut S, path: &Path, follow: bool) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let mut file = tokio::fs::File::open(path).await?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let n = file.read(&mut buf).await?;
        if n > 0 {
            stream.write_all(&buf[..n]).await?;
            stream.flush().await?;
            offset += n as u64;
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_log_request_names_namespace_pod_and_follow() {
        let head = "GET /containerLogs/ns/w-1/worker?follow=true&timestamps=false HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(head), Some(("ns".into(), "w-1".into(), true)));
        let head = "GET /containerLogs/ns/w-1/worker HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_request(head),
            Some(("ns".into(), "w-1".into(), false))
        );
        assert_eq!(
            parse_request("GET /exec/ns/w-1/worker HTTP/1.1\r\n\r\n"),
            None
        );
        assert_eq!(
            parse_request("POST /containerLogs/ns/w/c HTTP/1.1\r\n\r\n"),
            None
        );
    }
}
