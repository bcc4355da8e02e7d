//! The client socket as the relay reads and writes it: more of a request before a deadline,
//! answers that must be taken within the idle timeout, and noticing the client leave while a
//! pod works.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::HEAD_BYTES;

/// The relay gave up on the connection (the client left, or a pod failed mid-answer).
#[derive(Debug)]
pub(super) struct Abort;

/// How a read of more request bytes ended.
pub(super) enum Read {
    Data,
    Eof,
    Error,
    Timeout,
}

/// Reads more of a request into `inb` before `deadline`.
pub(super) async fn read_until(
    client: &mut TcpStream,
    inb: &mut Vec<u8>,
    deadline: Instant,
) -> Read {
    if inb.capacity() == inb.len() {
        inb.reserve(HEAD_BYTES);
    }
    let room = inb.capacity() - inb.len();
    // The first read of a request usually finds its whole head waiting: no timer for it.
    let n = match client.try_read_buf(inb) {
        Ok(n) => n,
        Err(_) => match tokio::time::timeout_at(deadline, client.read_buf(inb)).await {
            Err(_) => return Read::Timeout,
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Read::Error,
        },
    };
    if n == 0 {
        return Read::Eof;
    }
    if n < room {
        drained(client);
    }
    Read::Data
}

/// Marks the client socket as read to its end, after a read that returned less than it had
/// room for (a short read empties the receive queue: nginx relies on the same). The reactor
/// otherwise keeps the socket "readable" until a read fails with `WouldBlock`, and waiting for
/// the client to leave ([`closed`]) would need a system call per request to find out. Safe
/// within the task's poll that read: data arriving afterwards is a new epoll edge, reported at
/// the runtime's next turn.
fn drained(client: &TcpStream) {
    let _ = client.try_io(Interest::READABLE, || {
        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
    });
}

/// Completes when the client closes or resets the connection; when it sends more instead (a
/// pipelined request), never: that data stays where it is for the next request. The close comes
/// as an epoll event (EPOLLRDHUP) once the request was read to the end ([`drained`]); readiness
/// left over from a read that filled the buffer would say "readable" forever and hide it (the
/// client's socket then sat in CLOSE-WAIT while the pod worked), so then a peek looks.
pub(super) async fn closed(client: &TcpStream) {
    match client.ready(Interest::READABLE).await {
        Ok(r) if r.is_read_closed() || r.is_error() => return,
        Err(_) => return,
        Ok(_) => {}
    }
    let mut b = [0u8; 1];
    match client.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Writes to a client that must take the bytes within `idle` (a client that stops reading
/// would otherwise hold the pod slot).
pub(super) async fn write_idle(
    client: &mut TcpStream,
    data: &[u8],
    idle: Duration,
) -> Result<(), Abort> {
    // Nearly always the socket takes it all at once: no timer for that.
    let sent = match client.try_write(data) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(Abort),
    };
    if sent == data.len() {
        return Ok(());
    }
    match tokio::time::timeout(idle, client.write_all(&data[sent..])).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Abort),
    }
}
