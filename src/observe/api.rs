//! The call API: outbound calls started over HTTP (DESIGN §4, "or it calls the gateway's HTTP
//! API"). The gateway dials the carrier through an OutboundTrunk and, on answer, calls the agent
//! runtime and bridges the two.
//!
//! - `POST /v1/calls` with a [`NewCall`] JSON body: 201, `Location: /v1/calls/{id}` and the
//!   [`CallView`] (state `dialing`).
//! - `GET /v1/calls/{id}`: 200 and the view, or 404.
//! - `DELETE /v1/calls/{id}`: hangs up (CANCEL or BYE on every leg); 200 and the view as it is
//!   after asking, or 404.
//! - `GET /v1/openapi.json`: the OpenAPI 3.0 document of all this ([`openapi_document`]); no
//!   token needed.
//!
//! Only clients from the agent networks (`--agent-networks`, the agent-facing trust zone of
//! DESIGN §3) are answered; any other source gets 403 `forbidden` on every path.
//!
//! Every `/v1/calls` route needs `Authorization: Bearer <token>`, the token being the content of
//! a [`TokenFile`] (re-read when the file changes, so a rotated Secret works without a restart;
//! compared in constant time; never logged). A missing, malformed or wrong token gets 401
//! `unauthorized` with `WWW-Authenticate: Bearer`, before the body is read.
//!
//! Every error, including the ones the HTTP framework raises (malformed JSON, wrong content type,
//! a body over [`MAX_BODY_BYTES`], an unknown path or method), is JSON:
//! `{"error": {"code": "...", "message": "..."}}` with a stable [`ErrorCode`]. The request is
//! checked here ([`NewCall::validate`]) before the call side sees it; what depends on the routing
//! table (the trunk, its policy, the number's format) is the call side's to check.
//!
//! The OpenAPI document is built from the same types the handlers use (their `schemars`
//! schemas), with the routes and answers written out in [`openapi_document`]; a test checks that
//! every route of the router is in it and that the schema and [`NewCall::validate`] agree.
//!
//! Layering: `observe` does not import `call`. The call side implements [`CallControl`];
//! `runtime::gateway` binds the listener and calls [`serve_api`] with it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use schemars::JsonSchema;
use schemars::generate::{Contract, SchemaSettings};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

/// What the call side does for the API. Synchronous: `originate` checks the request against the
/// trunk's policy and starts the call's task, returning at once (state `dialing`).
pub trait CallControl: Send + Sync + 'static {
    fn originate(&self, request: NewCall) -> Result<CallView, ApiError>;
    fn get(&self, id: &str) -> Option<CallView>;
    /// Ends the call (CANCEL or BYE on every leg); the view as it is after asking.
    fn hang_up(&self, id: &str) -> Result<CallView, ApiError>;
}

/// The body of `POST /v1/calls`. Unknown fields are refused (400), so that a typo such as
/// `callerID` is not silently ignored.
#[derive(Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(example = new_call_example())]
pub struct NewCall {
    /// The OutboundTrunk to dial through: `name`, or `namespace/name` when the name is used in
    /// more than one namespace (an ambiguous name is refused, never guessed).
    #[schemars(length(min = 1, max = 317), regex(pattern = TRUNK_PATTERN))]
    pub trunk: String,
    /// The number to dial: E.164 (`+14155550123`) or as the agent would write it (`tel:` and
    /// separators are accepted); written toward the carrier per the trunk's `numberFormat`.
    #[schemars(length(min = 1, max = 64), regex(pattern = PRINTABLE_PATTERN))]
    pub to: String,
    /// The caller id to present: the trunk's `callerId` or one of its `allowedCallerIds`.
    /// Default: the trunk's `callerId`.
    #[schemars(length(min = 1, max = 64), regex(pattern = PRINTABLE_PATTERN))]
    pub caller_id: Option<String>,
    /// The agent id the call is for (checked against the trunk's `agents` allowlist).
    #[schemars(length(min = 1, max = 63), regex(pattern = AGENT_ID_PATTERN))]
    pub agent: String,
    /// The SIP URI of the agent runtime to bridge to on answer (`sip:` or `sips:`). Default:
    /// the gateway's `--agent-uri`.
    #[schemars(length(min = 5, max = 256), regex(pattern = AGENT_URI_PATTERN))]
    pub agent_uri: Option<String>,
    /// `X-` headers (RFC 3261 token names, at most 32, values of at most 1024 characters without
    /// control characters) sent on the agent leg and to the carrier. Names are case-insensitive:
    /// the same name twice is refused.
    #[serde(default)]
    #[schemars(schema_with = "headers_schema")]
    pub headers: BTreeMap<String, String>,
    /// Seconds to let the carrier ring before giving up (outcome `no_answer`), 1 to 300.
    /// Default: the gateway's.
    #[schemars(range(min = 1, max = 300))]
    pub ring_timeout_seconds: Option<u32>,
}

/// A call as the API shows it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CallView {
    /// The call's id, as in `Location` (letters, digits, `-`, `.`, `_` and `~`).
    pub id: String,
    pub state: CallState,
    /// `outbound`.
    pub direction: String,
    /// The trunk, as `namespace/name`.
    pub trunk: String,
    /// The dialed number.
    pub to: String,
    /// The caller id presented to the carrier.
    pub caller_id: String,
    pub agent: String,
    /// The carrier leg first, then the agent leg once it is dialed.
    pub legs: Vec<LegView>,
    /// RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub created_at: String,
    /// RFC 3339; `null` until the carrier answers.
    #[schemars(extend("format" = "date-time"))]
    pub answered_at: Option<String>,
    /// RFC 3339; `null` until the call ends.
    #[schemars(extend("format" = "date-time"))]
    pub ended_at: Option<String>,
    /// Once ended: `completed`, `busy`, `no_answer`, `failed` or `cancelled`.
    pub outcome: Option<String>,
    /// Once ended: why, in words (a SIP status and reason, a timeout, who hung up).
    pub reason: Option<String>,
}

/// The state of the call: `dialing` (the carrier is being called), `ringing` (the carrier
/// sent 180/183), `answered` (bridged, or the agent is being called), `ended`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Dialing,
    Ringing,
    Answered,
    Ended,
}

/// One leg of the call.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LegView {
    pub role: LegRole,
    pub state: LegState,
    /// The last final (or provisional) SIP status this leg answered, if any.
    #[schemars(range(min = 100, max = 699))]
    pub status: Option<u16>,
    /// The SIP Call-ID of this leg, once it is dialed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

/// `carrier` (the leg to the dialed number) or `agent` (the leg to the agent runtime).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LegRole {
    Carrier,
    Agent,
    /// A bridged transfer's destination, dialed when the agent transferred the call.
    Transfer,
}

/// `dialing`, `ringing`, `answered`, `ended` (after an answer) or `failed` (never answered).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LegState {
    Dialing,
    Ringing,
    Answered,
    Ended,
    Failed,
}

/// A refusal of the API, sent as `{"error": {"code": ..., "message": ...}}` with `status`.
/// `ApiError::new(code, message)` takes the code's usual status ([`ErrorCode::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({status}): {message}", code.as_str())]
pub struct ApiError {
    /// The HTTP status; anything but 4xx/5xx is sent as 500.
    pub status: u16,
    pub code: ErrorCode,
    /// For a person: what is wrong and what to change. Never a password or token.
    pub message: String,
    /// Sent as `Retry-After` (seconds), e.g. with `limit_reached` or `draining`.
    pub retry_after_seconds: Option<u32>,
}

// No doc comment on a variant: schemars would then describe the enum as `oneOf` of constants.
/// The stable codes of [`ApiError`], snake_case in JSON. Their usual status is
/// [`ErrorCode::status`]; `forbidden` is a client outside the agent networks.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    UnknownTrunk,
    AmbiguousTrunk,
    AgentNotAllowed,
    CallerIdNotAllowed,
    BadNumber,
    NoAgentUri,
    NoCommonCodec,
    LimitReached,
    Draining,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnknownTrunk,
        ErrorCode::AmbiguousTrunk,
        ErrorCode::AgentNotAllowed,
        ErrorCode::CallerIdNotAllowed,
        ErrorCode::BadNumber,
        ErrorCode::NoAgentUri,
        ErrorCode::NoCommonCodec,
        ErrorCode::LimitReached,
        ErrorCode::Draining,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnknownTrunk => "unknown_trunk",
            ErrorCode::AmbiguousTrunk => "ambiguous_trunk",
            ErrorCode::AgentNotAllowed => "agent_not_allowed",
            ErrorCode::CallerIdNotAllowed => "caller_id_not_allowed",
            ErrorCode::BadNumber => "bad_number",
            ErrorCode::NoAgentUri => "no_agent_uri",
            ErrorCode::NoCommonCodec => "no_common_codec",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::Draining => "draining",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The usual HTTP status of the code: 401, 403 (`forbidden`), 400, 404, 405; 422 for a request that is well
    /// formed but names something the routing table does not allow (trunk, number, agent URI,
    /// codecs); 403 for what the trunk's policy forbids (agent, caller id); 429 over the trunk's
    /// limits; 503 while draining or when calls cannot be placed; 500.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::BadRequest => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::UnknownTrunk
            | ErrorCode::AmbiguousTrunk
            | ErrorCode::BadNumber
            | ErrorCode::NoAgentUri
            | ErrorCode::NoCommonCodec => 422,
            ErrorCode::Forbidden | ErrorCode::AgentNotAllowed | ErrorCode::CallerIdNotAllowed => {
                403
            }
            ErrorCode::LimitReached => 429,
            ErrorCode::Draining | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl ApiError {
    /// An error with the code's usual status and no `Retry-After`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { status: code.status(), code, message: message.into(), retry_after_seconds: None }
    }

    pub fn with_status(mut self, status: u16) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after_seconds = Some(seconds);
        self
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    fn not_found(id: &str) -> ApiError {
        // The id is echoed only when it is one we could have issued.
        if valid_call_id(id) {
            ApiError::new(ErrorCode::NotFound, format!("no call {id}"))
        } else {
            ApiError::new(ErrorCode::NotFound, "no such call")
        }
    }
}

/// The JSON body of every error.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_response(
            status,
            &ErrorBody { error: ErrorDetail { code: self.code, message: self.message } },
        );
        let headers = response.headers_mut();
        if self.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, JSON)], bytes).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot serialise an API answer");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, JSON)],
                r#"{"error":{"code":"internal","message":"the answer could not be serialised"}}"#,
            )
                .into_response()
        }
    }
}

const JSON: &str = "application/json";
const BEARER_CHALLENGE: &str = r#"Bearer realm="trunkline""#;
const BEARER_INVALID: &str = r#"Bearer realm="trunkline", error="invalid_token""#;

// ---------------------------------------------------------------------------------------------
// Limits and validation of a new call (the schema says the same; a test checks they agree).

/// The largest request body read; a larger one gets 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// At most this many entries in `headers`.
pub const MAX_HEADERS: usize = 32;
/// The longest header name and value (characters).
pub const MAX_HEADER_NAME: usize = 64;
pub const MAX_HEADER_VALUE: usize = 1024;
/// `ringTimeoutSeconds` range.
pub const RING_TIMEOUT_SECONDS: std::ops::RangeInclusive<u32> = 1..=300;
/// The longest call id the API accepts in a path (longer ones are not found).
pub const MAX_CALL_ID: usize = 128;

/// `name` or `namespace/name`: a DNS label, `/`, a DNS subdomain (Kubernetes names).
const TRUNK_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";
/// Printable ASCII, space included (numbers are read by the call side).
const PRINTABLE_PATTERN: &str = r"^[ -~]+$";
/// The agent id of `api::rules::AGENT_ID_PATTERN` (observe imports nothing of the crate).
const AGENT_ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";
/// `sip:` or `sips:` (any case) and visible ASCII without `<`, `>`, `"`.
const AGENT_URI_PATTERN: &str = r#"^[sS][iI][pP][sS]?:[!#-;=?-~]+$"#;
/// `X-` and RFC 3261 token characters (§25.1).
const HEADER_NAME_PATTERN: &str = r"^[xX]-[A-Za-z0-9.!%*_+`'~-]+$";
/// No control character but horizontal tab.
const HEADER_VALUE_PATTERN: &str = r"^[^\x00-\x08\x0A-\x1F\x7F]*$";

fn new_call_example() -> serde_json::Value {
    json!({
        "trunk": "carrier-out",
        "to": "+14155550123",
        "agent": "support",
        "headers": {"X-Campaign": "spring-renewals"},
        "ringTimeoutSeconds": 30
    })
}

fn headers_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_HEADERS,
        "additionalProperties": {
            "type": "string",
            "maxLength": MAX_HEADER_VALUE,
            "pattern": HEADER_VALUE_PATTERN,
        },
        "description": format!(
            "Header names match {HEADER_NAME_PATTERN} and are at most {MAX_HEADER_NAME} characters."
        ),
    })
}

impl NewCall {
    /// Reads a request body: one JSON object (not an array, nothing after it) with the fields of
    /// a [`NewCall`] and no other; else a `bad_request` naming the field and what is wrong.
    pub fn from_json(body: &[u8]) -> Result<NewCall, ApiError> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                ApiError::bad_request(format!("the body is not a valid call request: {inner}"))
            } else {
                ApiError::bad_request(format!("{path}: {inner}"))
            }
        })
    }

    /// What the HTTP layer checks before the call side sees the request: required fields
    /// present, lengths, characters, the header names and values, the ring timeout's range, the
    /// agent URI's scheme. The first problem found, as a `bad_request`.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_trunk(&self.trunk)?;
        check_printable("to", &self.to, 64)?;
        if let Some(caller_id) = &self.caller_id {
            check_printable("callerId", caller_id, 64)?;
        }
        check_agent(&self.agent)?;
        if let Some(uri) = &self.agent_uri {
            check_agent_uri(uri)?;
        }
        check_headers(&self.headers)?;
        if let Some(seconds) = self.ring_timeout_seconds
            && !RING_TIMEOUT_SECONDS.contains(&seconds)
        {
            return Err(ApiError::bad_request(format!(
                "ringTimeoutSeconds must be from {} to {}, not {seconds}",
                RING_TIMEOUT_SECONDS.start(),
                RING_TIMEOUT_SECONDS.end()
            )));
        }
        Ok(())
    }
}

fn check_trunk(trunk: &str) -> Result<(), ApiError> {
    if trunk.is_empty() {
        return Err(ApiError::bad_request("trunk is empty: name an OutboundTrunk"));
    }
    let (namespace, name) = match trunk.split_once('/') {
        Some((namespace, name)) => (Some(namespace), name),
        None => (None, trunk),
    };
    let label = |s: &str, max: usize, dots: bool| {
        (1..=max).contains(&s.len())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if namespace.is_some_and(|ns| !label(ns, 63, false)) || !label(name, 253, true) {
        return Err(ApiError::bad_request(
            "trunk must be an OutboundTrunk's name or namespace/name (lower-case letters, digits, \
             '-' and '.', starting and ending with a letter or digit)",
        ));
    }
    Ok(())
}

fn check_printable(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad_request(format!("{field} is empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::bad_request(format!("{field} is longer than {max} characters")));
    }
    if !value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(ApiError::bad_request(format!(
            "{field} may hold only printable ASCII characters (a number such as +14155550123)"
        )));
    }
    Ok(())
}

fn check_agent(agent: &str) -> Result<(), ApiError> {
    let ok = (1..=63).contains(&agent.len())
        && agent.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && agent.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else if agent.is_empty() {
        Err(ApiError::bad_request("agent is empty: name the agent id the call is for"))
    } else {
        Err(ApiError::bad_request(
            "agent must be an agent id: letters, digits, '.', '_' and '-', starting with a letter \
             or digit, at most 63",
        ))
    }
}

fn check_agent_uri(uri: &str) -> Result<(), ApiError> {
    let rest = ["sip:", "sips:"]
        .iter()
        .find(|scheme| uri.get(..scheme.len()).is_some_and(|p| p.eq_ignore_ascii_case(scheme)))
        .map(|scheme| &uri[scheme.len()..]);
    let Some(rest) = rest else {
        return Err(ApiError::bad_request("agentUri must be a sip: or sips: URI"));
    };
    if rest.is_empty()
        || uri.len() > 256
        || !rest.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"'))
    {
        return Err(ApiError::bad_request(
            "agentUri must be a sip: or sips: URI of at most 256 visible ASCII characters, \
             without <, > or \"",
        ));
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::bad_request(format!("at most {MAX_HEADERS} headers")));
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in headers {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b);
        let valid_name = name.len() <= MAX_HEADER_NAME
            && name.len() > 2
            && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
            && name.bytes().all(token);
        if !valid_name {
            // The name is echoed only when it is short and printable.
            let shown =
                if name.len() <= MAX_HEADER_NAME && name.bytes().all(|b| b.is_ascii_graphic()) {
                    format!(" {name:?}")
                } else {
                    String::new()
                };
            return Err(ApiError::bad_request(format!(
                "header name{shown} must be X- and token characters (RFC 3261), at most \
                 {MAX_HEADER_NAME}"
            )));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(ApiError::bad_request(format!(
                "header {name} is given twice (names are case-insensitive)"
            )));
        }
        if value.chars().count() > MAX_HEADER_VALUE {
            return Err(ApiError::bad_request(format!(
                "header {name}: the value is longer than {MAX_HEADER_VALUE} characters"
            )));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ApiError::bad_request(format!(
                "header {name}: the value holds a control character (CR, LF...)"
            )));
        }
    }
    Ok(())
}

/// Call ids the API can have issued: unreserved URI characters (RFC 3986 §2.3).
fn valid_call_id(id: &str) -> bool {
    (1..=MAX_CALL_ID).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

// ---------------------------------------------------------------------------------------------
// The bearer token.

/// The API's bearer token, read from a file (a mounted Secret, or a file next to `trunkline
/// run`). The file is stat'ed on every check and read again when its modification time, size or
/// inode changes, so a rotated token is in force at the next request. Only an HMAC of the token
/// under a per-process random key is kept, and a presented token is compared with it through the
/// HMAC's constant-time check. A file that becomes unreadable or empty keeps the last token in
/// force (with a warning): a half-written Secret must not lock every client out, nor let anyone
/// in.
pub struct TokenFile {
    path: PathBuf,
    key: [u8; 32],
    current: Mutex<TokenState>,
}

struct TokenState {
    stamp: FileStamp,
    tag: [u8; 32],
    /// The stamp of a change already warned about, so that a bad file warns once.
    warned: Option<FileStamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the API token file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the API token file {path} is empty")]
    Empty { path: PathBuf },
    #[error("the API token file {path} is larger than {MAX_TOKEN_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error(
        "the API token in {path} holds whitespace or control characters (one token, optionally \
         followed by a newline)"
    )]
    Malformed { path: PathBuf },
}

/// The largest token file read.
pub const MAX_TOKEN_FILE: u64 = 4096;

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Reads the token (surrounding whitespace, such as a final newline, is dropped). A missing,
    /// unreadable, empty or malformed file is an error naming the file.
    pub fn open(path: impl Into<PathBuf>) -> Result<Arc<TokenFile>, TokenFileError> {
        let path = path.into();
        let key: [u8; 32] = rand::random();
        let (stamp, token) = read_token(&path)?;
        let tag = hmac_tag(&key, token.as_bytes());
        Ok(Arc::new(TokenFile {
            path,
            key,
            current: Mutex::new(TokenState { stamp, tag, warned: None }),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `presented` is the token in force (after reading the file again if it changed).
    pub fn accepts(&self, presented: &str) -> bool {
        let tag = self.refresh();
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(presented.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }

    /// The tag of the token in force, reading the file again when its stamp changed.
    fn refresh(&self) -> [u8; 32] {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = std::fs::metadata(&self.path).ok().map(|m| stamp_of(&m));
        if stamp == Some(current.stamp) {
            return current.tag;
        }
        match read_token(&self.path) {
            Ok((stamp, token)) => {
                current.tag = hmac_tag(&self.key, token.as_bytes());
                current.stamp = stamp;
                current.warned = None;
                tracing::info!(file = %self.path.display(), "the API token file changed: new token in force");
            }
            Err(e) => {
                let seen = stamp.unwrap_or(FileStamp { modified: None, len: 0, inode: 0 });
                if current.warned != Some(seen) {
                    current.warned = Some(seen);
                    tracing::warn!(error = %e, "keeping the API token in force");
                }
            }
        }
        current.tag
    }
}

fn stamp_of(metadata: &std::fs::Metadata) -> FileStamp {
    FileStamp { modified: metadata.modified().ok(), len: metadata.len(), inode: metadata.ino() }
}

fn read_token(path: &Path) -> Result<(FileStamp, String), TokenFileError> {
    let read_error = |source| TokenFileError::Read { path: path.to_path_buf(), source };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if metadata.len() > MAX_TOKEN_FILE {
        return Err(TokenFileError::TooLarge { path: path.to_path_buf() });
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| TokenFileError::Malformed { path: path.to_path_buf() })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty { path: path.to_path_buf() });
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TokenFileError::Malformed { path: path.to_path_buf() });
    }
    Ok((stamp_of(&metadata), token.to_string()))
}

fn hmac_tag(key: &[u8; 32], token: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(token);
    mac.finalize().into_bytes().into()
}

// ---------------------------------------------------------------------------------------------
// The server.

#[derive(Clone)]
struct ApiState {
    control: Arc<dyn CallControl>,
    token: Arc<TokenFile>,
    /// The networks clients may come from.
    sources: Arc<[IpNet]>,
    openapi: Bytes,
}

/// Serves the call API on `listener` to clients from `sources` (the agent networks; none: no
/// client) until `shutdown` completes, then lets requests in flight finish.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    control: Arc<dyn CallControl>,
    token: Arc<TokenFile>,
    sources: Vec<IpNet>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, token_file = %token.path().display(), ?sources, "call API listening");
    }
    let app = router(control, token, sources).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// The routes of the API, as the OpenAPI document lists them (a test checks both agree).
pub const ROUTES: [(&str, &[Method]); 3] = [
    ("/v1/calls", &[Method::POST]),
    ("/v1/calls/{id}", &[Method::GET, Method::DELETE]),
    ("/v1/openapi.json", &[Method::GET]),
];

/// The API's router (what [`serve_api`] serves). It needs the client's address
/// (`into_make_service_with_connect_info::<SocketAddr>`): without it every request is refused.
pub fn router(control: Arc<dyn CallControl>, token: Arc<TokenFile>, sources: Vec<IpNet>) -> Router {
    let openapi = match serde_json::to_vec_pretty(&openapi_document()) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "cannot serialise the OpenAPI document");
            Bytes::from_static(b"{}")
        }
    };
    let state = ApiState { control, token, sources: sources.into(), openapi };
    Router::new()
        .route("/v1/calls", post(create_call))
        .route("/v1/calls/{id}", get(show_call).delete(hang_up_call))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/v1/openapi.json", get(openapi_json))
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_agent_network))
        .with_state(state)
}

/// Answers only clients from the agent networks (before the token is looked at).
async fn require_agent_network(
    State(s): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let peer =
        request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_canonical());
    match peer {
        Some(ip) if s.sources.iter().any(|net| net.contains(&ip)) => next.run(request).await,
        _ => {
            tracing::debug!(peer = ?peer, "call API: a client outside the agent networks");
            ApiError::new(
                ErrorCode::Forbidden,
                "this address may not use the call API (the gateway's --agent-networks)",
            )
            .into_response()
        }
    }
}

/// Lets a request through only with the token in force.
async fn require_token(State(s): State<ApiState>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION);
    let Some(header) = header else {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "missing bearer token (Authorization: Bearer <token>)",
        )
        .into_response();
    };
    let token = header.to_str().ok().and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim_start_matches(' ');
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
            .then_some(token)
    });
    let Some(token) = token else {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "the Authorization header is not of the form `Bearer <token>`",
        )
        .into_response();
    };
    if !s.token.accepts(token) {
        tracing::debug!(path = %request.uri().path(), "call API: wrong bearer token");
        let mut response =
            ApiError::new(ErrorCode::Unauthorized, "the bearer token is not valid").into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_INVALID));
        return response;
    }
    next.run(request).await
}

async fn create_call(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse_new_call(&headers, body)?;
    request.validate()?;
    let (trunk, to, agent) = (request.trunk.clone(), request.to.clone(), request.agent.clone());
    let view = s.control.originate(request).inspect_err(|e| {
        tracing::info!(%trunk, %to, %agent, code = e.code.as_str(), message = %e.message, "call API: call refused");
    })?;
    tracing::info!(id = %view.id, %trunk, %to, %agent, "call API: call started");
    let mut response = json_response(StatusCode::CREATED, &view);
    match HeaderValue::try_from(format!("/v1/calls/{}", percent_encode(&view.id))) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Err(e) => tracing::warn!(error = %e, "call API: no Location for call {:?}", view.id),
    }
    Ok(response)
}

/// The body of `POST /v1/calls`: JSON (415 otherwise), at most [`MAX_BODY_BYTES`] (413), a
/// [`NewCall`] (400 naming the field otherwise).
fn parse_new_call(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<NewCall, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let is_json = content_type.is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case(JSON)
    });
    if !is_json {
        return Err(ApiError::bad_request(
            "the body must be JSON (Content-Type: application/json)",
        )
        .with_status(415));
    }
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::bad_request(format!("the body is larger than {MAX_BODY_BYTES} bytes"))
                .with_status(413)
        } else {
            ApiError::bad_request(format!("the body could not be read: {}", rejection.body_text()))
                .with_status(status.as_u16())
        }
    })?;
    NewCall::from_json(&body)
}

async fn show_call(
    State(s): State<ApiState>,
    id: Result<axum::extract::Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = call_id(id)?;
    match s.control.get(&id) {
        Some(view) => Ok(json_response(StatusCode::OK, &view)),
        None => Err(ApiError::not_found(&id)),
    }
}

async fn hang_up_call(
    State(s): State<ApiState>,
    id: Result<axum::extract::Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = call_id(id)?;
    let view = s.control.hang_up(&id)?;
    tracing::info!(id = %view.id, state = ?view.state, "call API: hang-up asked");
    Ok(json_response(StatusCode::OK, &view))
}

/// The id of a path; one the API cannot have issued is not found (the call side never sees it).
fn call_id(id: Result<axum::extract::Path<String>, PathRejection>) -> Result<String, ApiError> {
    let axum::extract::Path(id) = id.map_err(|rejection| {
        ApiError::bad_request(format!("bad call id in the path: {}", rejection.body_text()))
    })?;
    if valid_call_id(&id) { Ok(id) } else { Err(ApiError::not_found(&id)) }
}

async fn openapi_json(State(s): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, JSON)], s.openapi).into_response()
}

async fn unknown_path() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such path: the call API is under /v1/calls")
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed on this path"))
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document.

/// The OpenAPI 3.0 document of the API, as served at `/v1/openapi.json`. The schemas are those
/// of the Rust types ([`NewCall`], [`CallView`], [`ErrorBody`]) as `schemars` derives them, so
/// a field added to a type is in the document; the routes, answers and error codes are written
/// here, next to the router.
pub fn openapi_document() -> serde_json::Value {
    let mut requests = SchemaSettings::openapi3().into_generator();
    requests.subschema_for::<NewCall>();
    let mut responses =
        SchemaSettings::openapi3().with(|s| s.contract = Contract::Serialize).into_generator();
    responses.subschema_for::<CallView>();
    responses.subschema_for::<ErrorBody>();
    let mut schemas = requests.take_definitions(true);
    schemas.extend(responses.take_definitions(true));

    let error = |codes: &[ErrorCode], what: &str| {
        let list: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
        json!({
            "description": format!("{what} (`{}`)", list.join("`, `")),
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        })
    };
    let retry = json!({
        "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
    });
    let error_retry = |codes: &[ErrorCode], what: &str| {
        let mut e = error(codes, what);
        e["headers"] = retry.clone();
        e
    };
    let unauthorized = {
        let mut e = error(&[ErrorCode::Unauthorized], "missing, malformed or wrong bearer token");
        e["headers"] = json!({"WWW-Authenticate": {"schema": {"type": "string"}}});
        e
    };
    let view = |what: &str| json!({"description": what, "content": {JSON: {"schema": {"$ref": "#/components/schemas/CallView"}}}});
    let id_parameter = json!({
        "name": "id", "in": "path", "required": true,
        "description": "The call's id, as returned by POST /v1/calls.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CALL_ID, "pattern": "^[A-Za-z0-9._~-]+$"}
    });
    let bad_request = error(
        &[ErrorCode::BadRequest],
        "the request is malformed: not JSON, an unknown field, a field out of bounds",
    );
    let internal = error(&[ErrorCode::Internal], "a fault of the gateway");
    let forbidden = error(&[ErrorCode::Forbidden], "the client is outside the agent networks");

    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "trunkline call API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Outbound calls started over HTTP: the gateway dials the carrier through an \
                 OutboundTrunk and, on answer, calls the agent runtime and bridges the two. Every \
                 error is `{{\"error\": {{\"code\", \"message\"}}}}` with one of the codes `{}`.",
                codes.join("`, `")
            ),
        },
        "paths": {
            "/v1/calls": {
                "post": {
                    "operationId": "createCall",
                    "summary": "Start an outbound call",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": true,
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/NewCall"}}}
                    },
                    "responses": {
                        "201": {
                            "description": "The call is being dialed (state `dialing`).",
                            "headers": {"Location": {
                                "description": "The call's URL: /v1/calls/{id}.",
                                "schema": {"type": "string"}
                            }},
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/CallView"}}},
                            "links": {
                                "GetCall": {"operationId": "getCall", "parameters": {"id": "$response.body#/id"}},
                                "HangUpCall": {"operationId": "hangUpCall", "parameters": {"id": "$response.body#/id"}}
                            }
                        },
                        "400": bad_request,
                        "401": unauthorized,
                        "403": error(&[ErrorCode::Forbidden, ErrorCode::AgentNotAllowed,
                            ErrorCode::CallerIdNotAllowed],
                            "the client is outside the agent networks, or the trunk does not allow \
                             this agent or caller id"),
                        "413": error(&[ErrorCode::BadRequest], "the body is larger than 16 KiB"),
                        "415": error(&[ErrorCode::BadRequest], "the body is not application/json"),
                        "422": error(&[ErrorCode::UnknownTrunk, ErrorCode::AmbiguousTrunk,
                            ErrorCode::BadNumber, ErrorCode::NoAgentUri, ErrorCode::NoCommonCodec],
                            "the routing table cannot place this call"),
                        "429": error_retry(&[ErrorCode::LimitReached], "over the trunk's limits"),
                        "500": internal,
                        "503": error_retry(&[ErrorCode::Draining, ErrorCode::Unavailable],
                            "the gateway takes no new calls now"),
                    }
                }
            },
            "/v1/calls/{id}": {
                "parameters": [id_parameter],
                "get": {
                    "operationId": "getCall",
                    "summary": "A call's state, legs and times",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": view("The call."),
                        "400": bad_request,
                        "401": unauthorized,
                        "403": forbidden,
                        "404": error(&[ErrorCode::NotFound], "no such call (or it ended long ago)"),
                        "500": internal,
                    }
                },
                "delete": {
                    "operationId": "hangUpCall",
                    "summary": "Hang up a call (CANCEL or BYE on every leg)",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": view("The call as it is after asking: `ended`, or ending."),
                        "400": bad_request,
                        "401": unauthorized,
                        "403": forbidden,
                        "404": error(&[ErrorCode::NotFound], "no such call (or it ended long ago)"),
                        "500": internal,
                        "503": error_retry(&[ErrorCode::Unavailable], "the call cannot be reached now"),
                    }
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI 3.0 document of the call API.",
                            "content": {JSON: {"schema": {"type": "object"}}}
                        },
                        "403": forbidden,
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "The token of the gateway's --api-token-file."
            }},
            "schemas": schemas,
        }
    })
}

#[cfg(test)]
mod tests;
