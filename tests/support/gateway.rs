//! `trunkline run` as a child process: the built binary on free loopback ports, serving a specs
//! folder, with its state dir and its log in temp dirs. Ready when `/readyz` answers 200; stopped
//! on drop with SIGTERM, then SIGKILL after 5 s. When the test panics, its log is printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::net::{self, LOCALHOST, TempDir};
pub use super::process::TERM_GRACE;
use super::process::TrunklineProcess;

/// How long `start` waits for `/readyz`.
pub const READY_WITHIN: Duration = Duration::from_secs(10);

/// What to start the gateway with, beyond what every test gets (`--specs`, the listeners, the
/// admin port, `--public-address 127.0.0.1`, `--state-dir`, `--drain-timeout 1`).
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// A carrier-facing UDP listener (`--listen udp://127.0.0.1:P`).
    pub udp: bool,
    /// A carrier-facing TCP listener on the same port number (`--listen tcp://127.0.0.1:P`).
    pub tcp: bool,
    /// A carrier-facing TLS listener on its own port (`--listen tls://127.0.0.1:T`), with a
    /// self-signed certificate for 127.0.0.1 and localhost made for the test
    /// (`--tls-cert`/`--tls-key`).
    pub tls: bool,
    /// More flags, e.g. `["--agent-timeout", "2"]`.
    pub args: Vec<String>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions { udp: true, tcp: true, tls: false, args: Vec::new() }
    }
}

impl GatewayOptions {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

pub struct Gateway {
    /// First, so that the process stops before its folders go.
    process: TrunklineProcess,
    port: u16,
    tls_port: u16,
    internal_port: u16,
    admin: SocketAddr,
    options: GatewayOptions,
    state_dir: TempDir,
    _run_dir: TempDir,
}

impl Gateway {
    /// Starts `trunkline run` on `specs_dir` and waits until `/readyz` says 200 (at most 10 s).
    /// Panics with the gateway's log when it exits or does not get ready in time.
    pub fn start(specs_dir: &Path, options: GatewayOptions) -> Gateway {
        let (mut gateway, args) = Gateway::spawn(specs_dir, options);
        gateway.wait_ready(&args);
        gateway
    }

    /// Starts `trunkline run` like [`Gateway::start`] with options it must refuse: waits (at
    /// most 10 s) for it to exit, asserts it failed, and returns its log.
    pub fn start_refused(specs_dir: &Path, options: GatewayOptions) -> String {
        let (mut gateway, args) = Gateway::spawn(specs_dir, options);
        let status = gateway.process.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| !s.success()),
            "trunkline run did not stop with an error: {status:?}\ncommand: trunkline {}",
            args.join(" ")
        );
        gateway.log_text()
    }

    /// Spawns `trunkline run` and returns at once, with the command's arguments.
    fn spawn(specs_dir: &Path, options: GatewayOptions) -> (Gateway, Vec<String>) {
        let run_dir = TempDir::new("gateway");
        let state_dir = TempDir::new("gateway-state");
        let log = run_dir.join("gateway.log");
        let port = net::free_port();
        let tls_port = net::free_port();
        let internal_port = net::free_port();
        let admin = SocketAddr::from((LOCALHOST, net::free_port()));

        let mut args: Vec<String> = vec!["run".into(), "--specs".into(), path_arg(specs_dir)];
        if options.udp {
            args.extend(["--listen".into(), format!("udp://127.0.0.1:{port}")]);
        }
        if options.tcp {
            args.extend(["--listen".into(), format!("tcp://127.0.0.1:{port}")]);
        }
        if options.tls {
            let (cert, key) = write_certificate(&run_dir);
            args.extend([
                "--listen".into(),
                format!("tls://127.0.0.1:{tls_port}"),
                "--tls-cert".into(),
                path_arg(&cert),
                "--tls-key".into(),
                path_arg(&key),
            ]);
        }
        args.extend([
            "--internal-listen".into(),
            format!("udp://127.0.0.1:{internal_port}"),
            "--internal-listen".into(),
            format!("tcp://127.0.0.1:{internal_port}"),
            "--admin".into(),
            admin.to_string(),
            "--public-address".into(),
            "127.0.0.1".into(),
            "--state-dir".into(),
            path_arg(state_dir.path()),
            "--drain-timeout".into(),
            "1".into(),
        ]);
        args.extend(options.args.iter().cloned());

        let process = TrunklineProcess::spawn("run", &log, &args, |_| {});
        let gateway = Gateway {
            process,
            port,
            tls_port,
            internal_port,
            admin,
            options,
            state_dir,
            _run_dir: run_dir,
        };
        (gateway, args)
    }

    /// Polls `/readyz`; panics (the log is printed by drop) when the process exits or the
    /// deadline passes.
    fn wait_ready(&mut self, args: &[String]) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some((200, _)) = net::http_get(self.admin, "/readyz") {
                return;
            }
            if let Some(status) = self.process.try_wait() {
                panic!(
                    "trunkline run exited ({status}) before it was ready\ncommand: trunkline {}",
                    args.join(" ")
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "trunkline run was not ready (GET /readyz != 200) within {READY_WITHIN:?}\n\
                     command: trunkline {}",
                    args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The carrier-facing UDP (and TCP) address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.port))
    }

    /// The carrier-facing UDP address (panics when started without one).
    pub fn udp(&self) -> SocketAddr {
        assert!(self.options.udp, "the gateway was started without a UDP listener");
        self.addr()
    }

    /// The carrier-facing TCP address (panics when started without one).
    pub fn tcp(&self) -> SocketAddr {
        assert!(self.options.tcp, "the gateway was started without a TCP listener");
        self.addr()
    }

    /// The carrier-facing TLS address (panics when started without one).
    pub fn tls(&self) -> SocketAddr {
        assert!(self.options.tls, "the gateway was started without a TLS listener");
        SocketAddr::from((LOCALHOST, self.tls_port))
    }

    /// The agent-facing (`--internal-listen`) address, UDP and TCP.
    pub fn internal(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.internal_port))
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// `GET path` on the admin port: status and body, `None` when it does not answer.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        net::http_get(self.admin, path)
    }

    /// The value of a Prometheus sample from `/metrics`, by its exact name and labels as printed
    /// (`trunkline_config_reloads_total{result="rejected"}`); `None` when it is not there.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (status, body) = self.admin_get("/metrics")?;
        if status != 200 {
            return None;
        }
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Polls [`Gateway::metric`] until `sample` reaches at least `value`, for at most `within`.
    pub fn wait_metric(&self, sample: &str, value: f64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.metric(sample).is_some_and(|v| v >= value) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Everything the gateway printed so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM (the gateway starts draining) without waiting for the exit.
    pub fn sigterm(&self) {
        self.process.sigterm();
    }

    /// Waits up to `within` for the process to exit; its exit status, `None` when still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit(within)
    }

    /// SIGTERM, then SIGKILL after [`TERM_GRACE`]; returns whether it ended on SIGTERM.
    pub fn stop(&mut self) -> bool {
        self.process.stop()
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files in `dir`.
fn write_certificate(dir: &TempDir) -> (PathBuf, PathBuf) {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).expect("generate a test certificate");
    let (cert, key) = (dir.join("gateway.crt"), dir.join("gateway.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write the test certificate");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write the test key");
    (cert, key)
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_string()
}
