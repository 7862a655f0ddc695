//! The B2BUA: the front door that matches messages to calls and decides on new INVITEs
//! (`gateway`), the set-up of inbound and outbound calls (DESIGN §4, `inbound`, `outbound`), the
//! call state machine (`machine`) and the task that runs it (`driver`), what they share
//! (`services`), the admission limits (`limits`), the legs of bridged transfers (`transfer`),
//! the header contract of the agent leg (`headers`), the agent runtime's own credentials
//! (`agent_auth`) and the OPTIONS probes of outbound trunks (`health`). No sockets are opened and no spec source is read here: the process that wires
//! the gateway to its transports, relay and spec source is `runtime::gateway`.

pub mod agent_auth;
pub mod driver;
pub mod gateway;
pub mod guard;
pub mod headers;
pub mod health;
pub mod inbound;
pub mod limits;
pub mod machine;
pub mod nict;
pub mod outbound;
pub mod placed;
pub mod record;
pub mod registration;
pub mod services;
pub mod transfer;
