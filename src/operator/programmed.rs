//! `Programmed`: does every ready gateway pod run a config that includes this generation of this
//! object (DESIGN §2)?
//!
//! Each gateway pod reports the hash of the table it serves (`RoutingTable::config_hash`) on its
//! admin endpoint (`GET /v1/status`); the operator's prober (`controller::prober`) fetches it.
//! A pod whose report could not be fetched has no known hash (Pending). A hash says nothing about what is inside the table, so
//! the operator remembers, for the last [`HISTORY_LEN`] tables it compiled itself (with the
//! fleet's region, so that its hashes are the gateways' hashes), which generation of which object
//! each one held ([`ConfigHistory`]). An object is then programmed when every ready pod runs a
//! remembered hash whose table holds the object at its current generation.
//!
//! Takes: a compile verdict, whether this fleet's table serves the object ([`Served`]), the
//! gateway pods ([`GatewayPod`], from the pod store and the prober's reports) and the history. Gives: a
//! [`ProgrammedDecision`] that `status` turns into the `Programmed` condition. Pure; the
//! controller calls it on every reconcile.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use super::FLEET_LABEL;
use crate::api::Kind;
use crate::config::RoutingTable;
use crate::config::diagnostic::{ConditionType, ObjectKey, Reason, State, Verdict};
use crate::observe::admin::{GatewayStatus, OutboundHealth, RegistrationHealth};

/// The condition type.
pub const PROGRAMMED: &str = "Programmed";

/// How many compiled tables the operator remembers. A pod still running a table older than that
/// counts as running an old config (Pending) until it reloads.
pub const HISTORY_LEN: usize = 16;

/// `app.kubernetes.io/component` of the gateway pods.
pub const GATEWAY_COMPONENT: &str = "gateway";

/// The label selector of a fleet's gateway pods.
pub fn gateway_pod_selector(fleet: &str) -> String {
    format!("{FLEET_LABEL}={fleet},app.kubernetes.io/component={GATEWAY_COMPONENT}")
}

/// Which generation of which object one table holds.
pub type TableGenerations = HashMap<ObjectKey, Option<i64>>;

/// The objects a table serves and the generation of each.
pub fn table_generations(table: &RoutingTable) -> TableGenerations {
    let key = |kind: Kind, name: &crate::config::model::ObjectName| {
        ObjectKey::new(kind, name.namespace.clone(), name.name.clone())
    };
    let inbound = table.inbound.iter().map(|t| (key(Kind::InboundTrunk, &t.name), t.generation));
    let outbound =
        table.outbound.values().map(|t| (key(Kind::OutboundTrunk, &t.name), t.generation));
    let transfers =
        table.transfers.values().map(|t| (key(Kind::TransferDestination, &t.name), t.generation));
    inbound.chain(outbound).chain(transfers).collect()
}

/// The last tables the operator compiled, by config hash, newest first.
#[derive(Debug)]
pub struct ConfigHistory {
    entries: VecDeque<(String, Arc<TableGenerations>)>,
    capacity: usize,
}

impl Default for ConfigHistory {
    fn default() -> Self {
        ConfigHistory::new(HISTORY_LEN)
    }
}

impl ConfigHistory {
    /// A history of at most `capacity` tables (at least one).
    pub fn new(capacity: usize) -> Self {
        ConfigHistory { entries: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Remembers a table as the newest; a hash seen before moves to the front, and the oldest
    /// falls out beyond the capacity.
    pub fn record(&mut self, hash: &str, generations: Arc<TableGenerations>) {
        self.entries.retain(|(h, _)| h != hash);
        self.entries.push_front((hash.to_string(), generations));
        self.entries.truncate(self.capacity);
    }

    /// The table with this hash, if remembered.
    pub fn get(&self, hash: &str) -> Option<&TableGenerations> {
        self.entries.iter().find(|(h, _)| h == hash).map(|(_, g)| g.as_ref())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the operator needs to know about one gateway pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPod {
    pub name: String,
    /// `Ready=True` and not being deleted.
    pub ready: bool,
    /// The hash of the table it serves, from its last report; `None` without one.
    pub config_hash: Option<String>,
    /// The address it advertises toward carriers, from its last report.
    pub advertised_address: Option<IpAddr>,
    /// Its OPTIONS probes of OutboundTrunks (`namespace/name`), from its last report.
    pub outbound: BTreeMap<String, OutboundHealth>,
    /// Its registrations of OutboundTrunks (`namespace/name`), from its last report.
    pub registrations: BTreeMap<String, RegistrationHealth>,
}

impl GatewayPod {
    /// Reads a pod and its last report (`None`: no report, the hash and address are unknown).
    /// A pod being deleted is not counted as ready: it drains calls and will not take a new
    /// config.
    pub fn from_pod(pod: &Pod, report: Option<&GatewayStatus>) -> GatewayPod {
        let ready = pod.metadata.deletion_timestamp.is_none()
            && pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        GatewayPod {
            name: pod.metadata.name.clone().unwrap_or_default(),
            ready,
            config_hash: report
                .and_then(|r| r.config_hash.as_ref())
                .filter(|h| !h.is_empty())
                .cloned(),
            advertised_address: report.and_then(|r| r.advertised_address),
            outbound: report.map(|r| r.outbound.clone()).unwrap_or_default(),
            registrations: report.map(|r| r.registrations.clone()).unwrap_or_default(),
        }
    }
}

/// Why `Programmed` has its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgrammedReason {
    /// Every ready gateway pod runs a config with this generation.
    Programmed,
    /// Some ready gateway pod still runs an older config.
    Pending,
    /// No gateway pod of this fleet is ready.
    NoGateways,
    /// Accepted, but this fleet's table leaves it out (its regions exclude this fleet's region,
    /// or an object it needs is not served here).
    NotServedHere,
    /// The object is refused: the reason of its failing condition.
    Refused(Reason),
}

impl ProgrammedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgrammedReason::Programmed => "Programmed",
            ProgrammedReason::Pending => "Pending",
            ProgrammedReason::NoGateways => "NoGateways",
            ProgrammedReason::NotServedHere => "NotServedHere",
            ProgrammedReason::Refused(r) => r.as_str(),
        }
    }
}

/// The `Programmed` condition as decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedDecision {
    pub status: bool,
    pub reason: ProgrammedReason,
    pub message: String,
}

/// Whether this fleet's own table serves an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    InTable,
    /// The object lists regions and this fleet's region is not one of them.
    OutOfRegion {
        region: String,
        regions: Vec<String>,
    },
    /// Left out for another reason: a TransferDestination whose OutboundTrunk is not served in
    /// this region.
    LeftOut {
        region: Option<String>,
    },
}

/// Whether `current` (this fleet's latest table) serves the object `key` with spec `regions`.
pub fn served(
    key: &ObjectKey,
    regions: &[String],
    region: Option<&str>,
    current: &TableGenerations,
) -> Served {
    if current.contains_key(key) {
        return Served::InTable;
    }
    match region {
        Some(r) if !regions.is_empty() && !regions.iter().any(|x| x == r) => {
            Served::OutOfRegion { region: r.to_string(), regions: regions.to_vec() }
        }
        _ => Served::LeftOut { region: region.map(str::to_string) },
    }
}

fn generation_text(generation: Option<i64>) -> String {
    match generation {
        Some(g) => format!("generation {g}"),
        None => "the current version".to_string(),
    }
}

/// Decides `Programmed` for the object of `verdict` (compiled at its current generation).
pub fn decide_programmed(
    verdict: &Verdict,
    served: &Served,
    pods: &[GatewayPod],
    history: &ConfigHistory,
) -> ProgrammedDecision {
    if verdict.state == State::Refused {
        let failing = [ConditionType::Accepted, ConditionType::ResolvedRefs]
            .into_iter()
            .filter_map(|t| verdict.condition(t))
            .find(|c| !c.status);
        let (type_, reason) =
            failing.map_or((ConditionType::Accepted, Reason::InvalidSpec), |c| (c.type_, c.reason));
        return ProgrammedDecision {
            status: false,
            reason: ProgrammedReason::Refused(reason),
            message: format!(
                "the gateways do not serve a refused object: {} is False ({reason})",
                type_.as_str()
            ),
        };
    }
    match served {
        Served::InTable => {}
        Served::OutOfRegion { region, regions } => {
            return ProgrammedDecision {
                status: false,
                reason: ProgrammedReason::NotServedHere,
                message: format!(
                    "its regions [{}] do not include region {region} of this gateway fleet",
                    regions.join(", ")
                ),
            };
        }
        Served::LeftOut { region } => {
            let message = match region {
                Some(r) => format!(
                    "this gateway fleet (region {r}) leaves it out: an object it needs is not served in region {r}"
                ),
                None => "this gateway fleet leaves it out of its table".to_string(),
            };
            return ProgrammedDecision {
                status: false,
                reason: ProgrammedReason::NotServedHere,
                message,
            };
        }
    }
    let ready: Vec<&GatewayPod> = pods.iter().filter(|p| p.ready).collect();
    if ready.is_empty() {
        return ProgrammedDecision {
            status: false,
            reason: ProgrammedReason::NoGateways,
            message: match pods.len() {
                0 => "this fleet has no gateway pod".to_string(),
                n => format!("none of the {n} gateway pods of this fleet is ready"),
            },
        };
    }
    let runs_it = |pod: &GatewayPod| {
        pod.config_hash
            .as_deref()
            .and_then(|h| history.get(h))
            .and_then(|table| table.get(&verdict.object))
            .is_some_and(|g| *g == verdict.generation)
    };
    let behind = ready.iter().filter(|p| !runs_it(p)).count();
    let generation = generation_text(verdict.generation);
    if behind == 0 {
        ProgrammedDecision {
            status: true,
            reason: ProgrammedReason::Programmed,
            message: format!(
                "all {} ready gateway pods run a config with {generation}",
                ready.len()
            ),
        }
    } else {
        ProgrammedDecision {
            status: false,
            reason: ProgrammedReason::Pending,
            message: format!(
                "{behind} of {} ready gateway pods still run a config without {generation}",
                ready.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::config::diagnostic::{Diagnostic, Severity};

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Kind::InboundTrunk, "voice", name)
    }

    fn verdict(name: &str, generation: i64) -> Verdict {
        Verdict::from_diagnostics(key(name), Some(generation), Vec::new())
    }

    fn pod(name: &str, ready: bool, hash: Option<&str>) -> GatewayPod {
        GatewayPod {
            name: name.into(),
            ready,
            config_hash: hash.map(str::to_string),
            advertised_address: None,
            outbound: BTreeMap::new(),
            registrations: BTreeMap::new(),
        }
    }

    fn history(tables: &[(&str, &[(&str, i64)])]) -> ConfigHistory {
        let mut h = ConfigHistory::default();
        for (hash, objects) in tables {
            let gens = objects.iter().map(|(n, g)| (key(n), Some(*g))).collect();
            h.record(hash, Arc::new(gens));
        }
        h
    }

    #[test]
    fn every_ready_pod_on_a_table_with_this_generation_means_programmed() {
        let h = history(&[("old", &[("acme", 1)]), ("new", &[("acme", 2)])]);
        let pods = [pod("gw-0", true, Some("new")), pod("gw-1", true, Some("new"))];
        let d = decide_programmed(&verdict("acme", 2), &Served::InTable, &pods, &h);
        assert_eq!(d.reason, ProgrammedReason::Programmed);
        assert!(d.status);
        assert_eq!(d.message, "all 2 ready gateway pods run a config with generation 2");
    }

    #[test]
    fn a_ready_pod_on_an_older_table_keeps_it_pending_and_says_how_many() {
        let h = history(&[("old", &[("acme", 1)]), ("new", &[("acme", 2)])]);
        let pods = [
            pod("gw-0", true, Some("new")),
            pod("gw-1", true, Some("old")),
            pod("gw-2", true, Some("unknown-hash")),
        ];
        let d = decide_programmed(&verdict("acme", 2), &Served::InTable, &pods, &h);
        assert!(!d.status);
        assert_eq!(d.reason, ProgrammedReason::Pending);
        assert_eq!(d.message, "2 of 3 ready gateway pods still run a config without generation 2");
    }

    #[test]
    fn pods_that_are_not_ready_do_not_hold_it_back() {
        let h = history(&[("new", &[("acme", 2)])]);
        let pods = [pod("gw-0", true, Some("new")), pod("gw-1", false, Some("stale"))];
        let d = decide_programmed(&verdict("acme", 2), &Served::InTable, &pods, &h);
        assert_eq!((d.status, d.reason), (true, ProgrammedReason::Programmed));
    }

    #[test]
    fn a_pod_without_a_hash_or_a_table_without_the_object_is_pending() {
        let h = history(&[("other", &[("someone-else", 1)])]);
        let d = decide_programmed(
            &verdict("acme", 1),
            &Served::InTable,
            &[pod("gw-0", true, None)],
            &h,
        );
        assert_eq!(d.reason, ProgrammedReason::Pending);
        let d = decide_programmed(
            &verdict("acme", 1),
            &Served::InTable,
            &[pod("gw-0", true, Some("other"))],
            &h,
        );
        assert_eq!(d.reason, ProgrammedReason::Pending);
    }

    #[test]
    fn no_ready_pod_means_no_gateways() {
        let h = history(&[("new", &[("acme", 1)])]);
        let d = decide_programmed(&verdict("acme", 1), &Served::InTable, &[], &h);
        assert_eq!((d.status, d.reason), (false, ProgrammedReason::NoGateways));
        assert_eq!(d.message, "this fleet has no gateway pod");
        let d = decide_programmed(
            &verdict("acme", 1),
            &Served::InTable,
            &[pod("gw-0", false, Some("new"))],
            &h,
        );
        assert_eq!(d.reason, ProgrammedReason::NoGateways);
        assert_eq!(d.message, "none of the 1 gateway pods of this fleet is ready");
    }

    #[test]
    fn a_refused_object_is_not_programmed_with_the_reason_of_its_failing_condition() {
        let h = history(&[("new", &[])]);
        let pods = [pod("gw-0", true, Some("new"))];
        let missing = Verdict::from_diagnostics(
            key("acme"),
            Some(1),
            vec![Diagnostic {
                object: key("acme"),
                field: "spec.auth.digest.secretRef.name".into(),
                severity: Severity::Fatal,
                reason: Reason::SecretNotFound,
                message: "Secret x does not exist in namespace voice".into(),
            }],
        );
        let d = decide_programmed(&missing, &Served::LeftOut { region: None }, &pods, &h);
        assert_eq!(
            (d.status, d.reason),
            (false, ProgrammedReason::Refused(Reason::SecretNotFound))
        );
        assert_eq!(d.reason.as_str(), "SecretNotFound");
        assert!(d.message.contains("ResolvedRefs is False"), "{}", d.message);

        let open = Verdict::from_diagnostics(
            key("acme"),
            Some(1),
            vec![Diagnostic {
                object: key("acme"),
                field: "spec.auth.allowedAddresses[0]".into(),
                severity: Severity::Fatal,
                reason: Reason::OpenTrunk,
                message: "open".into(),
            }],
        );
        let d = decide_programmed(&open, &Served::LeftOut { region: None }, &pods, &h);
        assert_eq!(d.reason.as_str(), "OpenTrunk");
        assert!(d.message.contains("Accepted is False"), "{}", d.message);
    }

    #[test]
    fn an_object_of_another_region_is_not_served_here() {
        let current: TableGenerations = HashMap::new();
        let s = served(&key("acme"), &["eu".to_string()], Some("us"), &current);
        assert_eq!(s, Served::OutOfRegion { region: "us".into(), regions: vec!["eu".into()] });
        let d = decide_programmed(&verdict("acme", 1), &s, &[pod("gw-0", true, Some("x"))], &{
            ConfigHistory::default()
        });
        assert_eq!((d.status, d.reason), (false, ProgrammedReason::NotServedHere));
        assert_eq!(d.message, "its regions [eu] do not include region us of this gateway fleet");

        let left_out = served(&key("acme"), &[], Some("us"), &current);
        assert_eq!(left_out, Served::LeftOut { region: Some("us".into()) });
        let in_table = served(&key("acme"), &["eu".to_string()], Some("us"), &{
            HashMap::from([(key("acme"), Some(1))])
        });
        assert_eq!(in_table, Served::InTable);
    }

    #[test]
    fn the_history_keeps_the_newest_tables_and_moves_a_repeated_hash_to_the_front() {
        let mut h = ConfigHistory::new(2);
        h.record("a", Arc::new(HashMap::from([(key("x"), Some(1))])));
        h.record("b", Arc::new(HashMap::new()));
        h.record("a", Arc::new(HashMap::from([(key("x"), Some(1))])));
        h.record("c", Arc::new(HashMap::new()));
        assert_eq!(h.len(), 2);
        assert!(h.get("b").is_none(), "b was the oldest");
        assert!(h.get("a").is_some() && h.get("c").is_some());
    }

    #[test]
    fn a_pod_is_ready_only_with_ready_true_and_no_deletion() {
        let mut p = Pod {
            metadata: ObjectMeta { name: Some("gw-0".into()), ..ObjectMeta::default() },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let report = GatewayStatus {
            version: "0.1.0".into(),
            ready: true,
            config_hash: Some("abc".into()),
            advertised_address: Some("198.51.100.7".parse().unwrap()),
            outbound: BTreeMap::from([(
                "voice/carrier-out".to_string(),
                OutboundHealth { reachable: Some(false), ..OutboundHealth::default() },
            )]),
            registrations: BTreeMap::new(),
        };
        assert_eq!(
            GatewayPod::from_pod(&p, Some(&report)),
            GatewayPod {
                advertised_address: Some("198.51.100.7".parse().unwrap()),
                outbound: report.outbound.clone(),
                ..pod("gw-0", true, Some("abc"))
            },
            "ready, with its reported hash, address and probes"
        );
        assert_eq!(GatewayPod::from_pod(&p, None), pod("gw-0", true, None), "no report");
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!GatewayPod::from_pod(&p, Some(&report)).ready);
        p.metadata.deletion_timestamp = None;
        p.status = None;
        assert!(!GatewayPod::from_pod(&p, Some(&report)).ready);
        assert_eq!(
            gateway_pod_selector("main"),
            "trunkline.dev/fleet=main,app.kubernetes.io/component=gateway"
        );
    }

    /// The objects of a YAML text, as the folder source loads them.
    fn load(yaml: &str) -> crate::config::manifest::Loaded {
        let mut loaded = crate::config::manifest::Loaded::default();
        crate::config::manifest::load_str(std::path::Path::new("t.yaml"), yaml, &mut loaded);
        loaded
    }

    #[test]
    fn two_regions_give_identical_accepted_and_resolved_refs_for_the_same_objects() {
        use crate::config::{CompileOptions, compile};
        let loaded = load(
            r#"
apiVersion: trunkline.dev/v1alpha1
kind: InboundTrunk
metadata: {name: us-in, namespace: voice, generation: 1, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  numbers: [{number: "+14155550100", agent: a}]
  destination: {uri: "sip:agents.example:5070"}
  auth: {allowedAddresses: ["203.0.113.0/24"]}
  regions: [us]
---
apiVersion: trunkline.dev/v1alpha1
kind: InboundTrunk
metadata: {name: eu-in, namespace: voice, generation: 1, creationTimestamp: "2025-02-01T00:00:00Z"}
spec:
  numbers: [{number: "+14155550100", agent: a}, {number: "+14155550101", agent: a}]
  destination: {uri: "sip:agents.example:5070"}
  auth: {digest: {secretRef: {name: missing}}}
  regions: [eu]
---
apiVersion: trunkline.dev/v1alpha1
kind: OutboundTrunk
metadata: {name: us-out, namespace: voice, generation: 1}
spec: {host: sip.carrier.example, callerId: "+14155550100", regions: [us]}
---
apiVersion: trunkline.dev/v1alpha1
kind: TransferDestination
metadata: {name: desk, namespace: voice, generation: 1}
spec:
  type: Phone
  phone: {number: "+14155550199", outboundTrunkRef: {name: us-out}}
"#,
        );
        let region = |r: &str| CompileOptions { region: Some(r.to_string()) };
        let (us, eu) =
            (compile(&loaded.specs, &region("us")), compile(&loaded.specs, &region("eu")));
        assert_eq!(us.verdicts.len(), 4, "{:#?}", us.verdicts);
        // The tables differ (each region serves its own trunks) ...
        assert_ne!(us.table.config_hash(), eu.table.config_hash());
        // ... the verdicts do not: the number held across regions, the missing Secret, the
        // destination through a trunk of one region are judged the same by both fleets.
        assert_eq!(us.verdicts, eu.verdicts);
        let none = compile(&loaded.specs, &CompileOptions::default());
        assert_eq!(us.verdicts, none.verdicts);
        let eu_in = us.verdict(&key("eu-in")).unwrap();
        assert_eq!(eu_in.state, State::Refused, "{eu_in:?}");
    }

    #[test]
    fn table_generations_name_every_served_object() {
        use crate::config::{CompileOptions, compile};
        let loaded = load(
            r#"
apiVersion: trunkline.dev/v1alpha1
kind: InboundTrunk
metadata: {name: acme-in, namespace: voice, generation: 3}
spec:
  numbers: [{number: "+14155550100", agent: a}]
  destination: {uri: "sip:agents.example:5070"}
  auth: {allowedAddresses: ["203.0.113.0/24"]}
---
apiVersion: trunkline.dev/v1alpha1
kind: OutboundTrunk
metadata: {name: carrier-out, namespace: voice, generation: 2}
spec: {host: sip.carrier.example, callerId: "+14155550100"}
"#,
        );
        let compiled = compile(&loaded.specs, &CompileOptions::default());
        let gens = table_generations(&compiled.table);
        assert_eq!(gens.len(), 2, "{gens:?}");
        assert_eq!(gens.get(&key("acme-in")), Some(&Some(3)));
        assert_eq!(
            gens.get(&ObjectKey::new(Kind::OutboundTrunk, "voice", "carrier-out")),
            Some(&Some(2))
        );
    }
}
