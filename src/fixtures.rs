//! The in-crate fake API server the unit tests share (controller-rs's `fixtures.rs` pattern):
//! a `kube::Client` over kube's mock service (`tower-test`), a loop that reads every request
//! into a [`Recorded`] (method, path, query, JSON body) and hands it to the test's scenario to
//! answer, and builders for the answers an API server gives (an object, a `Status` failure, a
//! watch event). Each test module keeps only its scenario: what to answer, what to assert.
//!
//! The end-to-end tests, which run the binary against an HTTP API server, have their own in
//! `tests/support/apiserver.rs`. Test-only: compiled under `cfg(test)`.

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{Handle, SendResponse};

/// The server's end of the mock service.
pub type MockHandle = Handle<Request<Body>, Response<Body>>;
/// How the server answers one request (now, or later for a watch held open).
pub type Responder = SendResponse<Response<Body>>;

/// A client whose every request goes to the returned handle.
pub fn mock_client() -> (Client, MockHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the API server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    /// The query's `key=value` pairs as sent (percent-encoded), in order.
    pub query: Vec<String>,
    /// The JSON body; `Null` when there is none.
    pub body: Value,
}

impl Recorded {
    async fn read(request: Request<Body>) -> Recorded {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("the request body is readable");
        let query = parts.uri.query().unwrap_or_default();
        Recorded {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: query.split('&').filter(|q| !q.is_empty()).map(str::to_string).collect(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON request body")
            },
        }
    }

    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }

    /// `METHOD /path`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// `METHOD /path?query`, as the request line was.
    pub fn line_with_query(&self) -> String {
        format!("{} {}?{}", self.method, self.path, self.query.join("&"))
    }

    /// A query parameter's value, decoded (the few characters field managers and label
    /// selectors use).
    pub fn param(&self, key: &str) -> Option<String> {
        self.query.iter().find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| {
                v.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/").replace('+', " ")
            })
        })
    }

    /// A WATCH (a GET with `watch=true`).
    pub fn is_watch(&self) -> bool {
        self.method == Method::GET && self.query.iter().any(|q| q == "watch=true")
    }
}

/// Serves the mock service until the client is dropped: every request is read into a
/// [`Recorded`] and given to `answer` with its [`Responder`], which answers it at once or keeps
/// it (a watch held open). Gives every request, in order.
pub fn serve(
    mut handle: MockHandle,
    mut answer: impl FnMut(&Recorded, Responder) + Send + 'static,
) -> JoinHandle<Vec<Recorded>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let request = Recorded::read(request).await;
            answer(&request, send);
            seen.push(request);
        }
        seen
    })
}

/// A JSON answer with status `code`.
pub fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("an HTTP status code"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("a response")
}

/// An object (or list) answered with 200.
pub fn ok(body: &Value) -> Response<Body> {
    json_response(200, body)
}

/// The `Status` object an API server answers a failure with.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A failure: `code` with its `Status` body.
pub fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_body(code, reason, message))
}

/// The answer to a WATCH that carries one event (`ADDED`, `MODIFIED`, `DELETED`) and ends; the
/// watcher then watches again from the event's resourceVersion.
pub fn watch_event(type_: &str, object: &Value) -> Response<Body> {
    let line = format!("{}\n", json!({"type": type_, "object": object}));
    Response::builder().body(Body::from(line.into_bytes())).expect("a response")
}
