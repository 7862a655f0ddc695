//! Validates one raw object (a `serde_json::Value` as read from YAML) against the CRD schema of its
//! kind, the schema the code generates (`Kind::crd()`), so that `trunkline check` refuses what
//! `kubectl apply` would refuse. It gives a list of [`SchemaViolation`]s (field path, message,
//! reason); empty means the object is valid. The folder source (`source::folder`) calls
//! [`validate`] before it deserialises an object into its typed struct.
//!
//! Three layers, each as the API server does it:
//! 1. Structure, with the `jsonschema` crate on a copy of the schema where every object under
//!    `spec` (and the top level) has `additionalProperties: false`: the generated schema does not
//!    say so, but the API server with strict field validation (kubectl's default) refuses unknown
//!    fields, and a typo such as `agentheader` must not pass silently. `null` values are pruned
//!    first and `status` dropped, as the API server does on create. `metadata.name` and
//!    `metadata.namespace` are checked here too (RFC 1123).
//! 2. List semantics: `x-kubernetes-list-type: set` items and `map` keys
//!    (`x-kubernetes-list-map-keys`) must be unique. Always run.
//! 3. CEL (`x-kubernetes-validations`) with kube's `cel` feature (kube-cel), only when the
//!    structure is right: rules over wrongly typed data give confusing messages. Each failed rule
//!    is mapped back to its reason through `api::rules`.
//!
//! Every schema is compiled once per kind: the jsonschema validator, and the CEL rules of each
//! subtree that holds any (`spec.auth` of an InboundTrunk, the whole `spec` of
//! an OutboundTrunk (its `host`-or-`hosts` rule) and of a TransferDestination), so that CEL converts only those
//! parts of an object and never walks the numbers of a trunk: CEL over the whole schema costs
//! several times more per object, and uncompiled (`Validator::validate`) more again (figures in
//! docs/benchmarks.md, "`trunkline check` at scale").
//!
//! How kube-cel reports fields: `ValidationError::field_path` is the path of the schema node that
//! carries the rule, dot-joined with `[i]` for list items and no leading dot (`spec.auth`,
//! `spec.sip.auth.digest`, `spec` for a rule on the spec itself, empty for the root), with the
//! rule's own `fieldPath` appended when it has one. A rule on a list (`allowedAddresses`) reports
//! the list, not the item: for the address rule this module finds the bad items itself.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::{Location, LocationSegment};
use kube::core::cel::CompiledSchema;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{Kind, rules};
use crate::config::Reason;

/// One way an object breaks its kind's schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SchemaViolation {
    /// JSON path of the field, `spec.numbers[1].number`; empty for the whole object.
    pub field: String,
    /// A sentence a person understands, naming the value where that helps.
    pub message: String,
    /// `InvalidSpec`, or the reason a named CEL rule gives (`OpenTrunk`, `InvalidHost`, ...).
    pub reason: Reason,
}

impl SchemaViolation {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SchemaViolation {
            field: field.into(),
            message: message.into(),
            reason: Reason::InvalidSpec,
        }
    }
}

/// Checks `object` (a whole manifest: `apiVersion`, `kind`, `metadata`, `spec`) against the
/// schema of `kind`. `null` fields and `status` are ignored, as the API server ignores them on
/// create; [`normalize`] removes them in place for a caller that owns the value.
pub fn validate(kind: Kind, object: &Value) -> Vec<SchemaViolation> {
    let normalized;
    let object = if needs_normalizing(object) {
        let mut copy = object.clone();
        normalize(&mut copy);
        normalized = copy;
        &normalized
    } else {
        object
    };
    let compiled = compiled(kind);
    let mut out = Vec::new();
    validate_metadata(object, &mut out);
    let before = out.len();
    validate_structure(compiled, object, &mut out);
    let structure_ok = out.len() == before;
    validate_lists(&compiled.schema, object, &mut String::new(), &mut out);
    if structure_ok {
        validate_cel(compiled, object, &mut out);
    }
    out
}

/// What the API server does to an object before validating it: drops `status` (only the status
/// subresource writes it) and removes every `null` field of every mapping.
pub fn normalize(object: &mut Value) {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    prune_nulls(object);
}

fn prune_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(prune_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

fn needs_normalizing(object: &Value) -> bool {
    fn has_null_field(value: &Value) -> bool {
        match value {
            Value::Object(map) => map.values().any(|v| v.is_null() || has_null_field(v)),
            Value::Array(items) => items.iter().any(has_null_field),
            _ => false,
        }
    }
    object.get("status").is_some() || has_null_field(object)
}

// ---- compiled schemas --------------------------------------------------------------------------

/// A kind's schema, compiled once.
struct CompiledKind {
    /// `openAPIV3Schema` as generated, walked for list semantics.
    schema: Value,
    /// The strict copy (unknown fields refused), compiled for the structural layer.
    structure: jsonschema::Validator,
    /// The CEL rules of the schema, compiled, by the subtree that holds them.
    cel: Vec<CelRoot>,
}

/// A subtree of the schema that holds CEL rules, compiled on its own so that validation converts
/// only that part of an object to CEL values (not, say, every number of a trunk).
struct CelRoot {
    /// Property names from the top of the object to the subtree.
    path: Vec<String>,
    /// The same, as a field path: `spec.auth`.
    field: String,
    compiled: CompiledSchema,
}

static INBOUND: LazyLock<CompiledKind> = LazyLock::new(|| compile(Kind::InboundTrunk));
static OUTBOUND: LazyLock<CompiledKind> = LazyLock::new(|| compile(Kind::OutboundTrunk));
static TRANSFER: LazyLock<CompiledKind> = LazyLock::new(|| compile(Kind::TransferDestination));

fn compiled(kind: Kind) -> &'static CompiledKind {
    match kind {
        Kind::InboundTrunk => &INBOUND,
        Kind::OutboundTrunk => &OUTBOUND,
        Kind::TransferDestination => &TRANSFER,
    }
}

/// The `openAPIV3Schema` of a kind's (only) version, as JSON.
pub fn openapi_schema(kind: Kind) -> Value {
    let crd = kind.crd();
    let schema = crd.spec.versions.first().and_then(|v| v.schema.as_ref()).and_then(|s| {
        s.open_api_v3_schema.as_ref().map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
    });
    schema.expect("every generated CRD version has an openAPIV3Schema")
}

fn compile(kind: Kind) -> CompiledKind {
    let schema = openapi_schema(kind);
    let strict = strict_copy(&schema);
    let structure = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(false)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&strict)
        .expect("the generated CRD schema is a valid JSON schema (tested in this module)");
    // Only the subtrees with rules matter to CEL: each is compiled on its own, the rest of the
    // schema is left out.
    let mut cel_schema = schema.clone();
    keep_cel_relevant(&mut cel_schema);
    let mut cel = Vec::new();
    cel_roots(&cel_schema, &mut Vec::new(), &mut cel);
    CompiledKind { schema, structure, cel }
}

/// The schema with unknown fields refused: `additionalProperties: false` on the top level (which
/// also lists `apiVersion`, `kind` and `metadata`) and on every object schema with `properties`
/// under `spec`. `status` is left out: it is dropped before validation.
fn strict_copy(schema: &Value) -> Value {
    let mut strict = schema.clone();
    if let Some(root) = strict.as_object_mut() {
        if let Some(Value::Object(properties)) = root.get_mut("properties") {
            properties.remove("status");
            properties.insert("apiVersion".into(), json!({"type": "string"}));
            properties.insert("kind".into(), json!({"type": "string"}));
            // Checked by `validate_metadata`, which names the fields.
            properties.insert("metadata".into(), json!({}));
            if let Some(spec) = properties.get_mut("spec") {
                refuse_unknown_fields(spec);
            }
        }
        root.insert("additionalProperties".into(), Value::Bool(false));
    }
    strict
}

fn refuse_unknown_fields(schema: &mut Value) {
    let Some(node) = schema.as_object_mut() else { return };
    let preserve =
        node.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    if node.contains_key("properties") && !node.contains_key("additionalProperties") && !preserve {
        node.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        properties.values_mut().for_each(refuse_unknown_fields);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = node.get_mut(key) {
            refuse_unknown_fields(child);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = node.get_mut(key) {
            branches.iter_mut().for_each(refuse_unknown_fields);
        }
    }
}

/// Removes the properties and items whose subtree has no CEL rule; returns whether `schema` has
/// one. A node with rules keeps its whole subtree: its rules may read any field below it.
fn keep_cel_relevant(schema: &mut Value) -> bool {
    let Some(node) = schema.as_object_mut() else { return false };
    if ["x-kubernetes-validations", "allOf", "anyOf", "oneOf"].iter().any(|k| node.contains_key(*k))
    {
        return true;
    }
    let mut relevant = false;
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        properties.retain(|_, child| keep_cel_relevant(child));
        relevant |= !properties.is_empty();
    }
    for key in ["items", "additionalProperties"] {
        match node.get_mut(key) {
            Some(child) if child.is_object() => {
                if keep_cel_relevant(child) {
                    relevant = true;
                } else {
                    node.remove(key);
                }
            }
            _ => {}
        }
    }
    relevant
}

/// Finds, in a schema pruned by [`keep_cel_relevant`], the highest nodes that hold rules or a list
/// or map of items that do, and compiles each.
fn cel_roots(schema: &Value, path: &mut Vec<String>, out: &mut Vec<CelRoot>) {
    let Some(node) = schema.as_object() else { return };
    let properties = node.get("properties").and_then(Value::as_object);
    let is_root = ["x-kubernetes-validations", "allOf", "anyOf", "oneOf", "items"]
        .iter()
        .any(|k| node.contains_key(*k))
        || node.get("additionalProperties").is_some_and(Value::is_object);
    if is_root {
        out.push(CelRoot {
            path: path.clone(),
            field: path.join("."),
            compiled: kube::core::cel::compile_schema(schema),
        });
        return;
    }
    for (name, child) in properties.into_iter().flatten() {
        path.push(name.clone());
        cel_roots(child, path, out);
        path.pop();
    }
}

// ---- layer 1: structure ------------------------------------------------------------------------

fn validate_structure(compiled: &CompiledKind, object: &Value, out: &mut Vec<SchemaViolation>) {
    for error in compiled.structure.iter_errors(object) {
        let field = field_of(error.instance_path());
        let value = error.instance();
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    out.push(SchemaViolation::invalid(
                        join(&field, name),
                        format!("unknown field \"{name}\""),
                    ));
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().map_or_else(|| property.to_string(), str::to_string);
                out.push(SchemaViolation::invalid(
                    join(&field, &name),
                    format!("missing required field \"{name}\""),
                ));
            }
            kind => {
                let message = describe(kind, value).unwrap_or_else(|| error.to_string());
                out.push(SchemaViolation::invalid(field, message));
            }
        }
    }
}

/// A readable sentence for one structural error about `value`; `None` for the kinds the generated
/// schemas do not use (the library's own message is used then).
fn describe(kind: &ValidationErrorKind, value: &Value) -> Option<String> {
    Some(match kind {
        ValidationErrorKind::Pattern { pattern } => match pattern_meaning(pattern) {
            Some(meaning) => format!("{} is not {meaning}", preview(value)),
            None => format!("{} does not match the pattern {pattern}", preview(value)),
        },
        ValidationErrorKind::Enum { options } => {
            let allowed = match options.as_array() {
                Some(options) => options.iter().map(preview).collect::<Vec<_>>().join(", "),
                None => options.to_string(),
            };
            format!("unsupported value {}: expected one of {allowed}", preview(value))
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => with_article(t.as_str()),
                TypeKind::Multiple(set) => format!("one of {set:?}"),
            };
            format!(
                "must be {expected}, not {}: {}",
                with_article(type_name(value)),
                preview(value)
            )
        }
        ValidationErrorKind::Minimum { limit } => {
            format!("{} is less than the minimum {}", preview(value), number(limit))
        }
        ValidationErrorKind::Maximum { limit } => {
            format!("{} is greater than the maximum {}", preview(value), number(limit))
        }
        ValidationErrorKind::MinLength { limit } => {
            format!("{} is shorter than {limit} character(s)", preview(value))
        }
        ValidationErrorKind::MaxLength { limit } => {
            let length = value.as_str().map_or(0, |s| s.chars().count());
            format!("is {length} characters long, more than the {limit} allowed")
        }
        ValidationErrorKind::MinItems { limit } => format!("must have at least {limit} item(s)"),
        ValidationErrorKind::MaxItems { limit } => {
            let length = value.as_array().map_or(0, Vec::len);
            format!("has {length} items, more than the {limit} allowed")
        }
        _ => return None,
    })
}

/// What a pattern of `api::rules` means, in words.
fn pattern_meaning(pattern: &str) -> Option<&'static str> {
    Some(match pattern {
        rules::E164_PATTERN => "an E.164 number (+ and 8 to 15 digits)",
        rules::CALLER_PATTERN => {
            "an E.164 number (+ and 8 to 15 digits) or a prefix ending in * such as +1415*"
        }
        rules::AGENT_ID_PATTERN => {
            "an agent id (letters, digits, '.', '_' and '-', starting with a letter or digit, at \
             most 63)"
        }
        rules::DNS_SUBDOMAIN_PATTERN => {
            "a Kubernetes name (lower-case letters, digits, '-' and '.', starting and ending with a \
             letter or digit)"
        }
        rules::REGION_PATTERN => {
            "a region name (lower-case letters, digits and '-', starting and ending with a letter \
             or digit, at most 63)"
        }
        rules::SIP_URI_PATTERN => "a sip: or sips: URI without white space",
        _ => return None,
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}

fn with_article(name: &str) -> String {
    let name = match name {
        "array" => "list",
        "object" => "mapping",
        other => other,
    };
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {name}")
}

/// A schema limit (`65535.0`) written as a person would (`65535`).
fn number(limit: &Value) -> String {
    match limit.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        _ => limit.to_string(),
    }
}

/// A value as JSON, cut short when long.
fn preview(value: &Value) -> String {
    const MAX: usize = 60;
    let text = value.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let cut: String = text.chars().take(MAX).collect();
    format!("{cut}…")
}

/// `/spec/numbers/1/number` as `spec.numbers[1].number`.
fn field_of(location: &Location) -> String {
    let mut field = String::new();
    for segment in location.iter() {
        match segment {
            LocationSegment::Property(name) => push_name(&mut field, &name),
            LocationSegment::Index(i) => push_index(&mut field, i),
        }
    }
    field
}

fn push_name(field: &mut String, name: &str) {
    if !field.is_empty() {
        field.push('.');
    }
    field.push_str(name);
}

fn push_index(field: &mut String, index: usize) {
    use std::fmt::Write;
    let _ = write!(field, "[{index}]");
}

fn join(field: &str, name: &str) -> String {
    let mut joined = field.to_string();
    push_name(&mut joined, name);
    joined
}

// ---- metadata ----------------------------------------------------------------------------------

fn validate_metadata(object: &Value, out: &mut Vec<SchemaViolation>) {
    let metadata = match object.get("metadata") {
        None => {
            out.push(SchemaViolation::invalid("metadata.name", "missing required field \"name\""));
            return;
        }
        Some(Value::Object(metadata)) => metadata,
        Some(other) => {
            out.push(SchemaViolation::invalid(
                "metadata",
                format!("must be a mapping, not {}", with_article(type_name(other))),
            ));
            return;
        }
    };
    match metadata.get("name") {
        None => {
            out.push(SchemaViolation::invalid("metadata.name", "missing required field \"name\""))
        }
        Some(Value::String(name)) => {
            if let Err(why) = check_dns_subdomain(name) {
                out.push(SchemaViolation::invalid(
                    "metadata.name",
                    format!("{} is not a valid name: {why}", preview(&Value::String(name.clone()))),
                ));
            }
        }
        Some(other) => out.push(SchemaViolation::invalid(
            "metadata.name",
            format!("must be a string, not {}", with_article(type_name(other))),
        )),
    }
    match metadata.get("namespace") {
        None => {}
        Some(Value::String(namespace)) => {
            if let Err(why) = check_dns_label(namespace) {
                out.push(SchemaViolation::invalid(
                    "metadata.namespace",
                    format!(
                        "{} is not a valid namespace: {why}",
                        preview(&Value::String(namespace.clone()))
                    ),
                ));
            }
        }
        Some(other) => out.push(SchemaViolation::invalid(
            "metadata.namespace",
            format!("must be a string, not {}", with_article(type_name(other))),
        )),
    }
}

/// RFC 1123 subdomain, as Kubernetes object names are: at most 253 characters, dot-separated
/// labels of lower-case letters, digits and `-`, each starting and ending with a letter or digit.
pub fn check_dns_subdomain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > 253 {
        return Err("must be at most 253 characters");
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character")
    }
}

/// RFC 1123 label, as namespaces are: at most 63 lower-case letters, digits and `-`, starting and
/// ending with a letter or digit.
pub fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > 63 {
        return Err("must be at most 63 characters");
    }
    let ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character")
    }
}

// ---- layer 2: list semantics -------------------------------------------------------------------

/// Walks schema and value together; at every list with `x-kubernetes-list-type` `set` or `map`,
/// reports items (or map keys) seen before. `field` is the path so far, restored on return.
fn validate_lists(
    schema: &Value,
    value: &Value,
    field: &mut String,
    out: &mut Vec<SchemaViolation>,
) {
    match value {
        Value::Object(map) => {
            let Some(Value::Object(properties)) = schema.get("properties") else { return };
            for (name, child) in map {
                if field.is_empty() && name == "status" {
                    continue;
                }
                if let Some(child_schema) = properties.get(name) {
                    let len = field.len();
                    push_name(field, name);
                    validate_lists(child_schema, child, field, out);
                    field.truncate(len);
                }
            }
        }
        Value::Array(items) => {
            match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => unique_items(items, field, out),
                Some("map") => {
                    let keys: Vec<&str> = schema
                        .get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    unique_keys(items, &keys, field, out);
                }
                _ => {}
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    let len = field.len();
                    push_index(field, i);
                    validate_lists(item_schema, item, field, out);
                    field.truncate(len);
                }
            }
        }
        _ => {}
    }
}

/// A value as a hashable key: strings as they are, anything else as JSON.
fn key_text(value: &Value) -> std::borrow::Cow<'_, str> {
    match value {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

fn unique_items(items: &[Value], field: &str, out: &mut Vec<SchemaViolation>) {
    let mut seen: HashMap<(bool, std::borrow::Cow<'_, str>), usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        match seen.entry((item.is_string(), key_text(item))) {
            Entry::Occupied(first) => out.push(SchemaViolation::invalid(
                format!("{field}[{i}]"),
                format!("duplicate value {} (also at {field}[{}])", preview(item), first.get()),
            )),
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
    }
}

fn unique_keys(items: &[Value], keys: &[&str], field: &str, out: &mut Vec<SchemaViolation>) {
    if keys.is_empty() {
        return;
    }
    let mut seen: HashMap<Vec<(bool, std::borrow::Cow<'_, str>)>, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        // An item without its keys is a structural error, reported by layer 1.
        let Some(values) = keys.iter().map(|k| item.get(*k)).collect::<Option<Vec<&Value>>>()
        else {
            continue;
        };
        let tuple: Vec<_> = values.iter().map(|v| (v.is_string(), key_text(v))).collect();
        match seen.get(&tuple) {
            Some(&first) => {
                let what = match (keys, values.as_slice()) {
                    ([key], [value]) => format!("{key} {}", preview(value)),
                    _ => {
                        let pairs: Vec<String> = keys
                            .iter()
                            .zip(&values)
                            .map(|(k, v)| format!("{k}={}", preview(v)))
                            .collect();
                        format!("entry with {}", pairs.join(", "))
                    }
                };
                out.push(SchemaViolation::invalid(
                    format!("{field}[{i}]"),
                    format!("duplicate {what} (also at {field}[{first}])"),
                ));
            }
            None => {
                seen.insert(tuple, i);
            }
        }
    }
}

// ---- layer 3: CEL ------------------------------------------------------------------------------

fn validate_cel(compiled: &CompiledKind, object: &Value, out: &mut Vec<SchemaViolation>) {
    for root in &compiled.cel {
        let Some(value) = root.path.iter().try_fold(object, |v, name| v.get(name)) else {
            continue;
        };
        let Err(errors) = kube::core::cel::validate_compiled(&root.compiled, value, None) else {
            continue;
        };
        for error in errors {
            let field = match error.field_path.as_str() {
                "" => root.field.clone(),
                below if below.starts_with('[') || root.field.is_empty() => {
                    format!("{}{below}", root.field)
                }
                below => format!("{}.{below}", root.field),
            };
            let reason = Reason::from_rule_reason(rules::reason_of(&error.rule));
            if reason == Reason::InvalidAddress
                && let Some(bad) = bad_addresses(object, &field)
            {
                out.extend(bad);
                continue;
            }
            out.push(SchemaViolation { field, message: error.message, reason });
        }
    }
}

/// For the address rule over a list: one violation per item that is neither an IP address nor a
/// CIDR, at the item's path. `None` when the field is not a list or no item looks bad (then the
/// rule's own report stands).
fn bad_addresses(object: &Value, field: &str) -> Option<Vec<SchemaViolation>> {
    let mut value = object;
    for name in field.split('.').filter(|s| !s.is_empty()) {
        value = value.get(name)?;
    }
    let bad: Vec<SchemaViolation> = value
        .as_array()?
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let text = item.as_str()?;
            let ok =
                text.parse::<std::net::IpAddr>().is_ok() || text.parse::<ipnet::IpNet>().is_ok();
            (!ok).then(|| SchemaViolation {
                field: format!("{field}[{i}]"),
                message: format!(
                    "{} is not valid: {}",
                    preview(item),
                    rules::ADDRESS_IS_CIDR.message
                ),
                reason: Reason::InvalidAddress,
            })
        })
        .collect();
    (!bad.is_empty()).then_some(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(spec: Value) -> Value {
        json!({
            "apiVersion": "trunkline.dev/v1alpha1",
            "kind": "InboundTrunk",
            "metadata": {"name": "acme-in", "namespace": "voice"},
            "spec": spec,
        })
    }

    fn inbound_spec() -> Value {
        json!({
            "numbers": [
                {"number": "+14155550100", "agent": "support"},
                {"number": "+14155550101", "agent": "billing"},
            ],
            "destination": {"uri": "sip:agents.voice.svc.cluster.local:5070;transport=tcp"},
            "auth": {"digest": {"secretRef": {"name": "acme-in-credentials"}}},
        })
    }

    fn outbound(spec: Value) -> Value {
        json!({
            "apiVersion": "trunkline.dev/v1alpha1",
            "kind": "OutboundTrunk",
            "metadata": {"name": "carrier-out"},
            "spec": spec,
        })
    }

    fn transfer(spec: Value) -> Value {
        json!({
            "apiVersion": "trunkline.dev/v1alpha1",
            "kind": "TransferDestination",
            "metadata": {"name": "sales-desk"},
            "spec": spec,
        })
    }

    /// `object` with `spec.<path>` set to `value` (a path of mapping keys).
    fn with(mut object: Value, path: &[&str], value: Value) -> Value {
        let mut at = &mut object["spec"];
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        match value {
            Value::Null => {
                at.as_object_mut().unwrap().remove(path[path.len() - 1]);
            }
            value => at[path[path.len() - 1]] = value,
        }
        object
    }

    #[track_caller]
    fn assert_valid(kind: Kind, object: &Value) {
        let violations = validate(kind, object);
        assert!(violations.is_empty(), "expected no violation, got {violations:#?}");
    }

    /// The one violation of `object`.
    #[track_caller]
    fn only_violation(kind: Kind, object: &Value) -> SchemaViolation {
        let mut violations = validate(kind, object);
        assert_eq!(violations.len(), 1, "expected one violation, got {violations:#?}");
        violations.remove(0)
    }

    #[track_caller]
    fn assert_refused(kind: Kind, object: &Value, field: &str, reason: Reason) -> String {
        let v = only_violation(kind, object);
        assert_eq!((v.field.as_str(), v.reason), (field, reason), "{v:#?}");
        v.message
    }

    #[test]
    fn every_generated_schema_compiles_with_no_cel_error() {
        for kind in Kind::ALL {
            let compiled = compiled(kind);
            fn no_errors(c: &CompiledSchema) -> bool {
                !c.has_errors()
                    && c.properties.values().all(no_errors)
                    && c.items.as_deref().is_none_or(no_errors)
            }
            assert!(compiled.cel.iter().all(|root| no_errors(&root.compiled)), "{kind}");
        }
    }

    #[test]
    fn cel_runs_only_on_the_subtrees_with_rules() {
        let roots = |kind| compiled(kind).cel.iter().map(|r| r.field.clone()).collect::<Vec<_>>();
        assert_eq!(roots(Kind::InboundTrunk), ["spec.auth", "spec.media.allowedAddresses"]);
        // The rule that wants `host` or `hosts` reads the whole spec (a few kilobytes at most:
        // an OutboundTrunk has no list of numbers).
        assert_eq!(roots(Kind::OutboundTrunk), ["spec"]);
        assert_eq!(roots(Kind::TransferDestination), ["spec"]);
    }

    #[test]
    fn the_design_examples_are_valid() {
        assert_valid(Kind::InboundTrunk, &inbound(inbound_spec()));
        let full = inbound(json!({
            "numbers": [{"number": "+14155550100", "agent": "support"}],
            "destination": {"uri": "sip:agents.voice.svc.cluster.local:5070;transport=tcp"},
            "agentHeader": "Allow",
            "auth": {"digest": {"secretRef": {"name": "acme-in-credentials"}},
                     "allowedAddresses": ["203.0.113.0/24"]},
            "allowedCallers": [],
            "transports": ["UDP", "TCP", "TLS"],
            "codecs": ["PCMU", "PCMA", "G722"],
            "limits": {"maxConcurrentCalls": 100, "maxCallsPerSecond": 10},
            "regions": ["us"],
        }));
        assert_valid(Kind::InboundTrunk, &full);
        let out = outbound(json!({
            "host": "sip.carrier.example", "port": 5060, "transport": "UDP",
            "auth": {"digest": {"secretRef": {"name": "carrier-out-credentials"}}},
            "callerId": "+14155550100", "allowedCallerIds": ["+14155550101"],
            "numberFormat": {"leadingPlus": true}, "healthCheck": {"intervalSeconds": 30},
            "limits": {"maxConcurrentCalls": 50, "maxCallsPerSecond": 5},
            "agents": [], "codecs": ["PCMU", "PCMA"], "regions": [],
        }));
        assert_valid(Kind::OutboundTrunk, &out);
        let phone = transfer(json!({
            "type": "Phone",
            "phone": {"number": "+14155550199", "outboundTrunkRef": {"name": "carrier-out"}},
            "mode": "Bridge", "agents": [],
        }));
        assert_valid(Kind::TransferDestination, &phone);
    }

    // ---- every CEL rule of api::rules, passing and failing ----

    #[test]
    fn auth_required_refuses_a_trunk_with_neither_digest_nor_addresses() {
        let ok =
            with(inbound(inbound_spec()), &["auth"], json!({"allowedAddresses": ["203.0.113.7"]}));
        assert_valid(Kind::InboundTrunk, &ok);
        let bad = with(inbound(inbound_spec()), &["auth"], json!({}));
        let message =
            assert_refused(Kind::InboundTrunk, &bad, "spec.auth", Reason::NoAuthentication);
        assert_eq!(message, rules::AUTH_REQUIRED.message);
        let empty = with(inbound(inbound_spec()), &["auth"], json!({"allowedAddresses": []}));
        assert_refused(Kind::InboundTrunk, &empty, "spec.auth", Reason::NoAuthentication);
    }

    #[test]
    fn open_trunk_refuses_everyone_without_digest() {
        let with_digest = with(
            inbound(inbound_spec()),
            &["auth"],
            json!({"digest": {}, "allowedAddresses": ["0.0.0.0/0"]}),
        );
        assert_valid(Kind::InboundTrunk, &with_digest);
        let open =
            with(inbound(inbound_spec()), &["auth"], json!({"allowedAddresses": ["0.0.0.0/0"]}));
        let message = assert_refused(Kind::InboundTrunk, &open, "spec.auth", Reason::OpenTrunk);
        assert_eq!(message, rules::OPEN_TRUNK.message);
        let open6 = with(inbound(inbound_spec()), &["auth"], json!({"allowedAddresses": ["::/0"]}));
        assert_refused(Kind::InboundTrunk, &open6, "spec.auth", Reason::OpenTrunk);
    }

    #[test]
    fn address_is_cidr_refuses_a_bad_address_at_its_item() {
        let ok = with(
            inbound(inbound_spec()),
            &["auth", "allowedAddresses"],
            json!(["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]),
        );
        assert_valid(Kind::InboundTrunk, &ok);
        let bad = with(
            inbound(inbound_spec()),
            &["auth", "allowedAddresses"],
            json!(["203.0.113.0/24", "203.0.113.0/33"]),
        );
        let message = assert_refused(
            Kind::InboundTrunk,
            &bad,
            "spec.auth.allowedAddresses[1]",
            Reason::InvalidAddress,
        );
        assert!(message.starts_with("\"203.0.113.0/33\" is not valid"), "{message}");
    }

    #[test]
    fn host_not_uri_refuses_a_sip_uri_with_invalid_host() {
        let spec = json!({"host": "sip.carrier.example", "callerId": "+14155550100"});
        assert_valid(Kind::OutboundTrunk, &outbound(spec.clone()));
        assert_valid(
            Kind::OutboundTrunk,
            &with(outbound(spec.clone()), &["host"], json!("192.0.2.1")),
        );
        for bad in ["sip:host", "sip.carrier.example:5060", "host/path", "-host"] {
            let object = with(outbound(spec.clone()), &["host"], json!(bad));
            let message =
                assert_refused(Kind::OutboundTrunk, &object, "spec.host", Reason::InvalidHost);
            assert_eq!(message, rules::HOST_NOT_URI.message);
        }
    }

    fn phone() -> Value {
        json!({"number": "+14155550199", "outboundTrunkRef": {"name": "carrier-out"}})
    }

    fn sip() -> Value {
        json!({"uri": "sip:sales@pbx.example.com"})
    }

    #[test]
    fn transfer_phone_member_needs_phone_and_no_sip() {
        assert_valid(
            Kind::TransferDestination,
            &transfer(json!({"type": "Phone", "phone": phone()})),
        );
        let missing = transfer(json!({"type": "Phone"}));
        let message =
            assert_refused(Kind::TransferDestination, &missing, "spec", Reason::TypeMismatch);
        assert_eq!(message, rules::TRANSFER_PHONE_MEMBER.message);
        let both = transfer(json!({"type": "Phone", "phone": phone(), "sip": sip()}));
        assert_refused(Kind::TransferDestination, &both, "spec", Reason::TypeMismatch);
    }

    #[test]
    fn transfer_sip_member_needs_sip_and_no_phone() {
        assert_valid(Kind::TransferDestination, &transfer(json!({"type": "Sip", "sip": sip()})));
        let wrong = transfer(json!({"type": "Sip", "phone": phone()}));
        let message =
            assert_refused(Kind::TransferDestination, &wrong, "spec", Reason::TypeMismatch);
        assert_eq!(message, rules::TRANSFER_SIP_MEMBER.message);
    }

    #[test]
    fn transfer_hangup_member_takes_neither_phone_nor_sip() {
        assert_valid(Kind::TransferDestination, &transfer(json!({"type": "Hangup"})));
        let wrong = transfer(json!({"type": "Hangup", "sip": sip()}));
        let message =
            assert_refused(Kind::TransferDestination, &wrong, "spec", Reason::TypeMismatch);
        assert_eq!(message, rules::TRANSFER_HANGUP_MEMBER.message);
    }

    #[test]
    fn transfer_hangup_cannot_refer() {
        let bridge = transfer(json!({"type": "Hangup", "mode": "Bridge"}));
        assert_valid(Kind::TransferDestination, &bridge);
        let refer = transfer(json!({"type": "Hangup", "mode": "Refer"}));
        let message =
            assert_refused(Kind::TransferDestination, &refer, "spec", Reason::TypeMismatch);
        assert_eq!(message, rules::TRANSFER_HANGUP_NOT_REFER.message);
    }

    #[test]
    fn outbound_digest_needs_a_secret_ref() {
        let spec = json!({"host": "sip.carrier.example", "callerId": "+14155550100"});
        let ok = with(
            outbound(spec.clone()),
            &["auth"],
            json!({"digest": {"secretRef": {"name": "c"}}}),
        );
        assert_valid(Kind::OutboundTrunk, &ok);
        let bad = with(outbound(spec), &["auth"], json!({"digest": {}}));
        let message =
            assert_refused(Kind::OutboundTrunk, &bad, "spec.auth.digest", Reason::InvalidSpec);
        assert!(message.contains("needs secretRef"), "{message}");
    }

    #[test]
    fn sip_target_digest_needs_a_secret_ref() {
        let ok = transfer(json!({"type": "Sip", "sip": {
            "uri": "sip:sales@pbx.example.com", "auth": {"digest": {"secretRef": {"name": "pbx"}}}}}));
        assert_valid(Kind::TransferDestination, &ok);
        let bad = transfer(json!({"type": "Sip", "sip": {
            "uri": "sip:sales@pbx.example.com", "auth": {"digest": {}}}}));
        let message = assert_refused(
            Kind::TransferDestination,
            &bad,
            "spec.sip.auth.digest",
            Reason::InvalidSpec,
        );
        assert_eq!(message, "digest toward a SIP destination needs secretRef");
    }

    // ---- structure and list semantics ----

    #[test]
    fn an_e164_number_with_letters_is_refused_at_its_field() {
        let object = with(
            inbound(inbound_spec()),
            &["numbers"],
            json!([{"number": "+1415555OIOO", "agent": "support"}]),
        );
        let message = assert_refused(
            Kind::InboundTrunk,
            &object,
            "spec.numbers[0].number",
            Reason::InvalidSpec,
        );
        assert_eq!(message, "\"+1415555OIOO\" is not an E.164 number (+ and 8 to 15 digits)");
    }

    #[test]
    fn host_and_hosts_together_or_neither_are_refused_with_host_or_hosts() {
        let hosts = json!([{"host": "198.51.100.10"}, {"host": "198.51.100.11", "priority": 1}]);
        let listed = outbound(json!({"hosts": hosts, "callerId": "+14155550100"}));
        assert_valid(Kind::OutboundTrunk, &listed);
        let both = with(listed.clone(), &["host"], json!("sip.carrier.example"));
        let message = assert_refused(Kind::OutboundTrunk, &both, "spec", Reason::HostOrHosts);
        assert_eq!(message, rules::HOST_OR_HOSTS.message);
        let neither = outbound(json!({"callerId": "+14155550100"}));
        assert_refused(Kind::OutboundTrunk, &neither, "spec", Reason::HostOrHosts);
        let empty = outbound(json!({"hosts": [], "callerId": "+14155550100"}));
        assert_refused(Kind::OutboundTrunk, &empty, "spec", Reason::HostOrHosts);
        let uri = with(listed.clone(), &["hosts"], json!([{"host": "sip:198.51.100.10"}]));
        assert_refused(Kind::OutboundTrunk, &uri, "spec.hosts[0].host", Reason::InvalidHost);
        let port = with(listed, &["hosts"], json!([{"host": "h", "port": 0}]));
        assert_refused(Kind::OutboundTrunk, &port, "spec.hosts[0].port", Reason::InvalidSpec);
    }

    #[test]
    fn host_sip_host_is_refused_with_invalid_host() {
        let object = outbound(json!({"host": "sip:host", "callerId": "+14155550100"}));
        assert_refused(Kind::OutboundTrunk, &object, "spec.host", Reason::InvalidHost);
    }

    #[test]
    fn port_70000_is_refused() {
        let object = outbound(json!({"host": "h", "port": 70000, "callerId": "+14155550100"}));
        let message =
            assert_refused(Kind::OutboundTrunk, &object, "spec.port", Reason::InvalidSpec);
        assert_eq!(message, "70000 is greater than the maximum 65535");
    }

    #[test]
    fn an_unknown_enum_value_is_refused() {
        let object = with(inbound(inbound_spec()), &["agentHeader"], json!("Always"));
        let message =
            assert_refused(Kind::InboundTrunk, &object, "spec.agentHeader", Reason::InvalidSpec);
        assert_eq!(message, "unsupported value \"Always\": expected one of \"Allow\", \"Ignore\"");
        let codec = with(inbound(inbound_spec()), &["codecs"], json!(["PCMU", "OPUS"]));
        assert_refused(Kind::InboundTrunk, &codec, "spec.codecs[1]", Reason::InvalidSpec);
    }

    #[test]
    fn the_same_number_twice_is_refused_at_the_second() {
        let object = with(
            inbound(inbound_spec()),
            &["numbers"],
            json!([
                {"number": "+14155550100", "agent": "a"},
                {"number": "+14155550101", "agent": "b"},
                {"number": "+14155550102", "agent": "c"},
                {"number": "+14155550100", "agent": "d"},
            ]),
        );
        let message =
            assert_refused(Kind::InboundTrunk, &object, "spec.numbers[3]", Reason::InvalidSpec);
        assert_eq!(message, "duplicate number \"+14155550100\" (also at spec.numbers[0])");
    }

    #[test]
    fn a_set_with_a_repeated_item_is_refused() {
        let object = with(inbound(inbound_spec()), &["transports"], json!(["UDP", "TCP", "UDP"]));
        let message =
            assert_refused(Kind::InboundTrunk, &object, "spec.transports[2]", Reason::InvalidSpec);
        assert_eq!(message, "duplicate value \"UDP\" (also at spec.transports[0])");
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let object = with(inbound(inbound_spec()), &["agentheader"], json!("Ignore"));
        let message =
            assert_refused(Kind::InboundTrunk, &object, "spec.agentheader", Reason::InvalidSpec);
        assert_eq!(message, "unknown field \"agentheader\"");
        let nested =
            with(inbound(inbound_spec()), &["auth", "digest", "secretref"], json!({"name": "x"}));
        assert_refused(
            Kind::InboundTrunk,
            &nested,
            "spec.auth.digest.secretref",
            Reason::InvalidSpec,
        );
        let mut top = inbound(inbound_spec());
        top["spce"] = json!({});
        assert_refused(Kind::InboundTrunk, &top, "spce", Reason::InvalidSpec);
    }

    #[test]
    fn everyone_without_digest_is_an_open_trunk_at_spec_auth() {
        let object =
            with(inbound(inbound_spec()), &["auth"], json!({"allowedAddresses": ["0.0.0.0/0"]}));
        assert_refused(Kind::InboundTrunk, &object, "spec.auth", Reason::OpenTrunk);
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let object = with(inbound(inbound_spec()), &["destination"], Value::Null);
        let message =
            assert_refused(Kind::InboundTrunk, &object, "spec.destination", Reason::InvalidSpec);
        assert_eq!(message, "missing required field \"destination\"");
    }

    #[test]
    fn a_wrong_type_is_named() {
        let object = with(inbound(inbound_spec()), &["numbers"], json!("+14155550100"));
        let message =
            assert_refused(Kind::InboundTrunk, &object, "spec.numbers", Reason::InvalidSpec);
        assert_eq!(message, "must be a list, not a string: \"+14155550100\"");
    }

    #[test]
    fn cel_does_not_run_on_a_structurally_wrong_object() {
        // auth has neither digest nor addresses, but the number is also malformed: only the
        // structural error is reported.
        let object = with(inbound(inbound_spec()), &["auth"], json!({}));
        let object = with(object, &["numbers"], json!([{"number": "12", "agent": "a"}]));
        let v = only_violation(Kind::InboundTrunk, &object);
        assert_eq!(v.field, "spec.numbers[0].number");
    }

    #[test]
    fn null_fields_and_status_are_ignored() {
        let mut object = with(inbound(inbound_spec()), &["agentHeader"], Value::Null);
        object["spec"]["limits"] = Value::Null;
        object["status"] = json!({"whatever": [1, 2]});
        assert_valid(Kind::InboundTrunk, &object);
    }

    #[test]
    fn metadata_name_and_namespace_are_checked() {
        let mut object = inbound(inbound_spec());
        object["metadata"] = json!({"name": "Acme_In", "namespace": "voice.eu"});
        let violations = validate(Kind::InboundTrunk, &object);
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "metadata.namespace"], "{violations:#?}");
        object["metadata"] = json!({"namespace": "voice"});
        assert_refused(Kind::InboundTrunk, &object, "metadata.name", Reason::InvalidSpec);
        object["metadata"] = json!({"name": "a".repeat(254)});
        assert_refused(Kind::InboundTrunk, &object, "metadata.name", Reason::InvalidSpec);
        object["metadata"] = json!({"name": "a.b-c.d"});
        assert_valid(Kind::InboundTrunk, &object);
    }
}
