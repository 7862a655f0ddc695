//! Calls placed through the call API (issue 12 item 2) on the wire: `POST /v1/calls` on the
//! built `trunkline run`, sipp as the carrier (challenging with 401) and as the agent runtime
//! on 127.0.0.1; the call is read with `GET` and ended with `DELETE`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::sipp::uas;
use support::{Gateway, GatewayOptions, Outbound, Specs, TempDir, free_port};

const TOKEN: &str = "test-token-7f3a9c";

struct Api {
    addr: SocketAddr,
}

impl Api {
    /// `METHOD path` with an optional token and JSON body: the status and the JSON answer.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let timeout = Duration::from_secs(5);
        let mut stream =
            TcpStream::connect_timeout(&self.addr, timeout).expect("connect to the API");
        stream.set_read_timeout(Some(timeout)).expect("timeout");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send the request");
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let json = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        (status, json)
    }

    /// Polls `GET /v1/calls/{id}` until `state` (at most `within`); the last view.
    fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, view) = self.call("GET", &format!("/v1/calls/{id}"), Some(TOKEN), None);
            assert_eq!(status, 200, "{view}");
            if view["state"] == state || Instant::now() >= deadline {
                return view;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn start(carrier_port: u16, agent_port: u16, trunk: Outbound) -> (Gateway, Api, TempDir, Specs) {
    let specs = Specs::new().with_outbound(trunk);
    let dir = TempDir::new("api-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).expect("write the token");
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _ = carrier_port;
    let gateway = Gateway::start(
        specs.path(),
        GatewayOptions::default()
            .arg("--api")
            .arg(&api.to_string())
            .arg("--api-token-file")
            .arg(&token_file.to_string_lossy())
            .arg("--agent-uri")
            .arg(&format!("sip:127.0.0.1:{agent_port}")),
    );
    (gateway, Api { addr: api }, dir, specs)
}

fn new_call() -> Value {
    json!({"trunk": "carrier-out", "to": "+1 415 555 0142", "agent": "support",
           "headers": {"X-Campaign": "spring"}})
}

#[test]
fn a_call_placed_by_the_api_rings_the_carrier_then_the_agent_and_ends_when_the_agent_hangs_up() {
    let (carrier_port, agent_port) = (free_port(), free_port());
    let trunk = Outbound::new("carrier-out", carrier_port).digest("acct-7", "carrier-pw");
    let (gateway, api, _dir, _specs) = start(carrier_port, agent_port, trunk);
    let carrier = uas(
        "carrier_answer_digest.xml",
        carrier_port,
        &[
            "-key",
            "auth_user",
            "acct-7",
            "-key",
            "auth_pass",
            "carrier-pw",
            "-key",
            "number",
            "+14155550142",
            "-key",
            "caller_id",
            "+14155550100",
            "-timeout",
            "15",
        ],
    );
    let agent = uas("agent_answer_then_hangup.xml", agent_port, &["-d", "500", "-timeout", "15"]);

    let (status, view) = api.call("POST", "/v1/calls", Some(TOKEN), Some(&new_call()));
    assert_eq!(status, 201, "{view}");
    let id = view["id"].as_str().expect("an id").to_string();
    assert_eq!(view["to"], "+14155550142", "the number as dialed, normalised");
    assert_eq!(view["callerId"], "+14155550100");
    assert_eq!(view["direction"], "outbound");

    let answered = api.wait_state(&id, "answered", Duration::from_secs(10));
    assert!(answered["answeredAt"].is_string(), "{answered}");
    let ended = api.wait_state(&id, "ended", Duration::from_secs(10));
    assert_eq!(ended["outcome"], "completed", "{ended}");
    let legs = ended["legs"].as_array().expect("legs");
    assert_eq!(legs.len(), 2, "{ended}");
    assert!(legs.iter().all(|l| l["state"] == "ended"), "{ended}");
    carrier.wait().assert_success();
    agent.wait().assert_success();
    let calls = r#"trunkline_calls_total{direction="outbound",outcome="answered",trunk="voice/carrier-out"}"#;
    assert!(gateway.wait_metric(calls, 1.0, Duration::from_secs(3)));
    assert!(!gateway.log_text().contains(TOKEN), "the token is in the log");
}

#[test]
fn delete_hangs_up_both_legs_of_an_answered_call() {
    let (carrier_port, agent_port) = (free_port(), free_port());
    let (_gateway, api, _dir, _specs) =
        start(carrier_port, agent_port, Outbound::new("carrier-out", carrier_port));
    // Both answer and wait for the gateway's BYE.
    let carrier = uas("agent_answer.xml", carrier_port, &["-timeout", "15"]);
    let agent = uas("agent_answer.xml", agent_port, &["-timeout", "15"]);
    let (status, view) = api.call("POST", "/v1/calls", Some(TOKEN), Some(&new_call()));
    assert_eq!(status, 201, "{view}");
    let id = view["id"].as_str().expect("an id").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = api.wait_state(&id, "answered", Duration::from_secs(10));
        let legs = view["legs"].as_array().cloned().unwrap_or_default();
        if legs.len() == 2 && legs.iter().all(|l| l["state"] == "answered") {
            break;
        }
        assert!(Instant::now() < deadline, "both legs never answered: {view}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = api.call("DELETE", &format!("/v1/calls/{id}"), Some(TOKEN), None);
    assert_eq!(status, 200);
    let ended = api.wait_state(&id, "ended", Duration::from_secs(5));
    assert_eq!(ended["reason"], "hung up through the call API", "{ended}");
    carrier.wait().assert_success();
    agent.wait().assert_success();
    let (status, _) = api.call("DELETE", "/v1/calls/nosuchcall", Some(TOKEN), None);
    assert_eq!(status, 404);
}

#[test]
fn the_api_refuses_without_the_token_and_by_the_trunks_rules() {
    let (carrier_port, agent_port) = (free_port(), free_port());
    let trunk = Outbound::new("carrier-out", carrier_port).agent("support");
    let (_gateway, api, _dir, _specs) = start(carrier_port, agent_port, trunk);
    let (status, body) = api.call("POST", "/v1/calls", None, Some(&new_call()));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = api.call("POST", "/v1/calls", Some("wrong"), Some(&new_call()));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    for (patch, status, code) in [
        (json!({"trunk": "nope"}), 422, "unknown_trunk"),
        (json!({"agent": "sales"}), 403, "agent_not_allowed"),
        (json!({"callerId": "+14155550199"}), 403, "caller_id_not_allowed"),
        (json!({"to": "support-desk"}), 422, "bad_number"),
    ] {
        let mut request = new_call();
        for (k, v) in patch.as_object().expect("object") {
            request[k] = v.clone();
        }
        let (got, body) = api.call("POST", "/v1/calls", Some(TOKEN), Some(&request));
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
    }
}
