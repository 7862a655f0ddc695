//! What compile (and the loader before it) says about each object: diagnostics with a field path,
//! a severity and a reason, and one verdict per object that becomes its status conditions.
//!
//! Severities follow the stunner split: `Fatal` drops the object, `Degraded` keeps it with part
//! of it refused (a conflicting number), `Warning` is a lint that changes nothing.

use serde::Serialize;

use crate::api::Kind;

/// Which object a diagnostic or a verdict is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { kind, namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// How much of an object a problem costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A lint: the object is kept whole, but a person should look.
    Warning,
    /// The object is kept, part of it refused (a number another trunk holds).
    Degraded,
    /// The object is dropped: it serves no call.
    Fatal,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Degraded => "degraded",
            Severity::Fatal => "fatal",
        }
    }
}

/// The condition types compile decides. `Programmed` is the operator's, from the gateway pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ConditionType {
    Accepted,
    ResolvedRefs,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
            ConditionType::ResolvedRefs => "ResolvedRefs",
        }
    }
}

/// Why a condition has its status. These become condition reasons, so they are stable CamelCase
/// strings; `as_str` is the wire form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Reason {
    /// Everything is fine.
    Accepted,
    /// Every reference resolves.
    ResolvedRefs,
    /// The object does not parse or does not match the schema.
    InvalidSpec,
    /// An InboundTrunk with neither digest nor addresses.
    NoAuthentication,
    /// An InboundTrunk that admits every address without digest.
    OpenTrunk,
    /// An address or CIDR that does not parse.
    InvalidAddress,
    /// An OutboundTrunk host that is a URI, has a port, or is not a host name.
    InvalidHost,
    /// An OutboundTrunk with both `host` and `hosts`, or neither.
    HostOrHosts,
    /// A SIP URI that does not parse.
    InvalidUri,
    /// A TransferDestination whose member does not match its type.
    TypeMismatch,
    /// A number held by an older InboundTrunk.
    NumberConflict,
    /// A digest username another, older InboundTrunk uses.
    CredentialConflict,
    /// Two objects of one kind with the same namespace and name.
    DuplicateObject,
    /// A referenced Secret does not exist.
    SecretNotFound,
    /// A referenced Secret is not `kubernetes.io/basic-auth` or lacks `username`/`password`.
    InvalidSecret,
    /// A referenced OutboundTrunk does not exist.
    TrunkNotFound,
    /// A referenced OutboundTrunk exists but is refused.
    TrunkNotAccepted,
    /// Generated credentials are not there yet: the operator or `run` creates them.
    CredentialsPending,
    /// A lint: an address allowlist so wide it admits much of the Internet.
    BroadAllowlist,
    /// A lint: something that is allowed but probably not meant.
    Suspicious,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::ResolvedRefs => "ResolvedRefs",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::NoAuthentication => "NoAuthentication",
            Reason::OpenTrunk => "OpenTrunk",
            Reason::InvalidAddress => "InvalidAddress",
            Reason::InvalidHost => "InvalidHost",
            Reason::HostOrHosts => "HostOrHosts",
            Reason::InvalidUri => "InvalidUri",
            Reason::TypeMismatch => "TypeMismatch",
            Reason::NumberConflict => "NumberConflict",
            Reason::CredentialConflict => "CredentialConflict",
            Reason::DuplicateObject => "DuplicateObject",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::InvalidSecret => "InvalidSecret",
            Reason::TrunkNotFound => "TrunkNotFound",
            Reason::TrunkNotAccepted => "TrunkNotAccepted",
            Reason::CredentialsPending => "CredentialsPending",
            Reason::BroadAllowlist => "BroadAllowlist",
            Reason::Suspicious => "Suspicious",
        }
    }

    /// The reason named by a schema rule (`api::rules`), `InvalidSpec` for any other.
    pub fn from_rule_reason(reason: &str) -> Reason {
        match reason {
            "NoAuthentication" => Reason::NoAuthentication,
            "OpenTrunk" => Reason::OpenTrunk,
            "InvalidAddress" => Reason::InvalidAddress,
            "InvalidHost" => Reason::InvalidHost,
            "HostOrHosts" => Reason::HostOrHosts,
            "TypeMismatch" => Reason::TypeMismatch,
            _ => Reason::InvalidSpec,
        }
    }

    /// Which condition a problem with this reason belongs to.
    pub fn condition(self) -> ConditionType {
        match self {
            Reason::SecretNotFound
            | Reason::InvalidSecret
            | Reason::TrunkNotFound
            | Reason::TrunkNotAccepted
            | Reason::CredentialsPending
            | Reason::ResolvedRefs => ConditionType::ResolvedRefs,
            _ => ConditionType::Accepted,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Not serialised: a diagnostic is always written inside its object's verdict.
    #[serde(skip)]
    pub object: ObjectKey,
    /// JSON path of the field, `spec.numbers[1].number`; empty for the whole object.
    pub field: String,
    pub severity: Severity,
    pub reason: Reason,
    /// A sentence a person understands, naming the other object where there is one.
    pub message: String,
}

/// The overall state of one object after compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Serving in full.
    Accepted,
    /// Serving, with part of it refused.
    Degraded,
    /// Not serving.
    Refused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Accepted => "accepted",
            State::Degraded => "degraded",
            State::Refused => "refused",
        }
    }
}

/// One condition as compile decides it: what the operator writes to status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConditionVerdict {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

/// Everything compile says about one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub object: ObjectKey,
    /// `metadata.generation` of the object compiled, where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub state: State,
    pub conditions: Vec<ConditionVerdict>,
    /// InboundTrunk: numbers held and numbers another trunk holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numbers: Option<NumberTally>,
    /// InboundTrunk: the Secret with its digest credentials (referenced or generated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Accepted and conflicting numbers of an InboundTrunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NumberTally {
    pub accepted: u32,
    pub conflicting: u32,
}

impl Verdict {
    /// Builds the verdict of an object from its diagnostics: the worst severity decides the
    /// state, and each condition is false with the reason of its first fatal or degrading
    /// problem.
    pub fn from_diagnostics(
        object: ObjectKey,
        generation: Option<i64>,
        diagnostics: Vec<Diagnostic>,
    ) -> Verdict {
        let state = match diagnostics.iter().map(|d| d.severity).max() {
            Some(Severity::Fatal) => State::Refused,
            Some(Severity::Degraded) => State::Degraded,
            _ => State::Accepted,
        };
        let condition = |type_: ConditionType, ok_reason: Reason, ok_message: &str| {
            let blocking = diagnostics
                .iter()
                .find(|d| d.reason.condition() == type_ && d.severity == Severity::Fatal);
            let degrading = diagnostics
                .iter()
                .find(|d| d.reason.condition() == type_ && d.severity == Severity::Degraded);
            match blocking.or(degrading) {
                Some(d) => ConditionVerdict {
                    type_,
                    // DESIGN §2: a degraded object (a conflicting number) is `Accepted=False`
                    // too; its state says it still serves the rest.
                    status: false,
                    reason: d.reason,
                    message: d.message.clone(),
                },
                None => ConditionVerdict {
                    type_,
                    status: true,
                    reason: ok_reason,
                    message: ok_message.to_string(),
                },
            }
        };
        let accepted = condition(ConditionType::Accepted, Reason::Accepted, "the spec is valid");
        let resolved = condition(
            ConditionType::ResolvedRefs,
            Reason::ResolvedRefs,
            "every reference resolves",
        );
        Verdict {
            object,
            generation,
            state,
            conditions: vec![accepted, resolved],
            numbers: None,
            credentials_secret: None,
            diagnostics,
        }
    }

    /// The verdict of an object refused before compile (it does not parse or match the
    /// schema): only `Accepted`, since its references were never looked at.
    pub fn refused_by_schema(
        object: ObjectKey,
        generation: Option<i64>,
        diagnostics: Vec<Diagnostic>,
    ) -> Verdict {
        let mut verdict = Verdict::from_diagnostics(object, generation, diagnostics);
        verdict.conditions.retain(|c| c.type_ == ConditionType::Accepted);
        verdict
    }

    /// The verdict of an object that does not deserialise into its type: one fatal
    /// `InvalidSpec` diagnostic on `field` (empty for the whole object).
    pub fn refused_invalid_spec(
        object: ObjectKey,
        generation: Option<i64>,
        field: String,
        message: String,
    ) -> Verdict {
        let diagnostic = Diagnostic {
            object: object.clone(),
            field,
            severity: Severity::Fatal,
            reason: Reason::InvalidSpec,
            message,
        };
        Verdict::refused_by_schema(object, generation, vec![diagnostic])
    }

    pub fn condition(&self, type_: ConditionType) -> Option<&ConditionVerdict> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
