//! Component tests of the relay (the HTTP/1.1 fast lane): what it forwards and answers is what
//! the hyper path forwards and answers, it hands a connection to hyper when a request needs it,
//! and it frames answer bodies correctly whatever framing the pod used.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroscale_activator::server::ServerOptions;
use zeroscale_activator::table::NoWake;

const LONG: Duration = Duration::from_secs(300);

async fn activator(relay: bool) -> Activator {
    Activator::start(
        Arc::new(NoWake),
        ServerOptions {
            relay,
            ..ServerOptions::default()
        },
    )
    .await
}

/// One answer as the client got it (body de-chunked).
#[derive(Debug)]
struct Answer1 {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer1 {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Reads `n` answers from `s`, in order. Panics after 10 s or if the connection closes early.
async fn read_answers(s: &mut TcpStream, n: usize) -> Vec<Answer1> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while out.len() < n {
            if let Some((a, used)) = parse_answer(&buf) {
                buf.drain(..used);
                out.push(a);
                continue;
            }
            let mut chunk = [0u8; 8192];
            let got = s.read(&mut chunk).await.expect("read");
            assert!(got > 0, "closed after {} answers: {:?}", out.len(), buf);
            buf.extend_from_slice(&chunk[..got]);
        }
    })
    .await
    .expect("answers within 10 s");
    out
}

fn parse_answer(buf: &[u8]) -> Option<(Answer1, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let httparse::Status::Complete(head) = r.parse(buf).expect("a valid answer head") else {
        return None;
    };
    let headers: BTreeMap<String, String> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).to_string(),
            )
        })
        .collect();
    let status = r.code.unwrap();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        let mut body = Vec::new();
        let mut i = head;
        loop {
            let line_end = buf[i..].windows(2).position(|w| w == b"\r\n")? + i;
            let size_str = std::str::from_utf8(&buf[i..line_end]).unwrap();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap(), 16).unwrap();
            i = line_end + 2;
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    let e = buf[i..].windows(2).position(|w| w == b"\r\n")? + i;
                    let empty = e == i;
                    i = e + 2;
                    if empty {
                        return Some((
                            Answer1 {
                                status,
                                headers,
                                body,
                            },
                            i,
                        ));
                    }
                }
            }
            if buf.len() < i + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[i..i + size]);
            i += size + 2;
        }
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    if buf.len() < head + len {
        return None;
    }
    Some((
        Answer1 {
            status,
            headers,
            body: buf[head..head + len].to_vec(),
        },
        head + len,
    ))
}

#[tokio::test]
async fn the_relay_and_hyper_forward_alike() {
    for relay in [true, false] {
        let act = activator(relay).await;
        let k = act.model("ns", "m", 0, 10, LONG);
        let b = Backend::start("pod").await;
        act.table.set_endpoints(&k, vec![b.endpoint()]);
        let mut s = TcpStream::connect(act.addr).await.unwrap();
        // Two pipelined requests in one write.
        s.write_all(
            b"POST /v1/models/m:predict?q=1 HTTP/1.1\r\nHost: x\r\n\
              Connection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
              X-Forwarded-For: 203.0.113.9\r\nX-Kept: yes\r\nContent-Length: 11\r\n\r\n\
              hello world\
              GET /v1/models/m HTTP/1.1\r\nHost: m.ns\r\n\r\n",
        )
        .await
        .unwrap();
        let answers = read_answers(&mut s, 2).await;
        let (a, b2) = (&answers[0], &answers[1]);
        assert_eq!((a.status, b2.status), (200, 200), "relay={relay}");
        let j = a.json();
        assert_eq!(j["body"], "hello world", "relay={relay}");
        assert_eq!(j["path"], "/v1/models/m:predict?q=1", "relay={relay}");
        let h = &j["headers"];
        for gone in ["x-secret", "keep-alive", "connection"] {
            assert!(
                h.get(gone).is_none(),
                "relay={relay}: {gone} reached the pod: {h}"
            );
        }
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["content-length"], "11");
        assert_eq!(a.headers["x-served-by"], "pod");
        assert!(
            !a.headers.contains_key("keep-alive"),
            "relay={relay}: the pod's keep-alive header passed"
        );
        assert_eq!(b2.json()["path"], "/v1/models/m");
        assert_eq!(b2.json()["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(b.count.load(Ordering::SeqCst), 2);
        let model = act.table.get(&k).unwrap();
        assert_eq!(model.gate().metrics().answered_count(200), 2);
        until("nothing held", || {
            model.gate().metrics().integral.current() == 0
        })
        .await;
        let relayed = act.metrics.relayed_count();
        assert_eq!(relayed, if relay { 2 } else { 0 }, "relay={relay}");
    }
}

#[tokio::test]
async fn the_relay_hands_a_connection_to_hyper_when_a_request_needs_it() {
    let act = activator(true).await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let b = Backend::start("pod").await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let mut s = TcpStream::connect(act.addr).await.unwrap();
    let body = br#"{"model":"m","messages":[]}"#;
    let requests: [Vec<u8>; 3] = [
        // By path: relayed.
        b"GET /v1/models/m HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        // By body: hyper's path, which keeps the connection from here on.
        [
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body.to_vec(),
        ]
        .concat(),
        b"GET /v1/models/m HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
    ];
    for (i, r) in requests.iter().enumerate() {
        s.write_all(r).await.unwrap();
        let a = read_answers(&mut s, 1).await;
        assert_eq!(a[0].status, 200, "request {i}: {:?}", a[0]);
        assert_eq!(a[0].headers["x-served-by"], "pod");
    }
    assert_eq!(act.metrics.relayed_count(), 1);
    assert_eq!(b.count.load(Ordering::SeqCst), 3);

    // A request no pod has room for goes to hyper's queue: concurrency 1, the pod busy.
    let k2 = act.model("ns", "busy", 1, 10, LONG);
    let b2 = Backend::start("busy").await;
    b2.set_delay(Duration::from_millis(300));
    act.table.set_endpoints(&k2, vec![b2.endpoint()]);
    let mut c1 = TcpStream::connect(act.addr).await.unwrap();
    let mut c2 = TcpStream::connect(act.addr).await.unwrap();
    c1.write_all(b"GET /v1/models/busy HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    until("the first holds the pod", || {
        b2.current.load(Ordering::SeqCst) == 1
    })
    .await;
    c2.write_all(b"GET /v1/models/busy HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (a1, a2) = tokio::join!(read_answers(&mut c1, 1), read_answers(&mut c2, 1));
    assert_eq!((a1[0].status, a2[0].status), (200, 200));
    assert_eq!(b2.max.load(Ordering::SeqCst), 1, "the limit held");
    assert_eq!(
        act.metrics.relayed_count(),
        2,
        "the second waited in hyper's path"
    );
}

/// A pod that answers every request on a connection with `answer`; with `close`, it closes the
/// connection after the first. Counts connections.
async fn raw_pod(answer: &'static [u8], close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        if s.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn answer_bodies_are_framed_whatever_the_pod_used() {
    let act = activator(true).await;
    // Chunked with a trailer: copied as it is; the end is found, so the pod connection is reused.
    let (chunked, chunked_conns) = raw_pod(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        false,
    )
    .await;
    // No length: the body ends when the pod closes; the client gets it chunked, keep-alive.
    let (until_close, _) = raw_pod(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nConnection: close\r\n\r\nstream until close",
        true,
    )
    .await;
    let k1 = act.model("ns", "chunked", 0, 10, LONG);
    act.table.set_endpoints(&k1, vec![ep(chunked, true)]);
    let k2 = act.model("ns", "close", 0, 10, LONG);
    act.table.set_endpoints(&k2, vec![ep(until_close, true)]);

    let mut s = TcpStream::connect(act.addr).await.unwrap();
    for path in ["chunked", "close", "chunked", "close"] {
        s.write_all(format!("GET /v1/models/{path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let a = read_answers(&mut s, 1).await;
        assert_eq!(a[0].status, 200);
        assert_eq!(a[0].headers["transfer-encoding"], "chunked", "{path}");
        assert!(!a[0].headers.contains_key("connection"), "{path}: {a:?}");
        let want: &[u8] = if path == "chunked" {
            b"hello world"
        } else {
            b"stream until close"
        };
        assert_eq!(a[0].body, want, "{path}");
    }
    assert_eq!(
        chunked_conns.load(Ordering::SeqCst),
        1,
        "pod connection reused"
    );
    assert_eq!(act.metrics.relayed_count(), 4);
}

#[tokio::test]
async fn a_pod_that_closes_mid_body_cuts_the_client_connection() {
    let act = activator(true).await;
    let (pod, _) = raw_pod(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly seven",
        true,
    )
    .await;
    let k = act.model("ns", "m", 0, 10, LONG);
    act.table.set_endpoints(&k, vec![ep(pod, true)]);
    let mut s = TcpStream::connect(act.addr).await.unwrap();
    s.write_all(b"GET /v1/models/m HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed within 10 s")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("only seven"), "{got}");
    let model = act.table.get(&k).unwrap();
    until("nothing held", || {
        model.gate().metrics().integral.current() == 0 && model.gate().in_flight()[0].1 == 0
    })
    .await;
}

#[tokio::test]
async fn a_slow_head_times_out_and_a_slow_body_is_left_to_hyper() {
    let act = Activator::start(
        Arc::new(NoWake),
        ServerOptions {
            header_read_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    )
    .await;
    let k = act.model("ns", "m", 0, 10, LONG);
    let b = Backend::start("pod").await;
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    // A keep-alive connection: the first request relayed, the next head never completes.
    let mut s = TcpStream::connect(act.addr).await.unwrap();
    s.write_all(b"GET /v1/models/m HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/mod")
        .await
        .unwrap();
    assert_eq!(read_answers(&mut s, 1).await[0].status, 200);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed after the header timeout")
        .unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert_eq!(act.metrics.rejected_count("header_timeout"), 1);

    // A body slower than the timeout: hyper streams it, nothing is lost.
    let mut s = TcpStream::connect(act.addr).await.unwrap();
    s.write_all(b"POST /v1/models/m HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"world").await.unwrap();
    let a = read_answers(&mut s, 1).await;
    assert_eq!(a[0].status, 200);
    assert_eq!(a[0].json()["body"], "helloworld");
    assert_eq!(act.metrics.relayed_count(), 1);
}
