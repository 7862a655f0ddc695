//! linphonec (Debian package `linphone-cli`, liblinphone 5.1 / belle-sip) as a carrier that
//! answers SHA-256 digest challenges (RFC 7616, RFC 8760), which sipp cannot do.
//!
//! Driven through its console on stdin: `ports sip P` (the console ignores the ports of its
//! config file, and makes no listening point without this), `call URI`, then `terminate` and
//! `quit`. It answers the FIRST challenge whose algorithm it supports, so a gateway that lists
//! MD5 first gets MD5: offer SHA-256 alone (or first) to test SHA-256. Its SDP names the host's
//! first non-loopback IPv4 address (it has no setting for that in console mode); nothing is sent
//! there unless the far end sends media.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{self, LOCALHOST, TempDir};

/// The whole run is killed after this.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The file it records into in file mode.
const RECORDED: &str = "recorded.wav";

/// One call placed with linphonec, with its console output and its debug log.
pub struct LinphoneCall {
    pub connected: bool,
    pub stdout: String,
    pub log: String,
    dir: TempDir,
    reported: bool,
}

impl LinphoneCall {
    /// Calls `uri` with digest credentials for `realm`, keeps the call up for `hold`, hangs up
    /// and quits. Bounded by [`DEADLINE`].
    pub fn place(uri: &str, username: &str, password: &str, realm: &str, hold: Duration) -> Self {
        LinphoneCall::place_with(uri, Some((username, password, realm)), "", None, hold)
    }

    /// [`LinphoneCall::place`] with or without credentials (`username`, `password`, `realm`),
    /// `sip` lines added to the `[sip]` section of its configuration (e.g.
    /// `media_encryption=srtp`), and, with `play`, in file mode (`soundcard use files`): it
    /// sends that WAV file as its audio and records what it hears ([`LinphoneCall::recorded`]).
    /// Without, it has no sound card and sends no RTP.
    pub fn place_with(
        uri: &str,
        credentials: Option<(&str, &str, &str)>,
        sip: &str,
        play: Option<&std::path::Path>,
        hold: Duration,
    ) -> Self {
        let (call, ()) =
            LinphoneCall::session(credentials, sip, play, net::free_port(), hold, |stdin| {
                send(stdin, &format!("call {uri}"));
            });
        call
    }

    /// linphonec as the called party: it listens on 127.0.0.1:`sip_port`, answers the first
    /// call by itself (`autoanswer enable`), keeps it up for `hold`, hangs up and quits.
    /// `caller` runs once it listens (it starts whatever places the call); its result is
    /// returned beside the call. `sip` and `play` as in [`LinphoneCall::place_with`].
    pub fn answer<T>(
        sip_port: u16,
        sip: &str,
        play: Option<&std::path::Path>,
        hold: Duration,
        caller: impl FnOnce() -> T,
    ) -> (Self, T) {
        LinphoneCall::session(None, sip, play, sip_port, hold, |stdin| {
            send(stdin, "autoanswer enable");
            // The console takes commands in order: once this one is echoed, autoanswer is on.
            std::thread::sleep(Duration::from_millis(300));
            caller()
        })
    }

    /// One linphonec run: configured, listening on `sip_port`, `go` (place or await a call),
    /// the call kept up for `hold`, then hung up. Bounded by [`DEADLINE`].
    fn session<T>(
        credentials: Option<(&str, &str, &str)>,
        sip: &str,
        play: Option<&std::path::Path>,
        sip_port: u16,
        hold: Duration,
        go: impl FnOnce(&mut ChildStdin) -> T,
    ) -> (Self, T) {
        let dir = TempDir::new("linphone");
        let config = dir.join("linphonerc");
        let username = credentials.map_or("carrier", |(u, _, _)| u);
        let auth = match credentials {
            Some((username, password, realm)) => {
                format!("[auth_info_0]\nusername={username}\npasswd={password}\nrealm={realm}\n")
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "[sip]\nsip_port=-1\nsip_tcp_port=-1\nsip_tls_port=-1\n{sip}\
                 contact=\"carrier\" <sip:{username}@127.0.0.1>\n\
                 [rtp]\naudio_rtp_port={rtp}\nvideo_rtp_port={video}\n\
                 [sound]\nechocancellation=0\n\
                 [video]\nenabled=0\n\
                 {auth}",
                rtp = net::free_media_port(),
                video = net::free_media_port(),
            ),
        )
        .expect("write linphonerc");
        // Where liblinphone keeps its database under HOME: without it the core never reaches
        // its "on" state, and an incoming call gets 503 (an outgoing one does not care).
        std::fs::create_dir_all(dir.join(".local/share/linphone")).expect("linphone's data dir");
        let (stdout_path, log_path) = (dir.join("stdout.log"), dir.join("linphone.log"));
        let out = File::create(&stdout_path).expect("create linphonec's output file");
        let err = out.try_clone().expect("clone the output handle");
        let mut child = Command::new("linphonec")
            .args(["-c", &path(&config), "-d", "6", "-l", &path(&log_path)])
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run linphonec ({e}): install it with `apt-get install linphone-cli` \
                     (tests/run.sh does)"
                )
            });
        let deadline = Instant::now() + DEADLINE;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let read = |p: &PathBuf| {
            std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
        };

        // The console needs a moment before it takes commands.
        wait_for(&stdout_path, "linphonec>", deadline, &mut child);
        // IPv4 in its From and SDP (it guesses an IPv6 address of the host otherwise).
        send(&mut stdin, "ipv6 disable");
        send(&mut stdin, &format!("ports sip {sip_port}"));
        net::wait_bound(LOCALHOST, sip_port, false, Duration::from_secs(5));
        if let Some(play) = play {
            send(&mut stdin, "soundcard use files");
            send(&mut stdin, &format!("play {}", path(play)));
            send(&mut stdin, &format!("record {}", path(&dir.join(RECORDED))));
        }
        let went = go(&mut stdin);
        let outcome = wait_for_any(
            &stdout_path,
            &[" connected.", " error.", " ended ("],
            deadline,
            &mut child,
        );
        let connected = outcome.as_deref() == Some(" connected.");
        if connected {
            std::thread::sleep(hold);
        }
        send(&mut stdin, "terminate");
        std::thread::sleep(Duration::from_millis(500));
        send(&mut stdin, "quit");
        drop(stdin);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let call = LinphoneCall {
            connected,
            stdout: read(&stdout_path),
            log: read(&log_path),
            dir,
            reported: false,
        };
        (call, went)
    }

    /// The `Proxy-Authorization` header lines linphonec sent, in order (from its debug log, which
    /// may show a message more than once). It answers again, with the next nonce-count, on the
    /// requests that follow in the dialog (BYE).
    pub fn proxy_authorizations(&self) -> Vec<String> {
        self.log
            .lines()
            .filter(|l| l.trim_start().to_ascii_lowercase().starts_with("proxy-authorization:"))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// What it heard, as it recorded it in file mode (a WAV file's bytes; empty without).
    pub fn recorded(&self) -> Vec<u8> {
        std::fs::read(self.dir.join(RECORDED)).unwrap_or_default()
    }

    #[track_caller]
    pub fn assert_connected(&mut self) {
        if !self.connected {
            self.reported = true;
            panic!("linphonec's call did not connect\n{}", self.report());
        }
    }

    pub fn report(&self) -> String {
        let log: Vec<&str> = self.log.lines().collect();
        let skip = log.len().saturating_sub(300);
        format!(
            "----- linphonec ({}) -----\n--- console ---\n{}\n--- log (last 300 lines) ---\n{}\n\
             ----- end of linphonec -----",
            self.dir.path().display(),
            self.stdout,
            log[skip..].join("\n")
        )
    }
}

impl Drop for LinphoneCall {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.reported {
            eprintln!("{}", self.report());
        }
    }
}

fn send(stdin: &mut ChildStdin, command: &str) {
    // A console that has exited is reported by the outcome, not here.
    let _ = writeln!(stdin, "{command}");
    let _ = stdin.flush();
}

fn wait_for(file: &PathBuf, needle: &str, deadline: Instant, child: &mut Child) -> bool {
    wait_for_any(file, &[needle], deadline, child).is_some()
}

/// Waits until `file` contains one of `needles`; returns the first one found.
fn wait_for_any(
    file: &PathBuf,
    needles: &[&str],
    deadline: Instant,
    child: &mut Child,
) -> Option<String> {
    loop {
        let text = std::fs::read(file).map(|b| String::from_utf8_lossy(&b).into_owned());
        if let Ok(text) = text {
            let first = needles.iter().filter_map(|n| text.find(n).map(|at| (at, *n))).min();
            if let Some((_, needle)) = first {
                return Some(needle.to_string());
            }
        }
        if Instant::now() >= deadline || !matches!(child.try_wait(), Ok(None)) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_str().expect("temp paths are UTF-8").to_string()
}
