//! Child processes the test kit owns: each runs in its own process group under
//! `setpriv --pdeathsig KILL` (so it dies with us even if we are killed), carries a marker in its
//! environment (so leaks can be found by scanning `/proc`), and logs to a file.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Environment variable set on every process the test kit starts; its value identifies the
/// owning [`crate::LocalCluster`].
pub const MARKER_ENV: &str = "ZEROSCALE_TESTKIT_OWNER";

/// Builds a command that runs `program args` in its own process group, killed when our thread
/// that spawned it dies, with `marker` in its environment and output appended to `log`.
pub fn command(
    program: &Path,
    args: &[String],
    marker: &str,
    log: &Path,
) -> std::io::Result<Command> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("setpriv");
    cmd.arg("--pdeathsig")
        .arg("KILL")
        .arg("--")
        .arg(program)
        .args(args)
        .env(MARKER_ENV, marker)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    Ok(cmd)
}

/// A running control-plane process; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct OwnedChild {
    /// Component name, for messages.
    pub name: String,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

impl OwnedChild {
    /// Spawns `cmd` (built with [`command`]).
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> std::io::Result<Self> {
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
        })
    }

    /// Its pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// `Some(status)` if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL to its group at once; waits for it (blocking).
    pub fn kill(&mut self) {
        signal_group(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM to its group, up to `grace` to exit, then SIGKILL; waits for it (blocking).
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            // Its group may still hold children; make sure they go too.
            signal_group(self.pid(), Signal::SIGKILL);
            return;
        }
        signal_group(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                signal_group(self.pid(), Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_group(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Sends `sig` to process group `pgid`, ignoring "no such process".
pub fn signal_group(pgid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(p), sig);
    }
}

/// Last `n` lines of a log file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(f) = File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Pids of live (non-zombie) processes whose environment carries `MARKER_ENV=marker`.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER_ENV}={marker}");
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        // A zombie has exited; it is only waiting to be reaped.
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        if !zombie {
            found.push(pid);
        }
    }
    found
}

/// A short description of each pid (its command line), for leak reports.
pub fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            format!("{p}: {}", cmd.trim())
        })
        .collect::<Vec<_>>()
        .join("\n")
}
