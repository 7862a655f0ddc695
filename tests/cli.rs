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
        "OutboundTrunk voice/lab-out: accepted",
    ] {
        assert!(text.contains(object), "missing {object:?} in\n{text}");
    }
    assert!(text.contains("12 objects: 12 accepted, 0 degraded, 0 refused"), "{text}");
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
fn explain_shows_what_the_agent_would_get_of_the_callers_headers() {
    let base = ["--from", "203.0.113.9", "--to", "+14155550101", "--user", "acme"];
    let headers = [
        "-H",
        "X-Trunkline-Agent-Language: EN-us, zz-1234567890, fr",
        "-H",
        r#"X-Trunkline-Session-Custom-Data: {"a":1,"b":[1]}"#,
        "-H",
        "X-Trunkline-Trunk: forged",
    ];
    let args: Vec<&str> = base.iter().chain(headers.iter()).copied().collect();
    let (code, text) = explain(&args);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "   passes X-Trunkline-Agent-Language: en-US,fr",
        r#"   passes X-Trunkline-Session-Custom-Data: {"a":1}"#,
        "   removes X-Trunkline-Trunk (the gateway sets its own)",
        r#"   warning X-Trunkline-Agent-Language: not language tags, dropped: "zz-1234567890""#,
        r#"   warning X-Trunkline-Session-Custom-Data: fields dropped (only strings, numbers and booleans pass): "b" (an array)"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let mut json_args = args.clone();
    json_args.extend(["--output", "json"]);
    let (_, json) = explain(&json_args);
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(value["headerContract"]["languages"], serde_json::json!(["en-US", "fr"]));
    assert_eq!(value["headerContract"]["sessionCustomData"], serde_json::json!({"a": 1}));
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
    // wholesale-in's numberFormat reads 10 digits as a US national number.
    let (code, text) = explain(&["--from", "198.51.100.10", "--to", "4155550150"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("voice/wholesale-in"), "{text}");
    assert!(text.contains("agent sales by number"), "{text}");
    assert!(text.contains("+14155550150 (from the Request-URI"), "{text}");
    assert!(text.contains("read as a national number of +1"), "{text}");
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

/// `explain --outbound --specs examples/ ARGS...`.
fn explain_outbound(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["--outbound"];
    all.extend_from_slice(args);
    explain(&all)
}

/// The lines of the carrier's INVITE in `explain --outbound` text: those indented under "the
/// carrier gets".
fn carrier_invite(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("the carrier gets"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.trim().to_string())
        .collect()
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}: ");
    lines.iter().find_map(|l| l.strip_prefix(&prefix))
}

#[test]
fn explain_outbound_shows_the_chain_the_trunk_and_the_invite_the_carrier_would_get() {
    let (code, text) = explain_outbound(&[
        "--trunk",
        "carrier-out",
        "--to",
        "+1-415-555-0142",
        "--agent",
        "support",
        "-H",
        "X-Campaign: spring",
    ]);
    assert_eq!(code, Some(0), "{text}");
    for step in [
        " 1. trunk       ok   OutboundTrunk voice/carrier-out",
        " 2. agent       ok   ",
        " 3. number      ok   dials +14155550142",
        " 4. caller      ok   presents the trunk's callerId +14155550100",
        " 5. destination ok   the call goes to sip:+14155550142@sip.carrier.example:5060",
    ] {
        assert!(text.contains(step), "missing {step:?} in\n{text}");
    }
    assert!(
        text.contains(
            "answers 401/407 with the credentials of Secret voice/carrier-out-credentials \
             (username \"trunkline-voice\")"
        ),
        "{text}"
    );
    assert!(text.contains("codecs     PCMU, PCMA"), "{text}");
    assert!(text.contains("maxConcurrentCalls 50, maxCallsPerSecond 5"), "{text}");
    assert!(text.contains("agents     any agent"), "{text}");
    assert!(text.contains("over UDP"), "{text}");

    let invite = carrier_invite(&text);
    // numberFormat.leadingPlus: true, and the host name as the trunk names it.
    assert_eq!(
        invite.first().map(String::as_str),
        Some("INVITE sip:+14155550142@sip.carrier.example:5060 SIP/2.0"),
        "{text}"
    );
    let from = header(&invite, "From").unwrap_or_else(|| panic!("no From in\n{text}"));
    assert!(from.starts_with("<sip:+14155550100@<carrier-facing address>>;tag="), "{from}");
    assert_eq!(
        header(&invite, "P-Asserted-Identity"),
        Some("<sip:+14155550100@<carrier-facing address>>"),
        "{text}"
    );
    assert_eq!(header(&invite, "X-Campaign"), Some("spring"), "the agent's X-* headers travel");
    for gone in ["X-Trunkline-Outbound-Trunk", "X-Trunkline-Agent-ID", "Content-Length"] {
        assert_eq!(header(&invite, gone), None, "{gone} in\n{text}");
    }
    assert!(text.contains("(body: the agent's SDP offer cut down to PCMU, PCMA"), "{text}");
    assert!(!text.contains("dev-only-carrier-password"), "the password leaked:\n{text}");
}

#[test]
fn explain_outbound_writes_the_number_and_our_address_as_the_trunk_and_flags_say() {
    // wholesale-out: numberFormat.leadingPlus false, an IP over TLS on 5061, billing only.
    let (code, text) = explain_outbound(&[
        "--trunk",
        "voice/wholesale-out",
        "--to",
        "0014155550142",
        "--agent",
        "billing",
        "--public-address",
        "203.0.113.5",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let invite = carrier_invite(&text);
    assert_eq!(
        invite.first().map(String::as_str),
        Some("INVITE sip:14155550142@198.51.100.20:5061;transport=tls SIP/2.0"),
        "{text}"
    );
    assert!(
        header(&invite, "From").is_some_and(|f| f.starts_with("<sip:14155550150@203.0.113.5>")),
        "{text}"
    );
    assert_eq!(header(&invite, "P-Asserted-Identity"), Some("<sip:14155550150@203.0.113.5>"));
    assert!(
        header(&invite, "Via").is_some_and(|v| v.starts_with("SIP/2.0/TLS 203.0.113.5:5061;")),
        "{text}"
    );
    assert!(text.contains("no digest: the carrier must allowlist"), "{text}");
    assert!(text.contains("agents     only billing"), "{text}");
    assert!(!text.contains("<carrier-facing address>"), "{text}");

    // The caller id an agent asks for, when the trunk allows it, in From and PAI.
    let (code, text) = explain_outbound(&[
        "--trunk",
        "carrier-out",
        "--to",
        "+14155550142",
        "--caller-id",
        "+14155550101",
        "--public-address",
        "203.0.113.5:5070",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let invite = carrier_invite(&text);
    assert!(text.contains("presents +14155550101, which the agent asked for"), "{text}");
    assert!(
        header(&invite, "From").is_some_and(|f| f.starts_with("<sip:+14155550101@203.0.113.5>")),
        "{text}"
    );
    assert_eq!(header(&invite, "P-Asserted-Identity"), Some("<sip:+14155550101@203.0.113.5>"));
    assert!(header(&invite, "Contact").is_some_and(|c| c.contains("203.0.113.5:5070")), "{text}");
}

#[test]
fn explain_outbound_refusals_name_the_step_the_status_and_the_rule() {
    let same_name = "tests/fixtures/explain-outbound";
    let cases: [(&[&str], &str, &str); 6] = [
        (&["--trunk", "nope"], " 1. trunk       FAIL", "=> 404 Not Found (UnknownTrunk)"),
        (
            &["--trunk", "carrier-out", "--specs", same_name],
            " 1. trunk       FAIL \"carrier-out\" names sales/carrier-out, voice/carrier-out",
            "=> 485 Ambiguous (AmbiguousTrunk)",
        ),
        (
            &["--trunk", "wholesale-out", "--agent", "support"],
            " 2. agent       FAIL agent \"support\" is not in the agents allowlist",
            "=> 403 Forbidden (AgentNotAllowed)",
        ),
        (
            &["--trunk", "carrier-out", "--caller-id", "+14155550199"],
            " 4. caller      FAIL the agent asked for caller id +14155550199",
            "=> 403 Forbidden (CallerIdNotAllowed)",
        ),
        (&[], " 1. trunk       FAIL", "=> 400 Bad Request (TrunkNotNamed)"),
        (
            &["--trunk", "carrier-out", "--to", "support"],
            " 3. number      FAIL",
            "=> 484 Address Incomplete (DialedNumberInvalid)",
        ),
    ];
    for (args, step, answer) in cases {
        let mut all = args.to_vec();
        if !all.contains(&"--to") {
            all.extend(["--to", "+14155550142"]);
        }
        let (code, text) = explain_outbound(&all);
        assert_eq!(code, Some(1), "{args:?}: a refusal exits 1\n{text}");
        assert!(text.contains(step), "{args:?}: missing {step:?} in\n{text}");
        assert!(text.contains(answer), "{args:?}: missing {answer:?} in\n{text}");
        assert!(carrier_invite(&text).is_empty(), "{args:?}: nothing goes out\n{text}");
    }
}

#[test]
fn explain_outbound_says_why_a_trunk_in_the_specs_is_not_served() {
    let (code, text) = explain_outbound(&[
        "--specs",
        "tests/fixtures/explain-outbound",
        "--trunk",
        "broken-out",
        "--to",
        "+14155550142",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("OutboundTrunk sales/broken-out is in the specs but refused"), "{text}");
    assert!(text.contains("(SecretNotFound)"), "{text}");
    let (code, text) = explain_outbound(&[
        "--region",
        "eu",
        "--trunk",
        "wholesale-out",
        "--agent",
        "billing",
        "--to",
        "+14155550142",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("voice/wholesale-out is not served in region eu"), "{text}");
}

#[test]
fn explain_outbound_json_gives_the_decision_and_the_invite_lines() {
    let (code, text) = explain_outbound(&[
        "--trunk",
        "carrier-out",
        "--to",
        "+14155550142",
        "--agent",
        "support",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(json["outcome"]["action"], "route", "{json:#}");
    assert_eq!(json["outcome"]["trunk"], "voice/carrier-out", "{json:#}");
    assert_eq!(json["outcome"]["callerId"], "+14155550100", "{json:#}");
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(5), "{json:#}");
    assert_eq!(json["trunk"]["digest"]["secret"], "voice/carrier-out-credentials", "{json:#}");
    assert_eq!(json["trunk"]["digest"]["username"], "trunkline-voice", "{json:#}");
    assert_eq!(
        json["carrierInvite"]["lines"][0],
        "INVITE sip:+14155550142@sip.carrier.example:5060 SIP/2.0",
        "{json:#}"
    );
    assert!(!text.contains("dev-only-carrier-password"), "the password leaked:\n{text}");
    assert!(!text.contains("redacted"), "the password is not even mentioned:\n{text}");

    let (code, text) = explain_outbound(&[
        "--trunk",
        "wholesale-out",
        "--to",
        "+14155550142",
        "--agent",
        "support",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(1), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(json["outcome"]["action"], "refuse", "{json:#}");
    assert_eq!(json["outcome"]["status"], 403, "{json:#}");
    assert_eq!(json["outcome"]["rule"], "AgentNotAllowed", "{json:#}");
    assert_eq!(json["carrierInvite"], serde_json::Value::Null, "{json:#}");
}

#[test]
fn explain_outbound_takes_no_inbound_flags_and_inbound_still_needs_from() {
    let (code, text) =
        explain(&["--outbound", "--trunk", "carrier-out", "--to", "1", "--user", "u"]);
    assert_eq!(code, Some(2), "--user is an inbound flag: {text}");
    let (code, text) = explain(&["--to", "+14155550100"]);
    assert_eq!(code, Some(2), "inbound explain needs --from: {text}");
    let (code, text) = explain(&["--from", "203.0.113.9", "--to", "+1415", "--trunk", "x"]);
    assert_eq!(code, Some(2), "--trunk is an outbound flag: {text}");
    // A number that cannot be written in a Request-URI is the user's error, named.
    let out = trunkline(&[
        "explain",
        "--specs",
        "examples/",
        "--outbound",
        "--trunk",
        "carrier-out",
        "--to",
        "+1 415",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to"), "{out:?}");
}

/// `explain --transfer --specs examples/ --specs tests/fixtures/explain-transfer ARGS...`.
fn explain_transfer(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["--specs", "tests/fixtures/explain-transfer", "--transfer"];
    all.extend_from_slice(args);
    explain(&all)
}

#[test]
fn explain_transfer_by_name_shows_the_number_and_the_trunk_it_is_dialed_through() {
    let (code, text) = explain_transfer(&[
        "--trunk",
        "acme-in",
        "--agent",
        "support",
        "--to",
        "<sip:sales-desk@agents.example>",
    ]);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "call:  a call on InboundTrunk voice/acme-in with agent \"support\"",
        " 1. destination ok   \"<sip:sales-desk@agents.example>\" names TransferDestination \
         voice/sales-desk (by Name)",
        " 2. agent       ok   ",
        "    type       Phone: +14155550199 through OutboundTrunk voice/carrier-out",
        "    mode       Bridge: the gateway dials the destination itself",
        "trunk voice/carrier-out (accepted and served):",
        "    carrier    sip.carrier.example:5060 over UDP",
        "    caller id  +14155550100 (callerId)",
        "    codecs     PCMU, PCMA",
        "answers 401/407 with the credentials of Secret voice/carrier-out-credentials \
         (username \"trunkline-voice\")",
        "=> 202 Accepted to the agent, NOTIFY 100 Trying, then INVITE \
         sip:+14155550199@sip.carrier.example:5060 through voice/carrier-out (caller id +14155550100, \
         or the caller's own number when the trunk lists it; Diversion naming the number called)",
        "on its 200 the caller's media moves to it (no re-INVITE to the caller) and the agent gets BYE",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("Warning"), "{text}");
}

#[test]
fn explain_transfer_by_number_works_on_a_call_of_an_outbound_trunk() {
    for to in ["tel:+1-415-555-0199", "sip:+14155550199@gw.example;user=phone"] {
        let (code, text) =
            explain_transfer(&["--trunk", "voice/carrier-out", "--agent", "billing", "--to", to]);
        assert_eq!(code, Some(0), "{to}: {text}");
        assert!(text.contains("call:  a call on OutboundTrunk voice/carrier-out"), "{text}");
        assert!(text.contains("names TransferDestination voice/sales-desk (by Number)"), "{text}");
        assert!(text.contains("then INVITE sip:+14155550199@sip.carrier.example:5060"), "{text}");
    }
    // The trunk's number format: sales-out writes the leading +; the destination's namespace.
    let (code, text) = explain_transfer(&[
        "--trunk",
        "sales/sales-out",
        "--agent",
        "x",
        "--to",
        "tel:+14155550181",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("INVITE sip:+14155550181@192.0.2.70:5060 through sales/sales-out"));
}

#[test]
fn explain_transfer_by_uri_shows_the_sip_target_its_digest_and_the_mode() {
    // Bridge: the gateway calls the URI itself, over TLS for sips:, answering a digest.
    let (code, text) = explain_transfer(&[
        "--trunk",
        "acme-in",
        "--agent",
        "support",
        "--to",
        "<SIPS:desk-7@192.0.2.80;transport=tls>",
    ]);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "names TransferDestination voice/helpdesk (by Uri)",
        "    type       Sip: sips:desk-7@192.0.2.80 (192.0.2.80:5061 over TLS)",
        "    auth       answers 401/407 with the credentials of Secret voice/helpdesk-creds \
         (username \"helpdesk-user\")",
        "    agents     only support",
        "=> 202 Accepted to the agent, NOTIFY 100 Trying, then INVITE sips:desk-7@192.0.2.80",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // Refer: the carrier is asked to place the call; the destination's Secret is not used.
    let (code, text) = explain_transfer(&[
        "--trunk",
        "acme-in",
        "--agent",
        "support",
        "--to",
        "sip:operator@pbx.example.com",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("names TransferDestination voice/pbx-operator (by Uri)"), "{text}");
    assert!(text.contains("    mode       Refer: the gateway passes a REFER"), "{text}");
    assert!(text.contains("is not used in Refer mode"), "{text}");
    assert!(
        text.contains("then REFER to the caller's side, Refer-To <sip:operator@pbx.example.com>"),
        "{text}"
    );
}

#[test]
fn explain_transfer_to_a_hangup_destination_hangs_up_both_legs() {
    let (code, text) =
        explain_transfer(&["--trunk", "acme-in", "--agent", "billing", "--to", "end-call"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("    type       Hangup: the gateway ends the call on both legs"));
    assert!(text.contains("=> 202 Accepted and NOTIFY 200 to the agent, then BYE"), "{text}");
    assert!(text.contains("both legs are hung up"), "{text}");
}

#[test]
fn explain_transfer_refusals_name_the_status_the_rule_and_the_warning_the_agent_gets() {
    let cases = [
        ("nobody", "support", " 1. destination FAIL", "TransferUnknownDestination"),
        (
            "sales-team",
            "support",
            "is in another namespace (sales/sales-team)",
            "TransferOtherNamespace",
        ),
        (
            "tel:+19005550100",
            "support",
            "+19005550100 is the number of no TransferDestination in namespace voice",
            "TransferNotADestination",
        ),
        (
            "<sip:pbx-operator@agents.example>",
            "billing",
            " 2. agent       FAIL agent \"billing\" is not in the agents list of voice/pbx-operator",
            "TransferAgentNotAllowed",
        ),
    ];
    for (to, agent, step, rule) in cases {
        let (code, text) = explain_transfer(&["--trunk", "acme-in", "--agent", agent, "--to", to]);
        assert_eq!(code, Some(1), "{to}: a refusal exits 1\n{text}");
        assert!(text.contains(step), "{to}: missing {step:?} in\n{text}");
        let answer = format!("=> 403 Forbidden ({rule}): ");
        assert!(text.contains(&answer), "{to}: missing {answer:?} in\n{text}");
        let warning = format!("   Warning: 399 trunkline \"{rule}: ");
        assert!(text.contains(&warning), "{to}: missing {warning:?} in\n{text}");
        assert!(text.contains("nothing is dialed"), "{text}");
        assert!(!text.contains("=> 202"), "{to}: nothing is accepted\n{text}");
    }
    // The destination the agent may not use is still described.
    let (_, text) =
        explain_transfer(&["--trunk", "acme-in", "--agent", "billing", "--to", "pbx-operator"]);
    assert!(text.contains("    agents     only reception, support"), "{text}");
}

#[test]
fn explain_transfer_says_why_a_destination_in_the_specs_is_not_served() {
    let (code, text) = explain_transfer(&[
        "--region",
        "eu",
        "--trunk",
        "acme-in",
        "--agent",
        "billing",
        "--to",
        "wholesale-desk",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("(TransferUnknownDestination)"), "{text}");
    assert!(
        text.contains(
            "note: TransferDestination voice/wholesale-desk is in the specs but not served (its \
             OutboundTrunk voice/wholesale-out is not served in region eu)"
        ),
        "{text}"
    );
}

#[test]
fn explain_transfer_json_gives_the_decision_the_destination_and_the_warning() {
    let (code, text) = explain_transfer(&[
        "--trunk",
        "acme-in",
        "--agent",
        "support",
        "--to",
        "sales-desk",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(json["direction"], "transfer", "{json:#}");
    assert_eq!(json["request"]["trunk"]["name"], "voice/acme-in", "{json:#}");
    assert_eq!(json["outcome"]["action"], "transfer", "{json:#}");
    assert_eq!(json["outcome"]["destination"], "voice/sales-desk", "{json:#}");
    assert_eq!(json["outcome"]["matchedBy"], "Name", "{json:#}");
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(2), "{json:#}");
    let d = &json["destination"];
    assert_eq!(d["type"], "Phone", "{json:#}");
    assert_eq!(d["mode"], "Bridge", "{json:#}");
    assert_eq!(d["number"], "+14155550199", "{json:#}");
    assert_eq!(d["outboundTrunk"]["name"], "voice/carrier-out", "{json:#}");
    assert_eq!(d["outboundTrunk"]["served"], true, "{json:#}");
    assert_eq!(d["outboundTrunk"]["callerId"], "+14155550100", "{json:#}");
    assert_eq!(d["outboundTrunk"]["digest"]["secret"], "voice/carrier-out-credentials");
    assert_eq!(
        d["outboundTrunk"]["requestUri"], "sip:+14155550199@sip.carrier.example:5060",
        "{json:#}"
    );

    let (code, text) = explain_transfer(&[
        "--trunk",
        "acme-in",
        "--agent",
        "billing",
        "--to",
        "pbx-operator",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(1), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(json["outcome"]["action"], "refuse", "{json:#}");
    assert_eq!(json["outcome"]["status"], 403, "{json:#}");
    assert_eq!(json["outcome"]["rule"], "TransferAgentNotAllowed", "{json:#}");
    assert_eq!(
        json["outcome"]["warning"],
        "399 trunkline \"TransferAgentNotAllowed: this agent may not use this destination\"",
        "{json:#}"
    );
    assert_eq!(json["destination"]["digest"]["username"], "transfer", "{json:#}");
}

#[test]
fn explain_transfer_never_prints_a_password() {
    let cases: [&[&str]; 4] = [
        &["--to", "sales-desk"],
        &["--to", "sips:desk-7@192.0.2.80"],
        &["--to", "pbx-operator"],
        &["--to", "pbx-operator", "--agent", "billing"],
    ];
    for args in cases {
        for output in ["text", "json"] {
            let mut all = vec!["--trunk", "acme-in", "--output", output];
            all.extend_from_slice(args);
            if !all.contains(&"--agent") {
                all.extend(["--agent", "support"]);
            }
            let (code, text) = explain_transfer(&all);
            assert!(matches!(code, Some(0 | 1)), "{all:?}: {text}");
            assert!(text.contains("username"), "{all:?}: the credentials are named\n{text}");
            assert!(!text.contains("dev-only-"), "{all:?}: a password leaked\n{text}");
            assert!(!text.contains("redacted"), "{all:?}: not even mentioned\n{text}");
        }
    }
}

#[test]
fn explain_transfer_flag_errors_exit_2_and_say_what_is_wrong() {
    let run = |args: &[&str]| {
        let mut all = vec!["explain", "--specs", "examples/"];
        all.extend_from_slice(args);
        let out = trunkline(&all);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let t = ["--transfer", "--to", "sales-desk"];
    let cases: [(Vec<&str>, &str); 6] = [
        (
            [&t[..], &["--trunk", "nope", "--agent", "a"]].concat(),
            "no InboundTrunk or OutboundTrunk",
        ),
        (
            [&t[..], &["--trunk", "carrier-out", "--agent", "a"]].concat(),
            "names trunks in several namespaces (sales/carrier-out, voice/carrier-out): write \
             namespace/NAME",
        ),
        ([&t[..], &["--trunk", "acme-in"]].concat(), "--transfer needs --agent"),
        ([&t[..], &["--agent", "a"]].concat(), "--transfer needs --trunk"),
        ([&t[..], &["--trunk", "acme-in", "--agent", "a", "--outbound"]].concat(), "--outbound"),
        ([&t[..], &["--trunk", "acme-in", "--agent", "a", "-H", "X-A: 1"]].concat(), "--header"),
    ];
    for (mut args, says) in cases {
        if args.contains(&"carrier-out") {
            args.extend(["--specs", "tests/fixtures/explain-outbound"]);
        }
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: missing {says:?} in {stderr}");
    }
    // With namespace/NAME the same name is one trunk.
    let (code, stderr) = run(&[
        "--specs",
        "tests/fixtures/explain-outbound",
        "--transfer",
        "--trunk",
        "voice/carrier-out",
        "--agent",
        "a",
        "--to",
        "sales-desk",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
}
