//! Media: what the gateway does with the audio of a call (DESIGN.md §3, §4).
//!
//! The pure parts take an SDP body and the trunk's policy and give the SDP to send on the other
//! leg plus what the relay needs to know; the call layer (`call::inbound`) calls them while it
//! relays an offer or an answer between the legs. The socket parts relay RTP/RTCP per leg.
//!
//! - `sdp`: the SDP facade (RFC 8866, offer/answer RFC 3264): parse, rewrite for the relay, print.
//! - `codec`: the codec policy: filter an offer to the trunk's codecs, check the answer.

pub mod codec;
pub mod ports;
pub mod relay;
pub mod sdes;
pub mod sdp;
pub mod srtp;
pub mod stats;
