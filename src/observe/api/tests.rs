//! The call API over a real socket on 127.0.0.1, with a fake [`CallControl`]: what a client sees
//! (status, headers, JSON body) and what reaches the call side.

use super::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cr3t-token_1";

/// The call side of the tests: keeps the calls it starts, records what it was asked, and
/// refuses new calls with `refusal` when set.
#[derive(Default)]
struct FakeCalls {
    calls: Mutex<BTreeMap<String, CallView>>,
    originated: Mutex<Vec<NewCall>>,
    refusal: Mutex<Option<ApiError>>,
}

impl FakeCalls {
    fn originated(&self) -> Vec<NewCall> {
        self.originated.lock().unwrap().clone()
    }
}

impl CallControl for FakeCalls {
    fn originate(&self, request: NewCall) -> Result<CallView, ApiError> {
        self.originated.lock().unwrap().push(request.clone());
        if let Some(refusal) = self.refusal.lock().unwrap().clone() {
            return Err(refusal);
        }
        let mut calls = self.calls.lock().unwrap();
        let view = CallView {
            id: format!("call-{}", calls.len() + 1),
            state: CallState::Dialing,
            direction: "outbound".into(),
            trunk: format!("voice/{}", request.trunk),
            to: request.to,
            caller_id: request.caller_id.unwrap_or_else(|| "+14155550100".into()),
            agent: request.agent,
            legs: vec![LegView {
                role: LegRole::Carrier,
                state: LegState::Dialing,
                status: None,
                call_id: Some("abc@127.0.0.1".into()),
            }],
            created_at: "2026-12-03T10:00:00Z".into(),
            answered_at: None,
            ended_at: None,
            outcome: None,
            reason: None,
        };
        calls.insert(view.id.clone(), view.clone());
        Ok(view)
    }

    fn get(&self, id: &str) -> Option<CallView> {
        self.calls.lock().unwrap().get(id).cloned()
    }

    fn hang_up(&self, id: &str) -> Result<CallView, ApiError> {
        let mut calls = self.calls.lock().unwrap();
        let view = calls
            .get_mut(id)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no call {id}")))?;
        view.state = CallState::Ended;
        view.legs[0].state = LegState::Failed;
        view.legs[0].status = Some(487);
        view.ended_at = Some("2026-12-03T10:00:05Z".into());
        view.outcome = Some("cancelled".into());
        view.reason = Some("hung up through the API".into());
        Ok(view.clone())
    }
}

struct Running {
    addr: SocketAddr,
    calls: Arc<FakeCalls>,
    token_path: PathBuf,
    _dir: TestDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A folder for the token file, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("trunkline-tests")
            .join(format!("api-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start() -> Running {
    start_for(vec!["127.0.0.0/8".parse().unwrap()]).await
}

/// The API for clients from `sources`.
async fn start_for(sources: Vec<IpNet>) -> Running {
    let dir = TestDir::new();
    let token_path = dir.0.join("token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
    let token = TokenFile::open(&token_path).unwrap();
    let calls = Arc::new(FakeCalls::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_api(listener, calls.clone(), token, sources, async {
        let _ = stopped.await;
    }));
    Running { addr, calls, token_path, _dir: dir, stop: Some(stop), task: Some(task) }
}

/// What a client got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-cased names and values.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The `(code, message)` of an error answer, checking its shape.
    fn error(&self) -> (String, String) {
        let body: ErrorBody = serde_json::from_value(self.json())
            .unwrap_or_else(|e| panic!("not an error body ({e}): {self:?}"));
        (body.error.code.as_str().to_string(), body.error.message)
    }
}

/// One raw HTTP/1.1 request (`extra` are whole header lines); bounded to 5 s.
async fn send(addr: SocketAddr, method: &str, path: &str, extra: &[&str], body: &[u8]) -> Answer {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n");
        for line in extra {
            head.push_str(line);
            head.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        // A server may answer (413) before it read the whole body.
        let _ = s.write_all(body).await;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange).await.expect("an answer");
    let raw = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers, body: body.to_string() }
}

const BEARER: &str = "Authorization: Bearer s3cr3t-token_1";
const JSON_TYPE: &str = "Content-Type: application/json";

async fn post_call(addr: SocketAddr, body: &str) -> Answer {
    send(addr, "POST", "/v1/calls", &[BEARER, JSON_TYPE], body.as_bytes()).await
}

const GOOD_CALL: &str = r#"{"trunk":"carrier-out","to":"+14155550123","agent":"support"}"#;

#[tokio::test]
async fn a_call_is_started_with_201_and_its_location_and_can_be_read_and_hung_up() {
    let r = start().await;
    let body = r#"{"trunk":"voice/carrier-out","to":"+14155550123","callerId":"+14155550101",
        "agent":"support","agentUri":"sips:agents.voice.svc:5061","headers":{"X-Campaign":"spring"},
        "ringTimeoutSeconds":30}"#;
    let created = post_call(r.addr, body).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.header("location"), Some("/v1/calls/call-1"));
    let view: CallView = serde_json::from_value(created.json()).unwrap();
    assert_eq!((view.id.as_str(), view.state), ("call-1", CallState::Dialing));
    assert_eq!(
        r.calls.originated(),
        vec![NewCall {
            trunk: "voice/carrier-out".into(),
            to: "+14155550123".into(),
            caller_id: Some("+14155550101".into()),
            agent: "support".into(),
            agent_uri: Some("sips:agents.voice.svc:5061".into()),
            headers: BTreeMap::from([("X-Campaign".into(), "spring".into())]),
            ring_timeout_seconds: Some(30),
        }]
    );
    let wire = created.json();
    assert_eq!(wire["callerId"], "+14155550101", "camelCase on the wire: {wire}");
    assert_eq!(wire["legs"][0]["callId"], "abc@127.0.0.1");
    assert_eq!(wire["answeredAt"], serde_json::Value::Null);

    let got = send(r.addr, "GET", "/v1/calls/call-1", &[BEARER], b"").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(serde_json::from_value::<CallView>(got.json()).unwrap(), view);

    let ended = send(r.addr, "DELETE", "/v1/calls/call-1", &[BEARER], b"").await;
    assert_eq!(ended.status, 200, "{ended:?}");
    let ended: CallView = serde_json::from_value(ended.json()).unwrap();
    assert_eq!((ended.state, ended.outcome.as_deref()), (CallState::Ended, Some("cancelled")));
}

#[tokio::test]
async fn unknown_calls_are_404_for_get_and_delete() {
    let r = start().await;
    for method in ["GET", "DELETE"] {
        let a = send(r.addr, method, "/v1/calls/call-9", &[BEARER], b"").await;
        assert_eq!(a.status, 404, "{method}: {a:?}");
        assert_eq!(a.error(), ("not_found".into(), "no call call-9".into()));
    }
    // An id the API never issues is not found without asking the call side, and not echoed.
    let long = format!("/v1/calls/{}", "a".repeat(MAX_CALL_ID + 1));
    for path in [long.as_str(), "/v1/calls/a%20b", "/v1/calls/%3Cscript%3E"] {
        let a = send(r.addr, "GET", path, &[BEARER], b"").await;
        assert_eq!(a.status, 404, "{path}: {a:?}");
        assert_eq!(a.error(), ("not_found".into(), "no such call".into()));
    }
}

#[tokio::test]
async fn a_client_outside_the_agent_networks_is_403_forbidden_on_every_path() {
    let r = start_for(vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]).await;
    let paths = [
        ("POST", "/v1/calls"),
        ("GET", "/v1/calls/call-1"),
        ("DELETE", "/v1/calls/call-1"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/elsewhere"),
    ];
    for (method, path) in paths {
        let a = send(r.addr, method, path, &[BEARER, JSON_TYPE], GOOD_CALL.as_bytes()).await;
        assert_eq!(a.status, 403, "{method} {path}: {a:?}");
        assert_eq!(a.error().0, "forbidden");
    }
    assert!(r.calls.originated().is_empty());
    let nobody = start_for(Vec::new()).await;
    let a = send(nobody.addr, "GET", "/v1/openapi.json", &[], b"").await;
    assert_eq!(a.status, 403, "no agent network: no client");
}

#[tokio::test]
async fn every_call_route_wants_the_bearer_token() {
    let r = start().await;
    let routes =
        [("POST", "/v1/calls"), ("GET", "/v1/calls/call-1"), ("DELETE", "/v1/calls/call-1")];
    for (method, path) in routes {
        let a = send(r.addr, method, path, &[JSON_TYPE], GOOD_CALL.as_bytes()).await;
        assert_eq!(a.status, 401, "{method} {path}: {a:?}");
        assert_eq!(a.header("www-authenticate"), Some(r#"Bearer realm="trunkline""#));
        assert_eq!(a.error().0, "unauthorized");
    }
    assert!(r.calls.originated().is_empty(), "no call without the token");
}

#[tokio::test]
async fn a_malformed_authorization_header_is_401() {
    let r = start().await;
    for header in [
        "Authorization: Basic czNjcjN0LXRva2VuXzE=",
        "Authorization: Bearer",
        "Authorization: Bearer ",
        "Authorization: s3cr3t-token_1",
        "Authorization: Bearer s3cr3t-token_1 extra",
    ] {
        let a = send(r.addr, "POST", "/v1/calls", &[header, JSON_TYPE], GOOD_CALL.as_bytes()).await;
        assert_eq!(a.status, 401, "{header}: {a:?}");
        assert_eq!(a.header("www-authenticate"), Some(r#"Bearer realm="trunkline""#));
        assert_eq!(a.error().0, "unauthorized");
    }
    assert!(r.calls.originated().is_empty());
}

#[tokio::test]
async fn a_wrong_token_is_401_invalid_token_and_the_scheme_is_case_insensitive() {
    let r = start().await;
    for header in [
        "Authorization: Bearer s3cr3t-token_2",
        "Authorization: Bearer s3cr3t-token_",
        "Authorization: Bearer s3cr3t-token_11",
    ] {
        let a = send(r.addr, "POST", "/v1/calls", &[header, JSON_TYPE], GOOD_CALL.as_bytes()).await;
        assert_eq!(a.status, 401, "{header}: {a:?}");
        assert_eq!(
            a.header("www-authenticate"),
            Some(r#"Bearer realm="trunkline", error="invalid_token""#)
        );
        assert_eq!(a.error(), ("unauthorized".into(), "the bearer token is not valid".into()));
        assert!(!a.body.contains("s3cr3t"), "the token is never echoed: {a:?}");
    }
    assert!(r.calls.originated().is_empty());
    let a = send(
        r.addr,
        "POST",
        "/v1/calls",
        &["authorization: bearer s3cr3t-token_1", JSON_TYPE],
        GOOD_CALL.as_bytes(),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
}

/// Writes `content` to `path` the way Kubernetes updates a mounted Secret: a new file renamed
/// over the old one.
fn replace_file(path: &Path, content: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, content).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
async fn a_rotated_token_is_in_force_at_the_next_request_without_a_restart() {
    let r = start().await;
    assert_eq!(post_call(r.addr, GOOD_CALL).await.status, 201);

    replace_file(&r.token_path, "rotated-token-2\n");
    let old = post_call(r.addr, GOOD_CALL).await;
    assert_eq!(old.status, 401, "the old token no longer works: {old:?}");
    let new_bearer = "Authorization: Bearer rotated-token-2";
    let new =
        send(r.addr, "POST", "/v1/calls", &[new_bearer, JSON_TYPE], GOOD_CALL.as_bytes()).await;
    assert_eq!(new.status, 201, "{new:?}");

    // Written in place (another length, so another size even within the file system's clock
    // tick).
    std::fs::write(&r.token_path, "third").unwrap();
    let third =
        send(r.addr, "GET", "/v1/calls/call-1", &["Authorization: Bearer third"], b"").await;
    assert_eq!(third.status, 200, "{third:?}");
}

#[tokio::test]
async fn a_token_file_that_becomes_empty_or_goes_away_keeps_the_token_in_force() {
    let r = start().await;
    replace_file(&r.token_path, "\n");
    assert_eq!(post_call(r.addr, GOOD_CALL).await.status, 201, "the last token still works");
    let empty =
        send(r.addr, "POST", "/v1/calls", &["Authorization: Bearer ", JSON_TYPE], b"{}").await;
    assert_eq!(empty.status, 401, "an empty file never means an empty token: {empty:?}");
    std::fs::remove_file(&r.token_path).unwrap();
    assert_eq!(post_call(r.addr, GOOD_CALL).await.status, 201);
}

#[test]
fn a_token_file_that_cannot_be_used_is_an_error_naming_it() {
    let dir = TestDir::new();
    let missing = dir.0.join("missing");
    let e = TokenFile::open(&missing).unwrap_err();
    assert!(matches!(e, TokenFileError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains(&missing.display().to_string()), "{e}");

    let empty = dir.0.join("empty");
    std::fs::write(&empty, " \n").unwrap();
    let e = TokenFile::open(&empty).unwrap_err();
    assert_eq!(e.to_string(), format!("the API token file {} is empty", empty.display()));

    let two = dir.0.join("two");
    std::fs::write(&two, "one two\n").unwrap();
    assert!(matches!(TokenFile::open(&two), Err(TokenFileError::Malformed { .. })));

    let big = dir.0.join("big");
    std::fs::write(&big, "a".repeat(MAX_TOKEN_FILE as usize + 1)).unwrap();
    assert!(matches!(TokenFile::open(&big), Err(TokenFileError::TooLarge { .. })));

    let good = dir.0.join("good");
    std::fs::write(&good, "  tok\n").unwrap();
    let token = TokenFile::open(&good).unwrap();
    assert!(token.accepts("tok") && !token.accepts("  tok") && !token.accepts(""));
    assert!(!format!("{token:?}").contains("tok\""), "Debug does not print the token");
}

/// Bodies the HTTP layer refuses with 400 `bad_request`, and a word the message must contain.
const REFUSED: &[(&str, &str)] = &[
    (r#"{"to":"+14155550123","agent":"support"}"#, "missing field `trunk`"),
    (r#"{"trunk":"carrier-out","agent":"support"}"#, "missing field `to`"),
    (r#"{"trunk":"carrier-out","to":"+14155550123"}"#, "missing field `agent`"),
    (r#"{"trunk":"","to":"+14155550123","agent":"support"}"#, "trunk is empty"),
    (r#"{"trunk":"Carrier_Out","to":"+14155550123","agent":"support"}"#, "trunk must be"),
    (r#"{"trunk":"a/b/c","to":"+14155550123","agent":"support"}"#, "trunk must be"),
    (r#"{"trunk":"carrier-out","to":"","agent":"support"}"#, "to is empty"),
    (r#"{"trunk":"carrier-out","to":"+1415\r\n555","agent":"support"}"#, "to may hold only"),
    (r#"{"trunk":"carrier-out","to":"+14155550123","agent":""}"#, "agent is empty"),
    (r#"{"trunk":"carrier-out","to":"+14155550123","agent":"-x"}"#, "agent must be"),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","callerId":""}"#,
        "callerId is empty",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","agentUri":"http://x"}"#,
        "agentUri must be",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","agentUri":"sip:<x>"}"#,
        "agentUri must be",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","headers":{"Subject":"x"}}"#,
        "header name \"Subject\" must be X-",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","headers":{"X-A B":"x"}}"#,
        "must be X-",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","headers":{"X-A":"x\r\nVia: evil"}}"#,
        "control character",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","headers":{"X-A":"1","x-a":"2"}}"#,
        "given twice",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","ringTimeoutSeconds":0}"#,
        "ringTimeoutSeconds must be from 1 to 300",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","ringTimeoutSeconds":301}"#,
        "ringTimeoutSeconds must be from 1 to 300",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","ringTimeoutSeconds":-1}"#,
        "ringTimeoutSeconds",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","ringTimeoutSeconds":"30"}"#,
        "ringTimeoutSeconds: invalid type",
    ),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","callerID":"x"}"#,
        "unknown field `callerID`",
    ),
    (r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","headers":null}"#, "headers"),
    (
        r#"{"trunk":"carrier-out","to":"+14155550123","agent":"a","headers":{"X-A":1}}"#,
        "headers.X-A",
    ),
    (r#"["carrier-out","+14155550123",null,"support",null,{},null]"#, "must be a JSON object"),
    (r#"{"trunk":"carrier-out""#, "EOF"),
    (r#"{"trunk":"carrier-out","to":"+1","agent":"a"} {}"#, "trailing characters"),
    ("", "EOF"),
];

#[tokio::test]
async fn each_invalid_request_is_400_bad_request_naming_what_is_wrong() {
    let r = start().await;
    for (body, expected) in REFUSED {
        let a = post_call(r.addr, body).await;
        assert_eq!(a.status, 400, "{body}: {a:?}");
        let (code, message) = a.error();
        assert_eq!(code, "bad_request", "{body}");
        assert!(message.contains(expected), "{body}: {message:?} lacks {expected:?}");
    }
    let too_many: BTreeMap<String, String> =
        (0..=MAX_HEADERS).map(|i| (format!("X-H{i}"), "v".to_string())).collect();
    let body = json!({"trunk": "t", "to": "+14155550123", "agent": "a", "headers": too_many});
    let a = post_call(r.addr, &body.to_string()).await;
    assert_eq!((a.status, a.error().1), (400, format!("at most {MAX_HEADERS} headers")));
    assert!(r.calls.originated().is_empty(), "nothing invalid reaches the call side");
}

#[tokio::test]
async fn framework_rejections_have_the_json_error_shape() {
    let r = start().await;
    let good = GOOD_CALL.as_bytes();
    let no_type = send(r.addr, "POST", "/v1/calls", &[BEARER], good).await;
    assert_eq!((no_type.status, no_type.error().0.as_str()), (415, "bad_request"), "{no_type:?}");
    let text = send(r.addr, "POST", "/v1/calls", &[BEARER, "Content-Type: text/plain"], good).await;
    assert_eq!((text.status, text.error().0.as_str()), (415, "bad_request"), "{text:?}");
    let charset = send(
        r.addr,
        "POST",
        "/v1/calls",
        &[BEARER, "Content-Type: Application/JSON; charset=utf-8"],
        good,
    )
    .await;
    assert_eq!(charset.status, 201, "{charset:?}");

    let big = format!(
        r#"{{"trunk":"t","to":"+1","agent":"a","headers":{{"X-A":"{}"}}}}"#,
        "v".repeat(MAX_BODY_BYTES)
    );
    let too_large = post_call(r.addr, &big).await;
    assert_eq!(
        (too_large.status, too_large.error().0.as_str()),
        (413, "bad_request"),
        "{too_large:?}"
    );

    let bad_utf8 = send(r.addr, "GET", "/v1/calls/%FF", &[BEARER], b"").await;
    assert_eq!(
        (bad_utf8.status, bad_utf8.error().0.as_str()),
        (400, "bad_request"),
        "{bad_utf8:?}"
    );

    for path in ["/", "/v1/call", "/v1/calls/", "/v1/calls/a/b"] {
        let a = send(r.addr, "GET", path, &[BEARER], b"").await;
        assert_eq!((a.status, a.error().0.as_str()), (404, "not_found"), "{path}: {a:?}");
    }
    for (method, path) in [("PUT", "/v1/calls"), ("GET", "/v1/calls"), ("POST", "/v1/calls/x")] {
        let a = send(r.addr, method, path, &[BEARER], b"").await;
        assert_eq!(
            (a.status, a.error().0.as_str()),
            (405, "method_not_allowed"),
            "{method} {path}: {a:?}"
        );
    }
    let a = send(r.addr, "POST", "/v1/openapi.json", &[], b"").await;
    assert_eq!(a.status, 405, "{a:?}");
}

#[tokio::test]
async fn a_refusal_of_the_call_side_is_sent_with_its_status_code_and_retry_after() {
    let r = start().await;
    *r.calls.refusal.lock().unwrap() = Some(
        ApiError::new(ErrorCode::LimitReached, "carrier-out: 50 calls in progress")
            .with_retry_after(2),
    );
    let a = post_call(r.addr, GOOD_CALL).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.header("retry-after"), Some("2"));
    assert_eq!(a.error(), ("limit_reached".into(), "carrier-out: 50 calls in progress".into()));

    *r.calls.refusal.lock().unwrap() =
        Some(ApiError::new(ErrorCode::UnknownTrunk, "no OutboundTrunk carrier-out"));
    let a = post_call(r.addr, GOOD_CALL).await;
    assert_eq!((a.status, a.error().0.as_str()), (422, "unknown_trunk"));
    assert_eq!(a.header("retry-after"), None);

    // A status that is not an error is never sent as one.
    *r.calls.refusal.lock().unwrap() =
        Some(ApiError::new(ErrorCode::Internal, "x").with_status(200));
    assert_eq!(post_call(r.addr, GOOD_CALL).await.status, 500);
}

#[tokio::test]
async fn the_openapi_document_is_served_without_a_token_and_the_server_stops_on_shutdown() {
    let mut r = start().await;
    let a = send(r.addr, "GET", "/v1/openapi.json", &[], b"").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json(), openapi_document());
    assert_eq!(a.json()["openapi"], "3.0.3");

    r.stop.take().unwrap().send(()).unwrap();
    let task = r.task.take().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test]
async fn every_route_of_the_router_is_in_the_document_and_nothing_else() {
    let doc = openapi_document();
    let paths = doc["paths"].as_object().unwrap();
    let documented: Vec<(String, Vec<String>)> = paths
        .iter()
        .map(|(path, item)| {
            let mut methods: Vec<String> = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .map(|k| k.to_ascii_uppercase())
                .collect();
            methods.sort();
            (path.clone(), methods)
        })
        .collect();
    let mut routed: Vec<(String, Vec<String>)> = ROUTES
        .iter()
        .map(|(path, methods)| {
            let mut m: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
            m.sort();
            (path.to_string(), m)
        })
        .collect();
    routed.sort();
    assert_eq!(documented, routed);

    // ROUTES is what the router serves: each route and method is answered by a handler (with a
    // token, no route says 404 `no such path` or 405).
    let r = start().await;
    for (path, methods) in ROUTES {
        for method in methods {
            let concrete = path.replace("{id}", "call-1");
            let a = send(r.addr, method.as_str(), &concrete, &[BEARER, JSON_TYPE], b"{}").await;
            assert!(
                ![404, 405].contains(&a.status) || a.error().1 == "no call call-1",
                "{method} {path}: {a:?}"
            );
        }
    }
}

#[test]
fn each_error_code_is_documented_with_its_status() {
    let doc = openapi_document();
    let text = |status: u16| -> String {
        doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op.get("responses")?.get(status.to_string()))
            .map(|r| r["description"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    for code in ErrorCode::ALL {
        if code == ErrorCode::MethodNotAllowed {
            continue; // an undocumented method is by definition not in the document
        }
        let described = text(code.status());
        assert!(
            described.contains(&format!("`{}`", code.as_str())),
            "{code:?} at {}: {described}",
            code.status()
        );
    }
    let enum_values = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    let listed: Vec<&str> =
        enum_values.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, all);
    for code in ErrorCode::ALL {
        assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
    }
}

/// Does the document's `NewCall` schema accept `body`?
fn schema_accepts(validator: &jsonschema::Validator, body: &serde_json::Value) -> bool {
    validator.is_valid(body)
}

/// Does the HTTP layer pass `body` on to the call side?
fn server_accepts(body: &serde_json::Value) -> bool {
    let bytes = serde_json::to_vec(body).unwrap();
    NewCall::from_json(&bytes).is_ok_and(|call| call.validate().is_ok())
}

#[test]
fn the_schema_and_the_validation_agree() {
    let doc = openapi_document();
    let root = json!({
        "$ref": "#/components/schemas/NewCall",
        "components": doc["components"].clone(),
    });
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(false)
        .build(&root)
        .expect("the document's schemas compile");
    let base = json!({"trunk": "carrier-out", "to": "+14155550123", "agent": "support"});
    let with = |field: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let headers = |n: usize| -> serde_json::Value {
        (0..n).map(|i| (format!("X-H{i}"), json!("v"))).collect::<serde_json::Map<_, _>>().into()
    };
    // (body, accepted by both) — the schema and the server agree on every one.
    let cases = [
        (base.clone(), true),
        (new_call_example(), true),
        (with("trunk", json!("voice/carrier-out")), true),
        (with("trunk", json!("a.b-c")), true),
        (with("trunk", json!("")), false),
        (with("trunk", json!("Upper")), false),
        (with("trunk", json!("-a")), false),
        (with("trunk", json!("a/b/c")), false),
        (with("trunk", json!(format!("{}/a", "n".repeat(64)))), false),
        (with("trunk", json!(7)), false),
        (with("to", json!("(+44) 20 7946 0958")), true),
        (with("to", json!("")), false),
        (with("to", json!("+1\n")), false),
        (with("to", json!("é")), false),
        (with("to", json!("1".repeat(65))), false),
        (with("callerId", json!("+14155550101")), true),
        (with("callerId", json!("")), false),
        (with("agent", json!("a.b_c-d")), true),
        (with("agent", json!("_a")), false),
        (with("agent", json!("a".repeat(64))), false),
        (with("agentUri", json!("sip:agent@10.0.0.1:5070;transport=tcp")), true),
        (with("agentUri", json!("SIPS:agent.example")), true),
        (with("agentUri", json!("sip:")), false),
        (with("agentUri", json!("tel:+1415")), false),
        (with("agentUri", json!("sip:a b")), false),
        (with("agentUri", json!(format!("sip:{}", "a".repeat(253)))), false),
        (with("headers", json!({})), true),
        (with("headers", headers(MAX_HEADERS)), true),
        (with("headers", headers(MAX_HEADERS + 1)), false),
        (with("headers", json!({"X-A": "tab\tok"})), true),
        (with("headers", json!({"X-A": "a\u{7f}"})), false),
        (with("headers", json!({"X-A": "v".repeat(MAX_HEADER_VALUE + 1)})), false),
        (with("headers", json!({"X-A": null})), false),
        (with("ringTimeoutSeconds", json!(1)), true),
        (with("ringTimeoutSeconds", json!(300)), true),
        (with("ringTimeoutSeconds", json!(0)), false),
        (with("ringTimeoutSeconds", json!(301)), false),
        (with("ringTimeoutSeconds", json!(2.5)), false),
        (with("extra", json!(1)), false),
        (json!([]), false),
        (json!(["carrier-out", "+14155550123", null, "support", null, {}, null]), false),
    ];
    for (body, accepted) in &cases {
        assert_eq!(schema_accepts(&validator, body), *accepted, "schema on {body}");
        assert_eq!(server_accepts(body), *accepted, "server on {body}");
    }
    // Where the server is stricter than the schema can say (OpenAPI 3.0 has no propertyNames):
    // it refuses, the schema lets through. Never the other way round.
    let stricter = [
        with("headers", json!({"Subject": "x"})),
        with("headers", json!({"X-A": "1", "x-a": "2"})),
        with("trunk", json!("a".repeat(254))),
    ];
    for body in &stricter {
        assert!(schema_accepts(&validator, body) && !server_accepts(body), "{body}");
    }
}

#[test]
fn percent_encoding_keeps_unreserved_characters() {
    assert_eq!(percent_encode("call-1.a_b~"), "call-1.a_b~");
    assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
}
