//! Where specs come from. `folder` reads manifests from files (for `trunkline check`, `run` and
//! `generated` tests) and `watch` keeps reading them as they change, with the credentials of the
//! state folder (`credentials`); `kube` watches the API server for `trunkline gateway`, with the
//! credentials of the operator's bundle Secret (`bundle`); `node` reads the address a gateway
//! advertises from its Node. Each gives `config::Snapshot`s (or `Specs` for compile) plus what it
//! refused on the way. Sources only read: `operator` is the one module that writes to the API
//! server.

pub mod bundle;
pub mod credentials;
pub mod folder;
pub mod kube;
pub mod node;
pub mod watch;

pub use folder::{LoadProblem, Loaded, Origin, load_paths, load_str};
