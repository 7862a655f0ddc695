//! Debouncing for the spec sources: a burst of change events becomes one reload, `quiet` after
//! the last event and at most `longest` after the first. The folder watch (`watch`) and the
//! API-server source (`kube`) both use it.

use std::time::Duration;

use tokio::time::Instant;

/// A burst of change events and when to act on it: `quiet` after its last event, and at most
/// `longest` after its first (for sources that never stop changing). The folder source and the
/// gateway's API-server source debounce with it.
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    first: Instant,
    last: Instant,
    quiet: Duration,
    longest: Duration,
}

impl Burst {
    /// A burst whose first event is now.
    pub fn new(quiet: Duration, longest: Duration) -> Burst {
        let now = Instant::now();
        Burst { first: now, last: now, quiet, longest }
    }

    /// Another event now.
    pub fn extend(&mut self) {
        self.last = Instant::now();
    }

    pub fn due(&self) -> Instant {
        (self.last + self.quiet).min(self.first + self.longest)
    }
}

/// Sleeps until `due`; never completes for `None` (no burst pending), for `select!` arms.
pub async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
