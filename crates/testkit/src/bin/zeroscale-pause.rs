//! `zeroscale-pause`: the sandbox ("pause") container of the test node's pods, so the node needs
//! no image from a registry. As PID 1 of the pod it holds the pod's namespaces open, reaps any
//! orphan handed to it, and exits on SIGTERM or SIGINT (PID 1 has no default signal actions).

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn main() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("zeroscale-pause: blocking signals: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("zeroscale-pause: waiting for a signal: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Collects every exited child without blocking.
fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
