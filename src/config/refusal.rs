//! Why a new call is refused: one enum for every rule, with the SIP status it answers with and
//! the stable label of `trunkline_inbound_refusals_total`. The matcher's rules (`lookup`: source,
//! credentials, numbers, caller) and the front door's own (draining, hop count, extensions,
//! malformed credentials, the media policy, admission limits) are all here, so that a refusal
//! is named the same in the metrics, the logs and `explain`.

use serde::{Serialize, Serializer};

/// The rule that refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalRule {
    /// No trunk admits the source address, with or without digest.
    SourceNotAllowed,
    /// The verified digest username belongs to no trunk.
    UnknownUser,
    /// The digest trunk's address allowlist does not admit the source.
    AddressNotAllowed,
    /// The trunk does not allow the transport the INVITE came on.
    TransportNotAllowed,
    /// The Request-URI does not carry an E.164 number.
    NumberInvalid,
    /// The dialed number is not held by the trunk.
    NumberNotOnTrunk,
    /// The From number does not match the trunk's `allowedCallers`.
    CallerNotAllowed,
    /// Every trunk that would take the call waits for generated credentials.
    CredentialsPending,
    /// The gateway is shutting down and takes no new calls.
    Draining,
    /// `Max-Forwards: 0` (RFC 3261 §16.3).
    TooManyHops,
    /// A top Via branch without the RFC 3261 magic cookie: an RFC 2543 peer, whose transaction
    /// matching (by Call-ID, CSeq and tags) the gateway does not implement. Asked only of an
    /// INVITE that passed every other check, the last one before admission.
    NoRfc3261Branch,
    /// The caller requires an extension we do not support (RFC 3261 §8.2.2.3).
    BadExtension,
    /// An `Authorization`/`Proxy-Authorization` header that cannot be read.
    MalformedCredentials,
    /// Credentials that do not verify: a wrong password, an unknown user, a replay.
    BadCredentials,
    /// Digest credentials whose `uri` is not the Request-URI (RFC 3261 §22.4): an answer made
    /// for another request.
    DigestUriMismatch,
    /// A body that is not SDP, nor a multipart holding SDP.
    UnsupportedBody,
    /// A multipart body that cannot be read: no boundary, parts that do not parse, too many
    /// parts, two SDP parts (`sip::body`).
    BadBody,
    /// SDP that does not parse.
    BadSdp,
    /// SDP without a usable audio stream.
    NoUsableAudio,
    /// No codec of the offer is allowed on the trunk.
    NoCommonCodec,
    /// The offer's audio `c=` is a multicast group.
    MulticastMediaAddress,
    /// The initial offer's audio `c=` is `0.0.0.0` or `::`.
    UnspecifiedMediaAddress,
    /// The offer's audio `c=` and `m=` port are the gateway's own (a media loop).
    OwnMediaAddress,
    /// The trunk's `media.encryption` is `Required` and the offer is plain RTP.
    SrtpRequired,
    /// The offer is SRTP only (RTP/SAVP) and the trunk's `media.encryption` is `Disabled`.
    SrtpNotEnabled,
    /// An SRTP offer without an `a=crypto` line the relay can use (suite, key, parameters).
    NoUsableCrypto,
    /// The trunk holds its `maxConcurrentCalls`.
    ConcurrencyLimit,
    /// The trunk is at its `maxCallsPerSecond`.
    RateLimit,
    /// A new INVITE on the carrier-facing listener naming an outbound trunk: the carrier side
    /// can never make the gateway dial out.
    OutboundFromCarrier,
    /// A new call on the agent-facing listener from outside `--agent-networks`.
    AgentNetworkNotAllowed,
    /// An outbound INVITE that names no OutboundTrunk.
    TrunkNotNamed,
    /// The named OutboundTrunk does not exist (in this gateway's region).
    UnknownTrunk,
    /// The name matches OutboundTrunks in more than one namespace, or the header and the
    /// Request-URI name different trunks.
    AmbiguousTrunk,
    /// The trunk's `agents` allowlist does not hold the call's agent (or the call names none).
    AgentNotAllowed,
    /// The caller id the agent asked for is neither the trunk's `callerId` nor in
    /// `allowedCallerIds`.
    CallerIdNotAllowed,
    /// The number to dial is not a number (E.164, `tel:`, `;user=phone`).
    DialedNumberInvalid,
    /// A transfer names no TransferDestination of the call's namespace.
    TransferUnknownDestination,
    /// A transfer names a TransferDestination of another namespace.
    TransferOtherNamespace,
    /// A transfer names a number or URI that is no destination's: it is never dialed.
    TransferNotADestination,
    /// The destination's `agents` list does not hold the call's agent.
    TransferAgentNotAllowed,
    /// A number that several destinations the agent may use share.
    TransferAmbiguous,
}

impl RefusalRule {
    /// The metrics label and the name `explain` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalRule::SourceNotAllowed => "SourceNotAllowed",
            RefusalRule::UnknownUser => "UnknownUser",
            RefusalRule::AddressNotAllowed => "AddressNotAllowed",
            RefusalRule::TransportNotAllowed => "TransportNotAllowed",
            RefusalRule::NumberInvalid => "NumberInvalid",
            RefusalRule::NumberNotOnTrunk => "NumberNotOnTrunk",
            RefusalRule::CallerNotAllowed => "CallerNotAllowed",
            RefusalRule::CredentialsPending => "CredentialsPending",
            RefusalRule::Draining => "Draining",
            RefusalRule::TooManyHops => "TooManyHops",
            RefusalRule::NoRfc3261Branch => "NoRfc3261Branch",
            RefusalRule::BadExtension => "BadExtension",
            // One label for both: a dashboard counts credential failures, however they failed.
            RefusalRule::MalformedCredentials | RefusalRule::BadCredentials => "BadCredentials",
            RefusalRule::DigestUriMismatch => "DigestUriMismatch",
            RefusalRule::UnsupportedBody => "UnsupportedBody",
            RefusalRule::BadBody => "BadBody",
            RefusalRule::BadSdp => "BadSdp",
            RefusalRule::NoUsableAudio => "NoUsableAudio",
            RefusalRule::NoCommonCodec => "NoCommonCodec",
            RefusalRule::MulticastMediaAddress => "MulticastMediaAddress",
            RefusalRule::UnspecifiedMediaAddress => "UnspecifiedMediaAddress",
            RefusalRule::OwnMediaAddress => "OwnMediaAddress",
            RefusalRule::SrtpRequired => "SrtpRequired",
            RefusalRule::SrtpNotEnabled => "SrtpNotEnabled",
            RefusalRule::NoUsableCrypto => "NoUsableCrypto",
            // The CRD fields, in snake case, as the limits have always been labelled.
            RefusalRule::ConcurrencyLimit => "max_concurrent_calls",
            RefusalRule::RateLimit => "max_calls_per_second",
            RefusalRule::OutboundFromCarrier => "OutboundFromCarrier",
            RefusalRule::AgentNetworkNotAllowed => "AgentNetworkNotAllowed",
            RefusalRule::TrunkNotNamed => "TrunkNotNamed",
            RefusalRule::UnknownTrunk => "UnknownTrunk",
            RefusalRule::AmbiguousTrunk => "AmbiguousTrunk",
            RefusalRule::AgentNotAllowed => "AgentNotAllowed",
            RefusalRule::CallerIdNotAllowed => "CallerIdNotAllowed",
            RefusalRule::DialedNumberInvalid => "DialedNumberInvalid",
            RefusalRule::TransferUnknownDestination => "TransferUnknownDestination",
            RefusalRule::TransferOtherNamespace => "TransferOtherNamespace",
            RefusalRule::TransferNotADestination => "TransferNotADestination",
            RefusalRule::TransferAgentNotAllowed => "TransferAgentNotAllowed",
            RefusalRule::TransferAmbiguous => "TransferAmbiguous",
        }
    }

    /// The SIP status this rule answers with.
    pub fn status(self) -> u16 {
        match self {
            RefusalRule::SourceNotAllowed
            | RefusalRule::UnknownUser
            | RefusalRule::AddressNotAllowed
            | RefusalRule::TransportNotAllowed
            | RefusalRule::CallerNotAllowed
            | RefusalRule::BadCredentials
            | RefusalRule::DigestUriMismatch
            | RefusalRule::OutboundFromCarrier
            | RefusalRule::AgentNetworkNotAllowed
            | RefusalRule::AgentNotAllowed
            | RefusalRule::CallerIdNotAllowed
            | RefusalRule::TransferUnknownDestination
            | RefusalRule::TransferOtherNamespace
            | RefusalRule::TransferNotADestination
            | RefusalRule::TransferAgentNotAllowed => 403,
            RefusalRule::UnknownTrunk => 404,
            // RFC 3261 §21.4.23: the request was ambiguous.
            RefusalRule::AmbiguousTrunk | RefusalRule::TransferAmbiguous => 485,
            // RFC 3261 §21.4.22: the number is not one.
            RefusalRule::DialedNumberInvalid => 484,
            RefusalRule::NumberInvalid | RefusalRule::NumberNotOnTrunk => 404,
            RefusalRule::MalformedCredentials
            | RefusalRule::BadBody
            | RefusalRule::BadSdp
            | RefusalRule::NoRfc3261Branch
            | RefusalRule::TrunkNotNamed => 400,
            RefusalRule::BadExtension => 420,
            RefusalRule::UnsupportedBody => 415,
            RefusalRule::TooManyHops => 483,
            RefusalRule::NoUsableAudio
            | RefusalRule::NoCommonCodec
            | RefusalRule::MulticastMediaAddress
            | RefusalRule::UnspecifiedMediaAddress
            | RefusalRule::OwnMediaAddress
            | RefusalRule::SrtpRequired
            | RefusalRule::SrtpNotEnabled
            | RefusalRule::NoUsableCrypto => 488,
            RefusalRule::CredentialsPending
            | RefusalRule::Draining
            | RefusalRule::ConcurrencyLimit
            | RefusalRule::RateLimit => 503,
        }
    }
}

/// The `Warning` header value (RFC 3261 §20.43, code 399) that names a refusal's rule and says
/// why: `399 trunkline "RULE: text"`. Quotes and backslashes in `text` become `'`, so the
/// quoted string stays one.
pub fn warning(rule: &str, text: &str) -> String {
    format!("399 trunkline \"{rule}: {}\"", text.replace(['"', '\\'], "'"))
}

/// Written as its label, as `explain --output json` shows it.
impl Serialize for RefusalRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for RefusalRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::RefusalRule as R;

    #[test]
    fn the_front_doors_refusals_keep_the_status_and_label_they_had_as_literals() {
        use R::*;
        for (rule, status, label) in [
            (OutboundFromCarrier, 403, "OutboundFromCarrier"),
            (AgentNetworkNotAllowed, 403, "AgentNetworkNotAllowed"),
            (TrunkNotNamed, 400, "TrunkNotNamed"),
            (UnknownTrunk, 404, "UnknownTrunk"),
            (AmbiguousTrunk, 485, "AmbiguousTrunk"),
            (AgentNotAllowed, 403, "AgentNotAllowed"),
            (CallerIdNotAllowed, 403, "CallerIdNotAllowed"),
            (DialedNumberInvalid, 484, "DialedNumberInvalid"),
            (TransferUnknownDestination, 403, "TransferUnknownDestination"),
            (TransferOtherNamespace, 403, "TransferOtherNamespace"),
            (TransferNotADestination, 403, "TransferNotADestination"),
            (TransferAgentNotAllowed, 403, "TransferAgentNotAllowed"),
            (TransferAmbiguous, 485, "TransferAmbiguous"),
            (Draining, 503, "Draining"),
            (TooManyHops, 483, "TooManyHops"),
            (NoRfc3261Branch, 400, "NoRfc3261Branch"),
            (BadExtension, 420, "BadExtension"),
            (MalformedCredentials, 400, "BadCredentials"),
            (BadCredentials, 403, "BadCredentials"),
            (DigestUriMismatch, 403, "DigestUriMismatch"),
            (UnsupportedBody, 415, "UnsupportedBody"),
            (BadBody, 400, "BadBody"),
            (BadSdp, 400, "BadSdp"),
            (NoUsableAudio, 488, "NoUsableAudio"),
            (NoCommonCodec, 488, "NoCommonCodec"),
            (MulticastMediaAddress, 488, "MulticastMediaAddress"),
            (UnspecifiedMediaAddress, 488, "UnspecifiedMediaAddress"),
            (OwnMediaAddress, 488, "OwnMediaAddress"),
            (SrtpRequired, 488, "SrtpRequired"),
            (SrtpNotEnabled, 488, "SrtpNotEnabled"),
            (NoUsableCrypto, 488, "NoUsableCrypto"),
            (ConcurrencyLimit, 503, "max_concurrent_calls"),
            (RateLimit, 503, "max_calls_per_second"),
        ] {
            assert_eq!((rule.status(), rule.as_str()), (status, label), "{rule:?}");
            assert_eq!(serde_json::to_value(rule).unwrap(), label, "explain shows the label");
        }
    }
}
