//! The operator's Prometheus metrics: one [`prometheus::Registry`] owned by [`OperatorMetrics`]
//! (no global registry), one typed method per event.
//!
//! Takes: reconcile results and durations and status writes (controller), compiles and bundle
//! applies (the controller's compile step), the conditions of every object as last written or
//! found. Gives: the text exposition for `GET /metrics` ([`OperatorMetrics::render`]) and the
//! registry ([`OperatorMetrics::registry`]) for the lead's other operator metrics (fleet, leader).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `trunkline_operator_reconciles_total` | counter | `kind`, `result` |
//! | `trunkline_operator_reconcile_seconds` | histogram | `kind` |
//! | `trunkline_operator_objects` | gauge | `kind`, `condition`, `status` |
//! | `trunkline_operator_status_writes_total` | counter | `kind` |
//! | `trunkline_operator_compiles_total`, `trunkline_operator_compile_seconds` | counter, histogram | |
//! | `trunkline_operator_generated_secrets_total` | counter | |
//! | `trunkline_operator_bundle_applies_total` | counter | `result` |
//! | `trunkline_operator_leader` | gauge | |
//! | `trunkline_operator_fleet_applies_total` | counter | `result` |
//! | `trunkline_operator_gateway_probes_total` | counter | `result` (`ok`, `error`) |
//! | `trunkline_build_info` | gauge (always 1) | `version` |
//!
//! [`OperatorMetrics::metric_names`] lists every series name the operator can export, for tests
//! of alert rules and dashboards.
//!
//! Label values are fixed strings: `kind` is a CRD kind, `result` is `ok` or an error category
//! (`patch_status`, `create_secret`, ...), `condition` one of the operator's condition types,
//! `status` `True`/`False`. No object name, no Secret, no message is ever a label.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder, register_histogram_vec_with_registry, register_histogram_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry,
};

use super::status::{OWNED_CONDITIONS, condition_status};
use crate::api::Kind;
use crate::config::diagnostic::ObjectKey;
use crate::observe::admin::MetricsPage;
use crate::observe::metrics::{Shape, build_info, series_names};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Upper bounds of the reconcile and compile histograms, in seconds.
pub const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// All operator metrics, registered in one registry.
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_seconds: HistogramVec,
    objects: IntGaugeVec,
    status_writes: IntCounterVec,
    compiles: IntCounter,
    compile_seconds: Histogram,
    generated_secrets: IntCounter,
    bundle_applies: IntCounterVec,
    leader: IntGauge,
    fleet_applies: IntCounterVec,
    gateway_probes: IntCounterVec,
    /// Every series name the registry can export (see `observe::metrics::series_names`).
    names: BTreeSet<String>,
    /// The (condition, status) pairs each object is counted under in `objects`.
    ledger: Mutex<HashMap<ObjectKey, Vec<(&'static str, &'static str)>>>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for OperatorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorMetrics").finish_non_exhaustive()
    }
}

/// What the operator's `/metrics` serves.
impl MetricsPage for OperatorMetrics {
    fn render(&self) -> String {
        OperatorMetrics::render(self)
    }
}

impl OperatorMetrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        Self::register(Registry::new())
            .expect("static metric definitions are valid and distinct in a fresh registry")
    }

    fn register(registry: Registry) -> prometheus::Result<Self> {
        let r = &registry;
        let build_info = build_info(r)?;
        let reconciles = register_int_counter_vec_with_registry!(
            "trunkline_operator_reconciles_total",
            "Reconciles of trunkline objects, by kind and result (ok, or the category of the action that failed).",
            &["kind", "result"],
            r,
        )?;
        let reconcile_seconds = register_histogram_vec_with_registry!(
            "trunkline_operator_reconcile_seconds",
            "Time one reconcile took, by kind.",
            &["kind"],
            DURATION_BUCKETS.to_vec(),
            r,
        )?;
        let objects = register_int_gauge_vec_with_registry!(
            "trunkline_operator_objects",
            "Objects by kind and by the status of each condition the operator writes.",
            &["kind", "condition", "status"],
            r,
        )?;
        let status_writes = register_int_counter_vec_with_registry!(
            "trunkline_operator_status_writes_total",
            "Status subresource writes (server-side apply), by kind; unchanged statuses are not written.",
            &["kind"],
            r,
        )?;
        let compiles = register_int_counter_with_registry!(
            "trunkline_operator_compiles_total",
            "Compiles of every object the operator watches (one per batch of changes).",
            r,
        )?;
        let compile_seconds = register_histogram_with_registry!(
            "trunkline_operator_compile_seconds",
            "Time one compile took.",
            DURATION_BUCKETS.to_vec(),
            r,
        )?;
        let generated_secrets = register_int_counter_with_registry!(
            "trunkline_operator_generated_secrets_total",
            "Secrets created with generated InboundTrunk credentials.",
            r,
        )?;
        let bundle_applies = register_int_counter_vec_with_registry!(
            "trunkline_operator_bundle_applies_total",
            "Writes of the gateway credentials Secret, by result (ok, error).",
            &["result"],
            r,
        )?;
        let leader = register_int_gauge_with_registry!(
            "trunkline_operator_leader",
            "1 while this replica holds the Lease and reconciles, else 0",
            r,
        )?;
        let fleet_applies = register_int_counter_vec_with_registry!(
            "trunkline_operator_fleet_applies_total",
            "Applies of the gateway fleet, by result (ok, or the action that failed)",
            &["result"],
            r,
        )?;
        let gateway_probes = register_int_counter_vec_with_registry!(
            "trunkline_operator_gateway_probes_total",
            "Fetches of a gateway pod's GET /v1/status report, by result (ok, error).",
            &["result"],
            r,
        )?;

        use Shape::{Histogram as H, Plain as P};
        let names = series_names(&[
            (&build_info, P),
            (&reconciles, P),
            (&reconcile_seconds, H),
            (&objects, P),
            (&status_writes, P),
            (&compiles, P),
            (&compile_seconds, H),
            (&generated_secrets, P),
            (&bundle_applies, P),
            (&leader, P),
            (&fleet_applies, P),
            (&gateway_probes, P),
        ]);
        Ok(OperatorMetrics {
            registry,
            reconciles,
            reconcile_seconds,
            objects,
            status_writes,
            compiles,
            compile_seconds,
            generated_secrets,
            bundle_applies,
            leader,
            fleet_applies,
            gateway_probes,
            names,
            ledger: Mutex::new(HashMap::new()),
        })
    }

    /// The name of every series an operator can export, histograms as their `_bucket`, `_sum`
    /// and `_count` series, including vecs that have no child yet.
    pub fn metric_names() -> BTreeSet<String> {
        OperatorMetrics::new().names
    }

    /// `trunkline_operator_leader`: 1 while this replica leads (set by the assembly).
    pub fn leader(&self) -> &IntGauge {
        &self.leader
    }

    /// `trunkline_operator_fleet_applies_total{result}` (counted by the assembly).
    pub fn fleet_applies(&self) -> &IntCounterVec {
        &self.fleet_applies
    }

    /// The registry, for the lead's other operator metrics and the `/metrics` endpoint.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric in the registry.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }

    /// Counts one reconcile; `result` is `ok` or an error category.
    pub fn reconciled(&self, kind: Kind, result: &str, seconds: f64) {
        self.reconciles.with_label_values(&[kind.as_str(), result]).inc();
        self.reconcile_seconds.with_label_values(&[kind.as_str()]).observe(seconds);
    }

    /// Counts one status write.
    pub fn status_written(&self, kind: Kind) {
        self.status_writes.with_label_values(&[kind.as_str()]).inc();
    }

    /// Counts one compile.
    pub fn compiled(&self, seconds: f64) {
        self.compiles.inc();
        self.compile_seconds.observe(seconds);
    }

    /// Counts one generated credentials Secret created.
    pub fn generated_secret_created(&self) {
        self.generated_secrets.inc();
    }

    /// Counts one write of the gateway credentials Secret.
    pub fn bundle_applied(&self, ok: bool) {
        self.bundle_applies.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    }

    /// Counts one probe of a gateway pod's status report.
    pub fn gateway_probed(&self, ok: bool) {
        self.gateway_probes.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    }

    /// Records the conditions an object now has (as written, or as found unchanged).
    pub fn object_conditions(&self, key: &ObjectKey, conditions: &[Condition]) {
        let now: Vec<(&'static str, &'static str)> = OWNED_CONDITIONS
            .iter()
            .filter_map(|&type_| {
                let status = match condition_status(conditions, type_)? {
                    "True" => "True",
                    "False" => "False",
                    _ => "Unknown",
                };
                Some((type_, status))
            })
            .collect();
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let before = ledger.insert(key.clone(), now.clone()).unwrap_or_default();
        if before != now {
            self.move_counts(key.kind, &before, &now);
        }
    }

    /// Forgets a deleted object.
    pub fn object_deleted(&self, key: &ObjectKey) {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(before) = ledger.remove(key) {
            self.move_counts(key.kind, &before, &[]);
        }
    }

    /// Forgets every object `keep` says no to (objects gone without a delete event).
    pub fn objects_retain(&self, keep: impl Fn(&ObjectKey) -> bool) {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<ObjectKey> = ledger.keys().filter(|k| !keep(k)).cloned().collect();
        for key in gone {
            if let Some(before) = ledger.remove(&key) {
                self.move_counts(key.kind, &before, &[]);
            }
        }
    }

    fn move_counts(
        &self,
        kind: Kind,
        before: &[(&'static str, &'static str)],
        now: &[(&'static str, &'static str)],
    ) {
        for (condition, status) in before {
            self.objects.with_label_values(&[kind.as_str(), condition, status]).dec();
        }
        for (condition, status) in now {
            self.objects.with_label_values(&[kind.as_str(), condition, status]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn conditions(accepted: &str, programmed: &str) -> Vec<Condition> {
        [("Accepted", accepted), ("Programmed", programmed), ("Ready", "True")]
            .into_iter()
            .map(|(t, s)| Condition {
                type_: t.into(),
                status: s.into(),
                reason: "R".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            })
            .collect()
    }

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
    }

    #[test]
    fn objects_move_between_condition_buckets_and_leave_on_delete() {
        let m = OperatorMetrics::new();
        let a = ObjectKey::new(Kind::InboundTrunk, "voice", "a");
        let b = ObjectKey::new(Kind::InboundTrunk, "voice", "b");
        m.object_conditions(&a, &conditions("True", "False"));
        m.object_conditions(&b, &conditions("True", "False"));
        m.object_conditions(&a, &conditions("True", "True"));
        let text = m.render();
        let accepted =
            r#"trunkline_operator_objects{condition="Accepted",kind="InboundTrunk",status="True"}"#;
        let programmed_true = r#"trunkline_operator_objects{condition="Programmed",kind="InboundTrunk",status="True"}"#;
        let programmed_false = r#"trunkline_operator_objects{condition="Programmed",kind="InboundTrunk",status="False"}"#;
        assert_eq!(sample(&text, accepted), Some(2.0), "{text}");
        assert_eq!(sample(&text, programmed_true), Some(1.0));
        assert_eq!(sample(&text, programmed_false), Some(1.0));
        assert!(
            !text.contains(r#"condition="Ready""#),
            "only the operator's conditions are counted"
        );
        m.object_deleted(&b);
        let text = m.render();
        assert_eq!(sample(&text, accepted), Some(1.0));
        assert_eq!(sample(&text, programmed_false), Some(0.0));
        m.objects_retain(|k| k != &a);
        assert_eq!(sample(&m.render(), accepted), Some(0.0));
    }

    #[test]
    fn metric_names_include_build_info_the_leader_and_histogram_series() {
        let names = OperatorMetrics::metric_names();
        for name in [
            "trunkline_build_info",
            "trunkline_operator_leader",
            "trunkline_operator_objects",
            "trunkline_operator_fleet_applies_total",
            "trunkline_operator_reconcile_seconds_bucket",
            "trunkline_operator_compile_seconds_count",
        ] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
        let text = OperatorMetrics::new().render();
        let line = format!(r#"trunkline_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&line), "{text}");
    }

    #[test]
    fn reconciles_are_counted_by_kind_and_result() {
        let m = OperatorMetrics::new();
        m.reconciled(Kind::OutboundTrunk, "ok", 0.002);
        m.reconciled(Kind::OutboundTrunk, "patch_status", 0.2);
        m.status_written(Kind::OutboundTrunk);
        m.compiled(0.01);
        m.bundle_applied(true);
        let text = m.render();
        for line in [
            r#"trunkline_operator_reconciles_total{kind="OutboundTrunk",result="ok"} 1"#,
            r#"trunkline_operator_reconciles_total{kind="OutboundTrunk",result="patch_status"} 1"#,
            r#"trunkline_operator_reconcile_seconds_count{kind="OutboundTrunk"} 2"#,
            r#"trunkline_operator_status_writes_total{kind="OutboundTrunk"} 1"#,
            "trunkline_operator_compiles_total 1",
            r#"trunkline_operator_bundle_applies_total{result="ok"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
