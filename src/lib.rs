//! trunkline: SIP trunks as Kubernetes resources.
//!
//! ```text
//!  specs (folder | API server) ──► source ──► config::compile ──► RoutingTable + verdicts
//!                                                                            │
//!  carrier ⇄ sip::transport ⇄ sip::transaction ⇄ call (B2BUA) ⇄ agent runtime
//!                                       config::lookup ┘   └ sip::digest, call::limits
//!  observe: metrics and health for all of it
//! ```
//!
//! - `api`: the CRD types (the YAML contract). No logic.
//! - `config`: load, validate, compile, look up. Pure.
//! - `sip`: messages, transports, transactions, digest.
//! - `call`: the B2BUA and the gateway assembly.
//! - `observe`: metrics and admin endpoints.

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
