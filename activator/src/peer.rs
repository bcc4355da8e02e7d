//! A client connection as the request paths see it: who the client is (as pods are told) and
//! which proxy worker serves it (whose pod connections it uses).

use std::net::SocketAddr;

use http::HeaderValue;

use crate::upstream::WorkerId;

/// The client end of a connection, as the proxy tells pods about it (`X-Forwarded-For`), and
/// the worker serving it; made once per connection.
#[derive(Clone, Debug)]
pub struct Peer {
    addr: SocketAddr,
    ip: HeaderValue,
    worker: WorkerId,
}

impl Peer {
    /// The client at `addr`, served by proxy worker `worker`.
    pub fn new(addr: SocketAddr, worker: WorkerId) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip, worker }
    }

    /// The client's IP address as text.
    pub fn ip_bytes(&self) -> &[u8] {
        self.ip.as_bytes()
    }

    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy worker serving this connection: its pod connections come from that worker's
    /// pools.
    pub fn worker(&self) -> WorkerId {
        self.worker
    }
}
