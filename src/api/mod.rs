//! The three custom resources of group `trunkline.dev`, version `v1alpha1`, and the types they
//! share. This module holds types only: serde + schemars + kube derive, no I/O and no logic. The
//! `///` comments on fields are user documentation: they become the CRD descriptions that
//! `kubectl explain` prints.
//!
//! Every rule that can be checked on one object lives in the schema (OpenAPI constraints and CEL
//! `x-kubernetes-validations`, see [`rules`]), so `kubectl apply` refuses a bad object. Rules that
//! need several objects live in `config::compile`.

mod common;
mod inbound;
mod outbound;
pub mod rules;
mod transfer;

pub use common::*;
pub use inbound::*;
pub use outbound::*;
pub use transfer::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every trunkline resource.
pub const GROUP: &str = "trunkline.dev";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "trunkline.dev/v1alpha1";

/// The kinds this API defines, in the order the CRDs are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    InboundTrunk,
    OutboundTrunk,
    TransferDestination,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::InboundTrunk, Kind::OutboundTrunk, Kind::TransferDestination];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InboundTrunk => "InboundTrunk",
            Kind::OutboundTrunk => "OutboundTrunk",
            Kind::TransferDestination => "TransferDestination",
        }
    }

    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The generated CustomResourceDefinition of this kind.
    pub fn crd(self) -> CustomResourceDefinition {
        match self {
            Kind::InboundTrunk => InboundTrunk::crd(),
            Kind::OutboundTrunk => OutboundTrunk::crd(),
            Kind::TransferDestination => TransferDestination::crd(),
        }
    }

    /// The file name of this kind's CRD under `crds/`.
    pub fn crd_file_name(self) -> String {
        format!("{}.yaml", self.crd().metadata.name.unwrap_or_default())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
