//! Differential test of the two request paths: generated request heads (duplicated, empty,
//! non-ASCII and Connection-listed headers, bodies or none) and generated pod answers go through
//! an activator with the relay on and one with it off, to the same recording pod. The pod must
//! receive the same head and body either way, and the client the same answer (status, headers,
//! body). Heads compare as HTTP says they mean: names case-insensitive, each name's lines in
//! order; framing headers are compared as the body they frame.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroscale_activator::server::ServerOptions;
use zeroscale_activator::table::NoWake;

/// A head as HTTP means it: the start line and, per lowercased name, its values in order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    start: String,
    headers: BTreeMap<String, Vec<Vec<u8>>>,
    body: Vec<u8>,
}

/// Headers that frame a message on one hop; compared through the body they frame.
const FRAMING: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

fn normalize(start: String, headers: &[httparse::Header<'_>], body: Vec<u8>) -> Seen {
    let mut map: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        if !FRAMING.contains(&name.as_str()) {
            map.entry(name).or_default().push(h.value.to_vec());
        }
    }
    Seen {
        start,
        headers: map,
        body,
    }
}

/// Reads one message body framed by `headers` from `buf` + `s`.
async fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    headers: &[(String, Vec<u8>)],
    no_body: bool,
) -> Vec<u8> {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if no_body {
        return Vec::new();
    }
    if let Some(cl) = get("content-length") {
        let n: usize = String::from_utf8_lossy(&cl).trim().parse().unwrap_or(0);
        while buf.len() < n {
            if s.read_buf(buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
        let n = n.min(buf.len());
        return buf.drain(..n).collect();
    }
    if get("transfer-encoding").is_some() {
        // Our answers carry no trailers: the body ends at the zero chunk.
        let mut out = Vec::new();
        loop {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                if s.read_buf(buf).await.unwrap_or(0) == 0 {
                    return out;
                }
            }
            let i = buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..i])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap_or(0);
            buf.drain(..i + 2);
            while buf.len() < size + 2 {
                if s.read_buf(buf).await.unwrap_or(0) == 0 {
                    return out;
                }
            }
            out.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                return out;
            }
        }
    }
    Vec::new()
}

/// A pod that records every request it gets and answers with the answer set for the case.
struct Pod {
    addr: SocketAddr,
    seen: Mutex<Vec<Seen>>,
    answer: Mutex<Vec<u8>>,
}

impl Pod {
    async fn start() -> Arc<Pod> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pod = Arc::new(Pod {
            addr: l.local_addr().unwrap(),
            seen: Mutex::new(Vec::new()),
            answer: Mutex::new(Vec::new()),
        });
        let p = pod.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                tokio::spawn(p.clone().serve(s));
            }
        });
        pod
    }

    async fn serve(self: Arc<Self>, mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let (seen, len, headers) = loop {
                let mut h = [httparse::EMPTY_HEADER; 128];
                let mut req = httparse::Request::new(&mut h);
                if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                    let start = format!("{} {}", req.method.unwrap(), req.path.unwrap());
                    let owned: Vec<(String, Vec<u8>)> = req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                        .collect();
                    break (normalize(start, req.headers, Vec::new()), n, owned);
                }
                if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            };
            buf.drain(..len);
            let body = read_body(&mut s, &mut buf, &headers, false).await;
            self.seen.lock().unwrap().push(Seen { body, ..seen });
            let answer = self.answer.lock().unwrap().clone();
            if s.write_all(&answer).await.is_err() {
                return;
            }
        }
    }
}

/// Sends `req` on a new connection and reads one answer, normalized.
async fn exchange(addr: SocketAddr, req: &[u8], head_method: bool) -> Seen {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut h = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut h);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
                let code = resp.code.unwrap();
                let start = format!("{code}");
                let owned: Vec<(String, Vec<u8>)> = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect();
                let mut seen = normalize(start, resp.headers, Vec::new());
                buf.drain(..n);
                let no_body = head_method || code == 204 || code == 304;
                seen.body = read_body(&mut s, &mut buf, &owned, no_body).await;
                return seen;
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return Seen {
                    start: format!("closed: {:?}", String::from_utf8_lossy(&buf)),
                    headers: BTreeMap::new(),
                    body: Vec::new(),
                };
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10s")
}

/// One generated header line.
fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop::sample::select(vec![
        "x-a",
        "X-A",
        "x-b",
        "accept",
        "user-agent",
        "connection",
        "Connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-forwarded-for",
        "X-Forwarded-For",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
        "expect-ct",
    ]);
    let token = prop::sample::select(vec![
        "keep-alive",
        "x-a",
        "X-B",
        "te",
        "x-forwarded-for",
        "x-forwarded-proto",
        "user-agent",
        "",
    ]);
    let value = prop_oneof![
        Just(b"".to_vec()),
        Just(b"1".to_vec()),
        Just(b"203.0.113.9".to_vec()),
        Just(b" 198.51.100.2 , 192.0.2.1 ".to_vec()),
        Just(b"https".to_vec()),
        Just("caf\u{e9}".as_bytes().to_vec()),
        Just(vec![b'v', 0xff, b'x']),
        "[a-zA-Z0-9 ;=/.-]{0,20}".prop_map(String::into_bytes),
    ];
    (name, prop::collection::vec(token, 1..4), value).prop_map(|(name, tokens, value)| {
        if name.eq_ignore_ascii_case("connection") {
            (name.to_string(), tokens.join(", ").into_bytes())
        } else {
            (name.to_string(), value)
        }
    })
}

#[derive(Clone, Debug)]
struct Case {
    method: &'static str,
    path: &'static str,
    hosts: usize,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
    answer_headers: Vec<(String, Vec<u8>)>,
    answer_body: Vec<u8>,
    chunked: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"]),
        prop::sample::select(vec![
            "/v1/models/m:predict",
            "/v2/models/m/infer?x=1",
            "/anything",
        ]),
        prop::sample::select(vec![1usize, 1, 1, 1, 0, 2]),
        prop::collection::vec(header(), 0..8),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::sample::select(vec![200u16, 201, 204, 404, 500]),
        prop::collection::vec(header(), 0..6),
        "[ -~]{0,80}".prop_map(String::into_bytes),
        any::<bool>(),
    )
        .prop_map(
            |(method, path, hosts, headers, body, status, answer_headers, answer_body, chunked)| {
                Case {
                    method,
                    path,
                    hosts,
                    headers,
                    body,
                    status,
                    answer_headers,
                    answer_body,
                    chunked,
                }
            },
        )
}

impl Case {
    fn request(&self) -> Vec<u8> {
        let mut r = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        for _ in 0..self.hosts {
            r.extend_from_slice(b"Host: m.ns\r\n");
        }
        for (n, v) in &self.headers {
            r.extend_from_slice(n.as_bytes());
            r.extend_from_slice(b": ");
            r.extend_from_slice(v);
            r.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() {
            r.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(&self.body);
        r
    }

    fn answer(&self) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 {} X\r\n", self.status).into_bytes();
        for (n, v) in &self.answer_headers {
            r.extend_from_slice(n.as_bytes());
            r.extend_from_slice(b": ");
            r.extend_from_slice(v);
            r.extend_from_slice(b"\r\n");
        }
        let body: &[u8] = if matches!(self.status, 204) || self.method == "HEAD" {
            b""
        } else {
            &self.answer_body
        };
        if self.chunked && self.status != 204 {
            r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            if self.method != "HEAD" {
                if !body.is_empty() {
                    r.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                    r.extend_from_slice(body);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            if self.status != 204 {
                r.extend_from_slice(
                    format!("Content-Length: {}\r\n", self.answer_body.len()).as_bytes(),
                );
            }
            r.extend_from_slice(b"\r\n");
            r.extend_from_slice(body);
        }
        r
    }
}

#[test]
fn both_paths_forward_and_answer_alike() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pod, on, off) = rt.block_on(async {
        let pod = Pod::start().await;
        let mut acts = Vec::new();
        for relay in [true, false] {
            let act = Activator::start(
                Arc::new(NoWake),
                ServerOptions {
                    relay,
                    ..ServerOptions::default()
                },
            )
            .await;
            let k = act.model("ns", "m", 0, 10, Duration::from_secs(60));
            act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
            acts.push(act);
        }
        let off = acts.pop().unwrap();
        let on = acts.pop().unwrap();
        (pod, on, off)
    });
    let cases = std::env::var("ZEROSCALE_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |c| {
            rt.block_on(async {
                *pod.answer.lock().unwrap() = c.answer();
                let req = c.request();
                let head = c.method == "HEAD";
                pod.seen.lock().unwrap().clear();
                let a_on = exchange(on.addr, &req, head).await;
                let seen_on: Vec<Seen> = std::mem::take(&mut *pod.seen.lock().unwrap());
                let a_off = exchange(off.addr, &req, head).await;
                let seen_off: Vec<Seen> = std::mem::take(&mut *pod.seen.lock().unwrap());
                prop_assert_eq!(
                    &seen_on,
                    &seen_off,
                    "the pod got different requests for {:?}",
                    String::from_utf8_lossy(&req)
                );
                prop_assert_eq!(
                    &a_on,
                    &a_off,
                    "the client got different answers for {:?} / {:?}",
                    String::from_utf8_lossy(&req),
                    String::from_utf8_lossy(&c.answer())
                );
                // A refused request never reaches the pod; an accepted one does, once.
                let refused = a_on.start.starts_with('4') && seen_on.is_empty();
                prop_assert!(refused || seen_on.len() == 1, "{:?}", seen_on);
                Ok(())
            })
        })
        .unwrap();
}
