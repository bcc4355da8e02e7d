//! Benchmark helpers shared by the benches in `benches/`.

use std::time::{Duration, Instant};

use zeroscale_scaling::{DataState, Decider, Observation, Params, Sample};

/// A deterministic per-second load for Deployment `i` at second `s`: a mix of idle models,
/// steady ones and a few spiky ones, so a tick exercises every branch of the decider.
pub fn load(i: usize, s: u64) -> Sample {
    let base = match i % 10 {
        0..=3 => 0.0,                            // idle
        4..=7 => 50.0 + (i % 97) as f64,         // steady
        _ => ((s * 37 + i as u64) % 400) as f64, // spiky
    };
    Sample {
        concurrency: base,
        rps: base * 2.0,
    }
}

/// A decider created at `t0` whose windows are full: one sample per second for the whole stable
/// window, and one decision per second. Returns it with the time of the last second.
pub fn warmed_decider(params: Params, t0: Instant, i: usize) -> (Decider, Instant) {
    let secs = params.stable_window.as_secs().max(1);
    let mut d = Decider::new(params, t0, false);
    let mut now = t0;
    for s in 0..secs {
        now = t0 + Duration::from_secs(s);
        d.record(now, load(i, s));
        d.decide(now, &steady(3));
    }
    (d, now)
}

/// A steady Deployment with `n` ready pods, fresh data and no queue.
pub fn steady(n: u32) -> Observation {
    Observation {
        ready_pods: n,
        current_scale: n,
        in_flight: 0,
        queued: 0,
        data: DataState::Fresh,
    }
}
