//! The input of compile: every object of the three kinds and the Secrets they may reference, from
//! whichever source (a folder, the API server).

use crate::api::{InboundTrunk, OutboundTrunk, TransferDestination};

use super::secret::SecretStore;

/// The namespace of an object that names none (as `kubectl apply` without `-n` does).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Every object compile looks at.
#[derive(Clone, Debug, Default)]
pub struct Specs {
    pub inbound: Vec<InboundTrunk>,
    pub outbound: Vec<OutboundTrunk>,
    pub transfers: Vec<TransferDestination>,
    pub secrets: SecretStore,
}

/// What a compile is for.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// The region this gateway fleet serves: trunks that list regions without this one are left
    /// out of the table (their verdict is unchanged). `None`: every trunk.
    pub region: Option<String>,
}
