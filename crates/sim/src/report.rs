//! Output: the text table, JSON, and a self-contained HTML report with hand-written inline
//! SVG (no script, no external resource), so it opens anywhere and can be attached to an
//! issue.
//!
//! The report holds: the settings, one row per compared policy (frontier points marked, the
//! recommended one highlighted), load and replicas over time for the recommended (or only)
//! policy, and a Pareto chart of cold starts against replica-seconds across the policies.

use std::fmt::Write as _;

use crate::RunOutcome;
use crate::event::secs;
use crate::sim::ModelOutcome;
use crate::stats::Timeline;

fn row(m: &ModelOutcome) -> String {
    format!(
        "{:<24} {:>8} {:>7} {:>6.2}% {:>8.3} {:>8.3} {:>8.3} {:>6} {:>6} {:>11.0} {:>11.0} {:>6} {:>5}",
        truncate(&m.model, 24),
        m.requests,
        m.cold_starts,
        100.0 * m.cold_starts as f64 / m.requests.max(1) as f64,
        m.wait.p50,
        m.wait.p99,
        m.wait.max,
        m.rejected_503,
        m.expired_504,
        m.replica_seconds,
        m.idle_replica_seconds,
        m.scale_events,
        m.peak_replicas,
    )
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('~');
        t
    }
}

const HEADER: &str = "model                    requests    cold  cold%   p50 (s)  p99 (s)  max (s)    503    504  replica-s      idle-s scales  peak";

/// The per-model table of one run, with a total row.
pub fn table(run: &RunOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{HEADER}");
    for m in &run.models {
        let _ = writeln!(s, "{}", row(m));
    }
    if run.models.len() > 1 {
        let _ = writeln!(s, "{}", row(&run.total));
    }
    s
}

/// One line per run (their totals), frontier points marked `*`, the recommended `>`.
pub fn sweep_table(runs: &[RunOutcome], frontier: &[usize], recommended: Option<usize>) -> String {
    // As wide as the longest label (two varied keys make labels of 50-60 characters), within
    // bounds so a very long one is cut rather than pushing the figures off the screen.
    let w = runs
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(40, 72);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "   {:<w$} {:>8} {:>7} {:>7} {:>8} {:>6} {:>6} {:>11} {:>11} {:>6} {:>5}",
        "policy",
        "requests",
        "cold",
        "cold%",
        "p99 (s)",
        "503",
        "504",
        "replica-s",
        "idle-s",
        "scales",
        "peak"
    );
    for (i, r) in runs.iter().enumerate() {
        let mark = match (Some(i) == recommended, frontier.contains(&i)) {
            (true, _) => "> ",
            (false, true) => "* ",
            _ => "  ",
        };
        let t = &r.total;
        let _ = writeln!(
            s,
            "{mark} {:<w$} {:>8} {:>7} {:>6.2}% {:>8.3} {:>6} {:>6} {:>11.0} {:>11.0} {:>6} {:>5}",
            truncate(&r.label, w),
            t.requests,
            t.cold_starts,
            100.0 * t.cold_starts as f64 / t.requests.max(1) as f64,
            t.wait.p99,
            t.rejected_503,
            t.expired_504,
            t.replica_seconds,
            t.idle_replica_seconds,
            t.scale_events,
            t.peak_replicas
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" tick step for a range: 1, 2 or 5 times a power of ten.
fn nice_step(range: f64, ticks: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / ticks;
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// A tick step in seconds that reads well on a time axis.
fn time_step(range: f64, ticks: f64) -> f64 {
    const STEPS: [f64; 20] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0, 172800.0, 604800.0,
    ];
    let raw = range / ticks;
    STEPS
        .iter()
        .copied()
        .find(|&s| s >= raw)
        .unwrap_or(604800.0)
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

struct Frame {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: (f64, f64),
    y: (f64, f64),
    /// The x axis is seconds: ticks fall on whole seconds, minutes or hours.
    time_axis: bool,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        let (a, b) = self.x;
        self.left + (x - a) / (b - a).max(1e-12) * (self.w - self.left - self.right)
    }
    fn py(&self, y: f64) -> f64 {
        let (a, b) = self.y;
        self.h - self.bottom - (y - a) / (b - a).max(1e-12) * (self.h - self.top - self.bottom)
    }
    fn axes(&self, out: &mut String, xlabel: &str, ylabel: &str, xfmt: &dyn Fn(f64) -> String) {
        let _ = write!(
            out,
            r##"<rect x="{l}" y="{t}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##,
            l = self.left,
            t = self.top,
            w = self.w - self.left - self.right,
            h = self.h - self.top - self.bottom
        );
        let sx = if self.time_axis {
            time_step(self.x.1 - self.x.0, 6.0)
        } else {
            nice_step(self.x.1 - self.x.0, 6.0)
        };
        let mut v = (self.x.0 / sx).ceil() * sx;
        while v <= self.x.1 + 1e-9 {
            let x = self.px(v);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{b:.1}" x2="{x:.1}" y2="{b2:.1}" stroke="#999"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle">{}</text>"##,
                esc(&xfmt(v)),
                b = self.h - self.bottom,
                b2 = self.h - self.bottom + 4.0,
                ty = self.h - self.bottom + 16.0
            );
            v += sx;
        }
        let sy = nice_step(self.y.1 - self.y.0, 5.0);
        let mut v = (self.y.0 / sy).ceil() * sy;
        while v <= self.y.1 + 1e-9 {
            let y = self.py(v);
            let _ = write!(
                out,
                r##"<line x1="{l:.1}" y1="{y:.1}" x2="{r:.1}" y2="{y:.1}" stroke="#eee"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end">{}</text>"##,
                fmt_num(v),
                l = self.left,
                r = self.w - self.right,
                tx = self.left - 4.0,
                ty = y + 4.0
            );
            v += sy;
        }
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{}</text><text transform="translate(14,{ym:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
            esc(xlabel),
            esc(ylabel),
            x = (self.left + self.w - self.right) / 2.0,
            y = self.h - 4.0,
            ym = (self.top + self.h - self.bottom) / 2.0
        );
    }
}

fn polyline(out: &mut String, pts: &[(f64, f64)], color: &str, width: f64) {
    let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = write!(
        out,
        r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}"/>"##,
        d.join(" ")
    );
}

fn time_fmt(v: f64) -> String {
    let (h, m, sec) = (
        (v / 3600.0).floor(),
        ((v % 3600.0) / 60.0).floor(),
        v % 60.0,
    );
    let mut out = String::new();
    if h > 0.0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0.0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0.0 || out.is_empty() {
        out.push_str(&format!("{}s", fmt_num(sec)));
    }
    out
}

/// Load (requests per second) and replicas (average pods, ready pods, highest spec) over time.
pub fn timeline_svg(t: &Timeline) -> String {
    let bin = secs(t.bin).max(1e-9);
    let n = t.arrivals.len();
    let end = n as f64 * bin;
    let load: Vec<f64> = t.arrivals.iter().map(|&a| a as f64 / bin).collect();
    let alive: Vec<f64> = t
        .alive_ns
        .iter()
        .map(|&x| x as f64 / t.bin as f64)
        .collect();
    let ready: Vec<f64> = t
        .ready_ns
        .iter()
        .map(|&x| x as f64 / t.bin as f64)
        .collect();
    let spec: Vec<f64> = t.spec_max.iter().map(|&x| f64::from(x)).collect();
    let mut out = String::new();
    let max_load = load.iter().copied().fold(0.0, f64::max).max(1.0);
    let f = Frame {
        w: 900.0,
        h: 220.0,
        left: 60.0,
        right: 20.0,
        top: 10.0,
        bottom: 36.0,
        x: (0.0, end),
        y: (0.0, max_load * 1.05),
        time_axis: true,
    };
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="220" font-size="11" font-family="sans-serif">"##
    );
    f.axes(&mut out, "time", "requests/s", &time_fmt);
    let pts: Vec<(f64, f64)> = load
        .iter()
        .enumerate()
        .flat_map(|(i, &v)| {
            [
                (f.px(i as f64 * bin), f.py(v)),
                (f.px((i + 1) as f64 * bin), f.py(v)),
            ]
        })
        .collect();
    polyline(&mut out, &pts, "#1f77b4", 1.0);
    out.push_str("</svg>");
    let max_rep = spec
        .iter()
        .chain(&alive)
        .copied()
        .fold(0.0, f64::max)
        .max(1.0);
    let f = Frame {
        w: 900.0,
        h: 240.0,
        left: 60.0,
        right: 20.0,
        top: 30.0,
        bottom: 36.0,
        x: (0.0, end),
        y: (0.0, max_rep * 1.05),
        time_axis: true,
    };
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="240" font-size="11" font-family="sans-serif">"##
    );
    f.axes(&mut out, "time", "replicas", &time_fmt);
    for (series, color, w) in [
        (&spec, "#d62728", 1.0),
        (&alive, "#2ca02c", 1.5),
        (&ready, "#9467bd", 1.0),
    ] {
        let pts: Vec<(f64, f64)> = series
            .iter()
            .enumerate()
            .flat_map(|(i, &v)| {
                [
                    (f.px(i as f64 * bin), f.py(v)),
                    (f.px((i + 1) as f64 * bin), f.py(v)),
                ]
            })
            .collect();
        polyline(&mut out, &pts, color, w);
    }
    let _ = write!(
        out,
        r##"<text x="60" y="18" fill="#d62728">highest spec.replicas per bin</text><text x="260" y="18" fill="#2ca02c">average pods (starting, ready, draining)</text><text x="520" y="18" fill="#9467bd">average ready pods</text></svg>"##
    );
    out
}

/// The values of a label (`a=1 b=2` -> `1 2`).
fn short_label(label: &str) -> String {
    label
        .split(' ')
        .map(|kv| kv.rsplit('=').next().unwrap_or(kv))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Cold starts against replica-seconds, one point per run; the frontier joined, the
/// recommended run circled.
pub fn pareto_svg(runs: &[RunOutcome], frontier: &[usize], recommended: Option<usize>) -> String {
    let xs: Vec<f64> = runs.iter().map(|r| r.total.replica_seconds).collect();
    let ys: Vec<f64> = runs.iter().map(|r| r.total.cold_starts as f64).collect();
    let (x0, x1) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let y1 = ys.iter().copied().fold(0.0, f64::max).max(1.0);
    let pad = ((x1 - x0) * 0.08).max(1.0);
    let f = Frame {
        w: 900.0,
        h: 360.0,
        left: 60.0,
        right: 30.0,
        top: 16.0,
        bottom: 36.0,
        x: ((x0 - pad).max(0.0), x1 + pad),
        y: (0.0, y1 * 1.1),
        time_axis: false,
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="360" font-size="11" font-family="sans-serif">"##
    );
    f.axes(&mut out, "replica-seconds", "cold starts", &|v| fmt_num(v));
    let pts: Vec<(f64, f64)> = frontier
        .iter()
        .map(|&i| (f.px(xs[i]), f.py(ys[i])))
        .collect();
    polyline(&mut out, &pts, "#ff7f0e", 1.5);
    for i in 0..runs.len() {
        // One mark and one label per distinct point: the values of every run on it.
        if (0..i).any(|j| xs[j] == xs[i] && ys[j] == ys[i]) {
            continue;
        }
        let same: Vec<usize> = (i..runs.len())
            .filter(|&j| xs[j] == xs[i] && ys[j] == ys[i])
            .collect();
        let (x, y) = (f.px(xs[i]), f.py(ys[i]));
        let color = if same.iter().any(|j| frontier.contains(j)) {
            "#ff7f0e"
        } else {
            "#777"
        };
        let _ = write!(
            out,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}"/>"##
        );
        if recommended.is_some_and(|r| same.contains(&r)) {
            let _ = write!(
                out,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="9" fill="none" stroke="#d62728" stroke-width="2"/>"##
            );
        }
        let label: Vec<String> = same.iter().map(|&j| short_label(&runs[j].label)).collect();
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}">{}</text>"##,
            x + 7.0,
            y - 6.0,
            esc(&label.join(", "))
        );
    }
    out.push_str("</svg>");
    out
}

/// The whole report. `context`: lines describing the trace and settings.
pub fn html(
    title: &str,
    context: &[String],
    runs: &[RunOutcome],
    frontier: &[usize],
    recommended: Option<usize>,
    recommendation: Option<&str>,
) -> String {
    let shown = recommended.unwrap_or(0);
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;margin:24px;max-width:960px}}\
         table{{border-collapse:collapse;font-size:13px}}td,th{{padding:3px 8px;text-align:right;border-bottom:1px solid #ddd}}\
         td:first-child,th:first-child{{text-align:left}}tr.rec{{background:#fde2e2}}tr.front td:first-child{{font-weight:bold}}\
         pre{{background:#f6f6f6;padding:8px}}</style></head><body><h1>{}</h1>",
        esc(title),
        esc(title)
    );
    s.push_str("<pre>");
    for line in context {
        let _ = writeln!(s, "{}", esc(line));
    }
    s.push_str("</pre>");
    if let Some(text) = recommendation {
        let _ = write!(s, "<p><b>{}</b></p>", esc(text));
    }
    s.push_str("<h2>Policies</h2><p>Bold: on the Pareto frontier (no other policy has both fewer cold starts and fewer replica-seconds). Highlighted: recommended.</p><table><tr><th>policy</th><th>requests</th><th>cold starts</th><th>wait p50 (s)</th><th>wait p99 (s)</th><th>wait max (s)</th><th>503</th><th>504</th><th>replica-s</th><th>idle replica-s</th><th>scale events</th><th>peak</th></tr>");
    for (i, r) in runs.iter().enumerate() {
        let t = &r.total;
        let class = if Some(i) == recommended {
            "rec front"
        } else if frontier.contains(&i) {
            "front"
        } else {
            ""
        };
        let _ = write!(
            s,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.label),
            t.requests,
            t.cold_starts,
            t.wait.p50,
            t.wait.p99,
            t.wait.max,
            t.rejected_503,
            t.expired_504,
            t.replica_seconds,
            t.idle_replica_seconds,
            t.scale_events,
            t.peak_replicas
        );
    }
    s.push_str("</table>");
    if let Some(r) = runs.get(shown) {
        let _ = write!(
            s,
            "<h2>Load and replicas over time: {}</h2><p>Summed over {} model(s). Each step is one bin of {}.</p>{}",
            esc(&r.label),
            r.models.len(),
            time_fmt(secs(r.total.timeline.bin)),
            timeline_svg(&r.total.timeline)
        );
    }
    if runs.len() > 1 {
        let _ = write!(
            s,
            "<h2>Cold starts against replica-seconds</h2><p>One point per policy; lower left is better. The orange line joins the frontier; the red circle is the recommendation.</p>{}",
            pareto_svg(runs, frontier, recommended)
        );
    }
    s.push_str("</body></html>\n");
    s
}
