//! The header contract on the wire (issue 14, item 1): sipp as the carrier sends the
//! first-class headers, some broken, and a forged gateway header; sipp as the agent runtime
//! receives them normalised, with the gateway's own session headers.

mod support;

use std::time::Duration;

use support::net::TempDir;
use support::records::wait_records;
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";

/// The value of header `name` in `message` (the first one; names compared without case).
fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn the_agent_gets_the_callers_first_class_headers_normalised_and_only_the_gateways_own() {
    let agent_port = free_port();
    let specs = Specs::new().with(Trunk::local(NUMBER, agent_port));
    let dir = TempDir::new("records");
    let file = dir.join("records.jsonl");
    let options = GatewayOptions::default().arg("--records-file").arg(file.to_str().expect("path"));
    let gateway = Gateway::start(specs.path(), options);
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-timeout", "15"]);
    uac("carrier_call_contract.xml", gateway.udp(), &["-s", NUMBER, "-d", "200", "-timeout", "15"])
        .assert_success();
    let agent = agent.wait();
    agent.assert_success();
    let invite = agent
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("INVITE "))
        .map(|m| m.text)
        .expect("the agent received an INVITE");
    let expect = [
        ("X-Trunkline-Contact-Custom-Data", r#"{"name":"Ada","vip":true,"visits":3}"#),
        ("X-Trunkline-Agent-Language", "en-US,fr"),
        ("X-Trunkline-Include-Instruction-IDs", "a1,b2"),
        ("X-Trunkline-Trunk", "voice/local-in"),
        ("X-Trunkline-Agent-ID", "support"),
        ("X-Trunkline-Number", NUMBER),
        ("X-Trunkline-Direction", "inbound"),
        ("X-Trunkline-Caller", "+12025550123"),
        ("X-Foo", "foo-value-1"),
    ];
    for (name, value) in expect {
        assert_eq!(header(&invite, name), Some(value), "{name} in\n{invite}");
    }
    assert!(!invite.contains("forged"), "the forged Trunk reached the agent:\n{invite}");
    let trunks = invite.lines().filter(|l| l.starts_with("X-Trunkline-Trunk:")).count();
    assert_eq!(trunks, 1, "{invite}");
    // What was dropped is said (the session record will carry it).
    let log = gateway.log_text();
    assert!(log.contains("\"address\" (an object)"), "{log}");
    assert!(log.contains("xx-123456789"), "{log}");

    // The session record: typed custom data, the two warnings, the headers without `X-`.
    let record = wait_records(&file, 1, Duration::from_secs(5)).remove(0);
    assert_eq!(record["direction"], "inbound");
    assert_eq!(record["trunk"], "voice/local-in");
    assert_eq!(record["outcome"], "answered");
    assert_eq!(record["numbers"]["to"], NUMBER);
    assert_eq!(record["numbers"]["fromE164"], "+12025550123");
    assert_eq!(record["agent"], "support");
    assert_eq!(record["agentReason"], "number");
    assert_eq!(
        record["contactCustomData"],
        serde_json::json!({"name": "Ada", "visits": 3, "vip": true})
    );
    assert_eq!(record["languages"], serde_json::json!(["en-US", "fr"]));
    assert_eq!(record["instructionIds"], serde_json::json!(["a1", "b2"]));
    assert_eq!(record["warnings"].as_array().map(Vec::len), Some(2), "{record:#}");
    assert_eq!(record["headers"]["Foo"], "foo-value-1");
    assert_eq!(record["headers"].get("Trunkline-Trunk"), None, "the forgery is not recorded");
    assert_eq!(record["codec"], "PCMU");
    assert_eq!(record["hangupSide"], "carrier", "carrier_call.xml hangs up");
    assert_eq!(record["legs"].as_array().map(Vec::len), Some(2));
    assert!(record["answeredAt"].is_string() && record["endedAt"].is_string());
    let rtp: Vec<&str> =
        record["rtp"].as_array().into_iter().flatten().filter_map(|e| e["leg"].as_str()).collect();
    assert_eq!(rtp, ["carrier", "agent"]);
    let written = r#"trunkline_session_records_total{result="written",sink="file"}"#;
    assert!(gateway.wait_metric(written, 1.0, Duration::from_secs(3)), "{written} not counted");
}
