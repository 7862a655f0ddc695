//! The gateway credentials Secret: one Secret, in the fleet's namespace, holding the credentials
//! of every object the gateways serve, so a gateway's RBAC reads one named Secret and not every
//! Secret in the cluster (DESIGN §3). The operator writes it ([`render_bundle`]) from its own
//! compile; gateways read it back into the [`SecretStore`] they compile with ([`read_bundle`]),
//! so both compile the same table and report the same config hash.
//!
//! The bundle also carries the digest nonce key under [`NONCE_KEY`] (32 random bytes the operator
//! generates once and keeps): nonces are stateless HMACs, and every replica must share the key
//! so that a challenge from one pod is answered on another.
//!
//! It also carries the fleet's membership under [`FLEET_MEMBERS_KEY`]: the sorted names of the
//! gateway pods the operator sees Ready, `{"members": ["gw-0", "gw-1"]}`. Each gateway divides
//! the trunks' limits by it (`call::limits`); it is not secret, but every gateway already
//! watches this one object, so it needs no new watch or RBAC. The operator rewrites it only
//! when the set changes, and a gateway takes a change of it without compiling anything
//! ([`read_fleet_members`]).
//!
//! Format: type `Opaque`; one data key per referenced Secret, `<namespace>.<name>` (a namespace
//! is a DNS label and holds no dot, so the first dot splits the key), whose value is the JSON
//! object `{"username": "...", "password": "..."}`. Only Secrets referenced by objects that
//! compile did not refuse are included, and only usable ones: a refused object is not served,
//! so its credentials have no business on the gateways.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::api::Kind;
use crate::config::diagnostic::{ObjectKey, State};
use crate::config::secret::{
    BasicAuth, Password, SecretEntry, SecretStore, generated_credentials_secret_name,
};
use crate::config::specs::DEFAULT_NAMESPACE;
use crate::config::{Compiled, Specs};

/// The data key of the digest nonce key (no dot: it cannot be a Secret's key).
pub const NONCE_KEY: &str = "nonce-key";

/// Length of the nonce key, in bytes.
pub const NONCE_KEY_LEN: usize = 32;

/// The data key of the fleet's membership (no dot: it cannot be a Secret's key, where
/// `fleet.json` would be Secret `json` of namespace `fleet`).
pub const FLEET_MEMBERS_KEY: &str = "fleet-members";

/// The value under [`FLEET_MEMBERS_KEY`].
#[derive(Debug, Deserialize, serde::Serialize)]
struct FleetMembers {
    members: Vec<String>,
}

/// The value of [`FLEET_MEMBERS_KEY`] for these pod names (sorted and deduplicated here).
pub fn render_fleet_members(members: &[String]) -> ByteString {
    let mut members = members.to_vec();
    members.sort_unstable();
    members.dedup();
    let value = serde_json::to_vec(&FleetMembers { members }).unwrap_or_default();
    ByteString(value)
}

/// What the bundle says of the fleet's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// No [`FLEET_MEMBERS_KEY`] (an operator that publishes none): each gateway has the whole
    /// limits.
    Unknown,
    /// The names of the Ready gateway pods, sorted.
    Members(Vec<String>),
    /// A value that does not parse (or names an empty pod); never quoted.
    Unreadable,
}

/// The fleet's membership in a bundle Secret, without reading anything else of it.
pub fn read_fleet_members(secret: &Secret) -> Membership {
    let Some(value) = secret.data.as_ref().and_then(|d| d.get(FLEET_MEMBERS_KEY)) else {
        return Membership::Unknown;
    };
    match serde_json::from_slice::<FleetMembers>(&value.0) {
        Ok(f) if f.members.iter().all(|m| !m.is_empty()) => {
            let mut members = f.members;
            members.sort_unstable();
            members.dedup();
            Membership::Members(members)
        }
        _ => Membership::Unreadable,
    }
}

/// What a gateway reads from the bundle.
#[derive(Debug, Default)]
pub struct Bundle {
    /// The Secrets, as compile looks them up.
    pub secrets: SecretStore,
    /// The shared nonce key, when present and of the right length.
    pub nonce_key: Option<[u8; NONCE_KEY_LEN]>,
    /// Data keys that did not parse (never their values).
    pub bad_keys: Vec<String>,
}

/// The data key of a referenced Secret.
pub fn bundle_key(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// The credentials Secret for the gateways, named `name` in `namespace`, from the specs and
/// their compile, with the nonce key. Deterministic (BTreeMap), so an unchanged bundle applies
/// as a no-op.
pub fn render_bundle(
    specs: &Specs,
    compiled: &Compiled,
    nonce_key: &[u8; NONCE_KEY_LEN],
    namespace: &str,
    name: &str,
) -> Secret {
    let served = |kind: Kind, meta: &ObjectMeta| {
        let ns = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let key = ObjectKey::new(kind, ns, meta.name.as_deref().unwrap_or_default());
        compiled.verdict(&key).is_some_and(|v| v.state != State::Refused)
    };
    let mut refs: Vec<(String, String)> = Vec::new();
    for t in &specs.inbound {
        if !served(Kind::InboundTrunk, &t.metadata) {
            continue;
        }
        if let Some(digest) = &t.spec.auth.digest {
            let ns = t.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let secret = match &digest.secret_ref {
                Some(r) => r.name.clone(),
                None => generated_credentials_secret_name(t.metadata.name.as_deref().unwrap_or("")),
            };
            refs.push((ns.to_string(), secret));
        }
    }
    for t in &specs.outbound {
        if !served(Kind::OutboundTrunk, &t.metadata) {
            continue;
        }
        if let Some(auth) = &t.spec.auth
            && let Some(r) = &auth.digest.secret_ref
        {
            let ns = t.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            refs.push((ns.to_string(), r.name.clone()));
        }
    }
    for t in &specs.transfers {
        if !served(Kind::TransferDestination, &t.metadata) {
            continue;
        }
        if let Some(sip) = &t.spec.sip
            && let Some(auth) = &sip.auth
            && let Some(r) = &auth.digest.secret_ref
        {
            let ns = t.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            refs.push((ns.to_string(), r.name.clone()));
        }
    }

    let mut data = BTreeMap::new();
    data.insert(NONCE_KEY.to_string(), ByteString(nonce_key.to_vec()));
    for (ns, secret) in refs {
        if let Some(SecretEntry::BasicAuth(auth)) = specs.secrets.get(&ns, &secret) {
            let value = serde_json::json!({
                "username": auth.username,
                "password": auth.password.expose(),
            });
            data.insert(bundle_key(&ns, &secret), ByteString(value.to_string().into_bytes()));
        }
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

#[derive(Deserialize)]
struct Entry {
    username: String,
    password: String,
}

/// Reads a bundle. A key or value that does not parse is kept as an unusable entry (compile then
/// refuses the objects that reference it, with a reason) when its key names a Secret, and
/// skipped otherwise; `bad_keys` says which keys were bad, never their values.
pub fn read_bundle(secret: &Secret) -> Bundle {
    let mut store = SecretStore::default();
    let mut bad = Vec::new();
    let mut nonce_key = None;
    let Some(data) = &secret.data else {
        return Bundle::default();
    };
    for (key, value) in data {
        if key == FLEET_MEMBERS_KEY {
            // Not a credential: read by `read_fleet_members`.
            continue;
        }
        if key == NONCE_KEY {
            match <[u8; NONCE_KEY_LEN]>::try_from(value.0.as_slice()) {
                Ok(k) => nonce_key = Some(k),
                Err(_) => bad.push(key.clone()),
            }
            continue;
        }
        let Some((ns, name)) =
            key.split_once('.').filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        else {
            bad.push(key.clone());
            continue;
        };
        match serde_json::from_slice::<Entry>(&value.0) {
            Ok(e) if !e.username.is_empty() && !e.password.is_empty() => store.insert(
                ns,
                name,
                SecretEntry::BasicAuth(BasicAuth {
                    username: e.username,
                    password: Password::new(e.password),
                }),
            ),
            _ => {
                store.insert(
                    ns,
                    name,
                    SecretEntry::Invalid(
                        "the gateway credentials Secret holds an unreadable entry for it".into(),
                    ),
                );
                bad.push(key.clone());
            }
        }
    }
    Bundle { secrets: store, nonce_key, bad_keys: bad }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::{CompileOptions, compile};
    use crate::source::folder::{Loaded, load_paths, load_str};

    fn examples() -> Specs {
        let loaded = load_paths(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")]);
        assert!(loaded.problems.is_empty() && loaded.refused.is_empty());
        loaded.specs
    }

    #[test]
    fn a_gateway_compiling_from_the_bundle_gets_the_operators_table() {
        let specs = examples();
        let compiled = compile(&specs, &CompileOptions::default());
        let bundle = render_bundle(&specs, &compiled, &[7; 32], "trunkline", "gw-credentials");
        let read = read_bundle(&bundle);
        assert!(read.bad_keys.is_empty(), "{:?}", read.bad_keys);
        assert_eq!(read.nonce_key, Some([7; 32]));
        assert!(!read.secrets.is_empty());
        let gateway_specs = Specs { secrets: read.secrets, ..specs.clone() };
        let again = compile(&gateway_specs, &CompileOptions::default());
        assert_eq!(again.table.config_hash(), compiled.table.config_hash());
        assert!(!compiled.table.inbound.is_empty());
    }

    #[test]
    fn secrets_of_refused_objects_and_unreferenced_secrets_stay_out() {
        let mut loaded = Loaded::default();
        load_str(
            Path::new("t.yaml"),
            r#"
apiVersion: trunkline.dev/v1alpha1
kind: InboundTrunk
metadata: {name: good, namespace: voice}
spec:
  numbers: [{number: "+14155550100", agent: a}]
  destination: {uri: "sip:agents.example:5070"}
  auth: {digest: {secretRef: {name: good-creds}}}
---
apiVersion: trunkline.dev/v1alpha1
kind: InboundTrunk
metadata: {name: late, namespace: voice}
spec:
  numbers: [{number: "+14155550100", agent: a}]
  destination: {uri: "sip:agents.example:5070"}
  auth: {digest: {secretRef: {name: other-creds}}}
---
apiVersion: v1
kind: Secret
metadata: {name: other-creds, namespace: voice}
type: kubernetes.io/basic-auth
stringData: {username: late-user, password: s3cret-late}
---
apiVersion: v1
kind: Secret
metadata: {name: good-creds, namespace: voice}
type: kubernetes.io/basic-auth
stringData: {username: good-user, password: s3cret-good}
---
apiVersion: v1
kind: Secret
metadata: {name: unrelated, namespace: voice}
type: kubernetes.io/basic-auth
stringData: {username: someone, password: s3cret-unrelated}
"#,
            &mut loaded,
        );
        assert_eq!(loaded.specs.inbound.len(), 2);
        let compiled = compile(&loaded.specs, &CompileOptions::default());
        // `late` claims only a number `good` holds: refused, so its Secret stays out.
        let late = ObjectKey::new(Kind::InboundTrunk, "voice", "late");
        assert_eq!(compiled.verdict(&late).map(|v| v.state), Some(State::Refused));
        let bundle = render_bundle(&loaded.specs, &compiled, &[1; 32], "trunkline", "gw");
        let keys: Vec<&String> =
            bundle.data.as_ref().map(|d| d.keys().collect()).unwrap_or_default();
        assert_eq!(keys, vec![NONCE_KEY, "voice.good-creds"]);
        let value = &bundle.data.as_ref().and_then(|d| d.get("voice.good-creds").cloned());
        let text =
            String::from_utf8(value.clone().map(|v| v.0).unwrap_or_default()).unwrap_or_default();
        assert!(text.contains("good-user") && text.contains("s3cret-good"));
    }

    #[test]
    fn the_fleet_members_read_back_sorted_and_are_no_credential() {
        let names = vec!["gw-b".to_string(), "gw-a".to_string(), "gw-b".to_string()];
        let mut data = BTreeMap::new();
        data.insert(FLEET_MEMBERS_KEY.to_string(), render_fleet_members(&names));
        data.insert(NONCE_KEY.to_string(), ByteString(vec![3; NONCE_KEY_LEN]));
        let secret = Secret { data: Some(data), ..Secret::default() };
        assert_eq!(
            read_fleet_members(&secret),
            Membership::Members(vec!["gw-a".into(), "gw-b".into()])
        );
        let read = read_bundle(&secret);
        assert!(read.bad_keys.is_empty(), "{:?}", read.bad_keys);
        assert!(read.secrets.is_empty());
        assert_eq!(
            String::from_utf8(render_fleet_members(&names).0).unwrap(),
            r#"{"members":["gw-a","gw-b"]}"#
        );

        assert_eq!(read_fleet_members(&Secret::default()), Membership::Unknown);
        for bad in [&b"not json"[..], br#"{"members": "gw-a"}"#, br#"{"members": [""]}"#] {
            let data = BTreeMap::from([(FLEET_MEMBERS_KEY.to_string(), ByteString(bad.to_vec()))]);
            let secret = Secret { data: Some(data), ..Secret::default() };
            assert_eq!(read_fleet_members(&secret), Membership::Unreadable);
        }
    }

    #[test]
    fn unreadable_entries_are_named_and_never_usable() {
        let mut data = BTreeMap::new();
        data.insert(
            "voice.ok".to_string(),
            ByteString(br#"{"username":"u","password":"p"}"#.to_vec()),
        );
        data.insert("voice.broken".to_string(), ByteString(b"not json".to_vec()));
        data.insert("nodot".to_string(), ByteString(b"{}".to_vec()));
        data.insert(NONCE_KEY.to_string(), ByteString(vec![1; 5]));
        let secret = Secret { data: Some(data), ..Secret::default() };
        let read = read_bundle(&secret);
        let (store, mut bad) = (read.secrets, read.bad_keys);
        bad.sort();
        assert_eq!(bad, vec!["nodot", NONCE_KEY, "voice.broken"]);
        assert_eq!(read.nonce_key, None, "a short key is not used");
        assert!(
            matches!(store.get("voice", "ok"), Some(SecretEntry::BasicAuth(a)) if a.username == "u")
        );
        assert!(matches!(store.get("voice", "broken"), Some(SecretEntry::Invalid(_))));
    }
}
