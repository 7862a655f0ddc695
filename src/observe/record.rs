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
//! Each sink gets the `final` record of every call; a sink that asks for it
//! (`--records-file-answered`, `--records-webhook-answered`) also gets an `answered` record as
//! soon as the call is answered, flagged by its `kind` and with its own `recordId`
//! (`SESSION-answered`, the final one is `SESSION-final`): a dashboard of live calls, or a CRM
//! that opens the contact's page while the caller talks. The final record repeats every field of
//! the answered one and completes it; a call never answered has only the final record.
//!
//! The file sink appends one line per record and rotates (`PATH` → `PATH.1` → .. →
//! `PATH.KEEP`, the oldest deleted, as logrotate does) when the file would pass
//! `--records-max-bytes` or has been written for `--records-max-age`. A record is written with
//! one `write` of the whole line, so a reader never sees half of one unless the process dies
//! mid-write. The file is a local trace, not a queue: what must reach another system goes
//! through the webhook's spool, which never drops a record it took.

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

/// The `kind` of the record written when the call is over.
pub const KIND_FINAL: &str = "final";
/// The `kind` of the first record, written at the answer for the sinks that want it.
pub const KIND_ANSWERED: &str = "answered";

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
    /// The SRTP suite (SDES) of the carrier's leg at the answer, when its media is encrypted
    /// (`AES_CM_128_HMAC_SHA1_80`, `AES_CM_128_HMAC_SHA1_32`, `AEAD_AES_128_GCM`); none for
    /// plain RTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
    /// The transport of the call's first leg (`UDP`, `TCP`, `TLS`).
    pub transport: String,
    /// The carrier host that answered an outbound call (`host:port` as dialed: one of the
    /// trunk's hosts, or a target of its DNS SRV records); none before an answer and for
    /// inbound calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier_host: Option<String>,
    /// The address (`IP:port`) that carrier host answered at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier_address: Option<String>,
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
    /// The caller as received: the From user of the first leg's INVITE (the carrier's on an
    /// inbound call, the agent's on an outbound one), or the call API's `callerId`; empty when
    /// none was given.
    pub from: String,
    /// The caller in E.164: inbound, the From user when it is a number; outbound, the caller id
    /// presented to the carrier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_e164: Option<String>,
    /// The number dialed as received: the Request-URI's user (`tel:` number), or the call
    /// API's `to`.
    pub to: String,
    /// The number dialed in E.164, as the trunk's numbers hold it.
    pub to_e164: String,
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

/// When the records file is rotated, and how many rotated files are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The size a file may reach (at least 1 KiB).
    pub max_bytes: u64,
    /// The age a file may reach, from when this process started it (or found it); `None`:
    /// rotated by size only.
    pub max_age: Option<std::time::Duration>,
    /// Rotated files kept (`PATH.1` newest .. `PATH.KEEP` oldest); older ones are deleted.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Rotation {
        Rotation { max_bytes: 100 << 20, max_age: None, keep: 5 }
    }
}

/// Where records go: a JSON-lines file rotated by size and age, or stdout.
pub struct RecordFile {
    target: Target,
    rotation: Rotation,
    /// Whether this sink also gets the `answered` record of each call.
    pub answered: bool,
}

enum Target {
    Stdout,
    File { path: PathBuf, file: Mutex<Option<Current>> },
}

/// The file being written: its size and when it was started.
struct Current {
    file: File,
    bytes: u64,
    started: std::time::Instant,
}

impl RecordFile {
    /// `-` is stdout; any other path is opened for appending (created if missing).
    pub fn open(path: &str, rotation: Rotation, answered: bool) -> io::Result<RecordFile> {
        let target = if path == "-" {
            Target::Stdout
        } else {
            let path = PathBuf::from(path);
            let file = append(&path)?;
            let bytes = file.metadata()?.len();
            let current = Current { file, bytes, started: std::time::Instant::now() };
            Target::File { path, file: Mutex::new(Some(current)) }
        };
        let rotation = Rotation { max_bytes: rotation.max_bytes.max(1024), ..rotation };
        Ok(RecordFile { target, rotation, answered })
    }

    /// Writes one record as one line.
    pub fn write(&self, record: &SessionRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        match &self.target {
            Target::Stdout => io::stdout().lock().write_all(&line),
            Target::File { path, file } => {
                let mut guard = file.lock().map_err(|_| io::Error::other("poisoned"))?;
                if let Some(current) = guard.as_ref() {
                    let full = current.bytes > 0
                        && current.bytes + line.len() as u64 > self.rotation.max_bytes;
                    let old = current.bytes > 0
                        && self
                            .rotation
                            .max_age
                            .is_some_and(|age| current.started.elapsed() >= age);
                    if full || old {
                        *guard = None;
                        rotate(path, self.rotation.keep)?;
                    }
                }
                if guard.is_none() {
                    let file = append(path)?;
                    *guard = Some(Current { file, bytes: 0, started: std::time::Instant::now() });
                }
                let Some(current) = guard.as_mut() else { return Ok(()) };
                current.file.write_all(&line)?;
                current.bytes += line.len() as u64;
                Ok(())
            }
        }
    }
}

/// `PATH.N-1` → `PATH.N` .. `PATH` → `PATH.1`; what would become `PATH.KEEP+1` is deleted (with
/// `keep` 0 the file itself is).
fn rotate(path: &std::path::Path, keep: u32) -> io::Result<()> {
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    match std::fs::remove_file(numbered(keep)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for n in (1..keep).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, numbered(1))
}

impl std::fmt::Debug for RecordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Stdout => write!(f, "RecordFile(stdout)"),
            Target::File { path, .. } => write!(f, "RecordFile({})", path.display()),
        }
    }
}

/// A record on its way to its sinks, counted while it lives, so that a stopping gateway can
/// wait until the records of the calls it ended are written and spooled.
pub struct InFlight(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    pub fn new(counter: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Records on their way to the webhook: the spool they wait in and the delivery loop's bell.
pub struct Outbox {
    pub spool: std::sync::Arc<Mutex<super::spool::Spool>>,
    pub wake: std::sync::Arc<tokio::sync::Notify>,
    pub metrics: std::sync::Arc<super::metrics::GatewayMetrics>,
    /// Whether the webhook also gets the `answered` record of each call.
    pub answered: bool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox")
    }
}

impl Outbox {
    /// Puts a record in the spool (on a blocking thread) and wakes the delivery loop. A full
    /// spool refuses it: logged; the file sink still has it.
    pub fn send(&self, record: &SessionRecord, in_flight: InFlight) {
        let Ok(bytes) = serde_json::to_vec(record) else { return };
        let (spool, wake, id) = (self.spool.clone(), self.wake.clone(), record.record_id.clone());
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let _in_flight = in_flight;
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

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trunkline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ids_in(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<SessionRecord>(l).unwrap().record_id)
            .collect()
    }

    #[test]
    fn records_are_lines_and_the_file_rotates_by_size() {
        let dir = temp_dir("records-size");
        let path = dir.join("records.jsonl");
        let rotation = Rotation { max_bytes: 1024, max_age: None, keep: 1 };
        let sink = RecordFile::open(path.to_str().unwrap(), rotation, false).unwrap();
        for n in 0..10 {
            sink.write(&record(n)).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let rotated = std::fs::read_to_string(dir.join("records.jsonl.1")).unwrap();
        assert!(current.len() <= 1024 && rotated.len() <= 1024);
        assert!(!dir.join("records.jsonl.2").exists(), "keep 1: one rotated file");
        let mut ids = ids_in(&dir.join("records.jsonl.1"));
        ids.extend(ids_in(&path));
        // The newest records are all there, in order; only older rotations are gone.
        assert_eq!(ids.last().unwrap(), "s9-final");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_rotates_by_age_and_keeps_the_newest_files() {
        let dir = temp_dir("records-age");
        let path = dir.join("records.jsonl");
        // Every file is "too old" as soon as it holds a record: one record per file.
        let rotation =
            Rotation { max_bytes: 1 << 20, max_age: Some(std::time::Duration::ZERO), keep: 2 };
        let sink = RecordFile::open(path.to_str().unwrap(), rotation, false).unwrap();
        for n in 0..5 {
            sink.write(&record(n)).unwrap();
        }
        assert_eq!(ids_in(&path), ["s4-final"]);
        assert_eq!(ids_in(&dir.join("records.jsonl.1")), ["s3-final"]);
        assert_eq!(ids_in(&dir.join("records.jsonl.2")), ["s2-final"]);
        assert!(!dir.join("records.jsonl.3").exists(), "older files beyond keep are deleted");
        // Without an age, the same writes stay in one file.
        let path = dir.join("other.jsonl");
        let rotation = Rotation { max_age: None, ..rotation };
        let sink = RecordFile::open(path.to_str().unwrap(), rotation, false).unwrap();
        for n in 0..5 {
            sink.write(&record(n)).unwrap();
        }
        assert_eq!(ids_in(&path).len(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_line_starts_with_its_schema_so_a_log_collector_can_route_it() {
        // In the fleet records share stdout with the logs; collectors route on this prefix
        // (charts/trunkline/README.md). Keep `schema` the first field.
        let line = serde_json::to_string(&record(1)).unwrap();
        assert!(line.starts_with(&format!("{{\"schema\":\"{SCHEMA}\"")), "{line}");
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
