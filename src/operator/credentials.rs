//! Credentials the operator writes: the generated digest credentials of InboundTrunks whose
//! `auth.digest` names no Secret, and the one credentials Secret the gateways read (`bundle`).
//!
//! **Generated credentials** ([`render_generated_credentials`], [`create_generated_credentials`]):
//! a `kubernetes.io/basic-auth` Secret named `generated_credentials_secret_name(trunk)` in the
//! trunk's namespace, with a random username and a 192-bit random password drawn by the same
//! generator `trunkline run` uses for its state folder (`source::credentials`), so both
//! hand out credentials of the same shape. It is owned by the trunk (`controller: true`: deleting
//! the trunk deletes it) and labelled as the operator's. It is created with a plain POST and never
//! updated: an existing Secret of that name (409 AlreadyExists) is left exactly as it is, since the
//! carrier holds those credentials. Deleting the Secret rotates them.
//!
//! **The gateway bundle** ([`BundleWriter`]): `bundle::render_bundle` over the operator's compile,
//! applied with server-side apply only when its data differs from what this process last applied.
//! The digest nonce key inside it is read once from the existing bundle Secret and generated
//! (32 random bytes) only when that Secret is absent or holds no valid key, so a restart of the
//! operator never invalidates the nonces the gateways issued. The bundle also carries the fleet's
//! membership (`bundle::FLEET_MEMBERS_KEY`: the Ready gateway pods, which the gateways divide
//! the trunks' limits by): [`BundleWriter::set_members`] keeps it, every apply writes it, and
//! [`BundleWriter::write_again`] applies it alone when only the membership changed (no compile).
//!
//! **The call API's token** ([`render_api_token_secret`], [`create_api_token_secret`]): with
//! `api.enabled` and no `api.tokenSecret`, an `Opaque` Secret `<fleet>-api-token` in the fleet's
//! namespace whose key `token` is a 192-bit random token from the same generator, owned by the
//! operator's Deployment (it goes with `helm uninstall`). Created with a plain POST before the
//! fleet is applied (the gateways mount it) and never updated: the agent runtime holds that
//! token, so an existing Secret is kept; deleting it rotates the token (the operator creates a
//! new one within a resync, and the gateways re-read the mounted file).
//!
//! Nothing here logs or returns a Secret's data: errors carry names and the API server's answer.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use rand::Rng;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::settings::OperatorSettings;
use super::tracker::operator_owner_reference;
use super::{FIELD_MANAGER, FLEET_LABEL, MANAGED_BY};
use crate::api::InboundTrunk;
use crate::config::secret::{BASIC_AUTH_TYPE, generated_credentials_secret_name};
use crate::config::specs::DEFAULT_NAMESPACE;
use crate::config::{Compiled, Specs};
use crate::source::bundle::{
    FLEET_MEMBERS_KEY, NONCE_KEY_LEN, read_bundle, render_bundle, render_fleet_members,
};
use crate::source::credentials::{TRUNK_ANNOTATION, generate_password, generate_username};

/// `app.kubernetes.io/managed-by`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// A credentials action that failed. Messages name objects, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "cannot create Secret {namespace}/{name} with the generated credentials of InboundTrunk {trunk}: {source}"
    )]
    CreateSecret {
        namespace: String,
        name: String,
        trunk: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read the gateway credentials Secret {namespace}/{name}: {source}")]
    ReadBundle {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot apply the gateway credentials Secret {namespace}/{name}: {source}")]
    ApplyBundle {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot create Secret {namespace}/{name} with the generated call API token: {source}")]
    CreateApiToken {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot read Deployment {namespace}/{name}, the owner of the gateway credentials Secret: {source}"
    )]
    ReadOwner {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl CredentialsError {
    /// A stable name of the failed action, for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CredentialsError::CreateSecret { .. } => "create_secret",
            CredentialsError::ReadBundle { .. } => "read_bundle",
            CredentialsError::ApplyBundle { .. } => "apply_bundle",
            CredentialsError::ReadOwner { .. } => "read_owner",
            CredentialsError::CreateApiToken { .. } => "create_api_token",
        }
    }
}

/// The name of the Secret the operator must generate for this trunk, when its digest names none.
pub fn wants_generated_credentials(trunk: &InboundTrunk) -> Option<String> {
    let digest = trunk.spec.auth.digest.as_ref()?;
    if digest.secret_ref.is_some() {
        return None;
    }
    Some(generated_credentials_secret_name(trunk.metadata.name.as_deref()?))
}

/// A new Secret with fresh random credentials for `trunk`, owned by it; `None` when the trunk
/// needs none, or has no name or uid yet (an object from the API server has both).
pub fn render_generated_credentials(trunk: &InboundTrunk) -> Option<Secret> {
    let secret_name = wants_generated_credentials(trunk)?;
    let trunk_name = trunk.metadata.name.clone()?;
    let owner = trunk.controller_owner_ref(&())?;
    let namespace = trunk.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let username = generate_username(&trunk_name);
    let password = generate_password();
    let data = BTreeMap::from([
        ("username".to_string(), ByteString(username.into_bytes())),
        ("password".to_string(), ByteString(password.expose().as_bytes().to_vec())),
    ]);
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])),
            annotations: Some(BTreeMap::from([(TRUNK_ANNOTATION.to_string(), trunk_name)])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some(BASIC_AUTH_TYPE.to_string()),
        data: Some(data),
        ..Secret::default()
    })
}

/// What creating a generated Secret did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretCreation {
    Created,
    /// A Secret of that name was there already (the watch had not shown it yet, or someone put
    /// it there): it is kept as it is.
    AlreadyExists,
}

/// Creates a generated credentials Secret (POST). An existing Secret is never overwritten.
pub async fn create_generated_credentials(
    client: &Client,
    secret: &Secret,
) -> Result<SecretCreation, CredentialsError> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), dry_run: false };
    match api.create(&params, secret).await {
        Ok(_) => Ok(SecretCreation::Created),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            Ok(SecretCreation::AlreadyExists)
        }
        Err(source) => Err(CredentialsError::CreateSecret {
            trunk: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRUNK_ANNOTATION))
                .map(|t| format!("{namespace}/{t}"))
                .unwrap_or_default(),
            namespace,
            name,
            source,
        }),
    }
}

/// The key of the call API's token in its Secret (the gateways read `<mount>/token`).
pub const API_TOKEN_KEY: &str = "token";

/// A new API token Secret with a fresh random token, when the settings ask the operator to
/// generate one (`api.enabled` without `api.tokenSecret`); `owner` is the operator's Deployment.
pub fn render_api_token_secret(
    settings: &OperatorSettings,
    owner: Option<OwnerReference>,
) -> Option<Secret> {
    let name = settings.generated_api_token_secret()?;
    let token = generate_password();
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (FLEET_LABEL.to_string(), settings.name.clone()),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            API_TOKEN_KEY.to_string(),
            ByteString(token.expose().as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// Creates the generated API token Secret (POST) when the settings call for one; an existing
/// Secret of that name is kept as it is. `None`: the settings need none (API off, or a Secret
/// of the user's named). The token is never logged or returned.
pub async fn create_api_token_secret(
    client: &Client,
    settings: &OperatorSettings,
) -> Result<Option<SecretCreation>, CredentialsError> {
    let Some(name) = settings.generated_api_token_secret() else { return Ok(None) };
    let namespace = settings.namespace.clone();
    let owner = match &settings.operator_deployment {
        None => None,
        Some(owner) => {
            operator_owner_reference(client, &namespace, owner).await.map_err(|source| {
                CredentialsError::ReadOwner {
                    namespace: namespace.clone(),
                    name: owner.clone(),
                    source,
                }
            })?
        }
    };
    let Some(secret) = render_api_token_secret(settings, owner) else { return Ok(None) };
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), dry_run: false };
    match api.create(&params, &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated the call API token Secret");
            Ok(Some(SecretCreation::Created))
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            Ok(Some(SecretCreation::AlreadyExists))
        }
        Err(source) => Err(CredentialsError::CreateApiToken { namespace, name, source }),
    }
}

/// The gateway credentials Secret as the operator applies it: [`render_bundle`] plus the
/// managed-by label.
pub fn render_gateway_bundle(
    specs: &Specs,
    compiled: &Compiled,
    nonce_key: &[u8; NONCE_KEY_LEN],
    namespace: &str,
    name: &str,
) -> Secret {
    let mut secret = render_bundle(specs, compiled, nonce_key, namespace, name);
    secret
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    secret
}

/// What applying the bundle did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleOutcome {
    Applied,
    Unchanged,
}

/// Keeps the gateway credentials Secret up to date: its nonce key, and the data last applied.
#[derive(Debug)]
pub struct BundleWriter {
    namespace: String,
    name: String,
    /// The operator's Deployment (`operatorDeployment`), owner of the bundle, and its
    /// reference once read.
    owner: Option<String>,
    owner_reference: Option<OwnerReference>,
    nonce_key: Option<[u8; NONCE_KEY_LEN]>,
    /// The bundle of the last compile, without the membership; `None` until the first apply.
    rendered: Option<Secret>,
    /// The fleet's Ready gateway pods, sorted; `None` until the first [`BundleWriter::set_members`].
    members: Option<Vec<String>>,
    /// The data this process last applied; `None` until the first apply.
    applied: Option<BTreeMap<String, ByteString>>,
}

impl BundleWriter {
    /// A writer of the Secret `namespace/name`, owned by the operator's Deployment `owner` (in
    /// the same namespace) when one is named: it holds every credential the gateways use, and
    /// goes with the operator.
    pub fn new(namespace: &str, name: &str, owner: Option<&str>) -> Self {
        BundleWriter {
            namespace: namespace.to_string(),
            name: name.to_string(),
            owner: owner.map(str::to_string),
            owner_reference: None,
            nonce_key: None,
            rendered: None,
            members: None,
            applied: None,
        }
    }

    /// Sets the fleet's membership written with the next apply: the names of the Ready gateway
    /// pods (sorted here). `true` when it differs from the one set before.
    pub fn set_members(&mut self, mut members: Vec<String>) -> bool {
        members.sort_unstable();
        members.dedup();
        if self.members.as_ref() == Some(&members) {
            return false;
        }
        self.members = Some(members);
        true
    }

    /// Forgets what was applied, so the next [`BundleWriter::apply`] writes again (the Secret
    /// was changed or deleted by someone else).
    pub fn forget_applied(&mut self) {
        self.applied = None;
    }

    /// Has a bundle been applied by this writer?
    pub fn has_applied(&self) -> bool {
        self.applied.is_some()
    }

    /// Is the bundle Secret on the API server still what was last applied? `false` when it was
    /// deleted or its data edited by someone else (or nothing was applied yet): then
    /// [`BundleWriter::forget_applied`] and apply again.
    pub async fn is_intact(&self, client: &Client) -> Result<bool, CredentialsError> {
        let Some(applied) = &self.applied else { return Ok(false) };
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let current =
            api.get_opt(&self.name).await.map_err(|source| CredentialsError::ReadBundle {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })?;
        Ok(current.and_then(|s| s.data).as_ref() == Some(applied))
    }

    /// The nonce key: read from the existing bundle Secret the first time, generated when that
    /// Secret is absent or has no valid key.
    pub async fn nonce_key(
        &mut self,
        client: &Client,
    ) -> Result<[u8; NONCE_KEY_LEN], CredentialsError> {
        if let Some(key) = self.nonce_key {
            return Ok(key);
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let existing =
            api.get_opt(&self.name).await.map_err(|source| CredentialsError::ReadBundle {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })?;
        let key = match existing.and_then(|s| read_bundle(&s).nonce_key) {
            Some(key) => key,
            None => rand::rng().random(),
        };
        self.nonce_key = Some(key);
        Ok(key)
    }

    /// Renders the bundle from this compile and applies it, with the membership, (server-side
    /// apply, forced, under [`FIELD_MANAGER`]) when its data differs from what was last applied.
    pub async fn apply(
        &mut self,
        client: &Client,
        specs: &Specs,
        compiled: &Compiled,
    ) -> Result<BundleOutcome, CredentialsError> {
        let key = self.nonce_key(client).await?;
        self.rendered =
            Some(render_gateway_bundle(specs, compiled, &key, &self.namespace, &self.name));
        self.write_again(client).await
    }

    /// Applies the last compile's bundle with the current membership, when that differs from
    /// what was last applied (a membership change: nothing to compile). Before the first
    /// [`BundleWriter::apply`] there is nothing to write: that apply will carry the membership.
    pub async fn write_again(
        &mut self,
        client: &Client,
    ) -> Result<BundleOutcome, CredentialsError> {
        let Some(mut secret) = self.rendered.clone() else { return Ok(BundleOutcome::Unchanged) };
        if let Some(members) = &self.members {
            secret
                .data
                .get_or_insert_with(BTreeMap::new)
                .insert(FLEET_MEMBERS_KEY.to_string(), render_fleet_members(members));
        }
        if self.applied.is_some() && self.applied == secret.data {
            return Ok(BundleOutcome::Unchanged);
        }
        if let (Some(owner), None) = (&self.owner, &self.owner_reference) {
            self.owner_reference = operator_owner_reference(client, &self.namespace, owner)
                .await
                .map_err(|source| CredentialsError::ReadOwner {
                namespace: self.namespace.clone(),
                name: owner.clone(),
                source,
            })?;
        }
        secret.metadata.owner_references = self.owner_reference.clone().map(|o| vec![o]);
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let params = PatchParams::apply(super::FIELD_MANAGER).force();
        api.patch(&self.name, &params, &Patch::Apply(&secret)).await.map_err(|source| {
            CredentialsError::ApplyBundle {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            }
        })?;
        self.applied = secret.data;
        Ok(BundleOutcome::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::SecretEntry;

    fn trunk(digest: serde_json::Value) -> InboundTrunk {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "trunkline.dev/v1alpha1",
            "kind": "InboundTrunk",
            "metadata": {"name": "acme-in", "namespace": "voice", "uid": "uid-1", "generation": 1},
            "spec": {
                "numbers": [{"number": "+14155550100", "agent": "support"}],
                "destination": {"uri": "sip:agents.example:5070"},
                "auth": {"digest": digest},
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_trunk_without_secret_ref_gets_an_owned_basic_auth_secret_with_random_credentials() {
        let t = trunk(serde_json::json!({}));
        assert_eq!(
            wants_generated_credentials(&t).as_deref(),
            Some("acme-in-trunkline-credentials")
        );
        let secret = render_generated_credentials(&t).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("acme-in-trunkline-credentials"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("voice"));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str(), owner.controller),
            ("InboundTrunk", "acme-in", "uid-1", Some(true))
        );
        assert_eq!(owner.api_version, "trunkline.dev/v1alpha1");
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap().get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY)
        );
        let SecretEntry::BasicAuth(auth) = SecretEntry::from_secret(&secret) else {
            panic!("compile must accept the generated Secret");
        };
        assert!(auth.username.starts_with("acme-in-"), "{}", auth.username);
        assert_eq!(auth.password.expose().len(), 32);

        let again = render_generated_credentials(&t).unwrap();
        let SecretEntry::BasicAuth(other) = SecretEntry::from_secret(&again) else { panic!() };
        assert_ne!(other.password, auth.password, "fresh randomness every time");
        assert_ne!(other.username, auth.username);
    }

    #[test]
    fn a_trunk_with_secret_ref_or_without_digest_needs_nothing() {
        let with_ref = trunk(serde_json::json!({"secretRef": {"name": "mine"}}));
        assert_eq!(wants_generated_credentials(&with_ref), None);
        assert!(render_generated_credentials(&with_ref).is_none());
        let mut by_address = trunk(serde_json::json!({}));
        by_address.spec.auth.digest = None;
        assert_eq!(wants_generated_credentials(&by_address), None);
        let mut no_uid = trunk(serde_json::json!({}));
        no_uid.metadata.uid = None;
        assert!(render_generated_credentials(&no_uid).is_none(), "no owner reference possible");
    }

    #[test]
    fn errors_name_the_objects_and_have_stable_categories() {
        let e = CredentialsError::ApplyBundle {
            namespace: "trunkline".into(),
            name: "gw".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("forbidden", "Forbidden").with_code(403).boxed(),
            ),
        };
        assert!(
            e.to_string().starts_with("cannot apply the gateway credentials Secret trunkline/gw")
        );
        assert_eq!(e.category(), "apply_bundle");
    }

    fn settings(text: &str) -> OperatorSettings {
        OperatorSettings::parse(text, std::path::Path::new("operator.yaml")).unwrap()
    }

    /// Runs `create_api_token_secret` against a scripted API server: `create` answers the
    /// POST of the Secret. Gives the outcome and every request made.
    async fn create_token(
        settings: &OperatorSettings,
        create: fn() -> http::Response<kube::client::Body>,
    ) -> (Result<Option<SecretCreation>, CredentialsError>, Vec<crate::fixtures::Recorded>) {
        use crate::fixtures;
        use std::time::Duration;
        let (client, handle) = fixtures::mock_client();
        let server = fixtures::serve(handle, move |request, send| {
            let response = if request.method == http::Method::GET {
                fixtures::ok(&serde_json::json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "trunkline-operator", "namespace": "voice", "uid": "op-uid"},
                }))
            } else {
                create()
            };
            send.send_response(response);
        });
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            create_api_token_secret(&client, settings),
        )
        .await
        .expect("the request finished");
        drop(client);
        let seen = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the mock server stopped")
            .unwrap();
        (result, seen)
    }

    fn created() -> http::Response<kube::client::Body> {
        crate::fixtures::json_response(
            201,
            &serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "trunkline-api-token", "namespace": "voice"},
            }),
        )
    }

    #[tokio::test]
    async fn an_enabled_api_without_a_secret_gets_a_random_token_owned_by_the_operator() {
        let s = settings(
            "namespace: voice\noperatorDeployment: trunkline-operator\napi: {enabled: true}\n",
        );
        let (result, seen) = create_token(&s, created).await;
        assert_eq!(result.unwrap(), Some(SecretCreation::Created));
        let lines: Vec<String> = seen.iter().map(|r| r.line()).collect();
        assert_eq!(
            lines,
            [
                "GET /apis/apps/v1/namespaces/voice/deployments/trunkline-operator",
                "POST /api/v1/namespaces/voice/secrets",
            ]
        );
        let body = &seen[1].body;
        assert_eq!(body["metadata"]["name"], "trunkline-api-token");
        assert_eq!(body["type"], "Opaque");
        assert_eq!(body["metadata"]["labels"][FLEET_LABEL], "trunkline");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "op-uid");
        assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Deployment");
        let secret: Secret = serde_json::from_value(body.clone()).unwrap();
        let token = secret.data.unwrap()[API_TOKEN_KEY].0.clone();
        let token = String::from_utf8(token).unwrap();
        // 192 bits in the URL-safe base64 alphabet: nothing an HTTP header would mangle.
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        // A fresh one every time.
        let (_, again) = create_token(&s, created).await;
        assert_ne!(again[1].body["data"]["token"], body["data"]["token"]);
    }

    #[tokio::test]
    async fn an_existing_token_secret_is_kept_as_it_is() {
        let s = settings("namespace: voice\napi: {enabled: true}\n");
        let (result, seen) = create_token(&s, || {
            crate::fixtures::status_response(409, "AlreadyExists", "secrets exists")
        })
        .await;
        assert_eq!(result.unwrap(), Some(SecretCreation::AlreadyExists));
        // One POST: never a PUT or PATCH over the token the agent runtime holds. No owner
        // named, so no Deployment read.
        let lines: Vec<String> = seen.iter().map(|r| r.line()).collect();
        assert_eq!(lines, ["POST /api/v1/namespaces/voice/secrets"]);
    }

    #[tokio::test]
    async fn no_token_is_generated_when_the_api_is_off_or_names_its_secret() {
        for text in ["api: {enabled: false}\n", "api: {enabled: true, tokenSecret: mine}\n"] {
            let (result, seen) = create_token(&settings(text), created).await;
            assert_eq!(result.unwrap(), None, "{text:?}");
            assert!(seen.is_empty(), "{text:?}: {seen:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_creation_names_the_secret_and_never_the_token() {
        let s = settings("namespace: voice\napi: {enabled: true}\n");
        let (result, seen) = create_token(&s, || {
            crate::fixtures::status_response(403, "Forbidden", "secrets is forbidden")
        })
        .await;
        let error = result.unwrap_err();
        assert_eq!(error.category(), "create_api_token");
        let text = error.to_string();
        assert!(text.contains("voice/trunkline-api-token"), "{text}");
        let sent: Secret = serde_json::from_value(seen[0].body.clone()).unwrap();
        let token = String::from_utf8(sent.data.unwrap()[API_TOKEN_KEY].0.clone()).unwrap();
        assert!(!text.contains(&token), "{text}");
        assert!(!format!("{error:?}").contains(&token));
    }
}
