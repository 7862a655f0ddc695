//! Where specs come from. `folder` reads manifests from files (for `trunkline check`, `run` and
//! the golden tests); the operator's kube watch is the other source. Each gives a `Specs` for
//! compile plus what it refused on the way.

pub mod credentials;
pub mod folder;
pub mod watch;

pub use folder::{LoadProblem, Loaded, Origin, load_paths, load_str};
