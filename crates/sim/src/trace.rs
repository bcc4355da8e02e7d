//! Traces: reading a CSV of requests, and the transforms applied before a run (time
//! compression, spreading one trace over several models).
//!
//! Accepted: any CSV of `timestamp[,model][,context_tokens,generated_tokens]`, such as the
//! Azure LLM inference traces 2023 (`TIMESTAMP,ContextTokens,GeneratedTokens`). A header is
//! detected (a first line whose first field is not a timestamp) and its columns are found by
//! name (`timestamp`/`time`, `model`/`app`/`function`, `contexttokens`/`context_tokens`,
//! `generatedtokens`/`generated_tokens`, any case); without a header the columns are taken by
//! position from their count (1: time; 2: time, model; 3: time, context, generated; 4: all).
//! A timestamp is a number of seconds or a date-time `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC,
//! `T` also accepted). Times are shifted so the first request is at 0. A bad line is an error
//! naming its line number.

use std::collections::HashMap;
use std::path::Path;

use crate::dist::Rng;
use crate::event::{Nanos, SEC};

/// One request of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Arrival time since the start of the trace.
    pub at: Nanos,
    /// Index into [`Trace::models`].
    pub model: u32,
    /// Prompt tokens, when the trace has them.
    pub context_tokens: Option<u32>,
    /// Generated tokens, when the trace has them.
    pub generated_tokens: Option<u32>,
}

/// A set of requests over named models, sorted by arrival.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// Model names; `Request::model` indexes this.
    pub models: Vec<String>,
    /// Requests in arrival order.
    pub requests: Vec<Request>,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("line {line}: {problem}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The header lacks a timestamp column.
    #[error(
        "line 1: the header {header:?} has no timestamp column (expected one named timestamp or time)"
    )]
    NoTimestamp {
        /// The header as written.
        header: String,
    },
}

/// Column positions.
#[derive(Clone, Copy, Debug)]
struct Columns {
    time: usize,
    model: Option<usize>,
    context: Option<usize>,
    generated: Option<usize>,
    count: usize,
}

fn header_columns(fields: &[&str]) -> Option<Columns> {
    let find = |names: &[&str]| {
        fields.iter().position(|f| {
            let f = f.trim().to_ascii_lowercase();
            names.contains(&f.as_str())
        })
    };
    Some(Columns {
        time: find(&["timestamp", "time", "ts", "arrival"])?,
        model: find(&["model", "app", "function", "func", "deployment"]),
        context: find(&[
            "contexttokens",
            "context_tokens",
            "context",
            "prompt_tokens",
        ]),
        generated: find(&[
            "generatedtokens",
            "generated_tokens",
            "generated",
            "completion_tokens",
        ]),
        count: fields.len(),
    })
}

fn positional(count: usize) -> Columns {
    let (model, context, generated) = match count {
        1 => (None, None, None),
        2 => (Some(1), None, None),
        3 => (None, Some(1), Some(2)),
        _ => (Some(1), Some(2), Some(3)),
    };
    Columns {
        time: 0,
        model,
        context,
        generated,
        count,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a timestamp into nanoseconds (since the epoch for date-times).
pub fn parse_timestamp(s: &str) -> Result<i128, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "bad timestamp {s:?}: expected seconds (e.g. 12.5) or YYYY-MM-DD HH:MM:SS[.fraction]"
        )
    };
    if let Ok(x) = s.parse::<f64>() {
        if !x.is_finite() || x < 0.0 {
            return Err(bad());
        }
        return Ok((x * 1e9).round() as i128);
    }
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(bad)?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(mo)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(bad());
    };
    let time = time.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (Some(Ok(h)), Some(Ok(mi)), Some(Ok(sec)), None) = (t.next(), t.next(), t.next(), t.next())
    else {
        return Err(bad());
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut frac_nanos: i128 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        frac_nanos += i128::from(b - b'0') * 10i128.pow(8 - i as u32);
    }
    let days = days_from_civil(y, mo, day);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    Ok(i128::from(secs) * 1_000_000_000 + frac_nanos)
}

fn tokens(
    fields: &[&str],
    col: Option<usize>,
    line: usize,
    name: &str,
) -> Result<Option<u32>, TraceError> {
    let Some(c) = col else { return Ok(None) };
    let v = fields.get(c).map_or("", |v| v.trim());
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u32>().map(Some).map_err(|_| TraceError::Line {
        line,
        problem: format!("bad {name} {v:?}: expected a whole number of tokens"),
    })
}

impl Trace {
    /// Reads a CSV file; see the module docs for the format.
    pub fn read(path: &Path) -> Result<Trace, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Trace::parse(&text, "default")
    }

    /// Parses CSV text; requests without a model column belong to `default_model`.
    pub fn parse(text: &str, default_model: &str) -> Result<Trace, TraceError> {
        let mut cols: Option<Columns> = None;
        let mut models: Vec<String> = Vec::new();
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut raw: Vec<(i128, u32, Option<u32>, Option<u32>)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let c = match cols {
                Some(c) => c,
                None => {
                    let c = if parse_timestamp(fields[0]).is_err() {
                        let c = header_columns(&fields).ok_or_else(|| TraceError::NoTimestamp {
                            header: line.to_owned(),
                        })?;
                        cols = Some(c);
                        continue;
                    } else {
                        positional(fields.len())
                    };
                    cols = Some(c);
                    c
                }
            };
            if fields.len() != c.count {
                return Err(TraceError::Line {
                    line: n,
                    problem: format!("{} fields, expected {}", fields.len(), c.count),
                });
            }
            let at = parse_timestamp(fields[c.time])
                .map_err(|problem| TraceError::Line { line: n, problem })?;
            let name = c.model.map_or(default_model, |m| fields[m].trim());
            if name.is_empty() {
                return Err(TraceError::Line {
                    line: n,
                    problem: "empty model name".into(),
                });
            }
            let model = match index.get(name) {
                Some(&m) => m,
                None => {
                    let m = models.len() as u32;
                    models.push(name.to_owned());
                    index.insert(name.to_owned(), m);
                    m
                }
            };
            let ctx = tokens(&fields, c.context, n, "context token count")?;
            let generated = tokens(&fields, c.generated, n, "generated token count")?;
            raw.push((at, model, ctx, generated));
        }
        let t0 = raw.iter().map(|r| r.0).min().unwrap_or(0);
        let mut requests: Vec<Request> = raw
            .into_iter()
            .map(|(at, model, context_tokens, generated_tokens)| Request {
                at: u64::try_from(at - t0).unwrap_or(u64::MAX),
                model,
                context_tokens,
                generated_tokens,
            })
            .collect();
        requests.sort_by_key(|r| r.at);
        Ok(Trace { models, requests })
    }

    /// Divides every arrival time by `factor` (> 0): a trace replayed `factor` times faster.
    pub fn compress(&mut self, factor: f64) {
        if factor > 0.0 && factor != 1.0 {
            for r in &mut self.requests {
                r.at = (r.at as f64 / factor).round() as Nanos;
            }
        }
    }

    /// Keeps only the first `limit` of the trace.
    pub fn truncate(&mut self, limit: Nanos) {
        self.requests.retain(|r| r.at < limit);
    }

    /// Spreads the requests over `k` models `m0..m{k-1}`: each request goes to model `i` with
    /// probability proportional to `1 / (i + 1)^zipf` (0 = evenly), drawn from `seed`. Models
    /// of a multi-model trace are named `{model}-{i}`.
    pub fn split_models(&mut self, k: usize, zipf: f64, seed: u64) {
        if k <= 1 {
            return;
        }
        let weights: Vec<f64> = (0..k).map(|i| 1.0 / ((i + 1) as f64).powf(zipf)).collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(k);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cdf.push(acc);
        }
        let mut rng = Rng::new(seed, 0x5917);
        let mut models = Vec::with_capacity(self.models.len() * k);
        for name in &self.models {
            for i in 0..k {
                models.push(if self.models.len() == 1 && name == "default" {
                    format!("m{i}")
                } else {
                    format!("{name}-{i}")
                });
            }
        }
        for r in &mut self.requests {
            let u = rng.uniform();
            let i = cdf.partition_point(|&c| c < u).min(k - 1);
            r.model = r.model * k as u32 + i as u32;
        }
        self.models = models;
    }

    /// Time of the last arrival.
    pub fn duration(&self) -> Nanos {
        self.requests.last().map_or(0, |r| r.at)
    }

    /// The requests of one model, in arrival order.
    pub fn of_model(&self, model: u32) -> Vec<Request> {
        self.requests
            .iter()
            .filter(|r| r.model == model)
            .copied()
            .collect()
    }
}

/// Whole seconds as [`Nanos`].
pub const fn seconds(s: u64) -> Nanos {
    s * SEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_azure_format() {
        let t = Trace::parse(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             2023-11-16 18:17:03.9799600,4808,10\n\
             2023-11-16 18:17:04.0319600,3180,8\n\
             2023-11-17 00:00:00,1,2\n",
            "code",
        )
        .unwrap();
        assert_eq!(t.models, ["code"]);
        assert_eq!(t.requests.len(), 3);
        assert_eq!(t.requests[0].at, 0);
        assert_eq!(t.requests[1].at, 52_000_000);
        assert_eq!(t.requests[0].context_tokens, Some(4808));
        assert_eq!(t.requests[1].generated_tokens, Some(8));
        // Across midnight: 5h 42m 56.02004s after the first.
        assert_eq!(t.requests[2].at, 20_576_020_040_000);
    }

    #[test]
    fn headerless_with_models() {
        let t = Trace::parse("0.5,a\n1.5,b\n2,a\n", "x").unwrap();
        assert_eq!(t.models, ["a", "b"]);
        let ats: Vec<_> = t.requests.iter().map(|r| (r.at, r.model)).collect();
        assert_eq!(ats, [(0, 0), (1_000_000_000, 1), (1_500_000_000, 0)]);
    }

    #[test]
    fn header_by_name_in_any_order() {
        let t = Trace::parse("model,generated_tokens,time\nm,5,10\nm,6,11\n", "x").unwrap();
        assert_eq!(t.requests[1].at, SEC);
        assert_eq!(t.requests[1].generated_tokens, Some(6));
        assert_eq!(t.requests[1].context_tokens, None);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let e = Trace::parse("timestamp,model\n1,a\nsoon,a\n", "x").unwrap_err();
        assert!(
            e.to_string().starts_with("line 3: bad timestamp \"soon\""),
            "{e}"
        );
        let e = Trace::parse("1,a\n2\n", "x").unwrap_err();
        assert_eq!(e.to_string(), "line 2: 1 fields, expected 2");
        let e =
            Trace::parse("TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,many\n", "x").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 2: bad generated token count"),
            "{e}"
        );
        let e = Trace::parse("when,model\n1,a\n", "x").unwrap_err();
        assert!(e.to_string().contains("no timestamp column"), "{e}");
    }

    #[test]
    fn compress_and_split() {
        let mut t = Trace::parse("0\n10\n20\n30\n", "x").unwrap();
        t.compress(10.0);
        assert_eq!(t.duration(), 3 * SEC);
        t.split_models(3, 0.0, 1);
        assert_eq!(t.models.len(), 3);
        assert!(t.requests.iter().all(|r| r.model < 3));
        let mut big = Trace {
            models: vec!["default".into()],
            requests: (0..30_000)
                .map(|i| Request {
                    at: i,
                    model: 0,
                    context_tokens: None,
                    generated_tokens: None,
                })
                .collect(),
        };
        big.split_models(4, 1.0, 9);
        let count = |m| big.requests.iter().filter(|r| r.model == m).count() as f64;
        // Zipf 1: shares 1 : 1/2 : 1/3 : 1/4.
        assert!((count(0) / count(1) - 2.0).abs() < 0.15);
        assert!((count(0) / count(3) - 4.0).abs() < 0.4);
        assert_eq!(big.models[0], "m0");
    }
}
