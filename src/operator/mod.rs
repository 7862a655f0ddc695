//! The Kubernetes side of trunkline: `trunkline operator` and the API-server spec source of
//! `trunkline gateway`. This is the only module that talks to the API server (STYLE.md).
//!
//! ```text
//!  API server ──watch──► controller (reflector stores of the three kinds + Secrets + gateway pods)
//!                          │ compile() over the stores (the same step as check and the gateway)
//!                          ├─► status of every object (server-side apply on /status, only when
//!                          │   it changed), events on transitions         (status, controller)
//!                          ├─► generated credentials Secrets               (credentials)
//!                          ├─► the one credentials Secret the gateways read (bundle)
//!                          └─► the gateway fleet: Deployment|DaemonSet, RBAC, Services, PDB
//!                              (fleet renders, tracker applies and deletes orphans)
//!  gateway pod ──watch──► source: the three kinds + the bundle Secret → compile → table swap,
//!                          config hash written to its pod annotation ──► Programmed (programmed)
//! ```
//!
//! - `settings`: what the operator is told (flags or a config file the Helm chart fills).
//! - `fleet`: `render_fleet(settings)`, pure; `tracker`: applies owned objects, deletes orphans.
//! - `bundle`: the gateway credentials Secret, written by the operator and read by gateways.
//! - `status`, `credentials`, `programmed`, `controller`: the reconcilers.
//! - `source`: the gateway's spec source (reflectors → snapshots).
//! - `node`: the address a gateway advertises, read from its own Node.
//! - `leader`: the Lease that lets one operator replica write at a time.

pub mod bundle;
pub mod controller;
pub mod credentials;
pub mod fleet;
pub mod leader;
pub mod metrics;
pub mod node;
pub mod programmed;
pub mod run;
pub mod settings;
pub mod source;
pub mod status;
pub mod tracker;

/// The field manager of every write the operator makes (server-side applies of status, fleet
/// objects and Secrets).
pub const FIELD_MANAGER: &str = "trunkline-operator";

/// The field manager of the gateways' writes (their pod annotation; later an OutboundTrunk's
/// `Reachable` condition): apart from the operator's, so neither drops the other's fields.
pub const GATEWAY_FIELD_MANAGER: &str = "trunkline-gateway";

/// The pod annotation where a gateway writes the hash of the config it runs
/// (`RoutingTable::config_hash`).
pub const CONFIG_HASH_ANNOTATION: &str = "trunkline.dev/config-hash";

/// Label on every object the operator owns, with the fleet's name as value: the tracker finds
/// orphans by it.
pub const FLEET_LABEL: &str = "trunkline.dev/fleet";

/// `app.kubernetes.io/managed-by` value on every object the operator creates.
pub const MANAGED_BY: &str = "trunkline-operator";
