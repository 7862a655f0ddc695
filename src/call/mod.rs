//! The B2BUA: the SIP core that matches messages to transactions and calls, the inbound call
//! flow (DESIGN §4), admission limits, and the gateway that `trunkline run` assembles.

pub mod gateway;
pub mod inbound;
pub mod limits;
pub mod serve;
pub mod services;
