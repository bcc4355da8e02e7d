//! One naming scheme for the environment: every flag `--foo-bar` of both binaries reads
//! `ZEROSCALE_FOO_BAR` when it is not on the command line. The names the downward API sets
//! (`POD_NAME`, `POD_NAMESPACE`) stay as Kubernetes spells them.
//!
//! The names used before this scheme keep working for one release: [`parse`] reads an old
//! name when the new one is unset (as the flag's default, so the command line and the new
//! name still win) and logs a deprecation warning naming both. The tables of renamed
//! variables are here, [`ACTIVATOR_RENAMES`] and [`AUTOSCALER_RENAMES`], so both binaries
//! follow the same rule.

use clap::{ArgMatches, Command, Parser};

/// An environment variable renamed to the `ZEROSCALE_<FLAG>` scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renamed {
    /// The clap id of the flag (its field name).
    pub arg: &'static str,
    /// The name read before (deprecated).
    pub old: &'static str,
    /// The name read now.
    pub new: &'static str,
}

const fn renamed(arg: &'static str, old: &'static str, new: &'static str) -> Renamed {
    Renamed { arg, old, new }
}

/// The activator's renamed variables.
pub const ACTIVATOR_RENAMES: &[Renamed] = &[
    renamed("listen", "ACTIVATOR_LISTEN", "ZEROSCALE_LISTEN"),
    renamed(
        "admin_listen",
        "ACTIVATOR_ADMIN_LISTEN",
        "ZEROSCALE_ADMIN_LISTEN",
    ),
    renamed(
        "autoscaler_url",
        "AUTOSCALER_URL",
        "ZEROSCALE_AUTOSCALER_URL",
    ),
    renamed("namespaces", "WATCH_NAMESPACES", "ZEROSCALE_NAMESPACES"),
    renamed("drain_timeout", "DRAIN_TIMEOUT", "ZEROSCALE_DRAIN_TIMEOUT"),
    renamed(
        "shutdown_delay",
        "SHUTDOWN_DELAY",
        "ZEROSCALE_SHUTDOWN_DELAY",
    ),
    renamed(
        "header_read_timeout",
        "HEADER_READ_TIMEOUT",
        "ZEROSCALE_HEADER_READ_TIMEOUT",
    ),
    renamed(
        "keep_alive_timeout",
        "KEEP_ALIVE_TIMEOUT",
        "ZEROSCALE_KEEP_ALIVE_TIMEOUT",
    ),
    renamed(
        "max_header_bytes",
        "MAX_HEADER_BYTES",
        "ZEROSCALE_MAX_HEADER_BYTES",
    ),
    renamed("workers", "ACTIVATOR_WORKERS", "ZEROSCALE_WORKERS"),
    renamed("relay", "ACTIVATOR_RELAY", "ZEROSCALE_RELAY"),
];

/// The autoscaler's renamed variables (its other flags already had `ZEROSCALE_` names).
pub const AUTOSCALER_RENAMES: &[Renamed] = &[renamed(
    "kubeconfig",
    "KUBECONFIG_PATH",
    "ZEROSCALE_KUBECONFIG",
)];

/// `cmd` with each renamed flag defaulting to its old variable's value, where only the old
/// name is set (`lookup` reads the environment). Returns the deprecation warnings to log.
///
/// Panics (clap's debug check) when a table names a flag `cmd` does not have: a test of each
/// binary's flags catches a table out of step.
pub fn with_old_names(
    mut cmd: Command,
    renames: &[Renamed],
    lookup: impl Fn(&str) -> Option<String>,
) -> (Command, Vec<String>) {
    let mut warnings = Vec::new();
    for r in renames {
        // A typo in a table must not go unnoticed until someone sets the old name.
        assert!(
            cmd.get_arguments().any(|a| a.get_id() == r.arg),
            "no flag {:?} for {}",
            r.arg,
            r.new
        );
        if lookup(r.new).is_some() {
            continue;
        }
        let Some(value) = lookup(r.old) else { continue };
        warnings.push(format!(
            "environment variable {} is deprecated and will be removed in the next release; \
             use {}",
            r.old, r.new
        ));
        // Once at start, a few short strings: leaked so clap can keep them.
        let value: &'static str = Box::leak(value.into_boxed_str());
        cmd = cmd.mut_arg(r.arg, |a| a.default_value(value));
    }
    (cmd, warnings)
}

/// Parses the process's flags as `P`, honouring the old variable names of `renames` with a
/// logged deprecation warning each (tracing must be set up first). Exits on bad flags, as
/// clap does.
pub fn parse<P: Parser>(renames: &[Renamed]) -> P {
    let (cmd, warnings) = with_old_names(P::command(), renames, |name| std::env::var(name).ok());
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let matches: ArgMatches = cmd.get_matches();
    P::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    #[derive(Debug, Parser)]
    struct Args {
        #[arg(long, env = "ZEROSCALE_TEST_K8S_GLUE_TIMEOUT", default_value = "30s")]
        timeout: String,
        #[arg(
            long,
            env = "ZEROSCALE_TEST_K8S_GLUE_NAMESPACES",
            value_delimiter = ','
        )]
        namespaces: Vec<String>,
        #[arg(long, env = "ZEROSCALE_TEST_K8S_GLUE_URL")]
        url: Option<String>,
    }

    const RENAMES: &[Renamed] = &[
        renamed("timeout", "OLD_TIMEOUT", "ZEROSCALE_TEST_K8S_GLUE_TIMEOUT"),
        renamed(
            "namespaces",
            "OLD_NAMESPACES",
            "ZEROSCALE_TEST_K8S_GLUE_NAMESPACES",
        ),
        renamed("url", "OLD_URL", "ZEROSCALE_TEST_K8S_GLUE_URL"),
    ];

    fn parse_with(env: &[(&str, &str)], argv: &[&str]) -> (Args, Vec<String>) {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (cmd, warnings) = with_old_names(Args::command(), RENAMES, |n| env.get(n).cloned());
        let m = cmd
            .try_get_matches_from(std::iter::once("bin").chain(argv.iter().copied()))
            .unwrap();
        (Args::from_arg_matches(&m).unwrap(), warnings)
    }

    #[test]
    fn an_old_name_is_read_with_a_warning_when_the_new_one_is_unset() {
        let (a, w) = parse_with(
            &[
                ("OLD_TIMEOUT", "5s"),
                ("OLD_NAMESPACES", "a,b"),
                ("OLD_URL", "http://x"),
            ],
            &[],
        );
        assert_eq!(a.timeout, "5s");
        assert_eq!(a.namespaces, ["a", "b"]);
        assert_eq!(a.url.as_deref(), Some("http://x"));
        assert_eq!(w.len(), 3);
        assert!(w[0].contains("OLD_TIMEOUT is deprecated"), "{w:?}");
        assert!(
            w[0].ends_with("use ZEROSCALE_TEST_K8S_GLUE_TIMEOUT"),
            "{w:?}"
        );
    }

    #[test]
    fn the_command_line_beats_an_old_name() {
        let (a, _) = parse_with(&[("OLD_TIMEOUT", "5s")], &["--timeout", "7s"]);
        assert_eq!(a.timeout, "7s");
    }

    #[test]
    fn nothing_set_keeps_the_defaults_and_says_nothing() {
        let (a, w) = parse_with(&[], &[]);
        assert_eq!(a.timeout, "30s");
        assert!(a.namespaces.is_empty());
        assert!(a.url.is_none());
        assert!(w.is_empty());
    }

    #[test]
    fn a_set_new_name_ignores_the_old_one() {
        // Only the lookup sees the new name here, so clap falls back to the default: what
        // matters is that the old value is not used and no warning is logged.
        let (a, w) = parse_with(
            &[
                ("OLD_TIMEOUT", "5s"),
                ("ZEROSCALE_TEST_K8S_GLUE_TIMEOUT", "9s"),
            ],
            &[],
        );
        assert_ne!(a.timeout, "5s");
        assert!(w.is_empty());
    }

    #[test]
    #[should_panic(expected = "no flag")]
    fn a_table_naming_a_missing_flag_panics() {
        with_old_names(
            Args::command(),
            &[renamed("nope", "OLD", "ZEROSCALE_NOPE")],
            |_| None,
        );
    }

    #[test]
    fn new_names_follow_the_scheme() {
        for r in ACTIVATOR_RENAMES.iter().chain(AUTOSCALER_RENAMES) {
            assert_eq!(
                r.new,
                format!("ZEROSCALE_{}", r.arg.to_uppercase()),
                "{r:?}"
            );
        }
    }
}
