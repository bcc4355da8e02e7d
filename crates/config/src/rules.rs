//! Cross-key rules on the scaling parameters, shared by the ConfigMap and the annotations. Each
//! conflict is resolved to a consistent value and reported naming every key involved.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::parse::format_duration;
use crate::{ConfigError, Params};

/// The smallest panic window the engine can average over (one metric bucket).
pub const MIN_PANIC_WINDOW: Duration = Duration::from_secs(1);

/// The keys written in the source being parsed, so messages name them as the user wrote them.
pub(crate) struct Scope<'a> {
    /// ConfigMap-style key -> (full name in this source, value as written).
    written: BTreeMap<&'static str, (&'a str, &'a str)>,
    /// How keys not written in this source are named, e.g. `"ConfigMap "`.
    inherited: &'static str,
}

impl<'a> Scope<'a> {
    pub(crate) fn new(inherited: &'static str) -> Self {
        Self {
            written: BTreeMap::new(),
            inherited,
        }
    }

    /// Records that `key` (ConfigMap-style) was written as `name: value` in this source.
    pub(crate) fn write(&mut self, key: &'static str, name: &'a str, value: &'a str) {
        self.written.insert(key, (name, value));
    }

    pub(crate) fn is_written(&self, key: &str) -> bool {
        self.written.contains_key(key)
    }

    /// How to name `key` in a message.
    pub(crate) fn name(&self, key: &str) -> String {
        match self.written.get(key) {
            Some((name, _)) => (*name).to_owned(),
            None => format!("{}{key}", self.inherited),
        }
    }

    /// Reports a conflict among `keys`, filed under the first of them written in this source.
    pub(crate) fn conflict(&self, errors: &mut Vec<ConfigError>, keys: &[&str], problem: String) {
        let key = keys.iter().find(|k| self.is_written(k)).unwrap_or(&keys[0]);
        let (name, value) = match self.written.get(key) {
            Some((name, value)) => ((*name).to_owned(), (*value).to_owned()),
            None => (self.name(key), String::new()),
        };
        errors.push(ConfigError {
            key: name,
            value,
            problem,
        });
    }
}

/// Makes `p` consistent: min <= max, initial-scale allowed and within bounds, activation-scale
/// within max, panic window >= 1s. `zero_initial_fallback` replaces a forbidden initial-scale 0.
pub(crate) fn check_params(
    p: &mut Params,
    allow_zero_initial_scale: bool,
    zero_initial_fallback: u32,
    scope: &Scope<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let n = |k: &str| scope.name(k);
    let bounded = p.max_scale != 0;
    if bounded && p.min_scale > p.max_scale {
        scope.conflict(
            errors,
            &["min-scale", "max-scale"],
            format!(
                "{}={} and {}={} conflict: min-scale must not exceed max-scale (0 = unbounded); using min-scale {}",
                n("min-scale"),
                p.min_scale,
                n("max-scale"),
                p.max_scale,
                p.max_scale
            ),
        );
        p.min_scale = p.max_scale;
    }
    if p.initial_scale == 0 && !allow_zero_initial_scale {
        scope.conflict(
            errors,
            &["initial-scale", "allow-zero-initial-scale"],
            format!(
                "{}=0 needs {}=true; using initial-scale {zero_initial_fallback}",
                n("initial-scale"),
                n("allow-zero-initial-scale"),
            ),
        );
        p.initial_scale = zero_initial_fallback;
    }
    // An inherited initial- or activation-scale above a narrower max-scale written here is capped
    // silently: the explicit bound is the intent. Only values written here are reported.
    if bounded && p.initial_scale > p.max_scale && scope.is_written("initial-scale") {
        scope.conflict(
            errors,
            &["initial-scale", "max-scale"],
            format!(
                "{}={} and {}={} conflict: initial-scale must not exceed max-scale; using initial-scale {}",
                n("initial-scale"),
                p.initial_scale,
                n("max-scale"),
                p.max_scale,
                p.max_scale
            ),
        );
    }
    if bounded {
        p.initial_scale = p.initial_scale.min(p.max_scale);
    }
    // Not a conflict: min-scale simply wins over a smaller initial-scale, as in Knative.
    p.initial_scale = p.initial_scale.max(p.min_scale);
    if bounded && p.activation_scale > p.max_scale && scope.is_written("activation-scale") {
        scope.conflict(
            errors,
            &["activation-scale", "max-scale"],
            format!(
                "{}={} and {}={} conflict: activation-scale must not exceed max-scale; using activation-scale {}",
                n("activation-scale"),
                p.activation_scale,
                n("max-scale"),
                p.max_scale,
                p.max_scale
            ),
        );
    }
    if bounded {
        p.activation_scale = p.activation_scale.min(p.max_scale);
    }
    if p.panic_window() < MIN_PANIC_WINDOW {
        let before = p.panic_window_percentage;
        let window = p.stable_window;
        p.panic_window_percentage = min_panic_percentage(window);
        scope.conflict(
            errors,
            &["panic-window-percentage", "stable-window"],
            format!(
                "{}={before} of {}={} gives a panic window of {}, below the 1s minimum; using panic-window-percentage {}",
                n("panic-window-percentage"),
                n("stable-window"),
                format_duration(window),
                format_duration(window.mul_f64(before / 100.0)),
                p.panic_window_percentage
            ),
        );
    }
}

/// The smallest percentage, in steps of 0.01, that gives `window` a panic window of at least 1s.
fn min_panic_percentage(window: Duration) -> f64 {
    if window <= MIN_PANIC_WINDOW {
        // Unreachable through parsing (stable windows are >= 6s); keeps the math finite.
        return 100.0;
    }
    let exact = 100.0 * MIN_PANIC_WINDOW.as_secs_f64() / window.as_secs_f64();
    let mut pct = (exact * 100.0).ceil() / 100.0;
    while window.mul_f64(pct / 100.0) < MIN_PANIC_WINDOW && pct < 100.0 {
        pct = ((pct * 100.0).round() + 1.0) / 100.0;
    }
    pct.min(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_panic_percentage_reaches_one_second() {
        for secs in [6, 7, 9, 10, 11, 60, 99, 3600] {
            let w = Duration::from_secs(secs);
            let pct = min_panic_percentage(w);
            assert!(
                w.mul_f64(pct / 100.0) >= MIN_PANIC_WINDOW,
                "{secs}s -> {pct}"
            );
            assert!(
                w.mul_f64((pct - 0.01) / 100.0) < MIN_PANIC_WINDOW,
                "{secs}s -> {pct}"
            );
        }
    }
}
