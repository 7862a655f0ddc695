//! The metrics of DESIGN §5 (issue 14, item 4) on a real gateway: `trunkline run` takes an
//! answered inbound call with RTP (from a hand-driven carrier that leaves gaps in its sequence
//! numbers, through a sipp agent that echoes it), a digest failure and a refused call (sipp as
//! the carrier), and a config reload; `/metrics` is scraped before and after, and each metric
//! must be there with the labels a dashboard groups by, and must have moved by what happened.
//!
//! What other tests already show moving, and is not repeated here:
//! - outbound calls in `trunkline_calls_total{direction="outbound"}`: tests/gateway_outbound.rs,
//!   tests/gateway_api_calls.rs; `trunkline_active_calls` going up: tests/gateway_lifecycle.rs;
//! - `trunkline_transfers_total` by destination, mode and outcome: tests/gateway_transfer.rs,
//!   tests/gateway_transfer_bridge.rs;
//! - `trunkline_session_records_total`: `{sink="file",result="written"}` in
//!   tests/gateway_headers.rs, `{sink="webhook"}` spooled, delivered and failed in
//!   tests/records_webhook.rs;
//! - `trunkline_config_reloads_total{result="rejected"}`: tests/gateway_inbound.rs;
//!   `trunkline_config_info` on a cluster's gateway: tests/gateway_source.rs;
//! - `trunkline_rtp_port_pairs` and exhaustions: tests/gateway_media.rs;
//! - the operator's `trunkline_operator_reconciles_total{kind,result}` moving on a running
//!   operator: tests/operator_e2e.rs and src/operator/controller/tests.rs; the same call
//!   (`OperatorMetrics::reconciled`) observes `trunkline_operator_reconcile_seconds`, which
//!   src/operator/metrics.rs tests.
//!
//! That every series the gateway can render is one `GatewayMetrics::metric_names()` lists is a
//! unit test in src/observe/metrics.rs; that the chart's alerts and dashboard select only those
//! is tests/prometheus_rules.rs and tests/grafana_dashboard.rs.

// Test helpers fail with the reason (STYLE.md allows panics in tests; clippy only knows #[test]).
#![allow(clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::carrier::{Carrier, line_after, rtp_packet};
use support::net::TempDir;
use support::sipp::{uac, uas};
use support::{Gateway, GatewayOptions, Specs, Trunk, free_port};

/// On the address trunk (`voice/local-in`, calls from 127.0.0.1).
const NUMBER: &str = "+14155550100";
/// Not on any trunk: refused with 404.
const UNKNOWN_NUMBER: &str = "+14155550177";
/// On the digest trunk (`voice/acme-in`), called from 127.0.0.2 so that no address admits it.
const DIGEST_NUMBER: &str = "+14155550101";
const USERNAME: &str = "acme";
const PASSWORD: &str = "s3cret-acme";
const TRUNK: &str = "voice/local-in";
/// RTP the carrier sends: sequence numbers 0..SENT with every tenth from 5 left out.
const SENT: u16 = 60;
const SPOOL_MAX_BYTES: &str = "5000000";

/// One scrape of `/metrics`: every sample by its series as printed (name and sorted labels).
struct Page(BTreeMap<String, f64>);

impl Page {
    fn of(gateway: &Gateway) -> Page {
        let (status, body) = gateway.admin_get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Page(samples)
    }

    /// The sample's value; 0 when the series is not there yet (a vec child not created).
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The value of a series that must be there.
    fn must(&self, series: &str) -> f64 {
        match self.0.get(series) {
            Some(v) => *v,
            None => panic!("{series} is not on /metrics; series of that name: {:?}", {
                let name = series.split('{').next().unwrap_or(series);
                self.0.keys().filter(|k| k.starts_with(name)).collect::<Vec<_>>()
            }),
        }
    }

    /// The series whose name is `name` (any labels).
    fn named(&self, name: &str) -> Vec<(&str, f64)> {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }
}

/// By how much `series` moved between two scrapes (it must be on the second).
fn moved(before: &Page, after: &Page, series: &str) -> f64 {
    after.must(series) - before.get(series)
}

fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn address_trunk(agent_port: u16) -> Trunk {
    Trunk::new("local-in")
        .number(NUMBER, "support")
        .allow_address("127.0.0.1/32")
        .destination_udp(agent_port)
        .codecs(&["PCMU"])
}

fn digest_trunk(agent_port: u16) -> Trunk {
    Trunk::new("acme-in")
        .number(DIGEST_NUMBER, "billing")
        .digest(USERNAME, PASSWORD)
        .destination_udp(agent_port)
}

/// The answered call: INVITE → 200 → ACK, RTP with gaps echoed by the agent, BYE. Checks
/// `trunkline_active_calls` is 1 while it is up.
fn answered_call_with_gaps(gateway: &Gateway) {
    let carrier = Carrier::new(gateway.udp(), NUMBER);
    let media_port = carrier.media.local_addr().expect("addr").port();
    let offer = format!(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    );
    let to = format!("<sip:{NUMBER}@{}>", gateway.udp());
    carrier.send(&carrier.request("INVITE", "inv1", 1, &to, &offer));
    let ok = carrier.response("200", Duration::from_secs(5)).expect("200 OK from the gateway");
    let to_tagged = line_after(&ok, "To:").expect("To").to_string();
    let (relay, _) = support::carrier::relay_of(&ok);
    carrier.send(&carrier.request("ACK", "ack1", 1, &to_tagged, ""));

    let active = format!(r#"trunkline_active_calls{{direction="inbound",trunk="{TRUNK}"}}"#);
    assert_eq!(Page::of(gateway).must(&active), 1.0, "the answered call is not active");

    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    for seq in (0..SENT).filter(|s| s % 10 != 5) {
        carrier.media.send_to(&rtp_packet(seq), relay).expect("send RTP");
        if carrier.media.recv_from(&mut buf).is_ok() {
            echoed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(echoed >= 45, "only {echoed} packets came back through the relay");
    carrier.send(&carrier.request("BYE", "bye1", 2, &to_tagged, ""));
    assert!(carrier.response("200", Duration::from_secs(5)).is_some(), "no 200 to BYE");
}

#[test]
fn an_answered_call_a_digest_failure_a_refusal_and_a_reload_move_the_metrics_a_dashboard_reads() {
    let agent_port = free_port();
    let specs = Specs::new().with(address_trunk(agent_port)).with(digest_trunk(agent_port));
    let spool = TempDir::new("metrics-spool");
    // A webhook nobody answers: the record waits in the spool.
    let webhook = format!("http://127.0.0.1:{}/records", free_port());
    let options = GatewayOptions::default()
        .arg("--records-webhook")
        .arg(&webhook)
        .arg("--records-spool")
        .arg(spool.path().to_str().expect("UTF-8 temp path"))
        .arg("--records-spool-max-bytes")
        .arg(SPOOL_MAX_BYTES);
    let gateway = Gateway::start(specs.path(), options);
    let before = Page::of(&gateway);

    // The config in use: named by its hash, with the time it was swapped in.
    let infos = before.named("trunkline_config_info");
    assert_eq!(infos.len(), 1, "one config_info series: {infos:?}");
    let first_hash = infos[0].0.to_string();
    let applied = before.must("trunkline_config_applied_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(now - applied < 60.0 && applied <= now + 1.0, "applied at {applied}, now {now}");
    assert_eq!(before.must("trunkline_config_trunks"), 2.0);
    assert_eq!(before.must("trunkline_config_numbers"), 2.0);
    // The spool, empty, with its bound.
    assert_eq!(before.must("trunkline_session_records_spool_records"), 0.0);
    assert_eq!(before.must("trunkline_session_records_spool_bytes"), 0.0);
    assert_eq!(
        before.must("trunkline_session_records_spool_max_bytes"),
        SPOOL_MAX_BYTES.parse::<f64>().unwrap_or_default()
    );
    // Every reason of authentication failure is exported from the start, at 0.
    assert_eq!(before.must(r#"trunkline_auth_failures_total{reason="bad_credentials"}"#), 0.0);

    // 1. An answered call with RTP.
    let agent = uas("agent_answer.xml", agent_port, &["-m", "1", "-rtp_echo", "-timeout", "20"]);
    answered_call_with_gaps(&gateway);
    agent.wait().assert_success();
    let rtp_in =
        |leg: &str| format!(r#"trunkline_rtp_packets_total{{leg="{leg}",trunk="{TRUNK}"}}"#);
    assert!(
        wait_for(Duration::from_secs(5), || Page::of(&gateway).get(&rtp_in("agent")) > 0.0),
        "the call's RTP figures never reached /metrics"
    );

    // 2. A digest failure: challenged (407), then a wrong password (403).
    let auth_uri = format!("{DIGEST_NUMBER}@{}", gateway.addr());
    uac(
        "carrier_auth_refused_403.xml",
        gateway.udp(),
        &[
            "-i",
            "127.0.0.2",
            "-s",
            DIGEST_NUMBER,
            "-au",
            USERNAME,
            "-ap",
            "not-the-password",
            "-auth_uri",
            &auth_uri,
            "-timeout",
            "10",
        ],
    )
    .assert_success();

    // 3. A refused call: a number on no trunk.
    uac("carrier_not_found_404.xml", gateway.udp(), &["-s", UNKNOWN_NUMBER, "-timeout", "10"])
        .assert_success();

    // The record of the answered call waits in the spool (the webhook is down).
    assert!(
        wait_for(Duration::from_secs(3), || {
            Page::of(&gateway).get("trunkline_session_records_spool_records") >= 1.0
        }),
        "the spool gauge did not see the record"
    );
    let after = Page::of(&gateway);

    // Calls: exactly one, answered, on its trunk and direction; refusals are not calls.
    let answered = format!(
        r#"trunkline_calls_total{{direction="inbound",outcome="answered",trunk="{TRUNK}"}}"#
    );
    assert_eq!(moved(&before, &after, &answered), 1.0);
    let calls = |p: &Page| p.named("trunkline_calls_total").iter().map(|(_, v)| v).sum::<f64>();
    assert_eq!(calls(&after) - calls(&before), 1.0, "{:?}", after.named("trunkline_calls_total"));
    // Active calls: back to 0.
    let active = format!(r#"trunkline_active_calls{{direction="inbound",trunk="{TRUNK}"}}"#);
    assert_eq!(after.must(&active), 0.0);
    // Setup latency: one observation on the trunk, in the +Inf bucket and in the sum.
    let setup_count = format!(r#"trunkline_call_setup_seconds_count{{trunk="{TRUNK}"}}"#);
    let setup_inf = format!(r#"trunkline_call_setup_seconds_bucket{{trunk="{TRUNK}",le="+Inf"}}"#);
    let setup_sum = format!(r#"trunkline_call_setup_seconds_sum{{trunk="{TRUNK}"}}"#);
    assert_eq!(moved(&before, &after, &setup_count), 1.0);
    assert_eq!(moved(&before, &after, &setup_inf), 1.0);
    let setup = moved(&before, &after, &setup_sum);
    assert!(setup > 0.0 && setup < 5.0, "setup took {setup} s");
    // RTP, per leg: packets and bytes received, the gaps counted as lost, one jitter each.
    let skipped = f64::from((0..SENT).filter(|s| s % 10 == 5).count() as u16);
    for leg in ["carrier", "agent"] {
        let series = |name: &str| format!(r#"{name}{{leg="{leg}",trunk="{TRUNK}"}}"#);
        let packets = moved(&before, &after, &series("trunkline_rtp_packets_total"));
        let bytes = moved(&before, &after, &series("trunkline_rtp_bytes_total"));
        let lost = moved(&before, &after, &series("trunkline_rtp_lost_packets_total"));
        let jitters = moved(&before, &after, &series("trunkline_rtp_jitter_seconds_count"));
        assert!(packets >= 45.0, "{leg}: {packets} packets");
        assert_eq!(bytes, packets * 172.0, "{leg}: 12 bytes of header and 160 of PCMU each");
        assert!(lost >= skipped - 1.0, "{leg}: {lost} lost, {skipped} left out");
        assert_eq!(jitters, 1.0, "{leg}: one jitter per leg per call");
    }
    // Authentication: one bad password, counted by its reason and its refusal.
    let bad = r#"trunkline_auth_failures_total{reason="bad_credentials"}"#;
    assert_eq!(moved(&before, &after, bad), 1.0);
    let refused = |rule: &str, status: u16| {
        format!(r#"trunkline_inbound_refusals_total{{rule="{rule}",status="{status}"}}"#)
    };
    assert_eq!(moved(&before, &after, &refused("BadCredentials", 403)), 1.0);
    assert!(moved(&before, &after, &refused("Challenge", 407)) >= 1.0);
    // The refused call, by the rule that refused it.
    assert_eq!(moved(&before, &after, &refused("NumberNotOnTrunk", 404)), 1.0);
    // The spool: what waits, in records and bytes.
    assert!(after.must("trunkline_session_records_spool_bytes") > 100.0);
    assert!(
        moved(
            &before,
            &after,
            r#"trunkline_session_records_total{result="spooled",sink="webhook"}"#
        ) >= 1.0
    );

    // 4. A reload: another table, another hash, a later applied time; still one config_info.
    std::thread::sleep(Duration::from_millis(20));
    specs.put(&address_trunk(agent_port).number("+14155550102", "sales"));
    assert!(
        wait_for(Duration::from_secs(5), || Page::of(&gateway).get("trunkline_config_numbers")
            == 3.0),
        "the edit was not loaded within 5 s"
    );
    let reloaded = Page::of(&gateway);
    let infos = reloaded.named("trunkline_config_info");
    assert_eq!(infos.len(), 1, "{infos:?}");
    assert_ne!(infos[0].0, first_hash, "the hash did not change");
    assert_eq!(moved(&after, &reloaded, r#"trunkline_config_reloads_total{result="ok"}"#), 1.0);
    assert!(reloaded.must("trunkline_config_applied_timestamp_seconds") > applied);
}
