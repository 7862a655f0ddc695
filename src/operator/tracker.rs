//! Applies the fleet's objects and deletes its orphans: the one way the operator writes the
//! gateway fleet (after stackable operator-rs `cluster_resources.rs`). The reconciler calls
//! [`FleetTracker::apply`] with `fleet::render_fleet(settings)`; the tracker
//!
//! 1. looks up the owner, when the settings name one (`operatorDeployment`: the operator's own
//!    Deployment, in the fleet's namespace), so that every object gets an owner reference and
//!    Kubernetes' garbage collector deletes the fleet with the operator (`helm uninstall`
//!    leaves no gateway, no cloud load balancer, no credentials behind);
//! 2. stamps every object with the ownership labels (`trunkline.dev/fleet: <fleet>`,
//!    `app.kubernetes.io/managed-by: trunkline-operator`), the fleet's namespace and the owner;
//! 3. applies each with server-side apply (field manager `trunkline-operator`, `force`: the
//!    operator owns these objects, a `kubectl edit` of an owned field is undone), in the order
//!    given, stopping at the first failure (nothing is deleted after a failed apply, so a
//!    half-applied fleet never loses its old workload). A workload whose selector changed (the
//!    API server refuses: a selector is immutable) is deleted and created again, which restarts
//!    its gateways: the only way to that selector;
//! 4. for every kind it manages ([`MANAGED_KINDS`]), lists the operator's objects in the fleet's
//!    namespace (label `app.kubernetes.io/managed-by`, metadata only) and deletes those that
//!    are this fleet's (its fleet label, or this operator as owner) and were not applied this
//!    time: switching from Deployment to DaemonSet deletes the Deployment, disabling the budget
//!    deletes the PodDisruptionBudget, and renaming the fleet deletes every object of the old
//!    name. Another fleet's objects in the same namespace (another operator's) are left alone;
//! 5. deletes the ClusterRole and ClusterRoleBinding `<fleet>-gateway` that operators before
//!    0.2 created (the chart now installs the gateways' cluster-wide permissions itself, so the
//!    operator needs no right to create RBAC), when they carry the operator's label.
//!
//! Objects left in a namespace the fleet moved away from stay (delete them by label). The
//! [`FleetReport`] says what was applied and deleted, for logs and metrics.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::fleet::FleetObject;
use super::settings::OperatorSettings;
use super::{FIELD_MANAGER, FLEET_LABEL, MANAGED_BY};

/// The kinds whose orphans the tracker deletes, in deletion order (workloads first, so pods stop
/// before their RBAC goes).
pub const MANAGED_KINDS: [&str; 7] = [
    "Deployment",
    "DaemonSet",
    "PodDisruptionBudget",
    "Service",
    "RoleBinding",
    "Role",
    "ServiceAccount",
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
    /// Reading a cluster-wide RBAC object an older operator may have made failed.
    #[error("cannot read {kind} {name} (made by operators before 0.2?): {source}")]
    ReadLegacy { kind: &'static str, name: String, source: kube::Error },
    /// Reading the owner (the operator's Deployment) failed.
    #[error("cannot read Deployment {name}, the owner of the fleet's objects: {source}")]
    ReadOwner { name: String, source: kube::Error },
    /// Deleting a workload to change its immutable selector failed.
    #[error("cannot delete {kind} {name} to change its selector: {source}")]
    Recreate { kind: &'static str, name: String, source: kube::Error },
}

impl TrackerError {
    /// A stable name for metrics labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            TrackerError::Apply { .. } => "apply",
            TrackerError::ListOrphans { .. } => "list_orphans",
            TrackerError::DeleteOrphan { .. } => "delete_orphan",
            TrackerError::ReadLegacy { .. } => "read_legacy",
            TrackerError::ReadOwner { .. } => "read_owner",
            TrackerError::Recreate { .. } => "recreate",
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
    /// The operator's Deployment, owner of every object (`operatorDeployment`).
    owner: Option<String>,
}

impl FleetTracker {
    /// A tracker for the fleet the settings describe (its name, namespace and owner).
    pub fn new(client: Client, settings: &OperatorSettings) -> Self {
        FleetTracker {
            client,
            namespace: settings.namespace.clone(),
            fleet: settings.name.clone(),
            owner: settings.operator_deployment.clone(),
        }
    }

    /// The owner reference every object gets: the operator's Deployment, read for its uid.
    async fn owner_reference(&self) -> Result<Option<OwnerReference>, TrackerError> {
        let Some(name) = &self.owner else { return Ok(None) };
        operator_owner_reference(&self.client, &self.namespace, name)
            .await
            .map_err(|source| TrackerError::ReadOwner { name: name.clone(), source })
    }

    /// Applies `objects` (stamped with the ownership labels and the fleet's namespace), then
    /// deletes every object of a managed kind that carries this fleet's labels and is not among
    /// them. Stops at the first error; nothing is deleted unless every apply succeeded.
    pub async fn apply(&self, objects: Vec<FleetObject>) -> Result<FleetReport, TrackerError> {
        let mut report = FleetReport::default();
        let owner = self.owner_reference().await?;
        for mut object in objects {
            self.stamp(&mut object, owner.as_ref());
            let id = ObjectId { kind: object.kind(), name: object.name().to_string() };
            let result = match &object {
                FleetObject::ServiceAccount(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::Role(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::RoleBinding(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::Service(o) => self.apply_one(self.namespaced(), o, &id).await,
                FleetObject::Deployment(o) => self.apply_workload(o, &id).await?,
                FleetObject::DaemonSet(o) => self.apply_workload(o, &id).await?,
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
        let owner_uid = owner.as_ref().map(|o| o.uid.as_str());
        let mut orphans = Orphans { applied: &applied, owner_uid, deleted: &mut deleted };
        self.delete_orphans::<Deployment>(&mut orphans).await?;
        self.delete_orphans::<DaemonSet>(&mut orphans).await?;
        self.delete_orphans::<PodDisruptionBudget>(&mut orphans).await?;
        self.delete_orphans::<Service>(&mut orphans).await?;
        self.delete_orphans::<RoleBinding>(&mut orphans).await?;
        self.delete_orphans::<Role>(&mut orphans).await?;
        self.delete_orphans::<ServiceAccount>(&mut orphans).await?;
        self.delete_legacy::<ClusterRoleBinding>(&mut deleted).await?;
        self.delete_legacy::<ClusterRole>(&mut deleted).await?;
        report.deleted = deleted;
        Ok(report)
    }

    /// The ownership labels, the namespace and the owner, whatever the renderer set.
    fn stamp(&self, object: &mut FleetObject, owner: Option<&OwnerReference>) {
        let meta = object.meta_mut();
        let labels = meta.labels.get_or_insert_with(Default::default);
        labels.insert(FLEET_LABEL.to_string(), self.fleet.clone());
        labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string());
        meta.namespace = Some(self.namespace.clone());
        meta.owner_references = owner.map(|o| vec![o.clone()]);
    }

    /// Applies a Deployment or DaemonSet; when the API server refuses it because its selector
    /// changed (immutable), deletes it and applies it again. The outer `Result` is the delete's,
    /// the inner one the apply's.
    async fn apply_workload<K>(
        &self,
        object: &K,
        id: &ObjectId,
    ) -> Result<Result<(), kube::Error>, TrackerError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + fmt::Debug
            + Serialize
            + DeserializeOwned,
    {
        let api: Api<K> = self.namespaced();
        match self.apply_one(api.clone(), object, id).await {
            Err(kube::Error::Api(status)) if is_immutable_selector(&status) => {
                tracing::warn!(
                    fleet = %self.fleet,
                    object = %id,
                    "the workload's selector changed and a selector cannot be changed in place: \
                     deleting and creating it again (its gateways restart)"
                );
                match api.delete(&id.name, &DeleteParams::foreground()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(source) => {
                        return Err(TrackerError::Recreate {
                            kind: id.kind,
                            name: id.name.clone(),
                            source,
                        });
                    }
                }
                Ok(self.apply_one(api, object, id).await)
            }
            other => Ok(other),
        }
    }

    /// Deletes `<fleet>-gateway` of a cluster-scoped kind when the operator made it (its label
    /// says so): what operators before the chart installed the gateways' cluster-wide RBAC
    /// created. A 404 is the usual answer; a 403 means the operator was not given the right to
    /// clean up (nothing to do then).
    async fn delete_legacy<K>(&self, deleted: &mut Vec<ObjectId>) -> Result<(), TrackerError>
    where
        K: k8s_openapi::Resource
            + Resource<DynamicType = ()>
            + Clone
            + fmt::Debug
            + DeserializeOwned,
    {
        let kind = <K as k8s_openapi::Resource>::KIND;
        let name = format!("{}-gateway", self.fleet);
        let api: Api<K> = Api::all(self.client.clone());
        let ours = match api.get_metadata_opt(&name).await {
            Ok(found) => found.is_some_and(|o| {
                o.metadata.labels.as_ref().is_some_and(|l| {
                    l.get("app.kubernetes.io/managed-by").map(String::as_str) == Some(MANAGED_BY)
                        && l.get(FLEET_LABEL) == Some(&self.fleet)
                })
            }),
            Err(kube::Error::Api(status)) if status.code == 403 => false,
            Err(source) => return Err(TrackerError::ReadLegacy { kind, name, source }),
        };
        if !ours {
            return Ok(());
        }
        let id = ObjectId { kind, name };
        match api.delete(&id.name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(
                    fleet = %self.fleet,
                    object = %id,
                    "deleted the gateways' cluster-wide RBAC an older operator made (the chart \
                     installs it now)"
                );
                deleted.push(id);
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(TrackerError::DeleteOrphan { kind, name: id.name, source }),
        }
    }

    fn namespaced<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
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

    async fn delete_orphans<K>(&self, orphans: &mut Orphans<'_>) -> Result<(), TrackerError>
    where
        K: k8s_openapi::Resource
            + Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + fmt::Debug
            + DeserializeOwned,
    {
        let kind = <K as k8s_openapi::Resource>::KIND;
        let api: Api<K> = self.namespaced();
        let params =
            ListParams::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
        let list = api.list_metadata(&params).await.map_err(|source| {
            TrackerError::ListOrphans { kind, fleet: self.fleet.clone(), source }
        })?;
        for item in list.items {
            let meta = item.metadata;
            let this_fleet =
                meta.labels.as_ref().and_then(|l| l.get(FLEET_LABEL)) == Some(&self.fleet);
            let owned_by_us = orphans
                .owner_uid
                .is_some_and(|uid| meta.owner_references.iter().flatten().any(|o| o.uid == uid));
            let Some(name) = meta.name else { continue };
            let id = ObjectId { kind, name };
            // Another fleet's, applied this time, or already on its way out.
            if !(this_fleet || owned_by_us)
                || orphans.applied.contains(&id)
                || meta.deletion_timestamp.is_some()
            {
                continue;
            }
            match api.delete(&id.name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(fleet = %self.fleet, object = %id, "deleted orphaned object");
                    orphans.deleted.push(id);
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

/// The owner reference of what the operator makes in its own namespace: its Deployment `name`
/// (read for its uid; `None` when the API server gives none). Not a controller reference: the
/// Deployment controller must not think it owns these objects. Also used for the gateways'
/// credentials bundle (`credentials::BundleWriter`), so `helm uninstall` removes it too.
pub async fn operator_owner_reference(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<OwnerReference>, kube::Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = api.get_metadata(name).await?;
    Ok(deployment.metadata.uid.map(|uid| OwnerReference {
        api_version: "apps/v1".to_string(),
        kind: "Deployment".to_string(),
        name: name.to_string(),
        uid,
        controller: None,
        block_owner_deletion: None,
    }))
}

/// What the orphan search of one apply needs and gives.
struct Orphans<'a> {
    applied: &'a BTreeSet<ObjectId>,
    /// The uid of the owner (the operator's Deployment), when there is one.
    owner_uid: Option<&'a str>,
    deleted: &'a mut Vec<ObjectId>,
}

/// The API server's refusal of a change to a workload's selector.
fn is_immutable_selector(status: &kube::core::Status) -> bool {
    status.code == 422
        && status.message.contains("spec.selector")
        && status.message.contains("field is immutable")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, Recorded, mock_client};
    use crate::operator::fleet::render_fleet;
    use http::{Method, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    /// The immutable-selector refusal is answered once per test process (one test uses it).
    static IMMUTABLE_REFUSED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

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

    fn respond(
        seen: &Recorded,
        existing: &Existing,
        fail_apply_of: Option<&str>,
    ) -> Response<Body> {
        let json_response =
            |status: StatusCode, value: Value| fixtures::json_response(status.as_u16(), &value);
        match seen.method {
            Method::PATCH => {
                if fail_apply_of.is_some_and(|p| p == format!("{}#immutable", seen.path))
                    && !IMMUTABLE_REFUSED.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    return json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "Deployment.apps \"trunkline-gateway\" is invalid: \
                                           spec.selector: Invalid value: v1.LabelSelector{}: \
                                           field is immutable",
                               "reason": "Invalid", "code": 422}),
                    );
                }
                if fail_apply_of.is_some_and(|p| p == seen.path) {
                    return json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "spec.ports: Invalid value", "reason": "Invalid",
                               "code": 422}),
                    );
                }
                // The API server answers an apply with the object it stored.
                json_response(StatusCode::OK, seen.body.clone())
            }
            Method::GET => {
                // A single object: the owner Deployment, or a cluster-wide RBAC object.
                let (collection, name) = seen.path.rsplit_once('/').unwrap();
                if !existing.contains_key(seen.path.as_str())
                    && !MANAGED_KINDS.iter().any(|k| list_path(k) == seen.path)
                {
                    let found = existing.get(collection).is_some_and(|names| {
                        names.iter().any(|n| n.split('@').next() == Some(name))
                    });
                    if !found {
                        return json_response(
                            StatusCode::NOT_FOUND,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": "NotFound", "code": 404}),
                        );
                    }
                    return json_response(
                        StatusCode::OK,
                        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                               "metadata": {"name": name, "uid": "operator-uid",
                                            "labels": {FLEET_LABEL: "trunkline",
                                                       "app.kubernetes.io/managed-by": MANAGED_BY}}}),
                    );
                }
                let names = existing.get(seen.path.as_str()).cloned().unwrap_or_default();
                // `name@fleet` is an object of another fleet; `name@fleet@uid` one owned by uid.
                let items: Vec<Value> = names
                    .iter()
                    .map(|n| {
                        let mut parts = n.split('@');
                        let name = parts.next().unwrap();
                        let fleet = parts.next().unwrap_or("trunkline");
                        let owners: Vec<Value> = parts
                            .next()
                            .map(|uid| {
                                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": "trunkline-operator", "uid": uid})
                            })
                            .into_iter()
                            .collect();
                        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                               "metadata": {"name": name, "namespace": "trunkline",
                                            "labels": {FLEET_LABEL: fleet},
                                            "ownerReferences": owners}})
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
    ) -> (Result<FleetReport, TrackerError>, Vec<Recorded>) {
        let (client, handle) = mock_client();
        let server = fixtures::serve(handle, move |request, send| {
            send.send_response(respond(request, &existing, fail_apply_of));
        });
        let tracker = FleetTracker::new(client, settings);
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

    fn id(kind: &'static str, name: &str) -> ObjectId {
        ObjectId { kind, name: name.to_string() }
    }

    #[tokio::test]
    async fn every_object_is_applied_server_side_with_the_ownership_labels() {
        let s = OperatorSettings::default();
        let (result, seen) = run(&s, Existing::new(), None).await;
        let report = result.unwrap();
        let patches: Vec<&Recorded> = seen.iter().filter(|r| r.method == Method::PATCH).collect();
        let paths: Vec<&str> = patches.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/api/v1/namespaces/trunkline/serviceaccounts/trunkline-gateway",
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
            assert_eq!(patch.param("fieldManager").as_deref(), Some("trunkline-operator"));
            assert_eq!(patch.param("force").as_deref(), Some("true"), "{}", patch.path);
            let body = &patch.body;
            assert_eq!(body["kind"], object.kind());
            assert_eq!(body["metadata"]["name"], object.name());
            assert_eq!(body["metadata"]["labels"][FLEET_LABEL], "trunkline");
            assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], MANAGED_BY);
            assert_eq!(body["metadata"]["namespace"], "trunkline");
            // No owner named in the settings: no owner reference.
            assert!(body["metadata"].get("ownerReferences").is_none(), "{}", patch.path);
            // The body is the rendered object itself, labels stamped.
            assert_eq!(body, &serde_json::to_value(object).unwrap());
        }
        assert_eq!(report.applied.len(), 7);
        assert!(report.deleted.is_empty());
        // Nothing existed, so nothing was deleted.
        assert!(seen.iter().all(|r| r.method != Method::DELETE));
    }

    #[tokio::test]
    async fn stamping_restores_labels_and_namespace_the_renderer_lost() {
        let s = OperatorSettings::default();
        let (client, handle) = mock_client();
        // The apply is answered with what was sent; the orphan search that follows gets no
        // list and fails, which is fine here.
        let server = fixtures::serve(handle, |request, send| {
            send.send_response(fixtures::ok(&request.body));
        });
        let mut object = render_fleet(&s).remove(0);
        object.meta_mut().labels = None;
        object.meta_mut().namespace = Some("elsewhere".into());
        let tracker = FleetTracker::new(client, &s);
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.apply(vec![object])).await;
        drop(tracker);
        let seen = server.await.unwrap();
        let body = &seen[0].body;
        assert_eq!(body["metadata"]["namespace"], "trunkline");
        assert_eq!(body["metadata"]["labels"][FLEET_LABEL], "trunkline");
        assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], MANAGED_BY);
    }

    #[tokio::test]
    async fn orphans_are_listed_by_the_fleet_labels_for_every_managed_kind() {
        let (result, seen) = run(&OperatorSettings::default(), Existing::new(), None).await;
        result.unwrap();
        let gets: Vec<&Recorded> = seen.iter().filter(|r| r.method == Method::GET).collect();
        let paths: Vec<&str> = gets.iter().map(|r| r.path.as_str()).collect();
        let mut expected: Vec<&str> = MANAGED_KINDS.iter().map(|k| list_path(k)).collect();
        // Then the cluster-wide RBAC older operators made, by name.
        expected.push("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/trunkline-gateway");
        expected.push("/apis/rbac.authorization.k8s.io/v1/clusterroles/trunkline-gateway");
        assert_eq!(paths, expected);
        for list in &gets[..MANAGED_KINDS.len()] {
            // Every object the operator made in the namespace: a renamed fleet's too.
            assert_eq!(
                list.param("labelSelector").as_deref(),
                Some("app.kubernetes.io/managed-by=trunkline-operator"),
                "{}",
                list.path
            );
        }
    }

    #[tokio::test]
    async fn switching_to_a_daemon_set_deletes_the_deployment_and_its_budget() {
        let s = settings("mode: DaemonSet\n");
        let existing = Existing::from([
            (list_path("Deployment"), vec!["trunkline-gateway"]),
            (list_path("DaemonSet"), vec!["trunkline-gateway"]),
            (list_path("PodDisruptionBudget"), vec!["trunkline-gateway"]),
            (list_path("Service"), vec!["trunkline-carrier", "trunkline-internal"]),
            (list_path("ServiceAccount"), vec!["trunkline-gateway"]),
        ]);
        let (result, seen) = run(&s, existing, None).await;
        let report = result.unwrap();
        let deletes: Vec<String> =
            seen.iter().filter(|r| r.method == Method::DELETE).map(Recorded::line).collect();
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
        assert_eq!(delete.body["propagationPolicy"], "Background");
        // Every delete comes after every apply.
        let last_patch = seen.iter().rposition(|r| r.method == Method::PATCH).unwrap();
        let first_delete = seen.iter().position(|r| r.method == Method::DELETE).unwrap();
        assert!(last_patch < first_delete);
    }

    #[tokio::test]
    async fn only_this_fleets_orphans_are_deleted_and_the_legacy_cluster_rbac() {
        let existing = Existing::from([
            (
                list_path("Service"),
                vec![
                    "trunkline-carrier",
                    "trunkline-old",
                    "trunkline-internal",
                    "other-carrier@other",
                ],
            ),
            (list_path("Deployment"), vec!["trunkline-gateway", "other-gateway@other"]),
            (list_path("ClusterRoleBinding"), vec!["trunkline-gateway"]),
        ]);
        let (result, seen) = run(&OperatorSettings::default(), existing, None).await;
        let report = result.unwrap();
        let deletes: Vec<String> =
            seen.iter().filter(|r| r.method == Method::DELETE).map(Recorded::line).collect();
        // Another fleet's objects (another operator's, same namespace) stay.
        assert_eq!(
            deletes,
            [
                "DELETE /api/v1/namespaces/trunkline/services/trunkline-old",
                "DELETE /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/trunkline-gateway",
            ]
        );
        assert_eq!(
            report.deleted,
            [id("Service", "trunkline-old"), id("ClusterRoleBinding", "trunkline-gateway")]
        );
        assert_eq!(report.applied.len(), 7);
    }

    #[tokio::test]
    async fn a_renamed_fleet_deletes_what_the_operator_owned_under_the_old_name() {
        let s = settings("name: edge\noperatorDeployment: trunkline-operator\n");
        let existing = Existing::from([
            (
                "/apis/apps/v1/namespaces/trunkline/deployments",
                vec![
                    "trunkline-operator",
                    "edge-gateway@edge@operator-uid",
                    "trunkline-gateway@trunkline@operator-uid",
                    "other-gateway@other@another-uid",
                ],
            ),
            (list_path("Service"), vec!["trunkline-carrier@trunkline@operator-uid"]),
        ]);
        let (result, seen) = run(&s, existing, None).await;
        let report = result.unwrap();
        // The owner is read first, then every object is applied with it as owner.
        assert_eq!(
            seen[0].line(),
            "GET /apis/apps/v1/namespaces/trunkline/deployments/trunkline-operator"
        );
        for patch in seen.iter().filter(|r| r.method == Method::PATCH) {
            let owners = &patch.body["metadata"]["ownerReferences"];
            assert_eq!(
                owners,
                &json!([{"apiVersion": "apps/v1", "kind": "Deployment",
                         "name": "trunkline-operator", "uid": "operator-uid"}]),
                "{}",
                patch.path
            );
        }
        // The old fleet's objects go (owned by this operator); another operator's stay; the
        // operator's own Deployment carries no fleet label of ours and no owner: it stays.
        assert_eq!(
            report.deleted,
            [id("Deployment", "trunkline-gateway"), id("Service", "trunkline-carrier")]
        );
    }

    #[tokio::test]
    async fn a_workload_whose_selector_changed_is_deleted_and_created_again() {
        let (result, seen) = run(
            &OperatorSettings::default(),
            Existing::new(),
            Some("/apis/apps/v1/namespaces/trunkline/deployments/trunkline-gateway#immutable"),
        )
        .await;
        result.unwrap();
        let lines: Vec<String> = seen.iter().map(Recorded::line).collect();
        let at = lines
            .iter()
            .position(|l| {
                l == "PATCH /apis/apps/v1/namespaces/trunkline/deployments/trunkline-gateway"
            })
            .unwrap();
        assert_eq!(
            &lines[at..at + 3],
            [
                "PATCH /apis/apps/v1/namespaces/trunkline/deployments/trunkline-gateway",
                "DELETE /apis/apps/v1/namespaces/trunkline/deployments/trunkline-gateway",
                "PATCH /apis/apps/v1/namespaces/trunkline/deployments/trunkline-gateway",
            ]
        );
        // Foreground: the old pods are gone before the new Deployment's come up.
        assert_eq!(seen[at + 1].body["propagationPolicy"], "Foreground");
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
        // The three objects before it were applied, then nothing more: no list, no delete.
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|r| r.method == Method::PATCH));
    }
}
