//! trunkline: SIP trunks as Kubernetes resources.
//!
//! ```text
//!  specs (folder | API server) ──► source ──► config::compile ──► RoutingTable + verdicts
//!                                                                            │
//!  carrier ⇄ sip::transport ⇄ sip::transaction ⇄ call (B2BUA) ⇄ agent runtime
//!                                       config::lookup ┘   └ sip::digest, call::limits
//!                                   media: SDP rewrite, codec policy, RTP relay
//!  operator: API server ──► controllers ──► status, credentials, the gateway fleet
//!  observe: metrics and health for all of it; runtime: wires each process together
//! ```
//!
//! The layers, each importing only those below it (docs/architecture.md; checked by
//! `tests/architecture.rs`):
//!
//! - `runtime`: the assembly of each process (`run`/`gateway`, `operator`) and its shutdown.
//!   Only the binary calls it.
//! - `operator`: the controllers; the only writer to the API server.
//! - `call`: the B2BUA: the front door (per-message dispatch, admission), the sans-IO call
//!   machine with its legs and the task that drives it, admission limits.
//! - `source`: where specs come from (folder, watched folder, API server, state folder).
//! - `sip`, `media`: protocol code (messages, transports, transactions, digest; SDP, codecs,
//!   RTP relay).
//! - `observe`: metrics and admin endpoints.
//! - `config`: specs → table and verdicts: compile, look up, check. Pure.
//! - `api`: the CRD types (the YAML contract). No logic.

pub mod api;
pub mod call;
pub mod config;
#[cfg(test)]
mod fixtures;
pub mod media;
pub mod observe;
pub mod operator;
pub mod runtime;
pub mod sip;
pub mod source;
