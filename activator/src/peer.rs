//! The client end of a connection, as pods are told about it.

use std::net::SocketAddr;

use http::HeaderValue;

/// The client end of a connection, as the proxy tells pods about it (`X-Forwarded-For`);
/// made once per connection.
#[derive(Clone, Debug)]
pub struct Peer {
    addr: SocketAddr,
    ip: HeaderValue,
}

impl Peer {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip }
    }

    /// The client's IP address as text.
    pub fn ip_bytes(&self) -> &[u8] {
        self.ip.as_bytes()
    }

    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
