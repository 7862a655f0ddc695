//! Session records on the wire (issue 14, item 2): which calls leave records and what they say,
//! for an inbound call answered, an inbound call the agent refused, requests refused before
//! admission (none), and an outbound call, with real sipp peers on 127.0.0.1 and each record
//! checked against the committed JSON Schema. The header contract's part of a record is in
//! tests/gateway_headers.rs, a transfer's in tests/gateway_transfer_bridge.rs, the webhook in
//! tests/records_webhook.rs.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::net::TempDir;
use support::records::wait_records;
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Outbound, Specs, Trunk, free_port};

const NUMBER: &str = "+14155550100";
const UNKNOWN: &str = "+14155550199";
const TO: &str = "+14155550142";

fn kinds(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("sessionId"), s("kind"))
        })
        .collect()
}

#[test]
fn an_answered_call_leaves_a_first_and_a_final_record_a_refused_one_a_final_and_a_404_none() {
    let agent_port = free_port();
    let specs = Specs::new().with(Trunk::local(NUMBER, agent_port));
    let dir = TempDir::new("records");
    let file = dir.join("records.jsonl");
    let options = GatewayOptions::default()
        .arg("--records-file")
        .arg(file.to_str().expect("path"))
        .arg("--records-file-answered");
    let gateway = Gateway::start(specs.path(), options);

    // Not a call: a number the trunk does not have is refused before admission.
    uac("carrier_not_found_404.xml", gateway.udp(), &["-s", UNKNOWN, "-timeout", "10"])
        .assert_success();

    // Answered, then hung up by the carrier after 1 s: the answered record comes first,
    // written while the call is up.
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-timeout", "15"]);
    let carrier =
        uac("carrier_call.xml", gateway.udp(), &["-s", NUMBER, "-d", "1000", "-timeout", "15"]);
    let first = wait_records(&file, 1, Duration::from_secs(5)).remove(0);
    assert_eq!(first["kind"], "answered", "{first:#}");
    assert!(first["answeredAt"].is_string() && first["setupMs"].is_u64(), "{first:#}");
    assert!(first.get("endedAt").is_none() && first.get("outcome").is_none(), "{first:#}");
    assert_eq!(first["codec"], "PCMU");
    assert_eq!(first["legs"].as_array().map(Vec::len), Some(2), "{first:#}");
    carrier.assert_success();
    agent.wait().assert_success();

    // Refused by the agent (486): admitted, so a final record, and no answered one.
    let agent = uas("agent_busy.xml", agent_port, &["-m", "1", "-timeout", "15"]);
    uac("carrier_busy_486.xml", gateway.udp(), &["-s", NUMBER, "-timeout", "15"]).assert_success();
    agent.wait().assert_success();

    let records = wait_records(&file, 3, Duration::from_secs(5));
    let kinds = kinds(&records);
    assert_eq!(kinds.len(), 3, "{records:#?}");
    assert_eq!(kinds[0].1, "answered");
    assert_eq!((&kinds[1].0, kinds[1].1.as_str()), (&kinds[0].0, "final"), "{kinds:?}");
    assert_eq!(kinds[2].1, "final");
    assert_ne!(kinds[2].0, kinds[0].0, "the busy call is a session of its own");
    let ids: Vec<&str> = records.iter().filter_map(|r| r["recordId"].as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1], "each record has its own id (the webhook's idempotency key)");

    let answered = &records[1];
    assert_eq!(answered["outcome"], "answered");
    assert_eq!(answered["answeredAt"], first["answeredAt"], "the final record repeats it");
    assert_eq!(answered["hangupSide"], "carrier");
    assert!(answered["durationMs"].as_u64().is_some_and(|ms| ms >= 1000), "{answered:#}");
    assert_eq!(answered["numbers"]["to"], NUMBER);
    assert_eq!(answered["numbers"]["toE164"], NUMBER);

    let busy = &records[2];
    assert_eq!(busy["outcome"], "busy", "{busy:#}");
    assert!(busy.get("answeredAt").is_none() && busy.get("hangupSide").is_none(), "{busy:#}");
    assert!(busy["endedAt"].is_string());
    assert_eq!(busy["legs"].as_array().map(Vec::len), Some(2), "{busy:#}");

    let text = std::fs::read_to_string(&file).expect("the records file");
    assert!(!text.contains(UNKNOWN), "a 404 left a record:\n{text}");
    let written = r#"trunkline_session_records_total{result="written",sink="file"}"#;
    assert!(gateway.wait_metric(written, 3.0, Duration::from_secs(3)), "{written} not counted");
}

#[test]
fn an_outbound_call_is_recorded_with_the_numbers_as_asked_and_as_dialed() {
    let carrier_port = free_port();
    let specs = Specs::new().with_outbound(Outbound::new("carrier-out", carrier_port));
    let dir = TempDir::new("records");
    let file = dir.join("records.jsonl");
    let options = GatewayOptions::default().arg("--records-file").arg(file.to_str().expect("path"));
    let gateway = Gateway::start(specs.path(), options);
    let carrier = uas("agent_answer.xml", carrier_port, &["-m", "1", "-timeout", "15"]);
    let args = [
        "-s",
        TO,
        "-key",
        "trunk",
        "carrier-out",
        "-key",
        "agent",
        "support",
        "-key",
        "from_user",
        "agent-bot",
        "-d",
        "300",
        "-timeout",
        "15",
    ];
    uac("agent_outbound_call.xml", gateway.internal(), &args).assert_success();
    carrier.wait().assert_success();

    let records = wait_records(&file, 1, Duration::from_secs(5));
    assert_eq!(records.len(), 1, "no answered record unless asked for: {records:#?}");
    let r = &records[0];
    assert_eq!(r["kind"], "final");
    assert_eq!(r["direction"], "outbound");
    assert_eq!(r["trunk"], "voice/carrier-out");
    assert_eq!(r["agent"], "support");
    assert_eq!(r["agentReason"], "named");
    assert_eq!(r["outcome"], "answered");
    assert_eq!(r["hangupSide"], "agent", "agent_outbound_call.xml hangs up");
    // As the agent asked (its From user) and as presented (the trunk's caller id).
    assert_eq!(r["numbers"]["from"], "agent-bot");
    assert_eq!(r["numbers"]["fromE164"], "+14155550100");
    assert_eq!(r["numbers"]["to"], TO);
    assert_eq!(r["numbers"]["toE164"], TO);
    let roles: Vec<&str> =
        r["legs"].as_array().into_iter().flatten().filter_map(|l| l["role"].as_str()).collect();
    assert_eq!(roles, ["agent", "carrier"], "{r:#}");
    assert_eq!(r["transport"], "UDP");
    assert!(r["source"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")), "{r:#}");
    assert!(r["config"].is_string() && r["gateway"].is_string(), "{r:#}");
}
