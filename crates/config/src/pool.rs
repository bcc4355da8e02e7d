//! Capacity pools as configured: the ConfigMap's `pools` (each pool's capacity, in replicas or
//! in a resource such as `nvidia.com/gpu`) and what one replica of a Deployment counts in its
//! pool (its pod template's requests of the pool's resource).
//!
//! Amounts are kept in thousandths of a unit (Kubernetes' milli-units), so `cpu: 500m` and
//! `nvidia.com/gpu: 2` are counted with one integer type; a pool counted in replicas counts
//! 1000 per replica.

use std::collections::BTreeMap;
use std::fmt;

use crate::parse::{is_dns1123_label, is_dns1123_subdomain};

/// What `pools` accepts (quoted by its error messages).
pub(crate) const POOLS: &str = "none, or comma-separated NAME=COUNT (replicas) or NAME=QUANTITY RESOURCE (e.g. a100=8 nvidia.com/gpu), NAME a DNS-1123 label, COUNT in 1..=100000";
/// What `zeroscale.dev/pool` accepts.
pub(crate) const POOL_NAME: &str = "the name of a pool in the ConfigMap's pools (a DNS-1123 label)";

/// Thousandths per unit.
pub const MILLI: u64 = 1000;
const MAX_COUNT: u64 = 100_000;

/// One pool's capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolCapacity {
    /// Capacity in thousandths of the resource (or of a replica).
    pub capacity_milli: u64,
    /// The resource a replica is counted by (`None`: replicas).
    pub resource: Option<String>,
}

impl PoolCapacity {
    /// An amount of this pool's unit as a person writes it: `3 nvidia.com/gpu`, `2 replicas`.
    pub fn show(&self, milli: u64) -> String {
        let amount = format_milli(milli);
        match &self.resource {
            Some(r) => format!("{amount} {r}"),
            None if milli == MILLI => "1 replica".to_owned(),
            None => format!("{amount} replicas"),
        }
    }
}

impl fmt::Display for PoolCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(self.capacity_milli))
    }
}

/// `1500` -> `1.5`, `2000` -> `2`.
pub fn format_milli(milli: u64) -> String {
    if milli.is_multiple_of(MILLI) {
        (milli / MILLI).to_string()
    } else {
        let s = format!("{}.{:03}", milli / MILLI, milli % MILLI);
        s.trim_end_matches('0').to_owned()
    }
}

/// Parses `pools`: `none`, or `a100=8 nvidia.com/gpu, small=2`.
pub(crate) fn parse_pools(v: &str) -> Result<BTreeMap<String, PoolCapacity>, String> {
    let mut pools = BTreeMap::new();
    if v == "none" || v.is_empty() {
        return Ok(pools);
    }
    for entry in v.split(',').map(str::trim) {
        let bad = |why: String| Err(format!("{why}; expected {POOLS}"));
        let Some((name, amount)) = entry.split_once('=') else {
            return bad(format!("{entry:?} has no '='"));
        };
        let (name, amount) = (name.trim(), amount.trim());
        if !is_dns1123_label(name) {
            return bad(format!("pool name {name:?} is not a DNS-1123 label"));
        }
        let pool = match amount.split_once(char::is_whitespace) {
            None => match amount.parse::<u64>() {
                Ok(n) if (1..=MAX_COUNT).contains(&n) => PoolCapacity {
                    capacity_milli: n * MILLI,
                    resource: None,
                },
                _ => {
                    return bad(format!(
                        "pool {name}: {amount:?} is not a count of replicas"
                    ));
                }
            },
            Some((quantity, resource)) => {
                let resource = resource.trim();
                if !is_resource_name(resource) {
                    return bad(format!(
                        "pool {name}: {resource:?} is not a resource name (such as nvidia.com/gpu or cpu)"
                    ));
                }
                match parse_quantity(quantity) {
                    Ok(q) if q > 0 => PoolCapacity {
                        capacity_milli: q,
                        resource: Some(resource.to_owned()),
                    },
                    Ok(_) => return bad(format!("pool {name}: the capacity must be above 0")),
                    Err(why) => return bad(format!("pool {name}: {why}")),
                }
            }
        };
        if pools.insert(name.to_owned(), pool).is_some() {
            return bad(format!("pool {name} is listed twice"));
        }
    }
    Ok(pools)
}

/// A Kubernetes resource name: `cpu`, `memory`, or `domain/name` (`nvidia.com/gpu`).
fn is_resource_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

/// A Kubernetes quantity (`2`, `500m`, `1.5`, `16Gi`, `1e3`) in thousandths, rounded up as
/// Kubernetes rounds a request up.
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a quantity (such as 2, 500m, 1.5 or 16Gi)");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // (numerator, denominator) of the suffix's multiplier.
    let (num, den): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        e if e.starts_with(['e', 'E']) => match e[1..].parse::<u32>() {
            Ok(x) if x <= 18 => (10u128.pow(x), 1),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || frac.len() > 9 {
        return Err(bad());
    }
    let digits: String = [int, frac].concat();
    let mantissa: u128 = digits.parse().map_err(|_| bad())?;
    let scale = 10u128.pow(frac.len() as u32);
    let top = mantissa
        .checked_mul(num)
        .and_then(|x| x.checked_mul(u128::from(MILLI)))
        .ok_or_else(bad)?;
    let milli = top.div_ceil(scale * den);
    u64::try_from(milli).map_err(|_| bad())
}

/// What one replica counts in a pool: 1000 (one replica) when the pool counts replicas, else
/// the pod's request of the pool's resource in thousandths, as the scheduler counts it: per
/// container its request, or its limit when it has no request (Kubernetes then defaults the
/// request to the limit), summed over the containers; at least the largest init container's.
/// Each item is a container's `(request, limit)` of the resource.
pub fn replica_units<'a>(
    pool: &PoolCapacity,
    containers: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
    init_containers: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> Result<u64, String> {
    if pool.resource.is_none() {
        return Ok(MILLI);
    }
    let one = |(request, limit): (Option<&str>, Option<&str>)| -> Result<u64, String> {
        request.or(limit).map_or(Ok(0), parse_quantity)
    };
    let mut sum = 0u64;
    for c in containers {
        sum = sum.saturating_add(one(c)?);
    }
    let mut init = 0u64;
    for c in init_containers {
        init = init.max(one(c)?);
    }
    Ok(sum.max(init))
}

/// Checks `zeroscale.dev/pool` against the pools configured.
pub(crate) fn check_pool_name(
    v: &str,
    pools: &BTreeMap<String, PoolCapacity>,
) -> Result<String, String> {
    if !is_dns1123_label(v) {
        return Err(format!("expected {POOL_NAME}"));
    }
    if !pools.contains_key(v) {
        let known: Vec<&str> = pools.keys().map(String::as_str).collect();
        let known = if known.is_empty() {
            "none are configured".to_owned()
        } else {
            format!("configured: {}", known.join(", "))
        };
        return Err(format!(
            "pool {v:?} is not in the ConfigMap's pools ({known}); the Deployment is scaled outside any pool; expected {POOL_NAME}"
        ));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_thousandths() {
        for (q, milli) in [
            ("2", 2000),
            ("500m", 500),
            ("1.5", 1500),
            ("0.1", 100),
            ("1Ki", 1_024_000),
            ("16Gi", 16 * (1u64 << 30) * 1000),
            ("1e3", 1_000_000),
            ("1k", 1_000_000),
            ("1n", 1),
            ("1500u", 2),
        ] {
            assert_eq!(parse_quantity(q), Ok(milli), "{q}");
        }
        for q in [
            "",
            "-1",
            "1.2.3",
            "2 gpus",
            "1Qi",
            ".",
            "1e99",
            "99999999999999999999Pi",
        ] {
            assert!(parse_quantity(q).is_err(), "{q}");
        }
    }

    #[test]
    fn pools_in_replicas_and_in_a_resource() {
        let pools = parse_pools("a100=8 nvidia.com/gpu, small=2 ,cpu-pool=16 cpu").unwrap();
        assert_eq!(
            pools["a100"],
            PoolCapacity {
                capacity_milli: 8000,
                resource: Some("nvidia.com/gpu".into())
            }
        );
        assert_eq!(pools["small"].to_string(), "2 replicas");
        assert_eq!(pools["a100"].show(2500), "2.5 nvidia.com/gpu");
        assert_eq!(pools["cpu-pool"].resource.as_deref(), Some("cpu"));
        assert!(parse_pools("none").unwrap().is_empty());
    }

    #[test]
    fn bad_pools_say_what_is_wrong() {
        for (v, want) in [
            ("a100", "has no '='"),
            ("A100=8", "not a DNS-1123 label"),
            ("a=0", "not a count of replicas"),
            ("a=eight", "not a count of replicas"),
            ("a=8 nvidia.com/", "not a resource name"),
            ("a=8x nvidia.com/gpu", "not a quantity"),
            ("a=0 cpu", "above 0"),
            ("a=1, a=2", "listed twice"),
        ] {
            let e = parse_pools(v).unwrap_err();
            assert!(e.contains(want) && e.contains(POOLS), "{v}: {e}");
        }
    }

    #[test]
    fn a_replica_counts_its_requests_of_the_pool_resource() {
        let gpu = PoolCapacity {
            capacity_milli: 8000,
            resource: Some("nvidia.com/gpu".into()),
        };
        // Two containers (one with a limit only), an init container asking less.
        let units = replica_units(
            &gpu,
            [(Some("2"), Some("2")), (None, Some("1"))],
            [(Some("1"), None)],
        );
        assert_eq!(units, Ok(3000));
        // An init container asking more sets the pod's request.
        assert_eq!(
            replica_units(&gpu, [(Some("1"), None)], [(Some("4"), None)]),
            Ok(4000)
        );
        assert_eq!(replica_units(&gpu, [(None, None)], []), Ok(0));
        assert!(replica_units(&gpu, [(Some("two"), None)], []).is_err());
        let replicas = PoolCapacity {
            capacity_milli: 2000,
            resource: None,
        };
        assert_eq!(
            replica_units(&replicas, [(Some("two"), None)], []),
            Ok(1000)
        );
    }

    #[test]
    fn an_unknown_pool_names_the_configured_ones() {
        let pools = parse_pools("a100=8 nvidia.com/gpu, t4=4").unwrap();
        assert_eq!(check_pool_name("t4", &pools), Ok("t4".into()));
        let e = check_pool_name("h100", &pools).unwrap_err();
        assert!(
            e.contains("configured: a100, t4") && e.contains("outside any pool"),
            "{e}"
        );
        let e = check_pool_name("h100", &BTreeMap::new()).unwrap_err();
        assert!(e.contains("none are configured"), "{e}");
    }
}
