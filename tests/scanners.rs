//! Scanners as real attackers (issue 15 item 8): SIPVicious (Debian package `sipvicious`)
//! against a running gateway while a carrier's calls go on. `svwar` enumerates no number with
//! INVITE, REGISTER or OPTIONS; `svcrack` guessing the trunk's password from a dictionary that
//! holds it at line 30 is locked out after 5 refused answers and never finds it. Each tool run
//! is bounded (`timeout`); the tests are skipped, saying why, when the tools are not installed
//! (tests/run.sh installs them).
//!
//! svcrack binds the wildcard address whatever `-b` says (its main does not pass the option on),
//! so it always calls from 127.0.0.1; the carrier calls from 127.0.0.2 here. svcrack's digest
//! `uri` is the bare target (`sip:127.0.0.1`) while its Request-URI names the number, so the
//! gateway refuses each of its answers as `DigestUriMismatch` even with the right password;
//! what stops it from trying on is the lockout, which the test checks by counting.

#![allow(clippy::panic)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, TempDir, Trunk, free_port};

const NUMBER: &str = "+14155550100";
const USERNAME: &str = "acme";
const PASSWORD: &str = "s3cret-acme";
const CARRIER_IP: &str = "127.0.0.2";

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED: {name} is not installed (apt-get install sipvicious; tests/run.sh does)"
        );
    }
    found
}

/// Runs a SIPVicious tool for at most `within`; its stdout and stderr together.
fn run(within: Duration, program: &str, args: &[&str]) -> String {
    let secs = within.as_secs().to_string();
    let started = Instant::now();
    let output = Command::new("timeout")
        .args(["-k", "2", &secs, program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(started.elapsed() < within + Duration::from_secs(3), "{program} was not bounded");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

struct Setup {
    gateway: Gateway,
    agent_port: u16,
    _specs: Specs,
}

fn setup() -> Setup {
    let agent_port = free_port();
    let trunk = Trunk::new("acme-in")
        .number(NUMBER, "support")
        .digest(USERNAME, PASSWORD)
        .destination_udp(agent_port)
        .transports(&["UDP"]);
    let specs = Specs::new().with(trunk);
    let gateway = Gateway::start(specs.path(), GatewayOptions::default());
    Setup { gateway, agent_port, _specs: specs }
}

/// The carrier's digest calls from 127.0.0.2, `calls` of them at `rate`/s.
fn carrier(gateway: &Gateway, calls: &str, rate: &str) -> support::sipp::SippResult {
    let auth_uri = format!("{NUMBER}@{}", gateway.addr());
    let args = [
        "-i",
        CARRIER_IP,
        "-s",
        NUMBER,
        "-au",
        USERNAME,
        "-ap",
        PASSWORD,
        "-auth_uri",
        &auth_uri,
        "-m",
        calls,
        "-r",
        rate,
        "-d",
        "200",
        "-timeout",
        "40",
    ];
    uac("carrier_call_digest.xml", gateway.udp(), &args)
}

#[test]
fn svwar_enumerates_no_number_while_the_carrier_calls_go_on() {
    if !tool("svwar") {
        return;
    }
    let s = setup();
    let agent = uas("agent_answer.xml", s.agent_port, &["-m", "6", "-timeout", "60"]);
    carrier(&s.gateway, "1", "1").assert_success();
    let port = s.gateway.udp().port().to_string();
    let calls = std::thread::scope(|scope| {
        let calls = scope.spawn(|| carrier(&s.gateway, "5", "1"));
        for method in ["INVITE", "REGISTER", "OPTIONS"] {
            for force in [false, true] {
                let mut args = vec!["-m", method, "-e", "0-199", "-T", "+14155550%03i"];
                args.extend(["-p", &port, "--maximumtime", "3"]);
                if force {
                    args.push("--force");
                }
                args.push("127.0.0.1");
                let out = run(Duration::from_secs(40), "svwar", &args);
                assert!(out.contains("found nothing"), "svwar -m {method} (force {force}):\n{out}");
                assert!(!out.contains("4155550100"), "svwar -m {method} named the number:\n{out}");
            }
        }
        calls.join().expect("carrier")
    });
    calls.assert_success();
    agent.wait().assert_success();
}

#[test]
fn svcrack_is_locked_out_long_before_its_dictionary_reaches_the_password() {
    if !tool("svcrack") {
        return;
    }
    let s = setup();
    let agent = uas("agent_answer.xml", s.agent_port, &["-m", "6", "-timeout", "60"]);
    carrier(&s.gateway, "1", "1").assert_success();
    let dir = TempDir::new("svcrack");
    let dictionary = dir.join("passwords.txt");
    let mut words: Vec<String> = (1..30).map(|i| format!("guess{i}")).collect();
    words.push(PASSWORD.to_string());
    std::fs::write(&dictionary, words.join("\n") + "\n").expect("write the dictionary");
    let port = s.gateway.udp().port().to_string();
    let request_uri = format!("sip:{NUMBER}@127.0.0.1");
    let dictionary = dictionary.to_string_lossy().into_owned();
    let (out, calls) = std::thread::scope(|scope| {
        let calls = scope.spawn(|| carrier(&s.gateway, "5", "1"));
        let args = [
            "-m",
            "INVITE",
            "-u",
            USERNAME,
            "-d",
            &dictionary,
            "-p",
            &port,
            "--maximumtime",
            "3",
            "--requesturi",
            &request_uri,
            "127.0.0.1",
        ];
        let out = run(Duration::from_secs(60), "svcrack", &args);
        (out, calls.join().expect("carrier"))
    });
    calls.assert_success();
    agent.wait().assert_success();
    assert!(!out.contains(PASSWORD), "svcrack found the password:\n{out}");
    assert_eq!(s.gateway.metric("trunkline_guard_lockouts_total"), Some(1.0), "{out}");
    let refused = s.gateway.metric("trunkline_auth_failures_total{reason=\"uri_mismatch\"}");
    assert_eq!(refused, Some(5.0), "answers checked before the lockout:\n{out}");
    assert!(
        s.gateway.metric("trunkline_guard_dropped_total{reason=\"locked_out\"}").unwrap_or(0.0)
            >= 1.0
    );
}
