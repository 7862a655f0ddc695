//! sipp as the carrier (UAC) and as the agent runtime (UAS), on 127.0.0.x, bounded in time.
//!
//! Every run gets, unless its args already name the flag: `-i 127.0.0.1 -bind_local`, free SIP,
//! media and control ports, `-m 1`, `-timeout 20 -timeout_error`, `-nostdin`, and
//! `-trace_err -trace_msg` into a temp dir whose files are printed when a test fails. Carrier runs
//! also get `-cid_str carrier-%u-%p@%s`, so the agent side can tell the carrier's Call-ID.
//! The harness kills sipp 5 s after its own `-timeout`. sipp exits 0 only when every call
//! succeeded (1: a call failed, 99: no call processed, 255: fatal error, 254: cannot bind).

use std::cell::Cell;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::net::{self, LOCALHOST, TempDir};

/// The scenario folder, `tests/sipp/`.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("sipp")
}

/// sipp's `-timeout` when the args do not set one, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 20;
/// How long after its own `-timeout` the harness kills a sipp that is still running.
pub const KILL_MARGIN: Duration = Duration::from_secs(5);
/// How long `uas` waits for the UAS to bind its port.
pub const BIND_WITHIN: Duration = Duration::from_secs(5);

/// The Call-ID prefix of every carrier call (`-cid_str`); agent_check_invite.xml fails when it
/// reaches the agent.
pub const CARRIER_CALL_ID_PREFIX: &str = "carrier-";

/// Places calls with `scenario` (a file under `tests/sipp/`) to `target` and waits for sipp to
/// exit (bounded by `-timeout` plus [`KILL_MARGIN`]).
///
/// ```ignore
/// uac("carrier_call.xml", gateway.udp(), &["-s", "+14155550100", "-d", "300"]).assert_success();
/// ```
/// The arguments of the agent runtime's outbound-call scenarios (`agent_outbound_*.xml`): the
/// number to dial, the trunk (`X-Trunkline-Outbound-Trunk`), agent `support`, From user
/// `agent-bot`, a 20 s timeout, then `extra`.
pub fn outbound_agent_args<'a>(number: &'a str, trunk: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-s",
        number,
        "-key",
        "trunk",
        trunk,
        "-key",
        "agent",
        "support",
        "-key",
        "from_user",
        "agent-bot",
        "-timeout",
        "20",
    ];
    args.extend_from_slice(extra);
    args
}

pub fn uac(scenario: &str, target: SocketAddr, args: &[&str]) -> SippResult {
    let run = Run::new(Role::Uac, scenario, args, Some(target), None);
    run.spawn().wait()
}

/// Starts sipp as a UAS with `scenario` on 127.0.0.1:`port` (or the `-i` of `args`), waits until
/// it has bound the port, and returns without waiting for the calls.
///
/// ```ignore
/// let agent = uas("agent_answer.xml", net::free_port(), &[]);
/// // ... place the call through the gateway ...
/// agent.wait().assert_success();
/// ```
pub fn uas(scenario: &str, port: u16, args: &[&str]) -> SippHandle {
    let run = Run::new(Role::Uas, scenario, args, None, Some(port));
    let tcp = run.tcp;
    let ip = run.ip;
    let handle = run.spawn();
    if !net::wait_bound(ip, port, tcp, BIND_WITHIN) {
        let result = handle.kill();
        panic!("sipp UAS did not bind {ip}:{port} within {BIND_WITHIN:?}\n{}", result.report());
    }
    handle
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Uac,
    Uas,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Uac => "carrier UAC",
            Role::Uas => "agent UAS",
        }
    }
}

struct Run {
    role: Role,
    scenario: String,
    args: Vec<String>,
    ip: Ipv4Addr,
    port: u16,
    tcp: bool,
    timeout: Duration,
    dir: TempDir,
}

fn has(args: &[&str], flag: &str) -> bool {
    args.contains(&flag)
}

fn value_of<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1)).copied()
}

/// sipp's time values: a number with an optional unit (`s` by default for -timeout).
fn parse_secs(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Some(ms) = value.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let secs = value.strip_suffix('s').unwrap_or(value);
    secs.parse().ok().map(Duration::from_secs)
}

impl Run {
    fn new(
        role: Role,
        scenario: &str,
        args: &[&str],
        target: Option<SocketAddr>,
        port: Option<u16>,
    ) -> Run {
        let path = scenario_dir().join(scenario);
        assert!(path.is_file(), "no sipp scenario {}", path.display());
        let dir =
            TempDir::new(&format!("sipp-{}", scenario.trim_end_matches(".xml").replace('/', "-")));
        let ip: Ipv4Addr = value_of(args, "-i")
            .map(|ip| ip.parse().expect("-i takes an IPv4 address"))
            .unwrap_or(LOCALHOST);
        let tcp = value_of(args, "-t").is_some_and(|t| t.starts_with('t'));
        let port = match (port, value_of(args, "-p")) {
            (Some(p), _) => p,
            (None, Some(p)) => p.parse().expect("-p takes a port"),
            (None, None) => net::free_port(),
        };
        let timeout = value_of(args, "-timeout")
            .map(|t| parse_secs(t).expect("-timeout takes seconds"))
            .unwrap_or(Duration::from_secs(DEFAULT_TIMEOUT_SECS));

        let mut full: Vec<String> = Vec::new();
        if let Some(target) = target {
            full.push(target.to_string());
        }
        full.extend(["-sf".into(), path.to_str().expect("UTF-8 path").into()]);
        if !has(args, "-i") {
            full.extend(["-i".into(), ip.to_string()]);
        }
        if !has(args, "-bind_local") {
            full.push("-bind_local".into());
        }
        if !has(args, "-p") {
            full.extend(["-p".into(), port.to_string()]);
        }
        if !has(args, "-mp") {
            full.extend(["-mp".into(), net::free_media_port().to_string()]);
        }
        if !has(args, "-cp") {
            full.extend(["-ci".into(), ip.to_string(), "-cp".into(), net::free_port().to_string()]);
        }
        if !has(args, "-m") {
            full.extend(["-m".into(), "1".into()]);
        }
        if !has(args, "-timeout") {
            full.extend(["-timeout".into(), format!("{}s", timeout.as_secs())]);
        }
        if !has(args, "-timeout_error") {
            full.push("-timeout_error".into());
        }
        if role == Role::Uac && !has(args, "-cid_str") {
            full.extend(["-cid_str".into(), format!("{CARRIER_CALL_ID_PREFIX}%u-%p@%s")]);
        }
        full.push("-nostdin".into());
        full.extend([
            "-trace_err".into(),
            "-error_file".into(),
            path_arg(&dir.join("errors.log")),
            "-trace_msg".into(),
            "-message_file".into(),
            path_arg(&dir.join("messages.log")),
        ]);
        full.extend(args.iter().map(|a| a.to_string()));
        Run { role, scenario: scenario.to_string(), args: full, ip, port, tcp, timeout, dir }
    }

    fn spawn(self) -> SippHandle {
        let screen = File::create(self.dir.join("screen.log")).expect("create sipp's screen log");
        let screen_err = screen.try_clone().expect("clone the screen log handle");
        let child = Command::new("sipp")
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(screen)
            .stderr(screen_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run sipp ({e}): install it with `apt-get install sip-tester` (tests/run.sh does)")
            });
        let deadline = Instant::now() + self.timeout + KILL_MARGIN;
        SippHandle { inner: Some((child, self)), deadline }
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_string()
}

/// A running sipp (a UAS waiting for calls). Killed on drop; its traces are printed when the test
/// panics.
pub struct SippHandle {
    inner: Option<(Child, Run)>,
    deadline: Instant,
}

impl SippHandle {
    /// The SIP port it listens on.
    pub fn port(&self) -> u16 {
        self.inner.as_ref().map(|(_, run)| run.port).unwrap_or_default()
    }

    /// Waits for sipp to exit on its own (it does after `-m` calls or `-timeout`); kills it at
    /// the harness deadline.
    pub fn wait(mut self) -> SippResult {
        let (mut child, run) = self.inner.take().expect("a handle is waited for once");
        let mut killed = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= self.deadline => {
                    let _ = child.kill();
                    killed = true;
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        SippResult { run, status, killed, reported: Cell::new(false) }
    }

    /// Kills sipp now (a UAS the test no longer needs) and returns what it did so far.
    pub fn kill(mut self) -> SippResult {
        let (mut child, run) = self.inner.take().expect("a handle is killed once");
        let _ = child.kill();
        let status = child.wait().ok();
        SippResult { run, status, killed: true, reported: Cell::new(false) }
    }
}

impl Drop for SippHandle {
    fn drop(&mut self) {
        if let Some((mut child, run)) = self.inner.take() {
            let _ = child.kill();
            let status = child.wait().ok();
            // Dropping the result prints its traces when the test is panicking.
            drop(SippResult { run, status, killed: true, reported: Cell::new(false) });
        }
    }
}

/// One SIP message from sipp's message trace.
#[derive(Clone, Debug)]
pub struct Traced {
    pub sent: bool,
    pub text: String,
}

impl Traced {
    /// The status code, when the message is a response.
    pub fn status(&self) -> Option<u16> {
        self.text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    /// The first line: `INVITE sip:... SIP/2.0` or `SIP/2.0 200 OK`.
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }
}

/// How a sipp run ended, with its traces (kept until drop).
pub struct SippResult {
    run: Run,
    status: Option<ExitStatus>,
    killed: bool,
    reported: Cell<bool>,
}

impl SippResult {
    /// sipp's exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Exit code 0: every call succeeded.
    pub fn success(&self) -> bool {
        !self.killed && self.code() == Some(0)
    }

    #[track_caller]
    pub fn assert_success(&self) {
        if !self.success() {
            self.reported.set(true);
            panic!(
                "sipp {} {} failed\n{}",
                self.run.role.as_str(),
                self.run.scenario,
                self.report()
            );
        }
    }

    /// Exit code 1: sipp ran and at least one call failed (for the checks of the scenarios
    /// themselves).
    #[track_caller]
    pub fn assert_calls_failed(&self) {
        if self.killed || self.code() != Some(1) {
            self.reported.set(true);
            panic!(
                "sipp {} {} was expected to fail its call (exit 1)\n{}",
                self.run.role.as_str(),
                self.run.scenario,
                self.report()
            );
        }
    }

    /// The trace directory (errors.log, messages.log, screen.log).
    pub fn dir(&self) -> &Path {
        self.run.dir.path()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read(self.run.dir.join(file))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// sipp's error log: unexpected messages, failed regexps, timeouts.
    pub fn errors(&self) -> String {
        self.read("errors.log")
    }

    /// Every SIP message sipp sent or received, in order.
    pub fn messages(&self) -> Vec<Traced> {
        let log = self.read("messages.log");
        let mut out = Vec::new();
        for block in log.split("----------------------------------------------- ").skip(1) {
            let mut lines = block.splitn(3, '\n');
            let _timestamp = lines.next();
            let what = lines.next().unwrap_or_default();
            let text = lines.next().unwrap_or_default().trim_start_matches(['\r', '\n']);
            let sent = what.contains(" sent ");
            out.push(Traced { sent, text: text.trim_end().to_string() });
        }
        out
    }

    /// The messages sipp received.
    pub fn received(&self) -> Vec<Traced> {
        self.messages().into_iter().filter(|m| !m.sent).collect()
    }

    /// The status codes of the responses sipp received, in order (with retransmissions).
    pub fn received_codes(&self) -> Vec<u16> {
        self.received().iter().filter_map(Traced::status).collect()
    }

    /// What went wrong, for a failure message: the command, the exit, the error log, the end of
    /// the message trace and of the screen.
    pub fn report(&self) -> String {
        let exit = match (self.killed, self.status) {
            (true, _) => "killed by the harness (deadline or no longer needed)".to_string(),
            (false, Some(s)) => match s.code() {
                Some(1) => format!("{s} (a call failed)"),
                Some(99) => format!("{s} (no call was processed)"),
                Some(254) => format!("{s} (cannot bind a socket: a port taken by another test?)"),
                Some(255) => format!("{s} (fatal error, see errors.log and the screen)"),
                _ => s.to_string(),
            },
            (false, None) => "unknown".to_string(),
        };
        format!(
            "----- sipp {role} {scenario} -----\n\
             command: sipp {command}\n\
             exit: {exit}\n\
             --- errors.log ---\n{errors}\n\
             --- messages.log (last 200 lines) ---\n{messages}\n\
             --- screen (last 40 lines) ---\n{screen}\n\
             ----- end of sipp {role} {scenario} -----",
            role = self.run.role.as_str(),
            scenario = self.run.scenario,
            command = self.run.args.join(" "),
            errors = tail(&self.errors(), 100),
            messages = tail(&self.read("messages.log"), 200),
            screen = tail(&self.read("screen.log"), 40),
        )
    }
}

impl Drop for SippResult {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.reported.get() {
            eprintln!("{}", self.report());
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    all[skip..].join("\n")
}
