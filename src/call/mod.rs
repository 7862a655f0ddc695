//! The B2BUA: the front door that matches messages to calls and decides on new INVITEs
//! (`gateway`), the inbound call flow (DESIGN §4, `inbound`), what the two share (`services`),
//! the admission limits (`limits`) and the OPTIONS probes of outbound trunks (`health`). No
//! sockets are opened and no spec source is read here: the process that wires the gateway to
//! its transports, relay and spec source is `runtime::gateway`.

pub mod driver;
pub mod gateway;
pub mod health;
pub mod inbound;
pub mod limits;
pub mod machine;
pub mod services;
