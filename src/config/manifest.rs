//! Specs from the text of manifests: each text possibly holding several documents, as `kubectl
//! apply -f` reads them. Pure: the folder source (`source::folder`) reads the files and calls
//! [`load_str`] on each; golden tests and `check` call it on a text too.
//!
//! What it gives ([`Loaded`]): the trunkline objects that pass their schema (`config::schema`) and
//! deserialise, in `specs`; the basic-auth Secrets, in `specs.secrets`; a refused [`Verdict`] for
//! each trunkline object that breaks its schema; a [`LoadProblem`] for whatever cannot be pinned
//! on one object (a YAML syntax error, an unknown trunkline kind, a duplicate, an unreadable
//! file); a notice for every other Kubernetes object, which is skipped; and where each object was
//! written ([`Origin`]).
//!
//! Secret values never reach a message: a Secret that does not deserialise is reported by field
//! path only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::diagnostic::{Diagnostic, ObjectKey, Reason, Severity, Verdict};
use super::schema;
use super::specs::{DEFAULT_NAMESPACE, Specs};
use super::yaml::{self, Document};
use crate::api::{self, InboundTrunk, Kind, OutboundTrunk, TransferDestination};

/// Everything read from a set of files.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The objects that passed their schema, and the Secrets.
    pub specs: Specs,
    /// One refused verdict per trunkline object that breaks its schema or does not deserialise.
    pub refused: Vec<Verdict>,
    /// Problems no single loaded object carries.
    pub problems: Vec<LoadProblem>,
    /// Objects skipped because they are not trunkline resources, one line each.
    pub notices: Vec<String>,
    /// Where each trunkline object was written (the first, if it was written twice).
    pub origins: BTreeMap<ObjectKey, Origin>,
    /// Where each Secret was written, by namespace and name.
    pub secret_origins: BTreeMap<(String, String), Origin>,
    /// How many files were read.
    pub files: usize,
}

/// A file and the 1-based line where a document starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A problem with a file or a document that is not one loaded object's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadProblem {
    pub file: PathBuf,
    /// 1-based line, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The object the problem is about, where it can be named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectKey>,
    /// JSON path of the field, empty for the whole document or file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// `InvalidSpec`, or `DuplicateObject` for an object written twice.
    pub reason: Reason,
    pub message: String,
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl LoadProblem {
    /// A problem with no object: a file, a document or a YAML syntax error.
    pub fn invalid(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        LoadProblem {
            file: file.to_path_buf(),
            line,
            object: None,
            field: String::new(),
            reason: Reason::InvalidSpec,
            message: message.into(),
        }
    }
}

/// Loads the documents of `text`, read from `file` (used to name origins and problems).
pub fn load_str(file: &Path, text: &str, into: &mut Loaded) {
    into.add(&parse_str(file, text));
}

/// What one text holds, each document read and checked on its own, before the texts are put
/// together ([`Loaded::add`] decides duplicates, in the order the texts are added). The folder
/// source keeps one per file and parses again only the files that changed.
#[derive(Clone, Debug)]
pub struct Parsed {
    file: PathBuf,
    entries: Vec<Entry>,
}

/// One thing a document gave, in document order.
#[derive(Clone, Debug)]
enum Entry {
    Problem(LoadProblem),
    Notice(String),
    /// A trunkline object with a name: loaded, or refused by its schema or its type.
    Object {
        key: ObjectKey,
        line: usize,
        outcome: Result<Object, Verdict>,
    },
    /// A Secret that deserialised, with a name, its namespace set.
    Secret {
        line: usize,
        secret: Box<Secret>,
    },
}

#[derive(Clone, Debug)]
enum Object {
    Inbound(Box<InboundTrunk>),
    Outbound(Box<OutboundTrunk>),
    Transfer(Box<TransferDestination>),
}

/// Reads the documents of `text`, read from `file`, each on its own.
pub fn parse_str(file: &Path, text: &str) -> Parsed {
    let mut parsed = Parsed { file: file.to_path_buf(), entries: Vec::new() };
    for Document { start_line, value } in yaml::documents(text) {
        match value {
            Ok(value) => parse_document(file, start_line, value, &mut parsed.entries),
            Err(e) => parsed.entries.push(Entry::Problem(LoadProblem::invalid(
                file,
                e.line.or(Some(start_line)),
                format!("YAML: {}", e.message),
            ))),
        }
    }
    parsed
}

impl Loaded {
    /// Adds what one text holds: an object or a Secret already loaded from an earlier text (or
    /// earlier in this one) is a `DuplicateObject` problem, and the first one is kept.
    pub fn add(&mut self, parsed: &Parsed) {
        self.files += 1;
        let file = &parsed.file;
        for entry in &parsed.entries {
            match entry {
                Entry::Problem(p) => self.problems.push(p.clone()),
                Entry::Notice(n) => self.notices.push(n.clone()),
                Entry::Object { key, line, outcome } => {
                    if let Some(first) = self.origins.get(key) {
                        self.problems.push(LoadProblem {
                            object: Some(key.clone()),
                            reason: Reason::DuplicateObject,
                            ..LoadProblem::invalid(
                                file,
                                Some(*line),
                                format!(
                                    "{key} is written twice, at {first} and here: the first one is kept"
                                ),
                            )
                        });
                        continue;
                    }
                    self.origins.insert(key.clone(), Origin { file: file.clone(), line: *line });
                    match outcome {
                        Ok(Object::Inbound(o)) => self.specs.inbound.push((**o).clone()),
                        Ok(Object::Outbound(o)) => self.specs.outbound.push((**o).clone()),
                        Ok(Object::Transfer(o)) => self.specs.transfers.push((**o).clone()),
                        Err(verdict) => self.refused.push(verdict.clone()),
                    }
                }
                Entry::Secret { line, secret } => {
                    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
                    let name = secret.metadata.name.clone().unwrap_or_default();
                    let id = (namespace.clone(), name.clone());
                    if let Some(first) = self.secret_origins.get(&id) {
                        self.problems.push(LoadProblem {
                            reason: Reason::DuplicateObject,
                            ..LoadProblem::invalid(
                                file,
                                Some(*line),
                                format!(
                                    "Secret {namespace}/{name} is written twice, at {first} and here: the first one is kept"
                                ),
                            )
                        });
                        continue;
                    }
                    self.secret_origins.insert(id, Origin { file: file.clone(), line: *line });
                    self.specs.secrets.insert_secret(secret);
                }
            }
        }
    }
}

fn parse_document(file: &Path, line: usize, mut value: Value, into: &mut Vec<Entry>) {
    let problem = |message: String| LoadProblem::invalid(file, Some(line), message);
    let Some(map) = value.as_object() else {
        let found = match &value {
            Value::Array(_) => "a list",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "something else",
        };
        into.push(Entry::Problem(problem(format!(
            "the document is {found}, not a Kubernetes object"
        ))));
        return;
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind_name = match map.get("kind") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
        _ => {
            into.push(Entry::Problem(problem("the document has no kind".to_string())));
            return;
        }
    };
    let name = value.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string);
    let kind = Kind::from_name(&kind_name);
    let group = api_version.split('/').next().unwrap_or_default();

    if api_version == api::API_VERSION
        && let Some(kind) = kind
    {
        parse_trunkline_object(file, line, kind, value, into);
    } else if api_version.is_empty() {
        let expected = match kind {
            Some(_) => format!(": {kind_name} is {}", api::API_VERSION),
            None => String::new(),
        };
        into.push(Entry::Problem(problem(format!("the document has no apiVersion{expected}"))));
    } else if group == api::GROUP {
        let message = match kind {
            Some(kind) => {
                format!("apiVersion {api_version} is not served: {kind} is {}", api::API_VERSION)
            }
            None => format!(
                "unknown kind \"{kind_name}\" in {api_version}: trunkline defines {}",
                Kind::ALL.map(Kind::as_str).join(", ")
            ),
        };
        let mut problem = problem(message);
        problem.object = kind.zip(name).map(|(kind, name)| {
            let namespace = namespace_of(&value);
            ObjectKey::new(kind, namespace, name)
        });
        into.push(Entry::Problem(problem));
    } else if api_version == "v1" && kind_name == "Secret" {
        parse_secret(file, line, &mut value, into);
    } else if api_version == "v1" && kind_name == "List" {
        // `kubectl get -o yaml` writes several objects as one List.
        if let Some(Value::Array(items)) = value.get_mut("items").map(Value::take) {
            for item in items {
                parse_document(file, line, item, into);
            }
        }
    } else {
        into.push(Entry::Notice(format!(
            "{}:{line}: skipped {api_version} {kind_name} {}: not a trunkline resource",
            file.display(),
            name.as_deref().unwrap_or("(no name)"),
        )));
    }
}

fn namespace_of(value: &Value) -> String {
    value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string()
}

fn parse_trunkline_object(
    file: &Path,
    line: usize,
    kind: Kind,
    mut value: Value,
    into: &mut Vec<Entry>,
) {
    let Some(name) = value.pointer("/metadata/name").and_then(Value::as_str) else {
        into.push(Entry::Problem(LoadProblem {
            field: "metadata.name".into(),
            ..LoadProblem::invalid(file, Some(line), format!("this {kind} has no metadata.name"))
        }));
        return;
    };
    let key = ObjectKey::new(kind, namespace_of(&value), name);
    let generation = value.pointer("/metadata/generation").and_then(Value::as_i64);

    schema::normalize(&mut value);
    let violations = schema::validate(kind, &value);
    let outcome = if violations.is_empty() {
        let namespace = Some(key.namespace.clone());
        let object = match kind {
            Kind::InboundTrunk => typed::<InboundTrunk>(&value).map(|mut o| {
                o.metadata.namespace = namespace;
                Object::Inbound(Box::new(o))
            }),
            Kind::OutboundTrunk => typed::<OutboundTrunk>(&value).map(|mut o| {
                o.metadata.namespace = namespace;
                Object::Outbound(Box::new(o))
            }),
            Kind::TransferDestination => typed::<TransferDestination>(&value).map(|mut o| {
                o.metadata.namespace = namespace;
                Object::Transfer(Box::new(o))
            }),
        };
        object.map_err(|(field, message)| {
            Verdict::refused_invalid_spec(key.clone(), generation, field, message)
        })
    } else {
        let diagnostics = violations
            .into_iter()
            .map(|v| Diagnostic {
                object: key.clone(),
                field: v.field,
                severity: Severity::Fatal,
                reason: v.reason,
                message: v.message,
            })
            .collect();
        Err(Verdict::refused_by_schema(key.clone(), generation, diagnostics))
    };
    into.push(Entry::Object { key, line, outcome });
}

/// Deserialises a trunkline object; on failure, the field path (empty for the whole object)
/// and the error. The API-server source (`source::kube`) deserialises its objects with it too.
pub fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        (field, e.into_inner().to_string())
    })
}

fn parse_secret(file: &Path, line: usize, value: &mut Value, into: &mut Vec<Entry>) {
    schema::normalize(value);
    let namespace = namespace_of(value);
    let label = match value.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) => format!("Secret {namespace}/{name}"),
        None => "a Secret".to_string(),
    };
    let mut secret: Secret = match serde_path_to_error::deserialize(&*value) {
        Ok(secret) => secret,
        Err(e) => {
            // The serde message may quote the value: say only which field is wrong.
            let field = e.path().to_string();
            let why = if field.starts_with("data.") {
                "is not valid base64"
            } else if field.starts_with("stringData.") {
                "must be a string"
            } else {
                "has the wrong type"
            };
            into.push(Entry::Problem(LoadProblem {
                field: field.clone(),
                ..LoadProblem::invalid(file, Some(line), format!("{label}: {field} {why}"))
            }));
            return;
        }
    };
    if secret.metadata.name.is_none() {
        into.push(Entry::Problem(LoadProblem {
            field: "metadata.name".into(),
            ..LoadProblem::invalid(file, Some(line), "this Secret has no metadata.name")
        }));
        return;
    }
    secret.metadata.namespace = Some(namespace);
    into.push(Entry::Secret { line, secret: Box::new(secret) });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::State;
    use crate::config::secret::SecretEntry;

    fn load(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_str(Path::new("specs.yaml"), text, &mut loaded);
        loaded
    }

    /// An InboundTrunk with digest credentials from a named Secret (the folder source's tests
    /// use it too).
    pub(crate) const TRUNK: &str = "\
apiVersion: trunkline.dev/v1alpha1
kind: InboundTrunk
metadata: {name: acme-in, namespace: voice}
spec:
  numbers:
    - {number: \"+14155550100\", agent: support}
  destination: {uri: \"sip:agents.voice.svc.cluster.local:5070\"}
  auth:
    digest: {secretRef: {name: acme-in-credentials}}
";

    #[test]
    fn a_multi_document_file_gives_a_secret_and_a_trunk() {
        let text = format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: acme-in-credentials, namespace: voice}}\n\
             type: kubernetes.io/basic-auth\nstringData: {{username: acme, password: s3cret}}\n---\n{TRUNK}"
        );
        let loaded = load(&text);
        assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
        assert!(loaded.refused.is_empty(), "{:#?}", loaded.refused);
        assert_eq!(loaded.specs.inbound.len(), 1);
        let Some(SecretEntry::BasicAuth(auth)) =
            loaded.specs.secrets.get("voice", "acme-in-credentials")
        else {
            panic!("secret not loaded: {:?}", loaded.specs.secrets);
        };
        assert_eq!((auth.username.as_str(), auth.password.expose()), ("acme", "s3cret"));
        let key = ObjectKey::new(Kind::InboundTrunk, "voice", "acme-in");
        assert_eq!(loaded.origins[&key], Origin { file: "specs.yaml".into(), line: 8 });
        assert_eq!(loaded.files, 1);
    }

    #[test]
    fn a_secret_with_base64_data_is_decoded() {
        // "acme" and "s3cret"
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\n\
                    type: kubernetes.io/basic-auth\ndata: {username: YWNtZQ==, password: czNjcmV0}\n";
        let loaded = load(text);
        assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
        let Some(SecretEntry::BasicAuth(auth)) =
            loaded.specs.secrets.get(DEFAULT_NAMESPACE, "creds")
        else {
            panic!("secret not loaded");
        };
        assert_eq!((auth.username.as_str(), auth.password.expose()), ("acme", "s3cret"));
    }

    #[test]
    fn a_bad_secret_is_reported_without_its_values() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\n\
                    type: kubernetes.io/basic-auth\ndata: {username: YWNtZQ==, password: \"hunter2!!\"}\n";
        let loaded = load(text);
        assert_eq!(loaded.problems.len(), 1);
        let problem = &loaded.problems[0];
        assert_eq!(problem.field, "data.password");
        assert!(!format!("{problem:?}").contains("hunter2"), "{problem:?}");
        assert_eq!(problem.message, "Secret default/creds: data.password is not valid base64");
    }

    #[test]
    fn yaml_error_in_third_document_names_its_line() {
        let text = format!(
            "{TRUNK}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\ndata: [x, y\nmetadata: {{name: b}}\n"
        );
        let loaded = load(&text);
        assert_eq!(loaded.problems.len(), 1, "{:#?}", loaded.problems);
        let problem = &loaded.problems[0];
        // The flow sequence opened on line 17 meets `metadata:` on line 18.
        assert_eq!(problem.line, Some(18), "{problem}");
        assert!(problem.message.contains("at line 18 column "), "{problem}");
        assert!(problem.message.starts_with("YAML: "), "{problem}");
        assert_eq!(loaded.specs.inbound.len(), 1);
    }

    #[test]
    fn an_unknown_kind_is_skipped_with_a_notice() {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n---\n{TRUNK}---\n\
             apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [a.yaml]\n"
        );
        let loaded = load(&text);
        assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
        assert_eq!(
            loaded.notices,
            [
                "specs.yaml:1: skipped apps/v1 Deployment web: not a trunkline resource",
                "specs.yaml:15: skipped kustomize.config.k8s.io/v1beta1 Kustomization (no name): \
                 not a trunkline resource",
            ]
        );
        assert_eq!(loaded.specs.inbound.len(), 1);
    }

    #[test]
    fn an_unknown_trunkline_kind_or_version_is_a_problem() {
        let text = "apiVersion: trunkline.dev/v1alpha1\nkind: Trunk\nmetadata: {name: a}\n---\n\
                    apiVersion: trunkline.dev/v1\nkind: InboundTrunk\nmetadata: {name: b}\n---\n\
                    kind: InboundTrunk\nmetadata: {name: c}\n---\n\
                    apiVersion: v1\nmetadata: {name: d}\n---\n[1, 2]\n";
        let loaded = load(text);
        let lines: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "specs.yaml:1: unknown kind \"Trunk\" in trunkline.dev/v1alpha1: trunkline defines \
                 InboundTrunk, OutboundTrunk, TransferDestination",
                "specs.yaml:5: apiVersion trunkline.dev/v1 is not served: InboundTrunk is \
                 trunkline.dev/v1alpha1",
                "specs.yaml:9: the document has no apiVersion: InboundTrunk is trunkline.dev/v1alpha1",
                "specs.yaml:12: the document has no kind",
                "specs.yaml:15: the document is a list, not a Kubernetes object",
            ]
        );
        assert_eq!(
            loaded.problems[1].object,
            Some(ObjectKey::new(Kind::InboundTrunk, DEFAULT_NAMESPACE, "b"))
        );
    }

    #[test]
    fn a_schema_violation_refuses_the_object_with_its_field() {
        let text = TRUNK.replace("+14155550100", "+1415555OIOO");
        let loaded = load(&text);
        assert!(loaded.specs.inbound.is_empty());
        assert_eq!(loaded.refused.len(), 1);
        let verdict = &loaded.refused[0];
        assert_eq!(verdict.state, State::Refused);
        assert_eq!(verdict.diagnostics[0].field, "spec.numbers[0].number");
        assert_eq!(verdict.diagnostics[0].severity, Severity::Fatal);
    }

    #[test]
    fn typed_deserialize_errors_name_the_field_path() {
        // The schema has no limit on this (`u32` is checked only by serde).
        let value: Value = serde_json::json!({
            "apiVersion": "trunkline.dev/v1alpha1", "kind": "InboundTrunk",
            "metadata": {"name": "x"},
            "spec": {"numbers": [{"number": 14155550100_u64, "agent": "a"}]},
        });
        let error = typed::<InboundTrunk>(&value).unwrap_err();
        assert_eq!(error.0, "spec.numbers[0].number");
        assert!(error.1.contains("expected a string"), "{error:?}");
    }

    #[test]
    fn a_list_of_objects_is_unwrapped() {
        let item = TRUNK.replace('\n', "\n    ");
        let text = format!("apiVersion: v1\nkind: List\nitems:\n  - {item}");
        let loaded = load(&text);
        assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
        assert_eq!(loaded.specs.inbound.len(), 1);
    }
}
