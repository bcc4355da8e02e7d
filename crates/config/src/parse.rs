//! Value parsers shared by the ConfigMap and the annotations. Each returns the parsed value or a
//! problem text that says what is allowed; the caller adds the key and the value.

use std::time::Duration;

const NANOS_PER_UNIT: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go-style duration: one or more `<number><unit>` parts, e.g. `30s`, `1m30s`, `500ms`,
/// `1.5h`, `0s`. Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. A bare `0` is accepted like Go
/// does; any other number needs a unit. Signs, spaces and empty strings are rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration; write e.g. 30s, 1m30s or 500ms".to_owned());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(format!(
                "{s:?} is not a duration: expected a number at {rest:?}; write e.g. 30s, 1m30s or 500ms"
            ));
        }
        let unit_len = after_num
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, next) = after_num.split_at(unit_len);
        let Some(&(_, scale)) = NANOS_PER_UNIT.iter().find(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                format!(
                    "{s:?} is not a duration: a number without a unit; write e.g. 30s, 1m30s or 500ms"
                )
            } else {
                format!(
                    "{s:?} is not a duration: unknown unit {unit:?} (units: ns, us, ms, s, m, h)"
                )
            });
        };
        let too_long = || format!("{s:?} is too long a duration");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_long())?
        };
        let mut part = int.checked_mul(scale).ok_or_else(too_long)?;
        // Digits beyond the 18th cannot change a nanosecond count below 2^64 and would overflow.
        let frac = &frac_part[..frac_part.len().min(18)];
        if !frac.is_empty() {
            let f: u128 = frac.parse().map_err(|_| too_long())?;
            part += f * scale / 10u128.pow(frac.len() as u32);
        }
        total = total.checked_add(part).ok_or_else(too_long)?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| format!("{s:?} is too long"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Formats a duration in the shortest exact form [`parse_duration`] reads back, e.g. `1m30s`,
/// `500ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let mut nanos = d.as_nanos();
    let mut out = String::new();
    for &(unit, scale) in NANOS_PER_UNIT.iter().rev() {
        if unit == "µs" {
            continue;
        }
        let n = nanos / scale;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            nanos %= scale;
        }
    }
    out
}

const BYTE_SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
];

/// Parses a byte size: a plain integer (`65536`) or an integer with a binary suffix `Ki`, `Mi`,
/// `Gi` or `Ti` (`64Mi`), as in Kubernetes quantities.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = s.split_at(digits);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a byte size: expected an integer, optionally with a Ki, Mi, Gi or Ti suffix"
        ));
    }
    let mult = if suffix.is_empty() {
        1
    } else {
        BYTE_SUFFIXES
            .iter()
            .find(|(u, _)| *u == suffix)
            .map(|&(_, m)| m)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a byte size: unknown suffix {suffix:?} (use Ki, Mi, Gi or Ti)"
                )
            })?
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is too large a byte size"))
}

/// Formats a byte size with the largest binary suffix that divides it exactly, e.g. `64Mi`.
pub fn format_bytes(n: u64) -> String {
    for &(unit, mult) in BYTE_SUFFIXES.iter().rev() {
        if n != 0 && n.is_multiple_of(mult) {
            return format!("{}{unit}", n / mult);
        }
    }
    n.to_string()
}

/// Parses a boolean: `true` or `false` in any ASCII case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    if s.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err("expected true or false".to_owned())
    }
}

/// An integer in `min..=max`.
pub(crate) fn int(s: &str, min: u32, max: u32) -> Result<u32, String> {
    let problem = || format!("expected an integer in {min}..={max}");
    if !s.bytes().all(|b| b.is_ascii_digit()) || s.is_empty() {
        return Err(problem());
    }
    match s.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(problem()),
    }
}

/// A finite number in `min..=max`.
pub(crate) fn number(s: &str, min: f64, max: f64) -> Result<f64, String> {
    match finite(s) {
        Some(x) if (min..=max).contains(&x) => Ok(x),
        _ => Err(format!("expected a number in {min}..={max}")),
    }
}

/// A finite number in `(min, max]`: rates must exceed 1.
pub(crate) fn number_above(s: &str, min: f64, max: f64) -> Result<f64, String> {
    match finite(s) {
        Some(x) if x > min && x <= max => Ok(x),
        _ => Err(format!(
            "expected a number greater than {min}, at most {max}"
        )),
    }
}

fn finite(s: &str) -> Option<f64> {
    // Rust accepts "inf" and "NaN"; configuration values must be plain decimal numbers.
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// A duration in `min..=max`.
pub(crate) fn duration_in(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let range = format!("{}..={}", format_duration(min), format_duration(max));
    match parse_duration(s) {
        Ok(d) if (min..=max).contains(&d) => Ok(d),
        Ok(_) => Err(format!("expected a duration in {range}")),
        Err(why) => Err(format!("{why}; expected a duration in {range}")),
    }
}

/// `off` (`None`), or a duration in `min..=max`.
pub(crate) fn off_or_duration_in(
    s: &str,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, String> {
    let range = format!(
        "off or a duration in {}..={}",
        format_duration(min),
        format_duration(max)
    );
    match s {
        "off" => Ok(None),
        _ => match parse_duration(s) {
            Ok(d) if (min..=max).contains(&d) => Ok(Some(d)),
            Ok(_) => Err(format!("expected {range}")),
            Err(why) => Err(format!("{why}; expected {range}")),
        },
    }
}

/// A byte size in `min..=max`.
pub(crate) fn bytes_in(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let range = format!("{}..={}", format_bytes(min), format_bytes(max));
    match parse_bytes(s) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("expected a byte size in {range}")),
        Err(why) => Err(format!("{why}; expected a byte size in {range}")),
    }
}

/// One of a fixed set of words.
pub(crate) fn one_of<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| *name == s)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            format!("expected {}", names.join(" or "))
        })
}

/// The rule for `zeroscale.dev/model-name`, shared with the router.
pub const MODEL_NAME_RULE: &str =
    "1-253 characters of a-z, 0-9, '-', '.', '_', starting and ending with a letter or digit";

/// Checks a model name: 1 to 253 characters of lowercase ASCII letters, digits, `-`, `.` and `_`,
/// starting and ending with a letter or digit. Such a name is a valid URL path segment as is
/// (`/v1/models/{name}`) and, without `_`, a DNS-1123 subdomain like the Deployment name that is
/// the default model name.
pub fn validate_model_name(s: &str) -> Result<(), String> {
    let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|&c| ok_char(c) || matches!(c, b'-' | b'.' | b'_'))
        && ok_char(b[0])
        && ok_char(b[b.len() - 1]);
    if valid {
        Ok(())
    } else {
        Err(format!("expected a model name: {MODEL_NAME_RULE}"))
    }
}

/// A DNS-1123 subdomain (Kubernetes object and host names): lowercase labels of a-z, 0-9 and `-`
/// joined by dots, each label starting and ending alphanumeric, at most 253 characters.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A DNS-1123 label: 1-63 characters of a-z, 0-9 and `-`, starting and ending alphanumeric.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| alnum(c) || c == b'-')
        && alnum(b[0])
        && alnum(b[b.len() - 1])
}

/// A DNS-1035 label (Service names): a DNS-1123 label that starts with a letter.
pub(crate) fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// An IANA service name (Kubernetes port names): 1-15 characters of a-z, 0-9 and `-`, at least one
/// letter, no leading, trailing or double `-`.
pub(crate) fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// An HTTP path for scraping: starts with `/`, visible ASCII only, no query or fragment.
pub(crate) fn is_http_path(s: &str) -> bool {
    s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_format() {
        for s in [
            "0s",
            "1ns",
            "500ms",
            "30s",
            "1m30s",
            "2h",
            "1h1m1s1ms1us1ns",
            "800ms",
        ] {
            let d = parse_duration(s).unwrap();
            assert_eq!(format_duration(d), s);
        }
    }

    #[test]
    fn bytes_round_trip_through_format() {
        for (s, n) in [
            ("0", 0),
            ("1000", 1000),
            ("1Ki", 1024),
            ("64Mi", 64 << 20),
            ("3Gi", 3 << 30),
        ] {
            assert_eq!(parse_bytes(s), Ok(n));
            assert_eq!(format_bytes(n), s);
        }
    }
}
