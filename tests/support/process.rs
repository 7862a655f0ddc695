//! A `trunkline` child process with its log in a file: SIGTERM, waiting for the exit, and on
//! drop SIGTERM then SIGKILL after [`TERM_GRACE`], with the log printed when the test panics.
//! `gateway::Gateway` (`trunkline run`), tests/gateway_source.rs (`trunkline gateway`) and
//! tests/operator_e2e.rs (`trunkline operator` and `gateway`) build on it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long drop waits after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

pub struct TrunklineProcess {
    /// What the log section calls it: `run`, `gateway`, `operator-a`...
    name: String,
    child: Child,
    log: PathBuf,
}

impl TrunklineProcess {
    /// Spawns the built binary with `args`, stdout and stderr into `log`, `NO_COLOR` set and
    /// `RUST_LOG` defaulting to `info,trunkline=debug` (unless the test's environment sets it);
    /// `configure` adds or overrides the rest of the environment.
    pub fn spawn(
        name: &str,
        log: &Path,
        args: &[String],
        configure: impl FnOnce(&mut Command),
    ) -> TrunklineProcess {
        let out = File::create(log).expect("create the process log");
        let err = out.try_clone().expect("clone the process log handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_trunkline"));
        command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,trunkline=debug");
        }
        // A log file, not a terminal: no colour codes in the failure output.
        command.env("NO_COLOR", "1");
        configure(&mut command);
        let child = command.spawn().expect("spawn the trunkline binary");
        TrunklineProcess { name: name.to_string(), child, log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn sigterm(&self) {
        // std has no SIGTERM and the crate forbids unsafe: the shell's builtin kill sends it.
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits up to `within` for the process to exit; its exit status, `None` when still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after [`TERM_GRACE`]; returns whether it ended on SIGTERM.
    pub fn stop(&mut self) -> bool {
        if !self.is_running() {
            return true;
        }
        self.sigterm();
        if self.wait_exit(TERM_GRACE).is_some() {
            return true;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// Everything it printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_section(&self) -> String {
        format!(
            "----- trunkline {} log ({}) -----\n{}\n----- end of trunkline {} log -----",
            self.name,
            self.log.display(),
            self.log_text(),
            self.name
        )
    }
}

impl Drop for TrunklineProcess {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.log_section());
        }
    }
}
