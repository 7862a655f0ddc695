//! A compiled config as a gateway serves it: the table, its hash and the verdicts. Every spec
//! source (`source::watch`, `source::kube`) publishes these; the gateway swaps them in whole.

use std::sync::Arc;
use std::time::SystemTime;

use super::diagnostic::Verdict;
use super::model::RoutingTable;

/// A compiled config, as served. Immutable; the gateway holds it in an `Arc` and calls in
/// progress keep the one they started with.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub table: Arc<RoutingTable>,
    /// `RoutingTable::config_hash` of `table`.
    pub hash: String,
    /// One verdict per object compiled, sorted by kind, namespace and name.
    pub verdicts: Vec<Verdict>,
    pub loaded_at: SystemTime,
}
