//! Where specs come from. `folder` reads manifests from files (for `trunkline check`, `run` and
//! `generated` tests) and `watch` keeps reading them as they change, with the credentials of the
//! state folder (`credentials`); `kube` watches the API server for `trunkline gateway`, with the
//! credentials of the operator's bundle Secret (`bundle`); `node` reads the address a gateway
//! advertises from its Node. Each gives `config::Snapshot`s (or `Specs` for compile) plus what it
//! refused on the way. Sources only read: `operator` is the one module that writes to the API
//! server.

pub mod bundle;
pub mod credentials;
pub mod debounce;
pub mod folder;
pub mod kube;
pub mod node;
pub mod watch;

pub use folder::{LoadProblem, Loaded, Origin, load_paths, load_str};

use tracing::{debug, warn};

use crate::config::diagnostic::{State, Verdict};

/// Logs a verdict as every source does: one `warn!` per diagnostic (lints of an accepted object
/// included: they are there for a person to read), one `debug!` for an object without any.
/// `origin`, where the object was written (folder sources), becomes the `location` field.
fn log_verdict(verdict: &Verdict, origin: Option<&Origin>) {
    let location = origin.map(ToString::to_string);
    if verdict.diagnostics.is_empty() {
        if verdict.state == State::Accepted {
            debug!(location, object = %verdict.object, "accepted");
        } else {
            warn!(location, object = %verdict.object, state = verdict.state.as_str(), "not accepted");
        }
    }
    for d in &verdict.diagnostics {
        warn!(
            location,
            object = %verdict.object,
            state = verdict.state.as_str(),
            severity = d.severity.as_str(),
            field = d.field,
            reason = %d.reason,
            "{}",
            d.message
        );
    }
}
