//! The single-object rules of the schema, named so that a failure can be mapped back to the
//! reason a person (and a condition) should see. `check` evaluates the same CEL rules locally
//! (kube's `cel` feature) that the API server evaluates on `kubectl apply`.

/// E.164: `+`, a non-zero first digit, 8 to 15 digits in all.
pub const E164_PATTERN: &str = r"^\+[1-9][0-9]{7,14}$";
/// A caller pattern: an E.164 number, or a `+` prefix of 1 to 15 digits ending in `*`.
pub const CALLER_PATTERN: &str = r"^\+[0-9]{1,15}\*$|^\+[1-9][0-9]{7,14}$|^\*$";
/// An E.164 country code: 1 to 3 digits, the first not 0.
pub const COUNTRY_CODE_PATTERN: &str = r"^[1-9][0-9]{0,2}$";
/// A national or international dialing prefix: 1 to 4 digits.
pub const DIAL_PREFIX_PATTERN: &str = r"^[0-9]{1,4}$";
/// An agent id: it becomes the Request-URI user toward the agent runtime and a header value, so
/// only URI-safe token characters.
pub const AGENT_ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";
/// A Kubernetes object name (RFC 1123 subdomain).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A region name (RFC 1123 label).
pub const REGION_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// A `sip:` or `sips:` URI with no white space.
pub const SIP_URI_PATTERN: &str = r"^sips?:[^\s]+$";

/// A CEL rule of the schema together with the reason its failure reports.
#[derive(Clone, Copy, Debug)]
pub struct NamedRule {
    /// The CEL expression, `self` bound to the object the rule is attached to.
    pub rule: &'static str,
    /// The message `kubectl apply` prints when the rule fails.
    pub message: &'static str,
    /// The condition reason `check` and the operator report.
    pub reason: &'static str,
}

impl NamedRule {
    pub fn to_rule(self) -> kube::core::Rule {
        kube::core::Rule::new(self.rule).message(self.message)
    }
}

/// InboundTrunk `spec.auth`: digest, addresses, a registration, or more than one.
pub const AUTH_REQUIRED: NamedRule = NamedRule {
    rule: "has(self.digest) || has(self.registration) || (has(self.allowedAddresses) && size(self.allowedAddresses) > 0)",
    message: "a trunk needs digest, allowedAddresses or registration",
    reason: "NoAuthentication",
};

/// InboundTrunk `spec.auth`: no address list that admits everyone without digest.
pub const OPEN_TRUNK: NamedRule = NamedRule {
    rule: "has(self.digest) || !has(self.allowedAddresses) || !self.allowedAddresses.exists(a, a.startsWith('0.0.0.0/0') || a.startsWith('::/0'))",
    message: "allowedAddresses 0.0.0.0/0 or ::/0 without digest would let anyone in: add auth.digest or list the carrier's addresses",
    reason: "OpenTrunk",
};

/// Every entry of `allowedAddresses` is an IP address or a CIDR (on the list, so one rule
/// covers it; `check` reports each bad entry at its own index).
pub const ADDRESS_IS_CIDR: NamedRule = NamedRule {
    rule: "self.all(a, isCIDR(a) || isIP(a))",
    message: "must be an IP address or a CIDR such as 203.0.113.0/24 or 2001:db8::/32",
    reason: "InvalidAddress",
};

/// OutboundTrunk `spec.host`: a host name or an IP address, not a URI.
pub const HOST_NOT_URI: NamedRule = NamedRule {
    rule: "isIP(self) || self.matches('^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$')",
    message: "host must be a host name or an IP address, without a sip: scheme, a port or a path (the port goes in spec.port)",
    reason: "InvalidHost",
};

/// OutboundTrunk `spec`: `host` or `hosts`, exactly one of them.
pub const HOST_OR_HOSTS: NamedRule = NamedRule {
    rule: "has(self.host) != (has(self.hosts) && size(self.hosts) > 0)",
    message: "give spec.host (one carrier host) or spec.hosts (several), exactly one of them",
    reason: "HostOrHosts",
};

/// TransferDestination: the member matching `type`, and no other.
pub const TRANSFER_PHONE_MEMBER: NamedRule = NamedRule {
    rule: "self.type != 'Phone' || (has(self.phone) && !has(self.sip))",
    message: "type Phone needs spec.phone and no spec.sip",
    reason: "TypeMismatch",
};
pub const TRANSFER_SIP_MEMBER: NamedRule = NamedRule {
    rule: "self.type != 'Sip' || (has(self.sip) && !has(self.phone))",
    message: "type Sip needs spec.sip and no spec.phone",
    reason: "TypeMismatch",
};
pub const TRANSFER_HANGUP_MEMBER: NamedRule = NamedRule {
    rule: "self.type != 'Hangup' || (!has(self.phone) && !has(self.sip))",
    message: "type Hangup takes neither spec.phone nor spec.sip",
    reason: "TypeMismatch",
};
pub const TRANSFER_HANGUP_NOT_REFER: NamedRule = NamedRule {
    rule: "self.type != 'Hangup' || !has(self.mode) || self.mode == 'Bridge'",
    message: "type Hangup cannot use mode Refer: there is nobody to refer the caller to",
    reason: "TypeMismatch",
};

/// OutboundTrunk `spec.auth.digest`: the carrier's credentials must be named.
pub const OUTBOUND_DIGEST_SECRET: NamedRule = NamedRule {
    rule: "has(self.secretRef)",
    message: "an OutboundTrunk's digest needs secretRef: the carrier issues the credentials",
    reason: "InvalidSpec",
};

/// TransferDestination `spec.sip.auth.digest`: the credentials must be named.
pub const SIP_TARGET_DIGEST_SECRET: NamedRule = NamedRule {
    rule: "has(self.secretRef)",
    message: "digest toward a SIP destination needs secretRef",
    reason: "InvalidSpec",
};

/// Every named rule, for mapping a failed rule back to its reason.
pub const ALL: &[NamedRule] = &[
    AUTH_REQUIRED,
    OPEN_TRUNK,
    ADDRESS_IS_CIDR,
    HOST_NOT_URI,
    HOST_OR_HOSTS,
    OUTBOUND_DIGEST_SECRET,
    SIP_TARGET_DIGEST_SECRET,
    TRANSFER_PHONE_MEMBER,
    TRANSFER_SIP_MEMBER,
    TRANSFER_HANGUP_MEMBER,
    TRANSFER_HANGUP_NOT_REFER,
];

/// The reason of a failed CEL rule, `InvalidSpec` for a rule this module does not name.
pub fn reason_of(rule: &str) -> &'static str {
    ALL.iter().find(|r| r.rule == rule).map_or("InvalidSpec", |r| r.reason)
}
