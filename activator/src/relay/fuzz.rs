//! Fuzzing of the three parsers the relay runs on untrusted bytes, as property tests so CI
//! runs them (bounded: `ZEROSCALE_FUZZ_CASES`, default 512 per target). Inputs are random
//! bytes and mutated valid messages; a failure is kept by proptest in
//! `proptest-regressions/` and replayed first on every later run.

use std::sync::Arc;
use std::time::Duration;

use super::response::{ParsedHead, parse_response};
use super::*;
use crate::chunked::Chunks;
use crate::forward::Framing;
use crate::metrics::Metrics;
use crate::queue::Limits;
use crate::table::{ModelKey, ModelSpec, NoWake, Table};
use crate::upstream::WorkerId;
use prometheus_client::registry::Registry;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("ZEROSCALE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn table() -> Table {
    let metrics = Metrics::register(&mut Registry::default());
    let table = Table::new(metrics, Arc::new(NoWake));
    table.upsert_model(ModelSpec {
        key: ModelKey {
            namespace: "ns".into(),
            deployment: "m".into(),
        },
        model_name: "m".into(),
        hostnames: vec![],
        created: Some(1),
        limits: Limits::with_queue(0, 10, 1000, Duration::from_secs(60)),
    });
    table
}

/// Valid messages, then mutated: bytes replaced, inserted, deleted, or the message cut.
fn mutated(seeds: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<u16>(), any::<u8>(), 0u8..4);
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit, 0..6),
    )
        .prop_map(|(seed, edits)| {
            let mut m = seed.to_vec();
            for (at, b, op) in edits {
                let i = usize::from(at) % (m.len() + 1);
                match op {
                    0 if i < m.len() => m[i] = b,
                    1 => m.insert(i, b),
                    2 if i < m.len() => {
                        m.remove(i);
                    }
                    _ => m.truncate(i),
                }
            }
            m
        })
}

const REQUESTS: &[&[u8]] = &[
    b"GET /v1/models/m HTTP/1.1\r\nHost: m.ns\r\n\r\n",
    b"POST /v1/models/m:predict HTTP/1.1\r\nHost: m.ns\r\nContent-Length: 2\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: m.ns\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"GET /v2/models/m/ready HTTP/1.0\r\n\r\n",
];

const ANSWERS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\n\r\ndata",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
];

fn input(seeds: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..600), mutated(seeds)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Any bytes: no panic; a head the relay forwards is one valid HTTP/1.1 head with
    /// exactly one Host, no hop-by-hop header and the length the relay will send.
    #[test]
    fn request_heads(data in input(REQUESTS)) {
        let table = table();
        let peer = Peer::new("10.0.0.1:1234".parse().unwrap(), WorkerId::default());
        let mut out = Vec::new();
        if let Parsed::Plan(p) = plan(&data, &table, &peer, &mut out) {
            let mut h = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut h);
            prop_assert_eq!(req.parse(&out), Ok(httparse::Status::Complete(out.len())));
            prop_assert_eq!(req.version, Some(1));
            let count = |n: &str| req.headers.iter().filter(|x| x.name.eq_ignore_ascii_case(n)).count();
            prop_assert_eq!(count("host"), 1);
            for hop in forward::HOP_BY_HOP {
                prop_assert_eq!(count(hop), 0, "{} forwarded", hop);
            }
            let cl: Vec<_> = req.headers.iter()
                .filter(|x| x.name.eq_ignore_ascii_case("content-length"))
                .map(|x| forward::parse_length(x.value))
                .collect();
            match p.body_len {
                0 => prop_assert!(cl.iter().all(|l| *l == Some(0)) && cl.len() <= 1),
                n => prop_assert_eq!(cl, vec![Some(n as u64)]),
            }
        }
    }

    /// Any bytes, fed whole or split anywhere: the same outcome, and never past the end.
    #[test]
    fn chunked_bodies(data in input(&[b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nt: 1\r\n\r\nnext"]), cut in any::<u16>()) {
        let mut whole = Chunks::default();
        let a = whole.feed(&data);
        let i = usize::from(cut) % (data.len() + 1);
        let mut split = Chunks::default();
        let b = match split.feed(&data[..i]) {
            Ok(Some(end)) => Ok(Some(end)),
            Ok(None) => split.feed(&data[i..]).map(|r| r.map(|e| e + i)),
            Err(()) => Err(()),
        };
        prop_assert_eq!(a, b);
        if let Ok(Some(end)) = a {
            prop_assert!(end <= data.len());
        }
    }

    /// Any bytes: no panic; an accepted answer head is rewritten into a valid head with
    /// no hop-by-hop header, and framing that matches what the relay states.
    #[test]
    fn response_heads(data in input(ANSWERS), head_method in any::<bool>()) {
        if let Ok(Some(ParsedHead::Final(h))) = parse_response(&data, head_method) {
            let mut out = h.rewritten.clone();
            out.extend_from_slice(b"\r\n");
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut hs);
            prop_assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())));
            let te = resp.headers.iter().filter(|x| x.name.eq_ignore_ascii_case("transfer-encoding")).count();
            prop_assert_eq!(te, usize::from(matches!(h.framing, Framing::Chunked | Framing::Close)));
            for hop in forward::HOP_BY_HOP.iter().filter(|n| **n != "transfer-encoding") {
                prop_assert!(!resp.headers.iter().any(|x| x.name.eq_ignore_ascii_case(hop)), "{} passed", hop);
            }
            if te > 0 {
                prop_assert!(!resp.headers.iter().any(|x| x.name.eq_ignore_ascii_case("content-length")));
            }
        }
    }
}
