//! Adversarial component tests: hostile or broken clients and pods, on both request paths (the
//! relay and hyper's). Every scenario is an `async fn scenario(relay: bool)` run twice, as
//! `relay_path::scenario` and `hyper_path::scenario`, so a failure names the path.
//!
//! Clients write raw bytes to a `TcpStream` and read raw answers (no client library to
//! normalise anything); misbehaving pods are raw TCP listeners. Every wait is bounded.
//!
//! The contract: every error the activator answers itself is JSON
//! `{"error":{"code","type","message"}}`; a request it rejects never reaches a pod; it never
//! dials anything that is not an endpoint of a model; a 502 does not name the pod's address;
//! slow or silent peers on either side are cut off by the model's `response_timeout` /
//! `idle_timeout` and the server's `header_read_timeout` / `keep_alive_timeout`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroscale_activator::Limits;
use zeroscale_activator::server::ServerOptions;
use zeroscale_activator::table::NoWake;

const LONG: Duration = Duration::from_secs(300);
/// How long a client waits for an answer that must come.
const ANSWER: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Raw client side

/// One answer as the client got it (body de-chunked), with the bytes it came in.
#[derive(Debug)]
struct Answer1 {
    status: u16,
    /// Lower-cased names, in order, duplicates kept.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    raw: Vec<u8>,
}

impl Answer1 {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).to_string()
    }
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 600 {
        format!("{}...({} bytes)", &s[..600], b.len())
    } else {
        s.to_string()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one answer from the start of `buf`. `eof`: the connection has closed, so an answer
/// framed by close is complete. `Ok(None)`: more bytes needed.
fn parse_answer(buf: &[u8], eof: bool) -> Result<Option<(Answer1, usize)>, String> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut hs);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not a valid answer head ({e}): {}", lossy(buf))),
    };
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).to_string(),
            )
        })
        .collect();
    let status = r.code.unwrap_or(0);
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let done = |body: Vec<u8>, used: usize| {
        Ok(Some((
            Answer1 {
                status,
                headers: headers.clone(),
                body,
                raw: buf[..used].to_vec(),
            },
            used,
        )))
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return done(Vec::new(), head);
    }
    if let Some(te) = get("transfer-encoding") {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(format!("answer framed with transfer-encoding {te:?}"));
        }
        let mut body = Vec::new();
        let mut i = head;
        loop {
            let Some(line_end) = find(&buf[i..], b"\r\n").map(|p| p + i) else {
                return Ok(None);
            };
            let size_str = String::from_utf8_lossy(&buf[i..line_end]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                .map_err(|_| format!("bad chunk size {size_str:?}: {}", lossy(buf)))?;
            i = line_end + 2;
            if size == 0 {
                loop {
                    let Some(e) = find(&buf[i..], b"\r\n").map(|p| p + i) else {
                        return Ok(None);
                    };
                    let empty = e == i;
                    i = e + 2;
                    if empty {
                        return done(body, i);
                    }
                }
            }
            if buf.len() < i + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&buf[i..i + size]);
            i += size + 2;
        }
    }
    match get("content-length") {
        Some(v) => {
            let len: usize = v
                .trim()
                .parse()
                .map_err(|_| format!("bad content-length {v:?}"))?;
            if buf.len() < head + len {
                return Ok(None);
            }
            done(buf[head..head + len].to_vec(), head + len)
        }
        // Framed by close.
        None if eof => done(buf[head..].to_vec(), buf.len()),
        None => Ok(None),
    }
}

/// What a client saw next.
#[derive(Debug)]
enum Got {
    Answer(Answer1),
    /// EOF or a reset, with the bytes that came before it (not a complete answer).
    Closed(Vec<u8>),
    /// Nothing complete within the time, with what came.
    TimedOut(Vec<u8>),
    /// Bytes that are not an HTTP answer.
    Garbage(String),
}

/// A raw client connection.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::time::timeout(ANSWER, TcpStream::connect(addr))
            .await
            .expect("connect within 5 s")
            .expect("connect");
        Client {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes`; a peer that already closed is not an error here (its answer is read next).
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// The next answer, or how the connection ended, within `dur`.
    async fn next(&mut self, dur: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match parse_answer(&self.buf, self.eof) {
                Ok(Some((a, used))) => {
                    self.buf.drain(..used);
                    return Got::Answer(a);
                }
                Ok(None) if self.eof => return Got::Closed(std::mem::take(&mut self.buf)),
                Ok(None) => {}
                Err(e) => return Got::Garbage(e),
            }
            let mut chunk = vec![0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return Got::TimedOut(self.buf.clone()),
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next answer, which must come within 5 s.
    async fn answer(&mut self) -> Result<Answer1, String> {
        match self.next(ANSWER).await {
            Got::Answer(a) => Ok(a),
            Got::Closed(b) => Err(format!("closed without an answer after {}", lossy(&b))),
            Got::TimedOut(b) => Err(format!("no answer within 5 s; got {}", lossy(&b))),
            Got::Garbage(e) => Err(e),
        }
    }

    /// Everything until the connection closes; Err when it is still open after `dur`.
    async fn until_eof(&mut self, dur: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut out = std::mem::take(&mut self.buf);
        if self.eof {
            return Ok(out);
        }
        loop {
            let mut chunk = vec![0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return Err(out),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.eof = true;
                    return Ok(out);
                }
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// One request on a new connection, one answer.
async fn exchange(addr: SocketAddr, req: &[u8]) -> Result<Answer1, String> {
    let mut c = Client::connect(addr).await;
    c.send(req).await;
    c.answer().await
}

/// An error the activator answered itself: one of `statuses`, JSON
/// `{"error":{"code":<status>,"type":<one of types, if given>,"message":<string>}}`.
fn check_error(a: &Answer1, statuses: &[u16], types: Option<&[&str]>) -> Result<(), String> {
    if !statuses.contains(&a.status) {
        return Err(format!(
            "status {} (want one of {statuses:?}): {}",
            a.status,
            lossy(&a.raw)
        ));
    }
    let ct = a.header("content-type").unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(format!(
            "content-type {ct:?}, want application/json: {}",
            lossy(&a.raw)
        ));
    }
    let j: serde_json::Value = serde_json::from_slice(&a.body)
        .map_err(|e| format!("body is not JSON ({e}): {}", lossy(&a.raw)))?;
    let e = &j["error"];
    if e["code"].as_u64() != Some(a.status.into()) {
        return Err(format!("error.code is not {}: {j}", a.status));
    }
    let Some(ty) = e["type"].as_str() else {
        return Err(format!("error.type is not a string: {j}"));
    };
    if let Some(types) = types
        && !types.contains(&ty)
    {
        return Err(format!("error.type {ty:?}, want one of {types:?}: {j}"));
    }
    if !e["message"].is_string() {
        return Err(format!("error.message is not a string: {j}"));
    }
    Ok(())
}

/// Fails the test with every collected failure, one a line.
fn report(what: &str, fails: Vec<String>) {
    assert!(
        fails.is_empty(),
        "{what}: {} failed:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

/// Polls `f` every 5 ms for at most `dur`.
async fn wait_for(dur: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + dur;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw pods

/// How a raw pod treats each request head it reads.
#[derive(Clone)]
enum Mode {
    /// Answers 200 with the request line as the body (so an answer names its request).
    Echo,
    /// Writes these bytes and keeps the connection open.
    Fixed(Arc<Vec<u8>>),
    /// Reads forever, never answers.
    Silent,
    /// Closes the connection once it has read a head, without answering.
    CloseAfterHead,
    /// Echoes, but answers the pod's very first request only after this long, with the body
    /// `late`.
    LateFirst(Duration),
}

/// A pod on a raw socket that records what reaches it.
struct RawPod {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    heads: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    /// When each of its connections read EOF (or failed).
    eofs: Arc<Mutex<Vec<Instant>>>,
}

impl RawPod {
    async fn start(mode: Mode) -> RawPod {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pod = RawPod {
            addr: l.local_addr().unwrap(),
            conns: Arc::default(),
            heads: Arc::default(),
            received: Arc::default(),
            eofs: Arc::default(),
        };
        let (conns, heads, received, eofs) = (
            pod.conns.clone(),
            pod.heads.clone(),
            pod.received.clone(),
            pod.eofs.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (mode, heads, received, eofs) =
                    (mode.clone(), heads.clone(), received.clone(), eofs.clone());
                tokio::spawn(async move {
                    let mut got: Vec<u8> = Vec::new();
                    // The body of the last head, still to skip.
                    let mut skip = Skip::None;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        skip = skip.apply(&mut got);
                        while matches!(skip, Skip::None) {
                            let Some(end) = find(&got, b"\r\n\r\n") else {
                                break;
                            };
                            let head: Vec<u8> = got.drain(..end + 4).collect();
                            heads.fetch_add(1, Ordering::SeqCst);
                            skip = Skip::of(&head).apply(&mut got);
                            let answer = match &mode {
                                Mode::Echo => echo(&head),
                                Mode::LateFirst(d) if heads.load(Ordering::SeqCst) == 1 => {
                                    tokio::time::sleep(*d).await;
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate".to_vec()
                                }
                                Mode::LateFirst(_) => echo(&head),
                                Mode::Fixed(a) => a.to_vec(),
                                Mode::Silent => Vec::new(),
                                Mode::CloseAfterHead => return,
                            };
                            if s.write_all(&answer).await.is_err() {
                                eofs.lock().unwrap().push(Instant::now());
                                return;
                            }
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                eofs.lock().unwrap().push(Instant::now());
                                return;
                            }
                            Ok(n) => {
                                received.lock().unwrap().extend_from_slice(&buf[..n]);
                                got.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                });
            }
        });
        pod
    }

    async fn fixed(answer: &[u8]) -> RawPod {
        RawPod::start(Mode::Fixed(Arc::new(answer.to_vec()))).await
    }

    /// (connections, heads, bytes) so far.
    fn seen(&self) -> (usize, usize, usize) {
        (
            self.conns.load(Ordering::SeqCst),
            self.heads.load(Ordering::SeqCst),
            self.received.lock().unwrap().len(),
        )
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

/// A 200 whose body is the request line of `head`.
fn echo(head: &[u8]) -> Vec<u8> {
    let line = &head[..find(head, b"\r\n").unwrap_or(0)];
    let mut a = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        line.len()
    )
    .into_bytes();
    a.extend_from_slice(line);
    a
}

/// What of a request body a raw pod still has to read past before the next head.
#[derive(Clone, Copy, Debug)]
enum Skip {
    None,
    Bytes(usize),
    /// Up to the last chunk (the tests send only `0\r\n\r\n` chunked bodies).
    Chunked,
}

impl Skip {
    fn of(head: &[u8]) -> Skip {
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let field = |name: &str| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        if field("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
            return Skip::Chunked;
        }
        match field("content-length").and_then(|v| v.parse().ok()) {
            Some(n) if n > 0 => Skip::Bytes(n),
            _ => Skip::None,
        }
    }

    /// Drops what `got` holds of the body; what is left to skip.
    fn apply(self, got: &mut Vec<u8>) -> Skip {
        match self {
            Skip::None => Skip::None,
            Skip::Bytes(n) => {
                let k = n.min(got.len());
                got.drain(..k);
                if k == n {
                    Skip::None
                } else {
                    Skip::Bytes(n - k)
                }
            }
            Skip::Chunked => match find(got, b"0\r\n\r\n") {
                Some(i) => {
                    got.drain(..i + 5);
                    Skip::None
                }
                None => Skip::Chunked,
            },
        }
    }
}

/// A listener that is nobody's endpoint; counts who dials it.
async fn decoy() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((s, _)) = l.accept().await else {
                return;
            };
            n2.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, n)
}

// ---------------------------------------------------------------------------------------------
// The activator

async fn activator(opts: ServerOptions) -> Activator {
    Activator::start(Arc::new(NoWake), opts).await
}

fn opts(relay: bool) -> ServerOptions {
    ServerOptions {
        relay,
        ..ServerOptions::default()
    }
}

fn limits(cc: u32, f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::with_queue(cc, 10, 1 << 20, Duration::from_secs(10));
    f(&mut l);
    l
}

/// An activator with model `m` (namespace `ns`) on an echoing raw pod, checked with one request.
struct Fixture {
    act: Activator,
    pod: RawPod,
}

async fn fixture(opts: ServerOptions) -> Fixture {
    let act = activator(opts).await;
    let pod = RawPod::start(Mode::Echo).await;
    let key = act.model("ns", "m", 0, 10, LONG);
    act.table.set_endpoints(&key, vec![ep(pod.addr, true)]);
    let a = exchange(
        act.addr,
        b"GET /v1/models/m?control=1 HTTP/1.1\r\nHost: m.ns\r\n\r\n",
    )
    .await
    .expect("the control request is answered");
    assert_eq!(a.status, 200, "control request: {}", a.text());
    assert_eq!(
        a.body,
        b"GET /v1/models/m?control=1 HTTP/1.1",
        "{}",
        a.text()
    );
    Fixture { act, pod }
}

impl Fixture {
    /// `req` on a new connection is answered by the activator with a JSON error (one of
    /// `statuses`, `types`) and nothing reaches the pod.
    async fn rejects(
        &self,
        what: &str,
        req: &[u8],
        statuses: &[u16],
        types: Option<&[&str]>,
    ) -> Result<(), String> {
        let before = self.pod.seen();
        let answer = exchange(self.act.addr, req).await;
        // Anything forwarded would be at the pod by now; give it a moment all the same.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let after = self.pod.seen();
        let leaked = if after != before {
            let got = self.pod.received();
            format!(
                "; the pod saw it (conns, heads, bytes) {before:?} -> {after:?}: {:?}",
                lossy(&got[before.2.min(got.len())..])
            )
        } else {
            String::new()
        };
        match answer.and_then(|a| check_error(&a, statuses, types)) {
            Ok(()) if leaked.is_empty() => Ok(()),
            Ok(()) => Err(format!("{what}: answered as required{leaked}")),
            Err(e) => Err(format!("{what}: {e}{leaked}")),
        }
    }
}

/// Sum of the samples of `name` whose labels include all of `labels`; None when there is none.
fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, lbls) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| lbls.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            let v: f64 = value.parse().unwrap_or(0.0);
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

/// Waits (at most 3 s) until `name{labels}` sums to at least `min`.
async fn metric_reaches(
    act: &Activator,
    name: &str,
    labels: &[(&str, &str)],
    min: f64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = metrics_text(act).await;
        let v = sample_sum(&text, name, labels);
        if v.is_some_and(|v| v >= min) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let related: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains(name.trim_end_matches("_total")))
                .collect();
            return Err(format!(
                "{name}{labels:?} is {v:?}, want >= {min}; related samples: {related:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Request side: rejected before any pod sees them

const GET_M: &str = "GET /v1/models/m HTTP/1.1\r\n";
const POST_M: &str = "POST /v1/models/m:predict HTTP/1.1\r\n";

/// Case 1: An HTTP/1.1 request needs exactly one Host.
async fn host_missing_or_repeated_is_400(relay: bool) {
    let f = fixture(opts(relay)).await;
    let mut fails = Vec::new();
    let cases: [(&str, String, Option<&[&str]>); 3] = [
        (
            "no Host",
            format!("{GET_M}\r\n"),
            Some(&["malformed_http"][..]),
        ),
        (
            "two equal Hosts",
            format!("{GET_M}Host: m.ns\r\nHost: m.ns\r\n\r\n"),
            None,
        ),
        (
            "two different Hosts",
            format!("{GET_M}Host: m.ns\r\nHost: other.ns\r\n\r\n"),
            None,
        ),
    ];
    for (what, req, types) in cases {
        if let Err(e) = f.rejects(what, req.as_bytes(), &[400], types).await {
            fails.push(e);
        }
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 2: A Connection header naming a framing or routing header is refused, and the classic
/// smuggle (the Content-Length dropped as hop-by-hop, the body read as a second request) never
/// reaches the pod.
async fn connection_naming_framing_headers_is_400(relay: bool) {
    let f = fixture(opts(relay)).await;
    let mut fails = Vec::new();
    for token in [
        "content-length",
        "Content-Length",
        "transfer-encoding",
        "host",
        "keep-alive, content-length",
    ] {
        let req =
            format!("{POST_M}Host: m.ns\r\nConnection: {token}\r\nContent-Length: 5\r\n\r\nhello");
        if let Err(e) = f
            .rejects(
                &format!("Connection: {token}"),
                req.as_bytes(),
                &[400],
                None,
            )
            .await
        {
            fails.push(e);
        }
    }

    // The smuggle, on a connection of its own: one 400, nothing more, nothing at the pod.
    let inner = "GET /v1/models/m?smuggled=1 HTTP/1.1\r\nHost: m.ns\r\n\r\n";
    let req = format!(
        "{POST_M}Host: m.ns\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let before = f.pod.seen();
    let mut c = Client::connect(f.act.addr).await;
    c.send(req.as_bytes()).await;
    match c.answer().await {
        Ok(a) => {
            if let Err(e) = check_error(&a, &[400], None) {
                fails.push(format!("smuggle: {e}"));
            }
            // Whatever else comes on this connection within 1 s must not be an answer.
            match c.next(Duration::from_secs(1)).await {
                Got::Answer(b) => fails.push(format!(
                    "smuggle: a second answer on the same connection: {}",
                    b.text()
                )),
                Got::Garbage(e) => fails.push(format!("smuggle: after the 400: {e}")),
                Got::Closed(_) | Got::TimedOut(_) => {}
            }
        }
        Err(e) => fails.push(format!("smuggle: {e}")),
    }
    drop(c);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let got = f.pod.received();
    if f.pod.seen() != before {
        fails.push(format!(
            "smuggle: the pod saw {:?}",
            lossy(&got[before.2.min(got.len())..])
        ));
    }
    if find(&got, b"smuggled=1").is_some() {
        fails.push("smuggle: the smuggled request reached the pod".into());
    }
    // A normal request on a new connection gets its own answer.
    match exchange(
        f.act.addr,
        b"GET /v1/models/m?follow=1 HTTP/1.1\r\nHost: m.ns\r\n\r\n",
    )
    .await
    {
        Ok(a) if a.status == 200 && a.body == b"GET /v1/models/m?follow=1 HTTP/1.1" => {}
        Ok(a) => fails.push(format!("follow-up: not its own answer: {}", a.text())),
        Err(e) => fails.push(format!("follow-up: {e}")),
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 3: Ambiguous body framing: CL with TE, repeated or malformed CL, a TE not ending in chunked.
async fn ambiguous_body_framing_is_rejected(relay: bool) {
    let f = fixture(opts(relay)).await;
    let mut fails = Vec::new();
    let h = "Host: m.ns\r\n";
    let mut cases: Vec<(String, String, &[u16])> = vec![
        (
            "CL + TE".into(),
            format!("{POST_M}{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "TE + CL".into(),
            format!("{POST_M}{h}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "two equal CL".into(),
            format!("{POST_M}{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            &[400],
        ),
        (
            "two different CL".into(),
            format!("{POST_M}{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            &[400],
        ),
        (
            "Transfer-Encoding : chunked".into(),
            format!("{POST_M}{h}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
            &[400],
        ),
    ];
    for (v, body) in [
        ("1,1", "x"),
        ("+5", "hello"),
        ("-1", ""),
        ("0x10", "0123456789abcdef"),
    ] {
        cases.push((
            format!("Content-Length: {v}"),
            format!("{POST_M}{h}Content-Length: {v}\r\n\r\n{body}"),
            &[400],
        ));
    }
    for te in ["gzip", "chunked, gzip", "xchunked", "identity"] {
        cases.push((
            format!("Transfer-Encoding: {te}"),
            format!("{POST_M}{h}Transfer-Encoding: {te}\r\n\r\n0\r\n\r\n"),
            &[400, 501],
        ));
    }
    for (what, req, statuses) in cases {
        if let Err(e) = f.rejects(&what, req.as_bytes(), statuses, None).await {
            fails.push(e);
        }
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 4: Header lines no parser may guess at.
async fn malformed_header_lines_are_400(relay: bool) {
    let f = fixture(opts(relay)).await;
    let mut fails = Vec::new();
    let h = GET_M.as_bytes();
    let cases: [(&str, &[u8]); 8] = [
        (
            "obs-fold (space)",
            b"Host: m.ns\r\nX-A: 1\r\n folded\r\n\r\n",
        ),
        (
            "obs-fold (tab)",
            b"Host: m.ns\r\nX-A: 1\r\n\tfolded\r\n\r\n",
        ),
        ("bare CR in a value", b"Host: m.ns\r\nX-A: a\rb\r\n\r\n"),
        ("NUL in a value", b"Host: m.ns\r\nX-A: a\0b\r\n\r\n"),
        ("\\x01 in a value", b"Host: m.ns\r\nX-A: a\x01b\r\n\r\n"),
        ("ESC in a value", b"Host: m.ns\r\nX-A: a\x1bb\r\n\r\n"),
        ("space in a name", b"Host: m.ns\r\nBad Header: x\r\n\r\n"),
        ("non-ASCII name", b"Host: m.ns\r\nX-\xc3\x84: 1\r\n\r\n"),
    ];
    for (what, rest) in cases {
        let req = [h, rest].concat();
        if let Err(e) = f.rejects(what, &req, &[400], None).await {
            fails.push(e);
        }
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 5: A head over `max_header_bytes` is 431 JSON.
async fn oversized_head_is_431(relay: bool) {
    let f = fixture(ServerOptions {
        relay,
        max_header_bytes: 16 * 1024,
        ..ServerOptions::default()
    })
    .await;
    let mut fails = Vec::new();
    let one_big = format!(
        "{GET_M}Host: m.ns\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    let many: String = (0..90)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(200)))
        .collect();
    let many = format!("{GET_M}Host: m.ns\r\n{many}\r\n");
    for (what, req) in [
        ("one 17 KiB header", one_big),
        ("90 headers of 200 bytes", many),
    ] {
        if let Err(e) = f.rejects(what, req.as_bytes(), &[431], None).await {
            fails.push(e);
        }
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 6: CONNECT is refused and nothing is dialled.
async fn connect_is_405_and_dials_nothing(relay: bool) {
    let f = fixture(opts(relay)).await;
    let (decoy, dialled) = decoy().await;
    let mut fails = Vec::new();
    let cases = [
        (
            "CONNECT to a loopback port",
            format!("CONNECT {decoy} HTTP/1.1\r\nHost: m.ns\r\n\r\n"),
        ),
        (
            "CONNECT to the model's host",
            "CONNECT m.ns:80 HTTP/1.1\r\nHost: m.ns\r\n\r\n".to_string(),
        ),
    ];
    for (what, req) in cases {
        if let Err(e) = f
            .rejects(what, req.as_bytes(), &[405], Some(&["method_not_allowed"]))
            .await
        {
            fails.push(e);
        }
    }
    let n = dialled.load(Ordering::SeqCst);
    if n != 0 {
        fails.push(format!("the CONNECT target was dialled {n} times"));
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 7: The activator is not an open proxy: a target that is no model's endpoint is 404 and is
/// never dialled.
async fn not_an_open_proxy(relay: bool) {
    let f = fixture(opts(relay)).await;
    let (decoy, dialled) = decoy().await;
    let mut fails = Vec::new();
    let cases = [
        (
            "absolute-form to a loopback port",
            format!("GET http://{decoy}/ HTTP/1.1\r\nHost: {decoy}\r\n\r\n"),
        ),
        (
            "Host of a loopback port",
            format!("GET / HTTP/1.1\r\nHost: {decoy}\r\n\r\n"),
        ),
        (
            "Host of a loopback port, unknown path",
            format!("GET /admin/secret HTTP/1.1\r\nHost: {decoy}\r\n\r\n"),
        ),
    ];
    for (what, req) in cases {
        if let Err(e) = f.rejects(what, req.as_bytes(), &[404], None).await {
            fails.push(e);
        }
    }
    // Absolute-form naming the loopback port with a model's path: whatever the answer, the
    // loopback port is not dialled, and an error is JSON.
    match exchange(
        f.act.addr,
        format!("GET http://{decoy}/v1/models/m HTTP/1.1\r\nHost: {decoy}\r\n\r\n").as_bytes(),
    )
    .await
    {
        Ok(a) if a.status == 200 => {}
        Ok(a) => {
            if let Err(e) = check_error(&a, &[a.status], None) {
                fails.push(format!("absolute-form with a model path: {e}"));
            }
        }
        Err(e) => fails.push(format!("absolute-form with a model path: {e}")),
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let n = dialled.load(Ordering::SeqCst);
    if n != 0 {
        fails.push(format!("the loopback port was dialled {n} times"));
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 8: Routing by body needs a JSON object with a string `model`.
async fn body_routing_needs_a_string_model(relay: bool) {
    let f = fixture(opts(relay)).await;
    let mut fails = Vec::new();
    let req = |body: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: zeroscale-activator\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    for body in [
        r#"["m"]"#,
        r#""m""#,
        r#"{"model": ["m"]}"#,
        r#"{"model": 7}"#,
    ] {
        if let Err(e) = f
            .rejects(
                &format!("body {body}"),
                req(body).as_bytes(),
                &[400],
                Some(&["invalid_json", "missing_model"]),
            )
            .await
        {
            fails.push(e);
        }
    }
    let before = f.pod.seen();
    match exchange(f.act.addr, req(r#"{"model":"m"}"#).as_bytes()).await {
        Ok(a) if a.status == 200 && a.body == b"POST /v1/chat/completions HTTP/1.1" => {}
        Ok(a) => fails.push(format!(r#"{{"model":"m"}} not routed: {}"#, a.text())),
        Err(e) => fails.push(format!(r#"{{"model":"m"}}: {e}"#)),
    }
    if f.pod.seen().1 != before.1 + 1 {
        fails.push(format!(
            r#"{{"model":"m"}}: the pod saw {:?} -> {:?}"#,
            before,
            f.pod.seen()
        ));
    }
    report(&format!("relay={relay}"), fails);
}

// ---------------------------------------------------------------------------------------------
// Slow and vanishing clients

/// Case 9: A request body that stops arriving is cut off by the model's `idle_timeout`, its pod slot
/// freed and the timeout counted.
async fn slow_request_body_is_cut_and_frees_the_slot(relay: bool) {
    let act = activator(opts(relay)).await;
    let b = Backend::start("pod").await;
    let k = act.model_with(
        "ns",
        "m",
        limits(1, |l| l.idle_timeout = Duration::from_millis(300)),
    );
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let mut fails = Vec::new();

    let mut c = Client::connect(act.addr).await;
    c.send(format!("{POST_M}Host: m.ns\r\nContent-Length: 100\r\n\r\n0123456789").as_bytes())
        .await;
    let t0 = Instant::now();
    match c.next(Duration::from_secs(4)).await {
        Got::Closed(_) => {}
        Got::Answer(a) => {
            if let Err(e) = check_error(&a, &[408, 400], None) {
                fails.push(format!("slow body: {e}"));
            }
        }
        Got::TimedOut(got) => fails.push(format!(
            "slow body: the connection is still open after 4 s (got {})",
            lossy(&got)
        )),
        Got::Garbage(e) => fails.push(format!("slow body: {e}")),
    }
    let took = t0.elapsed();
    drop(c);

    // The slot is free: a cc=1 model serves the next request.
    match exchange(act.addr, format!("{GET_M}Host: m.ns\r\n\r\n").as_bytes()).await {
        Ok(a) if a.status == 200 => {}
        Ok(a) => fails.push(format!("next request: {}", a.text())),
        Err(e) => fails.push(format!("next request: {e}")),
    }
    if let Err(e) = metric_reaches(
        &act,
        "zeroscale_activator_timeouts_total",
        &[("kind", "idle")],
        1.0,
    )
    .await
    {
        fails.push(e);
    }
    report(&format!("relay={relay} (cut after {took:?})"), fails);
}

/// Case 10: An idle keep-alive connection waits up to `keep_alive_timeout`; a head that has begun must
/// complete within `header_read_timeout`.
async fn idle_keep_alive_is_not_a_slow_head(relay: bool) {
    let act = activator(ServerOptions {
        relay,
        header_read_timeout: Duration::from_millis(300),
        keep_alive_timeout: Duration::from_secs(3),
        ..ServerOptions::default()
    })
    .await;
    let b = Backend::start("pod").await;
    let k = act.model("ns", "m", 0, 10, LONG);
    act.table.set_endpoints(&k, vec![b.endpoint()]);
    let mut fails = Vec::new();
    let header_timeouts = |text: &str| {
        sample_sum(
            text,
            "zeroscale_activator_rejected_requests_total",
            &[("reason", "header_timeout")],
        )
        .unwrap_or(0.0)
    };

    let mut c = Client::connect(act.addr).await;
    for i in 0..2 {
        if i == 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        c.send(format!("{GET_M}Host: m.ns\r\n\r\n").as_bytes())
            .await;
        match c.answer().await {
            Ok(a) if a.status == 200 => {}
            Ok(a) => fails.push(format!("request {i}: {}", a.text())),
            Err(e) => fails.push(format!("request {i} (after 1 s idle: {}): {e}", i == 1)),
        }
    }
    drop(c);
    let n = header_timeouts(&metrics_text(&act).await);
    if n != 0.0 {
        fails.push(format!(
            "an idle keep-alive counted as header_timeout ({n})"
        ));
    }

    // Half a head, then nothing.
    let mut c = Client::connect(act.addr).await;
    c.send(b"GET / HTTP/1.1\r\nHo").await;
    let t0 = Instant::now();
    match c.until_eof(Duration::from_secs(3)).await {
        Ok(got) => {
            let took = t0.elapsed();
            if took > Duration::from_millis(1500) {
                fails.push(format!("half a head: closed only after {took:?}"));
            }
            if !got.is_empty() {
                // An answer, if any, is a JSON 408.
                match parse_answer(&got, true) {
                    Ok(Some((a, _))) => {
                        if let Err(e) = check_error(&a, &[408], None) {
                            fails.push(format!("half a head: {e}"));
                        }
                    }
                    Ok(None) => fails.push(format!("half a head: cut answer {}", lossy(&got))),
                    Err(e) => fails.push(format!("half a head: {e}")),
                }
            }
        }
        Err(got) => fails.push(format!(
            "half a head: still open after 3 s (got {})",
            lossy(&got)
        )),
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut n = header_timeouts(&metrics_text(&act).await);
    while n != 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        n = header_timeouts(&metrics_text(&act).await);
    }
    if n != 1.0 {
        fails.push(format!("header_timeout counted {n} times, want 1"));
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 11: A client that goes away while its pod works: the pod connection is closed at once, the
/// slot freed and the departure counted.
async fn client_gone_closes_the_pod_connection(relay: bool) {
    let act = activator(opts(relay)).await;
    let pod = RawPod::start(Mode::Silent).await;
    let k = act.model("ns", "m", 1, 10, LONG);
    act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
    let model = act.table.get(&k).unwrap();
    let mut fails = Vec::new();

    let mut c = Client::connect(act.addr).await;
    c.send(format!("{GET_M}Host: m.ns\r\n\r\n").as_bytes())
        .await;
    assert!(
        wait_for(ANSWER, || pod.heads.load(Ordering::SeqCst) == 1).await,
        "relay={relay}: the request reached the pod"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    let closed = Instant::now();
    if wait_for(Duration::from_secs(3), || {
        !pod.eofs.lock().unwrap().is_empty()
    })
    .await
    {
        let after = pod.eofs.lock().unwrap()[0].saturating_duration_since(closed);
        if after > Duration::from_millis(1500) {
            fails.push(format!(
                "the pod connection closed only {after:?} after the client"
            ));
        }
    } else {
        fails.push("the pod connection is still open 3 s after the client left".into());
    }
    if !wait_for(Duration::from_secs(2), || {
        model.gate().in_flight().iter().all(|(_, n)| *n == 0)
    })
    .await
    {
        fails.push(format!(
            "the pod slot is still held: {:?}",
            model.gate().in_flight()
        ));
    }
    if let Err(e) = metric_reaches(&act, "zeroscale_activator_client_gone_total", &[], 1.0).await {
        fails.push(e);
    }
    report(&format!("relay={relay}"), fails);
}

// ---------------------------------------------------------------------------------------------
// Response side: misbehaving pods

/// Case 12: A pod answer whose Connection header names Content-Length keeps its framing, and the
/// client connection stays usable.
async fn answer_connection_naming_content_length_keeps_framing(relay: bool) {
    let act = activator(opts(relay)).await;
    let mut fails = Vec::new();
    // The contract's case, and the same rule for a chunked answer naming Transfer-Encoding.
    let cases: [(&str, &[u8]); 2] = [
        (
            "cl",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nhello",
        ),
        (
            "te",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (name, answer) in cases {
        let pod = RawPod::fixed(answer).await;
        let k = act.model("ns", name, 0, 10, LONG);
        act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
        let mut c = Client::connect(act.addr).await;
        for i in 0..2 {
            c.send(format!("GET /v1/models/{name} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await;
            match c.answer().await {
                Ok(a) => {
                    let framed = a.header("content-length") == Some("5")
                        || a.header("transfer-encoding") == Some("chunked");
                    if a.status != 200 || a.body != b"hello" || !framed {
                        fails.push(format!("{name}: answer {i}: {}", a.text()));
                    }
                }
                Err(e) => {
                    fails.push(format!("{name}: answer {i}: {e}"));
                    break;
                }
            }
        }
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 13: A pod that never starts its answer: 504 `response_timeout` after the model's
/// `response_timeout`, counted.
async fn silent_pod_is_504_after_response_timeout(relay: bool) {
    let act = activator(opts(relay)).await;
    let pod = RawPod::start(Mode::Silent).await;
    let k = act.model_with(
        "ns",
        "m",
        limits(0, |l| l.response_timeout = Duration::from_millis(300)),
    );
    act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
    let mut fails = Vec::new();
    let mut c = Client::connect(act.addr).await;
    c.send(format!("{GET_M}Host: m.ns\r\n\r\n").as_bytes())
        .await;
    let t0 = Instant::now();
    match c.next(Duration::from_secs(4)).await {
        Got::Answer(a) => {
            if let Err(e) = check_error(&a, &[504], Some(&["response_timeout"])) {
                fails.push(e);
            }
            let took = t0.elapsed();
            if took > Duration::from_secs(2) {
                fails.push(format!("answered only after {took:?}"));
            }
        }
        other => fails.push(format!("no 504 within 4 s: {other:?}")),
    }
    if let Err(e) = metric_reaches(
        &act,
        "zeroscale_activator_timeouts_total",
        &[("kind", "response")],
        1.0,
    )
    .await
    {
        fails.push(e);
    }
    report(&format!("relay={relay}"), fails);
}

/// 13b (beyond the contract's list, same rule). After a 504 the pod connection is not reused:
/// the pod's late answer to the timed-out request must never be handed to the next request.
async fn a_late_answer_after_504_never_reaches_the_next_request(relay: bool) {
    let act = activator(opts(relay)).await;
    let pod = RawPod::start(Mode::LateFirst(Duration::from_millis(800))).await;
    let k = act.model_with(
        "ns",
        "m",
        limits(0, |l| l.response_timeout = Duration::from_millis(300)),
    );
    act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
    let mut fails = Vec::new();
    match exchange(act.addr, format!("{GET_M}Host: m.ns\r\n\r\n").as_bytes()).await {
        Ok(a) => {
            if let Err(e) = check_error(&a, &[504], Some(&["response_timeout"])) {
                fails.push(format!("first: {e}"));
            }
        }
        Err(e) => fails.push(format!("first: {e}")),
    }
    // Let the late answer arrive wherever the first request's pod connection now is.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut c = Client::connect(act.addr).await;
    for i in 0..2 {
        c.send(format!("GET /v1/models/m?next={i} HTTP/1.1\r\nHost: m.ns\r\n\r\n").as_bytes())
            .await;
        match c.answer().await {
            Ok(a)
                if a.status == 200
                    && a.body == format!("GET /v1/models/m?next={i} HTTP/1.1").as_bytes() => {}
            Ok(a) => fails.push(format!("next {i}: not its own answer: {}", a.text())),
            Err(e) => fails.push(format!("next {i}: {e}")),
        }
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 14: A pod that stalls mid-body: after the model's `idle_timeout` the client connection is
/// closed with the body incomplete (never passed off as whole).
async fn stalled_answer_body_cuts_the_client(relay: bool) {
    let act = activator(opts(relay)).await;
    let pod = RawPod::fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let k = act.model_with(
        "ns",
        "m",
        limits(0, |l| l.idle_timeout = Duration::from_millis(300)),
    );
    act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
    let mut fails = Vec::new();
    let mut c = Client::connect(act.addr).await;
    c.send(format!("{GET_M}Host: m.ns\r\n\r\n").as_bytes())
        .await;
    let t0 = Instant::now();
    match c.until_eof(Duration::from_secs(4)).await {
        Ok(got) => {
            let took = t0.elapsed();
            if took > Duration::from_millis(2500) {
                fails.push(format!("closed only after {took:?}"));
            }
            match parse_answer(&got, false) {
                Ok(Some((a, _))) => {
                    fails.push(format!("a complete answer for a cut body: {}", a.text()))
                }
                Ok(None) => {
                    if !got.starts_with(b"HTTP/1.1 200") {
                        fails.push(format!("not the pod's head: {}", lossy(&got)));
                    }
                }
                Err(e) => fails.push(e),
            }
        }
        Err(got) => fails.push(format!(
            "the client connection is still open after 4 s (got {})",
            lossy(&got)
        )),
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 15: A pod that answers garbage, hangs up without answering, or sends an answer head over
/// 64 KiB: 502 JSON that does not name the pod's address.
async fn broken_pod_answers_are_502_without_its_address(relay: bool) {
    let mut fails = Vec::new();
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(70_000)
    );
    let cases = [
        (
            "garbage",
            Mode::Fixed(Arc::new(b"NOT HTTP\r\n\r\n".to_vec())),
        ),
        ("hangs up after the request", Mode::CloseAfterHead),
        (
            "a 70,000-byte answer header",
            Mode::Fixed(Arc::new(big.into_bytes())),
        ),
    ];
    for (what, mode) in cases {
        // A new activator each time: the pod connection is a fresh one, not a pooled one.
        let act = activator(opts(relay)).await;
        let pod = RawPod::start(mode).await;
        let k = act.model("ns", "m", 0, 10, LONG);
        act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
        match exchange(act.addr, format!("{GET_M}Host: m.ns\r\n\r\n").as_bytes()).await {
            Ok(a) => {
                if let Err(e) = check_error(&a, &[502], None) {
                    fails.push(format!("{what}: {e}"));
                }
                let text = a.text();
                let ip_port = pod.addr.to_string();
                let port = pod.addr.port().to_string();
                if text.contains(&ip_port) || String::from_utf8_lossy(&a.body).contains(&port) {
                    fails.push(format!(
                        "{what}: the answer names the pod {ip_port}: {text}"
                    ));
                }
            }
            Err(e) => fails.push(format!("{what}: {e}")),
        }
    }
    report(&format!("relay={relay}"), fails);
}

/// Case 16: The activator adds no Date of its own to a pod's answer.
async fn no_date_is_added_to_a_pod_answer(relay: bool) {
    let act = activator(opts(relay)).await;
    let pod = RawPod::fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let k = act.model("ns", "m", 0, 10, LONG);
    act.table.set_endpoints(&k, vec![ep(pod.addr, true)]);
    let a = exchange(act.addr, format!("{GET_M}Host: m.ns\r\n\r\n").as_bytes())
        .await
        .unwrap_or_else(|e| panic!("relay={relay}: {e}"));
    assert_eq!(a.status, 200, "relay={relay}: {}", a.text());
    assert_eq!(a.body, b"ok", "relay={relay}");
    assert!(
        a.header("date").is_none(),
        "relay={relay}: a Date was added: {}",
        a.text()
    );
}

// ---------------------------------------------------------------------------------------------

/// Each scenario as `relay_path::name` and `hyper_path::name`.
/// Case 18: On a connection hyper already serves (a body-routed request went first), a later
/// head the policy refuses or hyper could not parse still gets the JSON error, never reaches
/// the pod, and ends the connection; a good head before it is served normally.
async fn later_heads_on_a_hyper_connection_get_the_same_errors(relay: bool) {
    let f = fixture(opts(relay)).await;
    let mut fails = Vec::new();
    let routed = "POST /v1/chat/completions HTTP/1.1\r\nHost: zeroscale-activator\r\n\
                  Content-Length: 13\r\n\r\n{\"model\":\"m\"}";
    for (what, bad, status) in [
        ("invalid header name", &b"GET /v1/models/m HTTP/1.1\r\nBad Header: x\r\n\r\n"[..], 400),
        ("two Hosts", b"GET /v1/models/m HTTP/1.1\r\nHost: m.ns\r\nHost: x\r\n\r\n", 400),
        (
            "Connection: content-length",
            b"POST /v1/models/m HTTP/1.1\r\nHost: m.ns\r\nConnection: content-length\r\nContent-Length: 29\r\n\r\nGET /v1/models/m HTTP/1.1\r\n\r\n",
            400,
        ),
        ("CONNECT", b"CONNECT m.ns:80 HTTP/1.1\r\nHost: m.ns:80\r\n\r\n", 405),
    ] {
        let mut c = Client::connect(f.act.addr).await;
        c.send(routed.as_bytes()).await;
        match c.answer().await {
            Ok(a) if a.status == 200 => {}
            Ok(a) => {
                fails.push(format!("{what}: the routed request got {}", a.text()));
                continue;
            }
            Err(e) => {
                fails.push(format!("{what}: the routed request: {e}"));
                continue;
            }
        }
        let before = f.pod.seen();
        c.send(bad).await;
        match c.answer().await {
            Ok(a) => {
                if let Err(e) = check_error(&a, &[status], None) {
                    fails.push(format!("{what}: {e}"));
                }
            }
            Err(e) => fails.push(format!("{what}: {e}")),
        }
        if c.until_eof(Duration::from_secs(2)).await.is_err() {
            fails.push(format!("{what}: the connection stayed open after the refusal"));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        if f.pod.seen().1 != before.1 {
            fails.push(format!("{what}: the pod saw {:?} -> {:?}", before, f.pod.seen()));
        }
    }
    report(&format!("relay={relay}"), fails);
}

macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        mod relay_path {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(true).await
                }
            )*
        }
        mod hyper_path {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(false).await
                }
            )*
        }
    };
}

on_both_paths!(
    host_missing_or_repeated_is_400,
    connection_naming_framing_headers_is_400,
    ambiguous_body_framing_is_rejected,
    malformed_header_lines_are_400,
    oversized_head_is_431,
    connect_is_405_and_dials_nothing,
    not_an_open_proxy,
    body_routing_needs_a_string_model,
    slow_request_body_is_cut_and_frees_the_slot,
    idle_keep_alive_is_not_a_slow_head,
    client_gone_closes_the_pod_connection,
    answer_connection_naming_content_length_keeps_framing,
    silent_pod_is_504_after_response_timeout,
    a_late_answer_after_504_never_reaches_the_next_request,
    stalled_answer_body_cuts_the_client,
    broken_pod_answers_are_502_without_its_address,
    no_date_is_added_to_a_pod_answer,
    later_heads_on_a_hyper_connection_get_the_same_errors,
);
