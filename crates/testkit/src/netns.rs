//! Running a test binary inside a private network namespace.
//!
//! EndpointSlices reject loopback addresses, so pods get addresses from 10.244.0.0/16 on the
//! loopback interface of a private network namespace, where traffic cannot leave the machine.
//! [`ensure_private_netns`] is called first in each e2e binary's `main` (and in the
//! `zeroscale-cluster` binary and the `cluster_timing` example): outside the namespace it re-runs
//! the same executable with the same arguments under `unshare --net --mount` and exits with its
//! status.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

/// Set to "1" inside the namespace.
pub const NETNS_ENV: &str = "ZEROSCALE_NETNS";

/// The node's (host's) address inside the namespace; also the API server's advertise address.
/// Pod addresses are allocated from the rest of 10.244.0.0/16.
pub const HOST_IP: &str = "10.244.0.1";

/// Whether we are already inside the private namespace.
pub fn inside() -> bool {
    std::env::var(NETNS_ENV).as_deref() == Ok("1")
}

/// Outside the namespace: re-execs this executable in a new one and exits with its status (never
/// returns). Inside: brings `lo` up, adds [`HOST_IP`], and returns.
///
/// # Panics
/// If `unshare` or `ip` is missing or fails: the message says what to install.
pub fn ensure_private_netns() {
    if inside() {
        setup_inside();
        return;
    }
    let exe = std::env::current_exe().expect("current executable path");
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let mut cmd = tokio::process::Command::new("setpriv");
    // If we die, the namespaced copy dies with us.
    cmd.args(["--pdeathsig", "KILL", "--", "unshare"]);
    // Unprivileged: a user namespace maps us to root so we may configure the network. A private
    // mount namespace too: the real node's mounts (container root filesystems, pod network
    // namespaces) stay in it and vanish with it, even if we are killed.
    cmd.arg(if root { "--net" } else { "-rn" })
        .args(["--mount", "--propagation", "private"]);
    cmd.arg("--")
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env(NETNS_ENV, "1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let status = rt.block_on(async move {
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("running `unshare` (util-linux) to enter a private network namespace failed: {e}; install util-linux and iproute2")
        });
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        // Forward SIGTERM/SIGINT so the inner copy can clean up (stop processes, remove temp
        // dirs) instead of being killed by its death signal.
        loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = term.recv() => forward(pid, Signal::SIGTERM),
                _ = int.recv() => forward(pid, Signal::SIGINT),
            }
        }
    });
    let status = status.unwrap_or_else(|e| panic!("waiting for the namespaced process: {e}"));
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    std::process::exit(code);
}

fn forward(pid: Option<Pid>, sig: Signal) {
    if let Some(pid) = pid {
        let _ = kill(pid, sig);
    }
}

fn setup_inside() {
    ip(&["link", "set", "lo", "up"]);
    // Idempotent: a nested call (e.g. a test binary run twice) finds it already there.
    let out = Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output();
    let present = out
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {HOST_IP}/32")))
        .unwrap_or(false);
    if !present {
        ip(&["addr", "add", &format!("{HOST_IP}/32"), "dev", "lo"]);
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap_or_else(|e| {
        panic!(
            "running `ip {}` failed: {e}; install iproute2",
            args.join(" ")
        )
    });
    assert!(status.success(), "`ip {}` failed: {status}", args.join(" "));
}
