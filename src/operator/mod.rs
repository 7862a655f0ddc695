//! The Kubernetes side of trunkline: `trunkline operator`. This is the only module that writes
//! to the API server (STYLE.md); the gateway's reads (`source::kube`, `source::node`) live with
//! the other spec sources.
//!
//! ```text
//!  API server ──watch──► controller (reflector stores of the three kinds + Secrets + gateway pods)
//!                          │ compile() over the stores (the same step as check and the gateway)
//!                          ├─► status of every object (server-side apply on /status, only when
//!                          │   it changed), events on transitions         (status, controller)
//!                          ├─► generated credentials Secrets               (credentials)
//!                          ├─► the one credentials Secret the gateways read (source::bundle)
//!                          └─► the gateway fleet: Deployment|DaemonSet, RBAC, Services, PDB
//!                              (fleet renders, tracker applies and deletes orphans)
//!  gateway pod ──watch──► source::kube: the three kinds + the bundle Secret → compile → swap;
//!                          it writes nothing: GET /v1/status on its admin port says which
//!                          config it serves and which address it advertises
//!  operator prober ──GET <podIP>:<adminPort>/v1/status──► reports ──► Programmed (programmed),
//!                          Reachable (reachable), trunk endpoints and source addresses (status)
//! ```
//!
//! - `settings`: what the operator is told (flags or a config file the Helm chart fills).
//! - `fleet`: `render_fleet(settings)`, pure; `tracker`: applies owned objects, deletes orphans.
//! - `status`, `credentials`, `programmed`, `controller`: the reconcilers; `credentials` writes
//!   the gateway credentials Secret that `source::bundle` renders and gateways read back.
//! - `lead`: what the leader does (the fleet loop and the controllers); `leader`: the Lease that
//!   lets one operator replica write at a time. The process around them is `runtime::operator`.

pub mod controller;
pub mod credentials;
pub mod fleet;
pub mod lead;
pub mod leader;
pub mod metrics;
pub mod programmed;
pub mod reachable;
pub mod registered;
pub mod settings;
pub mod status;
pub mod tracker;

/// The field manager of the operator's writes of fleet objects and Secrets (server-side
/// applies). Status is written under [`status_field_manager`] instead.
pub const FIELD_MANAGER: &str = "trunkline-operator";

/// The prefix of the field manager of status writes: `trunkline-operator/<fleet name>`. Two
/// fleets (regions) in one cluster write the same objects' status; with a manager each, server-
/// side apply keeps each fleet's `status.fleets` entry its own and lets both co-own the
/// conditions they agree on (`status` module docs).
pub const STATUS_FIELD_MANAGER_PREFIX: &str = "trunkline-operator/";

/// The field manager of the status writes of fleet `fleet`.
pub fn status_field_manager(fleet: &str) -> String {
    format!("{STATUS_FIELD_MANAGER_PREFIX}{fleet}")
}

/// Label on every object the operator owns, with the fleet's name as value: the tracker finds
/// orphans by it.
pub const FLEET_LABEL: &str = "trunkline.dev/fleet";

/// `app.kubernetes.io/managed-by` value on every object the operator creates.
pub const MANAGED_BY: &str = "trunkline-operator";
