//! Leader election: operator replicas share one `coordination.k8s.io/v1` Lease
//! (kube-lease-manager: server-side apply on the Lease, so two replicas can never both hold it),
//! and only the holder reconciles. Every replica keeps its health and metrics endpoints up; a
//! replica that loses the Lease stops its reconcilers at once ([`run_while_leader`]) and waits
//! to win it again.
//!
//! Called by the operator's assembly with the work to do while leading.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the Lease lives and how long a holder keeps it.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name (one per fleet: `<fleet>-operator`).
    pub name: String,
    pub namespace: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long a lease lasts without renewal; another replica takes over after it.
    pub duration: Duration,
    /// How long before expiry the holder renews.
    pub grace: Duration,
}

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "lease duration ({duration:?}) must be longer than its renewal grace ({grace:?}), both at least 1 s"
    )]
    BadTimings { duration: Duration, grace: Duration },
    #[error("cannot create or read the Lease {namespace}/{name}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
}

/// A running election: `is_leader` flips as this replica wins or loses the Lease; the task
/// renews it.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    pub task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Joins the election for `settings.name`, creating the Lease when it does not exist.
pub async fn elect(client: Client, settings: &LeaseSettings) -> Result<Election, LeaderError> {
    let (duration, grace) = (settings.duration.as_secs(), settings.grace.as_secs());
    if grace == 0 || duration <= grace {
        return Err(LeaderError::BadTimings { duration: settings.duration, grace: settings.grace });
    }
    // (LeaseParams::new panics on the timings checked above.)
    let params = LeaseParams::new(settings.identity.clone(), duration, grace)
        .with_field_manager(format!("{}-lease-{}", super::FIELD_MANAGER, settings.identity));
    let manager = LeaseManagerBuilder::new(client, settings.name.clone())
        .with_namespace(settings.namespace.clone())
        .with_parameters(params)
        .build()
        .await
        .map_err(|source| LeaderError::Lease {
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
            source,
        })?;
    let (is_leader, task) = manager.watch().await;
    Ok(Election { is_leader, task })
}

/// Runs `work()` while `is_leader` is true: started when leadership is won, aborted the moment
/// it is lost (so a former leader never writes after its successor started), started again on
/// the next win. `on_change` hears every transition (for a metric and the log). Returns when
/// `stop` completes or the election ends (its sender dropped), with the work aborted.
pub async fn run_while_leader<W, F>(
    mut is_leader: watch::Receiver<bool>,
    mut work: W,
    on_change: impl Fn(bool),
    stop: impl Future<Output = ()>,
) where
    W: FnMut() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(stop);
    let mut running: Option<JoinHandle<()>> = None;
    let mut leading = false;
    loop {
        let now = *is_leader.borrow_and_update();
        if now != leading {
            leading = now;
            on_change(now);
            if let Some(task) = running.take() {
                task.abort();
            }
            if now {
                tracing::info!("this replica holds the lease: reconciling");
                running = Some(tokio::spawn(work()));
            } else {
                tracing::info!("this replica does not hold the lease: standing by");
            }
        }
        tokio::select! {
            changed = is_leader.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = &mut stop => break,
        }
    }
    if let Some(task) = running.take() {
        task.abort();
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Work that counts its starts and, through a drop guard, its ends.
    fn counted(starts: Arc<AtomicUsize>, ends: Arc<AtomicUsize>) -> impl FnMut() -> BoxedWork {
        move || {
            let (starts, ends) = (starts.clone(), ends.clone());
            Box::pin(async move {
                starts.fetch_add(1, Ordering::SeqCst);
                struct Guard(Arc<AtomicUsize>);
                impl Drop for Guard {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _guard = Guard(ends);
                std::future::pending::<()>().await;
            })
        }
    }

    type BoxedWork = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn work_runs_only_while_this_replica_leads() {
        let (tx, rx) = watch::channel(false);
        let (starts, ends) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = changes.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let election = tokio::spawn(run_while_leader(
            rx,
            counted(starts.clone(), ends.clone()),
            move |l| seen.lock().unwrap().push(l),
            async move {
                let _ = stop_rx.await;
            },
        ));
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 0, "a follower must not reconcile");

        tx.send(true).unwrap();
        settle().await;
        assert_eq!((starts.load(Ordering::SeqCst), ends.load(Ordering::SeqCst)), (1, 0));

        tx.send(false).unwrap();
        settle().await;
        assert_eq!(ends.load(Ordering::SeqCst), 1, "losing the lease stops the work");

        tx.send(true).unwrap();
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 2, "winning again restarts it");

        stop_tx.send(()).unwrap();
        election.await.unwrap();
        assert_eq!(ends.load(Ordering::SeqCst), 2, "stopping ends the work");
        assert_eq!(*changes.lock().unwrap(), vec![true, false, true]);
    }

    #[tokio::test]
    async fn the_end_of_the_election_ends_the_work() {
        let (tx, rx) = watch::channel(true);
        let (starts, ends) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let election = tokio::spawn(run_while_leader(
            rx,
            counted(starts.clone(), ends.clone()),
            |_| {},
            std::future::pending(),
        ));
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        drop(tx);
        election.await.unwrap();
        assert_eq!(ends.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bad_timings_are_refused_before_any_request() {
        // A client that would fail any request: the timings are checked first.
        let (client, _handle) = crate::fixtures::mock_client();
        let settings = LeaseSettings {
            name: "trunkline-operator".into(),
            namespace: "trunkline".into(),
            identity: "pod-a".into(),
            duration: Duration::from_secs(5),
            grace: Duration::from_secs(5),
        };
        assert!(matches!(elect(client, &settings).await, Err(LeaderError::BadTimings { .. })));
    }
}
