//! The session record (DESIGN §5, issue 14): one JSON object per call, written when the call
//! ends, and the JSON-lines sink it goes to (`--records-file PATH`, `-` for stdout).
//!
//! The type is the contract: [`SessionRecord`] derives its JSON Schema (`schemars`), which is
//! committed as `docs/schemas/session-record-v1.json` (a test keeps the two equal) and against
//! which the tests validate the records real calls write. A change that breaks consumers makes
//! a new version ([`SCHEMA`]); fields are only added within a version.
//!
//! Which calls leave a record: every call the gateway admitted (it got a call slot), answered
//! or not — an inbound call the agent refused, an outbound call the carrier refused, a call
//! placed through the API. Requests refused before admission (404 unknown number, 403, 407
//! challenges, 503 limits) are not calls: they are counted in metrics and logged, and leave no
//! record (a flood of them must not become a flood of records).
//!
//! The file sink appends one line per record and rotates by size: when the file would pass
//! `max_bytes`, it is renamed to `PATH.1` (an older `.1` is replaced) and a new file started.
//! A record is written with one `write` of the whole line, so a reader never sees half of one
//! unless the process dies mid-write.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `schema` field of every record of this version.
pub const SCHEMA: &str = "trunkline.dev/session-record/v1";

/// One call, as the team's systems learn it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Unique per record (the webhook's idempotency key): the session id and the kind.
    pub record_id: String,
    /// `final` (the call is over) or `answered` (a first record at answer, for sinks that want
    /// one; the final record repeats and completes it).
    pub kind: String,
    /// The call's id: the `X-Trunkline-Session-ID` the agent got, the call API's id.
    pub session_id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// `namespace/name` of the trunk the call was admitted on.
    pub trunk: String,
    pub numbers: Numbers,
    /// The agent the call went to (inbound) or came from (outbound); none when unnamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// How the agent was chosen: `number`, `header`, `named` (outbound, API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_reason: Option<String>,
    /// The Call-ID of each leg, in the order the call made them.
    pub legs: Vec<LegRecord>,
    /// Every `X-*` header passed on to the agent, its name without the leading `X-`.
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_custom_data: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_custom_data: Option<Map<String, Value>>,
    pub languages: Vec<String>,
    pub instruction_ids: Vec<String>,
    /// What the gateway dropped or changed of the caller side's headers.
    pub warnings: Vec<RecordWarning>,
    /// The codec the call settled on (`PCMU`, `PCMA`, `G722`); none before an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// The transport of the call's first leg (`UDP`, `TCP`, `TLS`).
    pub transport: String,
    /// Where the first leg's INVITE came from (`IP:port`); none for a call the API placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// RFC 3339 times: the INVITE (or API request) admitted, the answer, the end.
    pub offered_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// From the offer to the answer, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_ms: Option<u64>,
    /// From the offer to the end, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `answered`, `busy`, `no_answer`, `cancelled`, `failed`; none while in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Why the gateway ended the call (media timeout, a transfer, ...); none for a hang-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hangup_reason: Option<String>,
    /// Who ended the answered call: `carrier`, `agent`, `transfer` (the leg whose BYE did), or
    /// `gateway` (a timeout, a transfer, the call API); none for a call never answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hangup_side: Option<String>,
    /// The transfers the agent asked for, in order.
    pub transfers: Vec<TransferEntry>,
    /// RTP figures per leg of the relay.
    pub rtp: Vec<RtpEntry>,
    /// The gateway (pod or host) that handled the call.
    pub gateway: String,
    /// The configuration the call started with (the hash `trunkline run` logs at each load).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Numbers {
    /// The caller as received (the From user), and normalised to E.164 when it is a number.
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_e164: Option<String>,
    /// The number dialed, normalised to E.164.
    pub to: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegRecord {
    /// `carrier`, `agent` or `transfer`.
    pub role: String,
    pub call_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordWarning {
    pub header: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferEntry {
    /// `namespace/name`, or `unknown` for a request that named none the agent may use.
    pub destination: String,
    /// `Bridge`, `Refer`, `Hangup`, `none`.
    pub mode: String,
    /// `completed`, `failed`, `refused`, `abandoned`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// When it was asked and settled, in milliseconds from the offer.
    pub asked_ms: u64,
    pub settled_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RtpEntry {
    /// `carrier`, `agent`, `transfer`: whose RTP this is (what that leg sent to the gateway).
    pub leg: String,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub jitter_ms: f64,
}

/// The JSON Schema of [`SessionRecord`], as committed in `docs/schemas/session-record-v1.json`.
pub fn schema_json() -> String {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(SessionRecord)).unwrap_or(Value::Null);
    if let Some(object) = schema.as_object_mut() {
        object.insert("$id".into(), Value::String(format!("https://{SCHEMA}")));
    }
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Where records go: a JSON-lines file rotated by size, or stdout.
pub struct RecordFile {
    target: Target,
    max_bytes: u64,
}

enum Target {
    Stdout,
    File { path: PathBuf, file: Mutex<Option<(File, u64)>> },
}

impl RecordFile {
    /// `-` is stdout; any other path is opened for appending (created if missing).
    pub fn open(path: &str, max_bytes: u64) -> io::Result<RecordFile> {
        let target = if path == "-" {
            Target::Stdout
        } else {
            let path = PathBuf::from(path);
            let file = append(&path)?;
            let len = file.metadata()?.len();
            Target::File { path, file: Mutex::new(Some((file, len))) }
        };
        Ok(RecordFile { target, max_bytes: max_bytes.max(1024) })
    }

    /// Writes one record as one line.
    pub fn write(&self, record: &SessionRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        match &self.target {
            Target::Stdout => io::stdout().lock().write_all(&line),
            Target::File { path, file } => {
                let mut guard = file.lock().map_err(|_| io::Error::other("poisoned"))?;
                let size = guard.as_ref().map_or(0, |(_, n)| *n);
                if size > 0 && size + line.len() as u64 > self.max_bytes {
                    *guard = None;
                    let mut rotated = path.clone().into_os_string();
                    rotated.push(".1");
                    std::fs::rename(path, &rotated)?;
                }
                if guard.is_none() {
                    *guard = Some((append(path)?, 0));
                }
                let Some((f, n)) = guard.as_mut() else { return Ok(()) };
                f.write_all(&line)?;
                *n += line.len() as u64;
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for RecordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Stdout => write!(f, "RecordFile(stdout)"),
            Target::File { path, .. } => write!(f, "RecordFile({})", path.display()),
        }
    }
}

/// Records on their way to the webhook: the spool they wait in and the delivery loop's bell.
pub struct Outbox {
    pub spool: std::sync::Arc<Mutex<super::spool::Spool>>,
    pub wake: std::sync::Arc<tokio::sync::Notify>,
    pub metrics: std::sync::Arc<super::metrics::GatewayMetrics>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox")
    }
}

impl Outbox {
    /// Puts a record in the spool (on a blocking thread) and wakes the delivery loop. A full
    /// spool refuses it: logged; the file sink still has it.
    pub fn send(&self, record: &SessionRecord) {
        let Ok(bytes) = serde_json::to_vec(record) else { return };
        let (spool, wake, id) = (self.spool.clone(), self.wake.clone(), record.record_id.clone());
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let pushed = match spool.lock() {
                Ok(mut spool) => spool.push(&id, &bytes).map_err(|e| e.to_string()),
                Err(_) => Err("spool lock poisoned".to_string()),
            };
            match pushed {
                Ok(()) => {
                    metrics.session_record("webhook", "spooled");
                    wake.notify_one()
                }
                Err(e) => {
                    metrics.session_record("webhook", "refused");
                    tracing::warn!(record = %id, error = %e, "session record not spooled for the webhook")
                }
            }
        });
    }
}

fn append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> SessionRecord {
        SessionRecord {
            schema: SCHEMA.into(),
            record_id: format!("s{n}-final"),
            kind: "final".into(),
            session_id: format!("s{n}"),
            direction: "inbound".into(),
            trunk: "voice/t".into(),
            transport: "UDP".into(),
            offered_at: "2026-12-03T20:00:00Z".into(),
            gateway: "test".into(),
            ..SessionRecord::default()
        }
    }

    #[test]
    fn records_are_lines_and_the_file_rotates_by_size() {
        let dir = std::env::temp_dir().join(format!("trunkline-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.jsonl");
        let sink = RecordFile::open(path.to_str().unwrap(), 1024).unwrap();
        for n in 0..10 {
            sink.write(&record(n)).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let rotated = std::fs::read_to_string(dir.join("records.jsonl.1")).unwrap();
        assert!(current.len() <= 1024 && rotated.len() <= 1024);
        let ids: Vec<String> = rotated
            .lines()
            .chain(current.lines())
            .map(|l| serde_json::from_str::<SessionRecord>(l).unwrap().record_id)
            .collect();
        // The newest records are all there, in order; only older rotations are gone.
        let last = ids.last().unwrap().clone();
        assert_eq!(last, "s9-final");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_schema_validates_a_record_and_refuses_a_broken_one() {
        let schema: Value = serde_json::from_str(&schema_json()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let good = serde_json::to_value(record(1)).unwrap();
        assert!(validator.is_valid(&good));
        let mut bad = good.clone();
        bad["legs"] = Value::String("not a list".into());
        assert!(!validator.is_valid(&bad));
    }
}
