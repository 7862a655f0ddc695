//! Applies the fleet's objects and deletes its orphans: the one way the operator writes the
//! gateway fleet (after stackable operator-rs `cluster_resources.rs`). The reconciler calls
//! [`FleetTracker::apply`] with `fleet::render_fleet(settings)`; the tracker
//!
//! 1. stamps every object with the ownership labels (`trunkline.dev/fleet: <fleet>`,
//!    `app.kubernetes.io/managed-by: trunkline-operator`) and its namespace (the fleet's, or
//!    none for the cluster-scoped ClusterRole and ClusterRoleBinding);
//! 2. applies each with server-side apply (field manager `trunkline-operator`, `force`: the
//!    operator owns these objects, a `kubectl edit` of an owned field is undone), in the order
//!    given, stopping at the first failure (nothing is deleted after a failed apply, so a
//!    half-applied fleet never loses its old workload);
//! 3. for every kind it manages ([`MANAGED_KINDS`]), lists the objects carrying the ownership
//!    labels (metadata only) and deletes those that were not applied this time: switching from
//!    Deployment to DaemonSet deletes the Deployment, disabling the budget deletes the
//!    PodDisruptionBudget, renaming a Service deletes the old one.
//!
//! Namespaced kinds are searched in the fleet's namespace only: objects left in a namespace the
//! fleet moved away from stay (delete them by label). The [`FleetReport`] says what was applied
//! and deleted, for logs and metrics.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::fleet::{FleetObject, owned_selector};
use super::settings::OperatorSettings;
use super::{FIELD_MANAGER, FLEET_LABEL, MANAGED_BY};

/// The kinds whose orphans the tracker deletes, in deletion order (workloads first, so pods stop
/// before their RBAC goes).
pub const MANAGED_KINDS: [&str; 9] = [
    "Deployment",
    "DaemonSet",
    "PodDisruptionBudget",
    "Service",
    "RoleBinding",
    "Role",
    "ServiceAccount",
    "ClusterRoleBinding",
    "ClusterRole",
];

/// One object, by kind and name (its namespace is the fleet's, or none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: &'static str,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// What one [`FleetTracker::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetReport {
    /// Every object applied, in apply order.
    pub applied: Vec<ObjectId>,
    /// The orphans deleted, in deletion order.
    pub deleted: Vec<ObjectId>,
}

/// Why the fleet could not be brought to its rendered state. Variants name the action that
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// Server-side apply of one object failed.
    #[error("cannot apply {kind} {name}: {source}")]
    Apply { kind: &'static str, name: String, source: kube::Error },
    /// Listing a kind's owned objects (to find orphans) failed.
    #[error("cannot list the {kind} objects of fleet {fleet} to find orphans: {source}")]
    ListOrphans { kind: &'static str, fleet: String, source: kube::Error },
    /// Deleting an orphan failed.
    #[error("cannot delete orphaned {kind} {name}: {source}")]
    DeleteOrphan { kind: &'static str, name: String, source: kube::Error },
}

impl TrackerError {
    /// A stable name for metrics labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            TrackerError::Apply { .. } => "apply",
            TrackerError::ListOrphans { .. } => "list_orphans",
            TrackerError::DeleteOrphan { .. } => "delete_orphan",
        }
    }
}

/// Applies a fleet's objects and deletes its orphans. Cheap to build; holds no state between
/// calls (what is orphaned is found by label each time, so a restarted operator still finds
/// the objects of its previous run).
#[derive(Clone)]
pub struct FleetTracker {
    client: Client,
    namespace: String,
    fleet: String,
}

impl FleetTracker {
    /// A tracker for the fleet the settings describe (its name and namespace).
    pub fn new(client: Client, settings: &OperatorSettings) -> Self {
        FleetTracker { client, namespace: settings.namespace.clone(), fleet: settings.name.clone() }
    }

    /// Applies `objects` (stamped with the ownership labels and the fleet's namespace), then
    /// deletes every object of a managed kind that carries this fleet's labels and is not among
    /// them. Stops at the first error; nothing is deleted unless every apply succeeded.
    pub async fn apply(&self, objects: Vec<FleetObject>) -> Result<FleetReport, TrackerError> {
        let mut report = FleetReport::default();
        for mut object in objects {
            self.stamp(&mut object);
            let id = ObjectId { kind: object.kind(), name: object.name().to_string() };
            let result = match &object {
                FleetObject::ServiceAccount(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::ClusterRole(o) => self.apply_one(self.cluster(), o, &id).await,
                FleetObject::ClusterRoleBinding(o) => self.apply_one(self.cluster(), o, &id).await,
                FleetObject::Role(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::RoleBinding(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::Service(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::Deployment(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::DaemonSet(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::PodDisruptionBudget(o) => {
                    self.apply_one(self.namespaced(), o, &id).await
                }
            };
            result.map_err(|source| TrackerError::Apply {
                kind: id.kind,
                name: id.name.clone(),
                source,
            })?;
            report.applied.push(id);
        }

        let applied: BTreeSet<ObjectId> = report.applied.iter().cloned().collect();
        let mut deleted = Vec::new();
        self.delete_orphans::<Deployment>(self.namespaced(), &applied, &mut deleted).await?;
        self.delete_orphans::<DaemonSet>(self.namespaced(), &applied, &mut deleted).await?;
        self.delete_orphans::<PodDisruptionBudget>(self.namespaced(), &applied, &mut deleted)
            .await?;
        self.delete_orphans::<Service>(self.namespaced(), &applied, &mut deleted).await?;
        self.delete_orphans::<RoleBinding>(self.namespaced(), &applied, &mut deleted).await?;
        self.delete_orphans::<Role>(self.namespaced(), &applied, &mut deleted).await?;
        self.delete_orphans::<ServiceAccount>(self.namespaced(), &applied, &mut deleted).await?;
        self.delete_orphans::<ClusterRoleBinding>(self.cluster(), &applied, &mut deleted).await?;
        self.delete_orphans::<ClusterRole>(self.cluster(), &applied, &mut deleted).await?;
        report.deleted = deleted;
        Ok(report)
    }

    /// The ownership labels and the namespace, whatever the renderer set.
    fn stamp(&self, object: &mut FleetObject) {
        let cluster_scoped = object.is_cluster_scoped();
        let meta = object.meta_mut();
        let labels = meta.labels.get_or_insert_with(Default::default);
        labels.insert(FLEET_LABEL.to_string(), self.fleet.clone());
        labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string());
        meta.namespace = (!cluster_scoped).then(|| self.namespace.clone());
    }

    fn namespaced<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn cluster<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = ()>,
    {
        Api::all(self.client.clone())
    }

    async fn apply_one<K>(&self, api: Api<K>, object: &K, id: &ObjectId) -> Result<(), kube::Error>
    where
        K: Resource + Clone + fmt::Debug + Serialize + DeserializeOwned,
    {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&id.name, &params, &Patch::Apply(object)).await?;
        tracing::debug!(fleet = %self.fleet, object = %id, "applied");
        Ok(())
    }

    async fn delete_orphans<K>(
        &self,
        api: Api<K>,
        applied: &BTreeSet<ObjectId>,
        deleted: &mut Vec<ObjectId>,
    ) -> Result<(), TrackerError>
    where
        K: k8s_openapi::Resource
            + Resource<DynamicType = ()>
            + Clone
            + fmt::Debug
            + DeserializeOwned,
    {
        let kind = <K as k8s_openapi::Resource>::KIND;
        let params = ListParams::default().labels(&owned_selector(&self.fleet));
        let list = api.list_metadata(&params).await.map_err(|source| {
            TrackerError::ListOrphans { kind, fleet: self.fleet.clone(), source }
        })?;
        for item in list.items {
            let Some(name) = item.metadata.name else { continue };
            let id = ObjectId { kind, name };
            // Applied this time, or already on its way out.
            if applied.contains(&id) || item.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match api.delete(&id.name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(fleet = %self.fleet, object = %id, "deleted orphaned object");
                    deleted.push(id);
                }
                // Gone between the list and the delete: what we wanted.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(TrackerError::DeleteOrphan { kind, name: id.name, source });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fleet::render_fleet;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::pin::pin;
    use std::time::Duration;

    /// One request the tracker made, as the API server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        query: BTreeMap<String, String>,
        body: Option<Value>,
    }

    impl Seen {
        fn line(&self) -> String {
            format!("{} {}", self.method, self.path)
        }
    }

    /// What the scripted API server answers to a LIST: names of existing objects by list path.
    type Existing = BTreeMap<&'static str, Vec<&'static str>>;

    fn settings(text: &str) -> OperatorSettings {
        OperatorSettings::parse(text, Path::new("test.yaml")).unwrap()
    }

    /// The collection path of a kind in the default fleet's namespace (`trunkline`).
    fn list_path(kind: &str) -> &'static str {
        match kind {
            "Deployment" => "/apis/apps/v1/namespaces/trunkline/deployments",
            "DaemonSet" => "/apis/apps/v1/namespaces/trunkline/daemonsets",
            "PodDisruptionBudget" => "/apis/policy/v1/namespaces/trunkline/poddisruptionbudgets",
            "Service" => "/api/v1/namespaces/trunkline/services",
            "RoleBinding" => "/apis/rbac.authorization.k8s.io/v1/namespaces/trunkline/rolebindings",
            "Role" => "/apis/rbac.authorization.k8s.io/v1/namespaces/trunkline/roles",
            "ServiceAccount" => "/api/v1/namespaces/trunkline/serviceaccounts",
            "ClusterRoleBinding" => "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "ClusterRole" => "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            other => panic!("unmanaged kind {other}"),
        }
    }

    fn respond(seen: &Seen, existing: &Existing, fail_apply_of: Option<&str>) -> Response<Body> {
        let json_response = |status: StatusCode, value: Value| {
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&value).unwrap()))
                .unwrap()
        };
        match seen.method {
            Method::PATCH => {
                if fail_apply_of.is_some_and(|p| p == seen.path) {
                    return json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "spec.ports: Invalid value", "reason": "Invalid",
                               "code": 422}),
                    );
                }
                // The API server answers an apply with the object it stored.
                json_response(StatusCode::OK, seen.body.clone().unwrap())
            }
            Method::GET => {
                let names = existing.get(seen.path.as_str()).cloned().unwrap_or_default();
                let items: Vec<Value> = names
                    .iter()
                    .map(|n| {
                        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                               "metadata": {"name": n, "namespace": "trunkline",
                                            "labels": {FLEET_LABEL: "trunkline"}}})
                    })
                    .collect();
                json_response(
                    StatusCode::OK,
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                           "metadata": {"resourceVersion": "7"}, "items": items}),
                )
            }
            Method::DELETE => json_response(
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            ),
            _ => panic!("unexpected request {}", seen.line()),
        }
    }

    /// Runs `tracker.apply(objects)` against a scripted API server and returns the outcome and
    /// every request made, in order.
    async fn run(
        settings: &OperatorSettings,
        existing: Existing,
        fail_apply_of: Option<&'static str>,
    ) -> (Result<FleetReport, TrackerError>, Vec<Seen>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let request = Seen {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_string(),
                    query: form_pairs(parts.uri.query().unwrap_or_default()),
                    body: (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap()),
                };
                send.send_response(respond(&request, &existing, fail_apply_of));
                seen.push(request);
            }
            seen
        });
        let tracker = FleetTracker::new(Client::new(service, "default"), settings);
        let result =
            tokio::time::timeout(Duration::from_secs(10), tracker.apply(render_fleet(settings)))
                .await
                .expect("the tracker finished");
        drop(tracker);
        let seen = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the mock server stopped")
            .unwrap();
        (result, seen)
    }

    fn form_pairs(query: &str) -> BTreeMap<String, String> {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    }

    /// Percent-decoding for the few characters a label selector uses.
    fn decode(s: &str) -> String {
        s.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/").replace('+', " ")
    }

    fn id(kind: &'static str, name: &str) -> ObjectId {
        ObjectId { kind, name: name.to_string() }
    }

    #[tokio::test]
    async fn every_object_is_applied_server_side_with_the_ownership_labels() {
        let s = OperatorSettings::default();
        let (result, seen) = run(&s, Existing::new(), None).await;
        let report = result.unwrap();
        let patches: Vec<&Seen> = seen.iter().filter(|r| r.method == Method::PATCH).collect();
        let paths: Vec<&str> = patches.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/api/v1/namespaces/trunkline/serviceaccounts/trunkline-gateway",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/trunkline-gateway",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/trunkline-gateway",
                "/apis/rbac.authorization.k8s.io/v1/namespaces/trunkline/roles/trunkline-gateway",
                "/apis/rbac.authorization.k8s.io/v1/namespaces/trunkline/rolebindings/trunkline-gateway",
                "/api/v1/namespaces/trunkline/services/trunkline-carrier",
                "/api/v1/namespaces/trunkline/services/trunkline-internal",
                "/apis/apps/v1/namespaces/trunkline/deployments/trunkline-gateway",
                "/apis/policy/v1/namespaces/trunkline/poddisruptionbudgets/trunkline-gateway",
            ]
        );
        let rendered = render_fleet(&s);
        for (patch, object) in patches.iter().zip(&rendered) {
            assert_eq!(
                patch.query.get("fieldManager").map(String::as_str),
                Some("trunkline-operator")
            );
            assert_eq!(
                patch.query.get("force").map(String::as_str),
                Some("true"),
                "{}",
                patch.path
            );
            let body = patch.body.as_ref().unwrap();
            assert_eq!(body["kind"], object.kind());
            assert_eq!(body["metadata"]["name"], object.name());
            assert_eq!(body["metadata"]["labels"][FLEET_LABEL], "trunkline");
            assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], MANAGED_BY);
            if object.is_cluster_scoped() {
                assert!(body["metadata"].get("namespace").is_none(), "{}", patch.path);
            } else {
                assert_eq!(body["metadata"]["namespace"], "trunkline");
            }
            // The body is the rendered object itself, labels stamped.
            assert_eq!(body, &serde_json::to_value(object).unwrap());
        }
        assert_eq!(report.applied.len(), 9);
        assert!(report.deleted.is_empty());
        // Nothing existed, so nothing was deleted.
        assert!(seen.iter().all(|r| r.method != Method::DELETE));
    }

    #[tokio::test]
    async fn stamping_restores_labels_and_namespace_the_renderer_lost() {
        let s = OperatorSettings::default();
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let (request, send) = handle.next_request().await.unwrap();
            let body: Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            send.send_response(Response::new(Body::from(serde_json::to_vec(&body).unwrap())));
            body
        });
        let mut object = render_fleet(&s).remove(0);
        object.meta_mut().labels = None;
        object.meta_mut().namespace = Some("elsewhere".into());
        let tracker = FleetTracker::new(Client::new(service, "default"), &s);
        // Only the apply is answered; the orphan search that follows fails, which is fine here.
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.apply(vec![object])).await;
        let body = server.await.unwrap();
        assert_eq!(body["metadata"]["namespace"], "trunkline");
        assert_eq!(body["metadata"]["labels"][FLEET_LABEL], "trunkline");
        assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], MANAGED_BY);
    }

    #[tokio::test]
    async fn orphans_are_listed_by_the_fleet_labels_for_every_managed_kind() {
        let (result, seen) = run(&OperatorSettings::default(), Existing::new(), None).await;
        result.unwrap();
        let lists: Vec<&Seen> = seen.iter().filter(|r| r.method == Method::GET).collect();
        let paths: Vec<&str> = lists.iter().map(|r| r.path.as_str()).collect();
        let expected: Vec<&str> = MANAGED_KINDS.iter().map(|k| list_path(k)).collect();
        assert_eq!(paths, expected);
        for list in lists {
            assert_eq!(
                list.query.get("labelSelector").map(String::as_str),
                Some(
                    "trunkline.dev/fleet=trunkline,app.kubernetes.io/managed-by=trunkline-operator"
                ),
                "{}",
                list.path
            );
        }
    }

    #[tokio::test]
    async fn switching_to_a_daemon_set_deletes_the_deployment_and_its_budget() {
        let s = settings("mode: DaemonSet\nhostNetwork: true\n");
        let existing = Existing::from([
            (list_path("Deployment"), vec!["trunkline-gateway"]),
            (list_path("DaemonSet"), vec!["trunkline-gateway"]),
            (list_path("PodDisruptionBudget"), vec!["trunkline-gateway"]),
            (list_path("Service"), vec!["trunkline-carrier", "trunkline-internal"]),
            (list_path("ServiceAccount"), vec!["trunkline-gateway"]),
            (list_path("ClusterRole"), vec!["trunkline-gateway"]),
        ]);
        let (result, seen) = run(&s, existing, None).await;
        let report = result.unwrap();
        let deletes: Vec<String> =
            seen.iter().filter(|r| r.method == Method::DELETE).map(Seen::line).collect();
        assert_eq!(
            deletes,
            [
                "DELETE /apis/apps/v1/namespaces/trunkline/deployments/trunkline-gateway",
                "DELETE /apis/policy/v1/namespaces/trunkline/poddisruptionbudgets/trunkline-gateway",
            ]
        );
        assert_eq!(
            report.deleted,
            [id("Deployment", "trunkline-gateway"), id("PodDisruptionBudget", "trunkline-gateway")]
        );
        // Deleted in the background, so the Deployment's pods go with it.
        let delete = seen.iter().find(|r| r.method == Method::DELETE).unwrap();
        assert_eq!(delete.body.as_ref().unwrap()["propagationPolicy"], "Background");
        // Every delete comes after every apply.
        let last_patch = seen.iter().rposition(|r| r.method == Method::PATCH).unwrap();
        let first_delete = seen.iter().position(|r| r.method == Method::DELETE).unwrap();
        assert!(last_patch < first_delete);
    }

    #[tokio::test]
    async fn only_the_orphan_among_listed_objects_is_deleted() {
        let existing = Existing::from([
            (
                list_path("Service"),
                vec!["trunkline-carrier", "trunkline-old", "trunkline-internal"],
            ),
            (list_path("Deployment"), vec!["trunkline-gateway"]),
            (list_path("ClusterRoleBinding"), vec!["trunkline-gateway", "trunkline-legacy"]),
        ]);
        let (result, seen) = run(&OperatorSettings::default(), existing, None).await;
        let report = result.unwrap();
        let deletes: Vec<String> =
            seen.iter().filter(|r| r.method == Method::DELETE).map(Seen::line).collect();
        assert_eq!(
            deletes,
            [
                "DELETE /api/v1/namespaces/trunkline/services/trunkline-old",
                "DELETE /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/trunkline-legacy",
            ]
        );
        assert_eq!(
            report.deleted,
            [id("Service", "trunkline-old"), id("ClusterRoleBinding", "trunkline-legacy")]
        );
        assert_eq!(report.applied.len(), 9);
    }

    #[tokio::test]
    async fn a_failed_apply_stops_before_any_orphan_is_deleted() {
        let existing = Existing::from([(list_path("Service"), vec!["trunkline-old"])]);
        let (result, seen) = run(
            &OperatorSettings::default(),
            existing,
            Some("/api/v1/namespaces/trunkline/services/trunkline-carrier"),
        )
        .await;
        let error = result.unwrap_err();
        assert_eq!(error.category(), "apply");
        assert!(
            matches!(&error, TrackerError::Apply { kind: "Service", name, .. } if name == "trunkline-carrier"),
            "{error:?}"
        );
        assert!(error.to_string().contains("cannot apply Service trunkline-carrier"), "{error}");
        // The six objects before it were applied, then nothing more: no list, no delete.
        assert_eq!(seen.len(), 6);
        assert!(seen.iter().all(|r| r.method == Method::PATCH));
    }
}
