//! Specs to runtime model. `compile` is the one place where the cross-object rules of DESIGN §2
//! live; `check`, `explain`, the operator and the gateway all call it, so they never disagree.
//! `lookup` is the matcher that `explain` and the gateway share.

pub mod check;
pub mod compile;
pub mod destination;
pub mod diagnostic;
pub mod lookup;
pub mod manifest;
pub mod model;
pub mod number;
pub mod outbound;
pub mod refusal;
pub mod schema;
pub mod secret;
pub mod snapshot;
pub mod specs;
pub mod transfer;
pub mod yaml;

pub use compile::{Compiled, compile};
pub use diagnostic::{Reason, Severity, State, Verdict};
pub use model::RoutingTable;
pub use snapshot::Snapshot;
pub use specs::{CompileOptions, Specs};
