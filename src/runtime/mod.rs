//! The assembly of each process: what `trunkline run`, `trunkline gateway` and `trunkline
//! operator` start, wire together and stop. This is the one module that knows all the others
//! (the spec sources, the transports, the call core, the relay, the admin endpoints, the
//! controllers), and nothing in the library imports it: only the binary (`cli.rs`) calls it
//! (`tests/architecture.rs` checks both).
//!
//! - `gateway`: [`gateway::serve`], the gateway of `run` (a spec folder) and of `gateway` (the
//!   API server): first config, listeners, admin endpoints, reloads, drain.
//! - `operator`: [`operator::run_operator`], the operator: settings, admin endpoints, leader
//!   election, and `operator::lead` while leading.
//!
//! Shutdown is one `tokio_util::sync::CancellationToken` per process, cancelled by SIGTERM or
//! Ctrl-C ([`shutdown_on_signal`]); the tasks that must outlive the drain (admin endpoints, spec
//! watch) stop on a second token cancelled after it.

pub mod gateway;
pub mod operator;

use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGTERM or Ctrl-C: how the kubelet and a terminal stop a process. The
/// handlers are installed now, so a signal that comes while the process is still starting is
/// not lost. Call it inside the runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
