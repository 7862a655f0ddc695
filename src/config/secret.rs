//! Credentials as compile sees them: basic-auth Secrets by namespace and name, with the password
//! kept in a type that never prints, logs or serialises its value.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The Secret type trunkline reads credentials from.
pub const BASIC_AUTH_TYPE: &str = "kubernetes.io/basic-auth";

/// A password. `Debug`, `Display` and `Serialize` print `<redacted>`; only [`Password::expose`]
/// gives the value, for the digest computation.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(value: impl Into<String>) -> Self {
        Password(value.into())
    }

    /// The secret value. Call sites are the digest computation and writing a generated Secret.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A SHA-256 fingerprint, for config hashes: changes when the password changes, reveals
    /// nothing.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Password {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Username and password from a `kubernetes.io/basic-auth` Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BasicAuth {
    pub username: String,
    pub password: Password,
}

/// A Secret as compile sees it: usable credentials, or why it is not usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretEntry {
    BasicAuth(BasicAuth),
    Invalid(String),
}

impl SecretEntry {
    /// Reads a Secret of type `kubernetes.io/basic-auth`. `stringData` (write-only on the API
    /// server, used in files for standalone runs) wins over `data`, as the API server merges it.
    pub fn from_secret(secret: &Secret) -> SecretEntry {
        let type_ = secret.type_.as_deref().unwrap_or("Opaque");
        if type_ != BASIC_AUTH_TYPE {
            return SecretEntry::Invalid(format!("has type {type_}, expected {BASIC_AUTH_TYPE}"));
        }
        let read = |key: &str| -> Result<String, String> {
            if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
                return Ok(v.clone());
            }
            match secret.data.as_ref().and_then(|d| d.get(key)) {
                Some(bytes) => String::from_utf8(bytes.0.clone())
                    .map_err(|_| format!("key {key} is not UTF-8 text")),
                None => Err(format!("has no key {key}")),
            }
        };
        match (read("username"), read("password")) {
            (Ok(username), Ok(password)) => {
                if username.is_empty() || password.is_empty() {
                    SecretEntry::Invalid("has an empty username or password".into())
                } else if !is_token(&username) {
                    SecretEntry::Invalid(
                        "username may hold only letters, digits and . _ - + (it is sent in a SIP header)"
                            .into(),
                    )
                } else {
                    SecretEntry::BasicAuth(BasicAuth { username, password: Password(password) })
                }
            }
            (Err(e), _) | (_, Err(e)) => SecretEntry::Invalid(e),
        }
    }
}

/// Characters allowed in a digest username: they travel inside a quoted header parameter.
fn is_token(s: &str) -> bool {
    s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// Every Secret compile may look at, by namespace and name.
#[derive(Clone, Debug, Default)]
pub struct SecretStore {
    entries: BTreeMap<(String, String), SecretEntry>,
}

impl SecretStore {
    pub fn insert(&mut self, namespace: &str, name: &str, entry: SecretEntry) {
        self.entries.insert((namespace.to_string(), name.to_string()), entry);
    }

    /// Adds a Kubernetes Secret (namespace defaulted to `default`).
    pub fn insert_secret(&mut self, secret: &Secret) {
        let namespace = secret.metadata.namespace.as_deref().unwrap_or("default");
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        self.insert(namespace, name, SecretEntry::from_secret(secret));
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&SecretEntry> {
        self.entries.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The name of the Secret that holds an InboundTrunk's generated credentials, when its
/// `auth.digest` names no Secret.
pub fn generated_credentials_secret_name(trunk: &str) -> String {
    format!("{trunk}-trunkline-credentials")
}
