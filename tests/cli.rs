//! The offline commands as a user runs them: the built binary on real files; and the log
//! format every subcommand shares.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::gateway::{Gateway, GatewayOptions};
use support::specs::{Specs, Trunk};

fn trunkline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trunkline"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the trunkline binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The line of `check` output about one object, and the problem lines indented under it; empty
/// when no line names the object (the assertions on it then fail and print it).
fn object_block(text: &str, object: &str) -> String {
    let heading = format!("{object}: ");
    let mut lines = text.lines().skip_while(|l| !l.contains(&heading));
    let mut block = lines.next().unwrap_or_default().to_string();
    for l in lines.take_while(|l| l.starts_with("    ")) {
        block.push('\n');
        block.push_str(l);
    }
    block
}

#[test]
fn check_accepts_every_example_and_prints_a_verdict_per_object() {
    let out = trunkline(&["check", "examples/"]);
    let text = stdout(&out);
    assert!(out.status.success(), "check examples/ failed:\n{text}");
    for object in [
        "InboundTrunk voice/acme-in: accepted (3 numbers)",
        "InboundTrunk voice/office-pbx: accepted (2 numbers)",
        "InboundTrunk voice/wholesale-in: accepted (2 numbers)",
        "OutboundTrunk voice/carrier-out: accepted",
        "OutboundTrunk voice/wholesale-out: accepted",
        "TransferDestination voice/sales-desk: accepted",
        "TransferDestination voice/pbx-operator: accepted",
        "TransferDestination voice/end-call: accepted",
        "InboundTrunk voice/local-lab: accepted (1 number)",
        "InboundTrunk voice/local-lab-digest: accepted (1 number)",
    ] {
        assert!(text.contains(object), "missing {object:?} in\n{text}");
    }
    assert!(text.contains("10 objects: 10 accepted, 0 degraded, 0 refused"), "{text}");
    // Every line names the file and line the object came from.
    assert!(text.contains("examples/inbound-acme.yaml:3: InboundTrunk voice/acme-in"), "{text}");
}

#[test]
fn check_reports_each_problem_with_its_verdict_and_field_path() {
    let out = trunkline(&["check", "tests/fixtures/check-problems"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "refused objects must fail the check:\n{text}");

    let conflict = object_block(&text, "InboundTrunk voice/same-number");
    assert!(conflict.contains(": degraded (1 number, 1 held by other trunks)"), "{conflict}");
    assert!(conflict.contains("degraded spec.numbers[1].number (NumberConflict)"), "{conflict}");
    assert!(conflict.contains("held by InboundTrunk voice/holder"), "{conflict}");

    let missing = object_block(&text, "InboundTrunk voice/missing-secret");
    assert!(missing.contains(": refused"), "{missing}");
    assert!(
        missing.contains("error spec.auth.digest.secretRef.name (SecretNotFound)"),
        "{missing}"
    );
    assert!(missing.contains("Secret not-there does not exist in namespace voice"), "{missing}");

    let letters = object_block(&text, "InboundTrunk voice/letters");
    assert!(letters.contains(": refused"), "{letters}");
    assert!(letters.contains("spec.numbers[0].number (InvalidSpec)"), "{letters}");
    assert!(letters.contains("+1415555O1O3"), "{letters}");

    let open = object_block(&text, "InboundTrunk voice/open");
    assert!(open.contains(": refused"), "{open}");
    assert!(open.contains("(OpenTrunk)"), "{open}");
    assert!(open.contains("spec.auth"), "{open}");

    let host = object_block(&text, "OutboundTrunk voice/uri-host");
    assert!(host.contains(": refused"), "{host}");
    assert!(host.contains("spec.host (InvalidHost)"), "{host}");

    let transfer = object_block(&text, "TransferDestination voice/phone-without-phone");
    assert!(transfer.contains(": refused"), "{transfer}");
    assert!(transfer.contains("(TypeMismatch)"), "{transfer}");
    assert!(transfer.contains("type Phone needs spec.phone"), "{transfer}");

    let holder = object_block(&text, "InboundTrunk voice/holder");
    assert!(holder.contains(": accepted (1 number)"), "{holder}");
}

#[test]
fn degraded_fails_the_check_only_with_strict() {
    let relaxed = trunkline(&["check", "tests/fixtures/degraded-only"]);
    assert!(relaxed.status.success(), "{}", stdout(&relaxed));
    let strict = trunkline(&["check", "--strict", "tests/fixtures/degraded-only"]);
    assert_eq!(strict.status.code(), Some(1), "{}", stdout(&strict));
}

#[test]
fn check_json_output_carries_verdicts_and_a_summary() {
    let out = trunkline(&["check", "--output", "json", "tests/fixtures/check-problems"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(report["summary"]["refused"], 5, "{report:#}");
    assert_eq!(report["summary"]["degraded"], 1, "{report:#}");
    let objects = report["objects"].as_array().expect("objects array");
    let open =
        objects.iter().find(|o| o["object"]["name"] == "open").expect("the open trunk is reported");
    assert_eq!(open["state"], "refused");
    assert_eq!(open["diagnostics"][0]["reason"], "OpenTrunk");
    assert!(open["file"].as_str().is_some_and(|f| f.ends_with("trunks.yaml")));
}

#[test]
fn check_of_a_missing_path_fails_with_the_path_named() {
    let out = trunkline(&["check", "no/such/folder"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("no/such/folder"), "{}", stdout(&out));
}

#[test]
fn check_never_prints_a_password() {
    let out = trunkline(&["check", "--output", "json", "examples/"]);
    let text = stdout(&out);
    assert!(!text.contains("dev-only-"), "passwords leaked:\n{text}");
}

fn explain(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["explain", "--specs", "examples/"];
    all.extend_from_slice(args);
    let out = trunkline(&all);
    (out.status.code(), stdout(&out))
}

#[test]
fn explain_routes_an_authenticated_call_to_the_numbers_agent() {
    let (code, text) =
        explain(&["--from", "203.0.113.9:5060", "--to", "+14155550101", "--user", "acme"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("voice/acme-in"), "{text}");
    assert!(text.contains("agent billing by number"), "{text}");
    assert!(
        text.contains("sip:billing@agents.voice.svc.cluster.local:5070;transport=tcp"),
        "{text}"
    );
}

#[test]
fn explain_lets_the_agent_header_pick_the_agent_when_the_trunk_allows_it() {
    let (code, text) = explain(&[
        "--from",
        "203.0.113.9",
        "--to",
        "+14155550101",
        "--user",
        "acme",
        "-H",
        "X-Trunkline-Agent-ID: support",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("agent support by header"), "{text}");
}

#[test]
fn explain_ignores_the_agent_header_when_the_trunk_says_ignore() {
    let (code, text) = explain(&[
        "--from",
        "192.0.2.50",
        "--to",
        "+442071230001",
        "--user",
        "nobody-yet",
        "--transport",
        "tls",
    ]);
    // office-pbx's credentials are generated: without them there is no such user yet.
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("403"), "{text}");

    let (code, text) = explain(&[
        "--specs",
        "tests/fixtures/explain-extra",
        "--from",
        "192.0.2.50",
        "--to",
        "+442071230001",
        "--user",
        "office-pbx-gen",
        "--transport",
        "tls",
        "--caller",
        "+442071239999",
        "-H",
        "X-Trunkline-Agent-ID: someone-else",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("agent reception by number"), "{text}");
    assert!(text.contains("ignored"), "{text}");
}

#[test]
fn explain_answers_404_for_a_number_not_on_the_trunk() {
    let (code, text) =
        explain(&["--from", "203.0.113.9", "--to", "+14155550150", "--user", "acme"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("=> 404 Not Found (NumberNotOnTrunk)"), "{text}");
}

#[test]
fn explain_answers_403_for_a_source_outside_the_allowlist() {
    // acme-in has digest AND an allowlist: the right credentials from the wrong place fail.
    let (code, text) = explain(&["--from", "192.0.2.1", "--to", "+14155550100", "--user", "acme"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("=> 403 Forbidden (AddressNotAllowed)"), "{text}");
}

#[test]
fn explain_accepts_an_address_only_trunk_without_a_challenge_and_normalises_the_number() {
    let (code, text) = explain(&["--from", "198.51.100.10", "--to", "0014155550150"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("voice/wholesale-in"), "{text}");
    assert!(text.contains("agent sales by number"), "{text}");
}

#[test]
fn explain_challenges_an_invite_without_credentials() {
    let (code, text) = explain(&["--from", "203.0.113.9", "--to", "+14155550100"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("=> 407 Proxy Authentication Required"), "{text}");
}

#[test]
fn explain_json_output_names_the_rule() {
    let (_, text) = explain(&[
        "--from",
        "203.0.113.9",
        "--to",
        "+14155550150",
        "--user",
        "acme",
        "--output",
        "json",
    ]);
    let decision: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(decision["outcome"]["action"], "refuse", "{decision:#}");
    assert_eq!(decision["outcome"]["status"], 404, "{decision:#}");
    assert_eq!(decision["outcome"]["rule"], "NumberNotOnTrunk", "{decision:#}");
}

#[test]
fn crds_command_prints_the_committed_crds() {
    let out = trunkline(&["crds"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for file in ["inboundtrunks.trunkline.dev.yaml", "outboundtrunks.trunkline.dev.yaml"] {
        let committed = std::fs::read_to_string(dir.join(file)).expect("committed CRD");
        let body = committed.lines().skip(1).collect::<Vec<_>>().join("\n");
        assert!(text.contains(&body), "{file} differs from `trunkline crds`");
    }
}

#[test]
fn log_format_json_writes_every_log_line_as_a_json_object() {
    let specs = Specs::new().with(
        Trunk::new("json-in")
            .number("+14155550100", "support")
            .allow_address("127.0.0.1/32")
            .destination_udp(9),
    );
    let gateway =
        Gateway::start(specs.path(), GatewayOptions::default().arg("--log-format").arg("json"));
    // `/readyz` answers just before the serving line is written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gateway.log_text().contains("trunkline is serving")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let text = gateway.log_text();
    drop(gateway);
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\nwhole log:\n{text}"));
        assert!(entry["timestamp"].is_string(), "{line}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&entry["level"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(entry["target"].as_str().is_some_and(|t| t.starts_with("trunkline")), "{line}");
        let message = entry["fields"]["message"].as_str().unwrap_or_else(|| panic!("{line}"));
        messages.push(message.to_string());
    }
    assert!(
        messages.iter().any(|m| m == "trunkline is serving"),
        "no serving line in {messages:?}"
    );
}
