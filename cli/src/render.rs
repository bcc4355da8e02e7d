//! The answer as a person or a script reads it: a table, one model explained, JSON or YAML.
//! Pure: a [`Status`] in, text out.

use std::fmt::Write as _;

use crate::{ModelFigures, ModelStatus, Status};

/// `1m5s`-style age.
pub fn age(seconds: i64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// A duration in seconds: tenths below a minute (a cold start of 0.8 s is not "0s"), else as
/// [`age`].
pub fn duration(seconds: f64) -> String {
    if seconds < 59.95 {
        format!("{seconds:.1}s")
    } else {
        age(seconds.round() as i64)
    }
}

/// The time since the model's latest request: `<none>` when no activator saw one.
fn last_request(f: &ModelFigures) -> String {
    f.last_request_age_seconds
        .map_or("<none>".into(), |a| format!("{} ago", age(a as i64)))
}

/// The latest cold start's duration: `<none>` when no activator saw one.
fn cold_start(f: &ModelFigures) -> String {
    f.last_cold_start
        .map_or("<none>".into(), |c| duration(c.seconds))
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// The last decision in a few words: its message without the `Scaled a -> b: ` prefix when
/// the REPLICAS column already says it, cut to `width` characters.
fn last_reason(m: &ModelStatus, width: usize) -> String {
    let Some(d) = m.decisions.first() else {
        return "-".into();
    };
    let text = d.message.clone();
    if text.chars().count() <= width {
        return text;
    }
    let cut: String = text.chars().take(width.saturating_sub(3)).collect();
    format!("{cut}...")
}

/// One row per model.
pub fn table(s: &Status) -> String {
    let mut rows = vec![[
        "NAMESPACE".to_owned(),
        "DEPLOYMENT".to_owned(),
        "READY".to_owned(),
        "IN-FLIGHT".to_owned(),
        "QUEUED".to_owned(),
        "STABLE".to_owned(),
        "PANIC".to_owned(),
        "LAST REQUEST".to_owned(),
        "COLD START".to_owned(),
        "LAST SCALE".to_owned(),
        "DECISION".to_owned(),
    ]];
    for m in &s.models {
        let f = m.figures.as_ref();
        let panic = match f.and_then(|f| f.in_panic) {
            Some(true) => format!("{} (panic)", num(f.and_then(|f| f.panic_concurrency))),
            _ => num(f.and_then(|f| f.panic_concurrency)),
        };
        rows.push([
            m.namespace.clone(),
            m.deployment.clone(),
            format!("{}/{}", m.ready, m.replicas),
            f.map_or("-".into(), |f| num(Some(f.in_flight))),
            f.map_or("-".into(), |f| num(Some(f.queued))),
            num(f.and_then(|f| f.stable_concurrency)),
            panic,
            f.map_or("-".into(), last_request),
            f.map_or("-".into(), cold_start),
            m.decisions
                .first()
                .and_then(|d| d.age_seconds)
                .map_or("-".into(), |a| format!("{} ago", age(a))),
            last_reason(m, 72),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    if s.models.is_empty() {
        out.push_str("no opted-in Deployments (annotate one with zeroscale.dev/enabled=true)\n");
    }
    if let Some(why) = &s.figures_unavailable {
        let _ = writeln!(out, "\nlive figures unavailable: {why}");
    }
    out
}

/// Everything about one model: its annotations, live figures and the decisions, newest first.
pub fn explain(m: &ModelStatus, unavailable: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Deployment {}/{}", m.namespace, m.deployment);
    let _ = writeln!(out, "  replicas: {} (ready {})", m.replicas, m.ready);
    let _ = writeln!(out, "  annotations:");
    for (k, v) in &m.annotations {
        let _ = writeln!(out, "    {k}: {v}");
    }
    match (&m.figures, unavailable) {
        (Some(f), _) => {
            let _ = writeln!(
                out,
                "  now: {} in flight, {} queued (all activators); stable average {}, panic average {}{}; desired {}",
                num(Some(f.in_flight)),
                num(Some(f.queued)),
                num(f.stable_concurrency),
                num(f.panic_concurrency),
                if f.in_panic == Some(true) {
                    " (in panic)"
                } else {
                    ""
                },
                num(f.desired),
            );
            let _ = writeln!(
                out,
                "  last request: {}; last cold start: {}",
                last_request(f),
                f.last_cold_start.map_or("<none>".into(), |c| format!(
                    "{} (ended {} ago)",
                    duration(c.seconds),
                    age(c.age_seconds as i64)
                )),
            );
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "  now: live figures unavailable: {why}");
        }
        (None, None) => {}
    }
    if m.decisions.is_empty() {
        let _ = writeln!(
            out,
            "  decisions: none recorded (Events expire after an hour by default)"
        );
    } else {
        let _ = writeln!(out, "  decisions (newest first):");
        for d in &m.decisions {
            let when = d
                .age_seconds
                .map_or("?".into(), |a| format!("{} ago", age(a)));
            let times = if d.count > 1 {
                format!(" (x{})", d.count)
            } else {
                String::new()
            };
            let _ = writeln!(out, "    {when}{times}: {}", d.message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ColdStart, Decision};

    fn status() -> Status {
        Status {
            read_at: "2026-12-01T00:00:00Z".into(),
            figures_unavailable: None,
            models: vec![ModelStatus {
                namespace: "ml".into(),
                deployment: "llama".into(),
                replicas: 3,
                ready: 2,
                annotations: [("zeroscale.dev/enabled".to_owned(), "true".to_owned())].into(),
                figures: Some(ModelFigures {
                    in_flight: 7.0,
                    queued: 1.0,
                    stable_concurrency: Some(5.5),
                    panic_concurrency: Some(9.25),
                    in_panic: Some(true),
                    last_request_age_seconds: Some(192.4),
                    last_cold_start: Some(ColdStart {
                        seconds: 4.26,
                        age_seconds: 3_700.0,
                    }),
                    ..Default::default()
                }),
                decisions: vec![Decision {
                    at: None,
                    age_seconds: Some(65),
                    message: "Scaled 1 -> 3: panic mode: panic-window average 9.25".into(),
                    count: 1,
                }],
            }],
        }
    }

    #[test]
    fn the_table_shows_replicas_figures_and_the_last_decision() {
        let t = table(&status());
        let row = t.lines().nth(1).unwrap();
        for want in [
            "ml",
            "llama",
            "2/3",
            "7",
            "5.50",
            "9.25 (panic)",
            "3m12s ago",
            "4.3s",
            "1m5s ago",
            "Scaled 1 -> 3",
        ] {
            assert!(row.contains(want), "no {want} in {row}");
        }
        // The columns line up with their headers.
        let header = t.lines().next().unwrap();
        let col = |line: &str, at: &str| line.find(at).unwrap();
        assert_eq!(col(header, "LAST REQUEST"), col(row, "3m12s ago"));
        assert_eq!(col(header, "COLD START"), col(row, "4.3s"));
        // A model no activator saw a request for.
        let mut never = status();
        let f = never.models[0].figures.as_mut().unwrap();
        f.last_request_age_seconds = None;
        f.last_cold_start = None;
        let row = table(&never).lines().nth(1).unwrap().to_owned();
        assert_eq!(row.matches("<none>").count(), 2, "{row}");
        let mut s = status();
        s.models[0].figures = None;
        s.figures_unavailable = Some("forbidden".into());
        assert!(table(&s).contains("live figures unavailable: forbidden"));
    }

    #[test]
    fn explain_lists_the_decisions_and_their_inputs() {
        let s = status();
        let e = explain(&s.models[0], None);
        assert!(
            e.contains("stable average 5.50, panic average 9.25 (in panic)"),
            "{e}"
        );
        assert!(e.contains("1m5s ago: Scaled 1 -> 3: panic mode"), "{e}");
        assert!(
            e.contains("last request: 3m12s ago; last cold start: 4.3s (ended 1h1m ago)"),
            "{e}"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(65), "1m5s");
        assert_eq!(age(7260), "2h1m");
        assert_eq!(age(90_000), "1d1h");
        assert_eq!(duration(0.84), "0.8s");
        assert_eq!(duration(59.9), "59.9s");
        assert_eq!(duration(192.4), "3m12s");
    }
}
