//! How long a request keeps a pod busy: fixed, or from its token counts (prefill and decode).

use crate::event::Nanos;
use crate::trace::Request;

/// How long a request keeps a pod busy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Service {
    /// Every request takes this long.
    Fixed(Nanos),
    /// `base + context_tokens x per_context + generated_tokens x per_generated` (prefill and
    /// decode), from the trace's token counts.
    Tokens {
        /// Fixed part of every request.
        base: Nanos,
        /// Nanoseconds per prompt token (prefill).
        per_context: f64,
        /// Nanoseconds per generated token (decode).
        per_generated: f64,
    },
}

impl Service {
    /// The service time of `r`; a missing token count counts as 0.
    pub fn of(&self, r: &Request) -> Nanos {
        match *self {
            Service::Fixed(d) => d,
            Service::Tokens {
                base,
                per_context,
                per_generated,
            } => {
                let c = f64::from(r.context_tokens.unwrap_or(0));
                let g = f64::from(r.generated_tokens.unwrap_or(0));
                base + (c * per_context + g * per_generated).round() as Nanos
            }
        }
    }
}
