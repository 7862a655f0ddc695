//! The state folder of `trunkline run` (`--state-dir`): what the operator keeps in the API server
//! when there is no API server. It takes the [`Specs`] just loaded from the spec folder and gives
//! them the generated digest credentials of every InboundTrunk whose `spec.auth.digest` names no
//! Secret (DESIGN §2), plus the key the gateway signs its digest nonces with. Both survive a
//! restart, so a carrier configured once keeps working and challenges issued before a restart can
//! still be answered after it. Called by the folder watcher (`source::watch`) on every load.
//!
//! Layout (the folder is created 0700, every file 0600, each written atomically: a hidden
//! temporary file in the same folder, flushed, then renamed over the final name):
//!
//! ```text
//! STATE_DIR/
//!   nonce.key                           32 random bytes, base64, one line
//!   credentials/<namespace>/<trunk>.yaml   a `kubernetes.io/basic-auth` Secret named
//!                                       generated_credentials_secret_name(<trunk>)
//! ```
//!
//! The credentials file is the Secret the operator creates for the same trunk, so it can be
//! `kubectl apply`-ed when a standalone setup moves to a cluster. Credentials are generated once:
//! while the file exists it is used as it is, and a file that cannot be read back is an error
//! naming it, never silently replaced (the carrier holds those credentials). Deleting the file
//! rotates them. Files of trunks that are gone are left in place, so a trunk that comes back gets
//! the same credentials. A Secret of that name written in the spec folder itself wins over the
//! state folder, as a Secret applied by hand would in a cluster.
//!
//! One process owns a state folder: two `run`s sharing one could each generate credentials for
//! the same new trunk, and the last rename would win.
//!
//! No password reaches a log line or an error here; [`GeneratedCredentials::announce`] is the one
//! place that prints one, on purpose, once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rand::Rng;
use tracing::info;

use crate::config::model::ObjectName;
use crate::config::secret::{
    BASIC_AUTH_TYPE, Password, SecretEntry, generated_credentials_secret_name,
};
use crate::config::specs::{DEFAULT_NAMESPACE, Specs};
use crate::config::yaml;

/// Folder (under the state folder) holding one generated Secret per InboundTrunk.
const CREDENTIALS_DIR: &str = "credentials";
/// File (in the state folder) holding the nonce signing key.
const NONCE_KEY_FILE: &str = "nonce.key";
/// Length of the nonce signing key, in bytes.
pub const NONCE_KEY_LEN: usize = 32;

/// Characters of the random suffix of a generated username: lowercase, so that a username read
/// aloud or typed into a carrier's portal is not ambiguous.
const USERNAME_SUFFIX_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const USERNAME_SUFFIX_LEN: usize = 8;
/// Longest generated username: carriers' portals often cap the field at 64.
const USERNAME_MAX_LEN: usize = 64;
/// Characters of a generated password: the URL-safe base64 alphabet, 6 bits each.
const PASSWORD_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// 32 characters of 6 bits: 192 bits.
const PASSWORD_LEN: usize = 32;

/// Label and annotation the operator puts on the Secrets it generates; written here too so a
/// credentials file is the same object.
const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "trunkline");
pub const TRUNK_ANNOTATION: &str = "trunkline.dev/inbound-trunk";

/// What went wrong with the state folder. Messages name the file; none holds a secret value.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state folder {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    WriteFile { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is corrupt: {why}; fix it, or delete it to generate a new one (a carrier using the old credentials must then be given the new ones)"
    )]
    CorruptFile { path: PathBuf, why: String },
    #[error("InboundTrunk {trunk}: its namespace or name cannot be used as a file name")]
    UnsafeName { trunk: ObjectName },
    #[error("cannot write the credentials Secret of InboundTrunk {trunk} as YAML: {message}")]
    Serialize { trunk: ObjectName, message: String },
}

/// Credentials generated for an InboundTrunk by this call (not those read back from the state
/// folder). `Debug` keeps the password redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedCredentials {
    pub trunk: ObjectName,
    /// Name of the Secret, `generated_credentials_secret_name(trunk)`.
    pub secret: String,
    pub username: String,
    pub password: Password,
    /// The file that keeps them (0600), where they can be read again.
    pub file: PathBuf,
}

impl GeneratedCredentials {
    /// Prints the credentials, password included, in one `info!` line: the operator's console is
    /// where a person picks them up to configure the carrier. This is the only place trunkline
    /// logs a password; it is called once, when the credentials are created. `endpoint` is what
    /// the carrier should send its calls to, when the caller knows it.
    pub fn announce(&self, endpoint: Option<&str>) {
        let endpoint = endpoint.unwrap_or("(this gateway's carrier-facing address)");
        info!(
            trunk = %self.trunk,
            secret = %self.secret,
            file = %self.file.display(),
            "generated digest credentials for InboundTrunk {}: configure the carrier to send calls to {} with username {} and password {} (printed only now; kept in {})",
            self.trunk,
            endpoint,
            self.username,
            self.password.expose(),
            self.file.display(),
        );
    }
}

/// The state folder of `trunkline run`.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens the state folder, creating it (and its parents) if needed, 0700 on unix. An existing
    /// folder that others may read is used as it is, with a warning.
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        create_private_dir(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    path = %path.display(),
                    "the state folder is readable by other users; it holds generated credentials (chmod 700 it)"
                );
            }
        }
        Ok(StateDir { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For every InboundTrunk in `specs` whose digest names no Secret: reads its credentials from
    /// the state folder, or generates and stores them, and adds the Secret to `specs.secrets` so
    /// compile finds them. A trunk whose generated Secret is already in `specs` (written in the
    /// spec folder) is left alone. Returns the credentials created by this call, for the caller
    /// to announce once.
    pub fn ensure_generated_credentials(
        &self,
        specs: &mut Specs,
    ) -> Result<Vec<GeneratedCredentials>, StateError> {
        // One entry per trunk, in namespace/name order (a trunk written twice is one trunk).
        let mut wanted = BTreeSet::new();
        for trunk in &specs.inbound {
            let needs_generated =
                trunk.spec.auth.digest.as_ref().is_some_and(|digest| digest.secret_ref.is_none());
            if !needs_generated {
                continue;
            }
            let namespace = trunk.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let name = trunk.metadata.name.as_deref().unwrap_or_default();
            wanted.insert(ObjectName::new(namespace, name));
        }

        let mut created = Vec::new();
        for trunk in wanted {
            let secret_name = generated_credentials_secret_name(&trunk.name);
            if specs.secrets.get(&trunk.namespace, &secret_name).is_some() {
                continue;
            }
            let file = self.credentials_file(&trunk)?;
            let secret = match read_optional(&file)? {
                Some(text) => read_credentials_secret(&file, &text, &trunk, &secret_name)?,
                None => {
                    let generated = GeneratedCredentials {
                        username: generate_username(&trunk.name),
                        password: generate_password(),
                        secret: secret_name,
                        trunk,
                        file,
                    };
                    let secret = credentials_secret(&generated);
                    let text = yaml::to_yaml(&secret).map_err(|e| StateError::Serialize {
                        trunk: generated.trunk.clone(),
                        message: e.message,
                    })?;
                    let header = format!(
                        "# Digest credentials generated by `trunkline run` for InboundTrunk {}.\n\
                         # Keep this file secret. Delete it to generate new credentials.\n",
                        generated.trunk
                    );
                    if let Some(dir) = generated.file.parent() {
                        create_private_dir(dir)?;
                    }
                    write_private_file(&generated.file, format!("{header}{text}").as_bytes())?;
                    created.push(generated);
                    secret
                }
            };
            specs.secrets.insert_secret(&secret);
        }
        Ok(created)
    }

    /// The key digest nonces are signed with: generated once into `nonce.key` (0600), then read
    /// back, so that nonces issued before a restart stay valid after it.
    pub fn nonce_key(&self) -> Result<[u8; NONCE_KEY_LEN], StateError> {
        let file = self.path.join(NONCE_KEY_FILE);
        if let Some(text) = read_optional(&file)? {
            let corrupt = |why: String| StateError::CorruptFile { path: file.clone(), why };
            let bytes = BASE64
                .decode(text.trim())
                .map_err(|_| corrupt("it does not hold base64".to_string()))?;
            return <[u8; NONCE_KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                corrupt(format!("it holds {} bytes, not {NONCE_KEY_LEN}", bytes.len()))
            });
        }
        let key: [u8; NONCE_KEY_LEN] = rand::rng().random();
        write_private_file(&file, format!("{}\n", BASE64.encode(key)).as_bytes())?;
        Ok(key)
    }

    /// `credentials/<namespace>/<name>.yaml`, refusing names that would leave the folder (the
    /// loader checks names against RFC 1123, but `Specs` may come from elsewhere).
    fn credentials_file(&self, trunk: &ObjectName) -> Result<PathBuf, StateError> {
        if !is_safe_file_name(&trunk.namespace) || !is_safe_file_name(&trunk.name) {
            return Err(StateError::UnsafeName { trunk: trunk.clone() });
        }
        Ok(self
            .path
            .join(CREDENTIALS_DIR)
            .join(&trunk.namespace)
            .join(format!("{}.yaml", trunk.name)))
    }
}

/// A Kubernetes object name used as a file name: RFC 1123 characters, not starting with a dot.
fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `<trunk-name>-<8 random lowercase letters and digits>`, at most 64 characters: the trunk name
/// is cut if needed. Every character is one `secret::is_token` allows. The operator generates its
/// Secrets with it too, so `run` and a cluster hand out credentials of the same shape.
pub fn generate_username(trunk: &str) -> String {
    let keep = USERNAME_MAX_LEN - USERNAME_SUFFIX_LEN - 1;
    let prefix: String = trunk.chars().take(keep).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let suffix = random_string(USERNAME_SUFFIX_CHARS, USERNAME_SUFFIX_LEN);
    if prefix.is_empty() { format!("trunk-{suffix}") } else { format!("{prefix}-{suffix}") }
}

/// 32 characters of the URL-safe base64 alphabet: 192 bits, and nothing a carrier's portal or a
/// SIP header would mangle. Shared with the operator, as [`generate_username`].
pub fn generate_password() -> Password {
    Password::new(random_string(PASSWORD_CHARS, PASSWORD_LEN))
}

/// `len` characters drawn uniformly from `alphabet` with the thread-local CSPRNG.
fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
}

/// The Secret the operator would create for these credentials.
fn credentials_secret(c: &GeneratedCredentials) -> Secret {
    let data = [
        ("username".to_string(), ByteString(c.username.as_bytes().to_vec())),
        ("password".to_string(), ByteString(c.password.expose().as_bytes().to_vec())),
    ];
    Secret {
        metadata: ObjectMeta {
            name: Some(c.secret.clone()),
            namespace: Some(c.trunk.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.0.to_string(),
                MANAGED_BY_LABEL.1.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                TRUNK_ANNOTATION.to_string(),
                c.trunk.name.clone(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(BASIC_AUTH_TYPE.to_string()),
        data: Some(data.into_iter().collect()),
        ..Secret::default()
    }
}

/// Reads back a credentials file: it must be the Secret written for this trunk, with usable
/// basic-auth credentials. Errors name the field, never a value.
fn read_credentials_secret(
    file: &Path,
    text: &str,
    trunk: &ObjectName,
    secret_name: &str,
) -> Result<Secret, StateError> {
    let corrupt = |why: String| StateError::CorruptFile { path: file.to_path_buf(), why };
    let value: serde_json::Value =
        yaml::from_yaml(text).map_err(|e| corrupt(format!("YAML: {}", e.message)))?;
    let mut secret: Secret = serde_path_to_error::deserialize(&value).map_err(|e| {
        let field = e.path().to_string();
        corrupt(format!("it is not a Kubernetes Secret (field {field})"))
    })?;
    let namespace = secret.metadata.namespace.get_or_insert_with(|| trunk.namespace.clone());
    if *namespace != trunk.namespace || secret.metadata.name.as_deref() != Some(secret_name) {
        return Err(corrupt(format!(
            "it holds Secret {namespace}/{}, expected {}/{secret_name}",
            secret.metadata.name.as_deref().unwrap_or("(no name)"),
            trunk.namespace
        )));
    }
    match SecretEntry::from_secret(&secret) {
        SecretEntry::BasicAuth(_) => Ok(secret),
        SecretEntry::Invalid(why) => Err(corrupt(format!("the Secret {why}"))),
    }
}

/// The text of `file`, `None` if it does not exist.
fn read_optional(file: &Path) -> Result<Option<String>, StateError> {
    match std::fs::read(file) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| StateError::CorruptFile {
            path: file.to_path_buf(),
            why: "it is not UTF-8 text".to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::ReadFile { path: file.to_path_buf(), source }),
    }
}

/// Creates `dir` and its missing parents, 0700 on unix (existing folders are not changed).
fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| StateError::CreateDir { path: dir.to_path_buf(), source })
}

/// Writes `bytes` to `file` atomically, 0600 on unix: a hidden temporary file in the same folder,
/// flushed to disk, renamed over `file`; then the folder is flushed (best effort) so the rename
/// survives a crash.
fn write_private_file(file: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let write_error = |source| StateError::WriteFile { path: file.to_path_buf(), source };
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A temporary file left by a crash is ours: replace it.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, file)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::manifest::{Loaded, load_str};
    use crate::config::secret::BasicAuth;
    use crate::config::{CompileOptions, compile};

    /// A folder under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("trunkline-state-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn trunk(name: &str, digest: &str) -> String {
        format!(
            "apiVersion: trunkline.dev/v1alpha1\nkind: InboundTrunk\n\
             metadata: {{name: {name}, namespace: voice}}\nspec:\n  numbers:\n    \
             - {{number: \"+14155550100\", agent: support}}\n  \
             destination: {{uri: \"sip:agents.example.com:5070\"}}\n  auth:\n    digest: {digest}\n"
        )
    }

    fn specs(text: &str) -> Specs {
        let mut loaded = Loaded::default();
        load_str(Path::new("specs.yaml"), text, &mut loaded);
        assert!(loaded.problems.is_empty() && loaded.refused.is_empty(), "{loaded:#?}");
        loaded.specs
    }

    fn basic_auth(specs: &Specs, name: &str) -> BasicAuth {
        match specs.secrets.get("voice", name) {
            Some(SecretEntry::BasicAuth(auth)) => auth.clone(),
            other => panic!("no usable Secret {name}: {other:?}"),
        }
    }

    #[test]
    fn credentials_are_created_once_and_reused() {
        let dir = TempDir::new("once");
        let state = StateDir::open(&dir.0).unwrap();
        let text = trunk("acme-in", "{}");

        let mut first = specs(&text);
        let created = state.ensure_generated_credentials(&mut first).unwrap();
        assert_eq!(created.len(), 1);
        let c = &created[0];
        assert_eq!(c.trunk, ObjectName::new("voice", "acme-in"));
        assert_eq!(c.secret, "acme-in-trunkline-credentials");
        assert_eq!(c.file, dir.0.join("credentials/voice/acme-in.yaml"));
        assert!(c.username.starts_with("acme-in-") && c.username.len() == "acme-in-".len() + 8);
        assert!(c.username["acme-in-".len()..].bytes().all(|b| USERNAME_SUFFIX_CHARS.contains(&b)));
        assert_eq!(c.password.expose().len(), 32);
        assert!(c.password.expose().bytes().all(|b| PASSWORD_CHARS.contains(&b)));
        assert!(!format!("{c:?}").contains(c.password.expose()));
        let auth = basic_auth(&first, &c.secret);
        assert_eq!((&auth.username, &auth.password), (&c.username, &c.password));

        let mut second = specs(&text);
        assert!(state.ensure_generated_credentials(&mut second).unwrap().is_empty());
        assert_eq!(basic_auth(&second, &c.secret), auth);

        // Compile sees them: the trunk is ready, not pending.
        let compiled = compile(&second, &CompileOptions::default());
        let route = compiled.table.inbound_trunk(&c.trunk).unwrap();
        assert!(matches!(
            &route.digest,
            Some(crate::config::model::InboundDigest::Ready { credentials, .. }) if *credentials == auth
        ));
    }

    #[test]
    fn credentials_survive_a_restart() {
        let dir = TempDir::new("restart");
        let text = trunk("acme-in", "{}");
        let mut before = specs(&text);
        let created =
            StateDir::open(&dir.0).unwrap().ensure_generated_credentials(&mut before).unwrap();
        let mut after = specs(&text);
        let again =
            StateDir::open(&dir.0).unwrap().ensure_generated_credentials(&mut after).unwrap();
        assert!(again.is_empty());
        let auth = basic_auth(&after, &created[0].secret);
        assert_eq!(auth.username, created[0].username);
        assert_eq!(auth.password, created[0].password);
    }

    #[cfg(unix)]
    #[test]
    fn the_folder_is_0700_and_the_files_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("modes");
        let state = StateDir::open(&dir.0).unwrap();
        let created =
            state.ensure_generated_credentials(&mut specs(&trunk("acme-in", "{}"))).unwrap();
        state.nonce_key().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.0), 0o700);
        assert_eq!(mode(&dir.0.join("credentials/voice")), 0o700);
        assert_eq!(mode(&created[0].file), 0o600);
        assert_eq!(mode(&dir.0.join(NONCE_KEY_FILE)), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.0.join("credentials/voice"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["acme-in.yaml"]);
    }

    #[test]
    fn the_file_is_the_secret_the_operator_would_create() {
        let dir = TempDir::new("shape");
        let state = StateDir::open(&dir.0).unwrap();
        let created =
            state.ensure_generated_credentials(&mut specs(&trunk("acme-in", "{}"))).unwrap();
        let text = std::fs::read_to_string(&created[0].file).unwrap();
        // The file loads as a spec like any other Secret.
        let mut loaded = Loaded::default();
        load_str(&created[0].file, &text, &mut loaded);
        assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
        let auth = basic_auth(&loaded.specs, "acme-in-trunkline-credentials");
        assert_eq!(auth.username, created[0].username);
        assert!(text.contains("type: kubernetes.io/basic-auth"), "{text}");
        assert!(!text.contains(created[0].password.expose()), "data is base64: {text}");
    }

    #[test]
    fn a_trunk_with_a_secret_ref_or_no_digest_gets_nothing() {
        let dir = TempDir::new("secretref");
        let state = StateDir::open(&dir.0).unwrap();
        let text = format!(
            "{}---\n{}",
            trunk("with-ref", "{secretRef: {name: with-ref-credentials}}"),
            trunk("by-address", "null\n    allowedAddresses: [\"203.0.113.0/24\"]")
        );
        let mut specs = specs(&text);
        assert_eq!(specs.inbound.len(), 2);
        assert!(state.ensure_generated_credentials(&mut specs).unwrap().is_empty());
        assert!(specs.secrets.is_empty());
        assert!(!dir.0.join(CREDENTIALS_DIR).exists());
    }

    #[test]
    fn a_generated_secret_written_in_the_specs_wins() {
        let dir = TempDir::new("given");
        let state = StateDir::open(&dir.0).unwrap();
        let text = format!(
            "apiVersion: v1\nkind: Secret\n\
             metadata: {{name: acme-in-trunkline-credentials, namespace: voice}}\n\
             type: kubernetes.io/basic-auth\nstringData: {{username: mine, password: given}}\n---\n{}",
            trunk("acme-in", "{}")
        );
        let mut specs = specs(&text);
        assert!(state.ensure_generated_credentials(&mut specs).unwrap().is_empty());
        assert_eq!(basic_auth(&specs, "acme-in-trunkline-credentials").username, "mine");
        assert!(!dir.0.join("credentials/voice/acme-in.yaml").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_is_kept() {
        let dir = TempDir::new("corrupt");
        let state = StateDir::open(&dir.0).unwrap();
        let file = dir.0.join("credentials/voice/acme-in.yaml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        for (text, why) in [
            ("apiVersion: v1\nkind: Secret\nmetadata: [unclosed\n", "YAML: "),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: acme-in-trunkline-credentials}\n\
                 type: kubernetes.io/basic-auth\ndata: {username: YWNtZQ==, password: \"hunter2!\"}\n",
                "not a Kubernetes Secret (field data.password)",
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: other}\n\
                 type: kubernetes.io/basic-auth\nstringData: {username: a, password: b}\n",
                "holds Secret voice/other",
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: acme-in-trunkline-credentials}\n\
                 type: kubernetes.io/basic-auth\nstringData: {username: a}\n",
                "the Secret has no key password",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let error = state
                .ensure_generated_credentials(&mut specs(&trunk("acme-in", "{}")))
                .unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, StateError::CorruptFile { ref path, .. } if *path == file));
            assert!(message.contains(&file.display().to_string()), "{message}");
            assert!(message.contains(why), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
            assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "the file is not replaced");
        }
    }

    #[test]
    fn the_nonce_key_is_generated_once() {
        let dir = TempDir::new("nonce");
        let first = StateDir::open(&dir.0).unwrap().nonce_key().unwrap();
        let second = StateDir::open(&dir.0).unwrap().nonce_key().unwrap();
        assert_eq!(first, second);
        assert_ne!(first, [0; NONCE_KEY_LEN]);

        std::fs::write(dir.0.join(NONCE_KEY_FILE), "c2hvcnQ=\n").unwrap();
        let error = StateDir::open(&dir.0).unwrap().nonce_key().unwrap_err();
        assert!(error.to_string().contains("holds 5 bytes, not 32"), "{error}");
    }

    #[test]
    fn a_long_trunk_name_gives_a_username_of_at_most_64_characters() {
        let name = format!("{}-x", "a".repeat(54));
        let username = generate_username(&name);
        assert!(username.len() <= USERNAME_MAX_LEN, "{username}");
        assert!(username.starts_with(&format!("{}-", "a".repeat(54))), "{username}");
        assert!(!username.contains("--"), "a cut name does not end in '-': {username}");
        let entry = SecretEntry::from_secret(&credentials_secret(&GeneratedCredentials {
            trunk: ObjectName::new("voice", name.clone()),
            secret: generated_credentials_secret_name(&name),
            username,
            password: generate_password(),
            file: PathBuf::new(),
        }));
        assert!(matches!(entry, SecretEntry::BasicAuth(_)), "{entry:?}");
    }

    #[test]
    fn a_name_that_would_leave_the_folder_is_refused() {
        let dir = TempDir::new("unsafe");
        let state = StateDir::open(&dir.0).unwrap();
        let mut specs = specs(&trunk("acme-in", "{}"));
        specs.inbound[0].metadata.namespace = Some("../etc".into());
        assert!(matches!(
            state.ensure_generated_credentials(&mut specs),
            Err(StateError::UnsafeName { .. })
        ));
    }
}
