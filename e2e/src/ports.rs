//! Free TCP ports on the loopback interface for the harness's servers.

use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// Returns `count` distinct ports that were free a moment ago.
///
/// The kernel picks them (bind to port 0); all listeners are held until every
/// port is chosen so the same port is never returned twice. Another process can
/// still grab a port between this call and the server binding it; that race is
/// inherent to handing a port number to a separate process and is rare enough on
/// a test machine to accept.
pub fn free_loopback_ports(count: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub async fn accepts_connections(port: u16) -> bool {
    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .is_ok()
}
