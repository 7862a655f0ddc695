//! The folder source `trunkline run` serves from: loads the spec paths, adds the generated
//! credentials of the state folder (`source::credentials`), compiles, and then watches the paths
//! and does it again on every change, publishing each new [`Snapshot`] on a tokio `watch` channel
//! that the gateway reads its table from. This module and the operator's kube watch are the I/O
//! edge of `config`; everything it calls (`load_paths`, `compile`) is the same as `check` runs.
//!
//! **Which loads are served.** A load with a file-level problem (`Loaded::problems`: a YAML
//! syntax error, an unreadable or missing path, an object written twice) or an object refused by
//! its schema (`Loaded::refused`) is *rejected*: it is most likely an edit in progress, and
//! serving it would drop objects that were serving a moment ago. A rejected reload keeps the
//! previous snapshot; a rejected first load ([`FolderSource::load`]) is an error, so `run` never
//! starts from a folder that `trunkline check` would reject at load. Every problem and refused
//! verdict is logged at `warn!` with its file:line, object, field and message (again only when
//! they change). Any other load is served, even if compile refused or degraded objects: those are
//! ordinary verdicts, each logged (`warn!` for every diagnostic, `debug!` for a clean object),
//! followed by one `info!` line with the counts and the config hash. A reload whose config hash
//! equals the one being served publishes nothing (its verdicts are still logged if they changed:
//! a new object refused by compile changes no table). Generated credentials are created only for
//! loads that are served, and announced once ([`GeneratedCredentials::announce`], the one log
//! line that holds a password).
//!
//! **How changes are seen.** notify watches each path (recursively when it is a folder) and its
//! parent folder (so that a path deleted and re-created, or a file replaced by a rename as editors
//! and Kubernetes' ConfigMap volumes do, is seen). Events are debounced: a reload runs
//! [`DEBOUNCE`] after the last event of a burst, and at most [`MAX_DELAY`] after the first. The
//! watches are placed again before each reload, then the files are read, so no change falls in
//! between. Every [`RETRY_INTERVAL`] the paths are looked at (exists, is a folder) and a reload
//! runs when that changed unseen, e.g. a path whose parent was missing too. When the native
//! watcher cannot be created or reports an error (inotify limits), the source falls back for
//! good to notify's `PollWatcher`, which compares the paths' contents every [`RETRY_INTERVAL`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::credentials::{GeneratedCredentials, StateDir, StateError};
use super::debounce::{Burst, sleep_until};
use super::folder::{FileCache, LoadProblem, Origin, load_paths_cached};
use super::log_verdict;
use crate::config::compile::Compiler;
use crate::config::diagnostic::{ObjectKey, State, Verdict};
use crate::config::{CompileOptions, Snapshot};

/// Quiet time after the last event of a burst before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait between the first event of a burst and its reload, for files that never stop
/// changing.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// How often missing paths are looked for, and the scan interval of the polling fallback.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// What [`FolderSource::load`] gives: the snapshot to start serving, and the credentials it
/// generated (already announced; returned so the caller can show them elsewhere too).
#[derive(Clone, Debug)]
pub struct LoadOutcome {
    pub snapshot: Snapshot,
    pub generated: Vec<GeneratedCredentials>,
}

/// Why the folder source cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The first load had file-level problems or objects refused by their schema (each was
    /// logged).
    #[error(
        "the specs cannot be served: {} file problem(s) and {} object(s) refused by their schema; run `trunkline check` on them",
        problems.len(),
        refused.len()
    )]
    Rejected { problems: Vec<LoadProblem>, refused: Vec<Verdict> },
    #[error("generated credentials: {0}")]
    Credentials(#[from] StateError),
    #[error("cannot watch the spec paths, even by polling: {0}")]
    Watch(#[source] notify::Error),
}

/// Spec paths (folders or files), compiled for one region, with an optional state folder for
/// generated credentials.
#[derive(Clone, Debug)]
pub struct FolderSource {
    paths: Vec<PathBuf>,
    options: CompileOptions,
    state: Option<StateDir>,
    carrier_endpoint: Option<String>,
    on_reload: Option<ReloadObserver>,
    /// What the last load parsed and compiled, so a reload redoes only what changed.
    incremental: Arc<Mutex<Incremental>>,
}

/// The file cache and the compiler a reload starts from (`folder::load_paths_cached`,
/// `Compiler`): after an edit of one file, only that file is parsed again and only its trunks
/// are checked again; the rules between objects run in full.
#[derive(Debug, Default)]
struct Incremental {
    files: FileCache,
    compiler: Compiler,
}

/// Told the result of every reload the watch makes: `true` when a changed config was
/// published, `false` when an edit was rejected (the last good config stays). For metrics.
#[derive(Clone)]
pub struct ReloadObserver(pub Arc<dyn Fn(bool) + Send + Sync>);

impl std::fmt::Debug for ReloadObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadObserver")
    }
}

/// One load that passed or failed the rule of the module docs.
enum Attempt {
    Served(Served),
    Rejected(Rejection),
}

struct Served {
    snapshot: Snapshot,
    origins: BTreeMap<ObjectKey, Origin>,
    notices: Vec<String>,
    generated: Vec<GeneratedCredentials>,
}

#[derive(Clone, PartialEq, Eq)]
struct Rejection {
    problems: Vec<LoadProblem>,
    refused: Vec<Verdict>,
    origins: BTreeMap<ObjectKey, Origin>,
}

impl FolderSource {
    pub fn new(paths: Vec<PathBuf>, options: CompileOptions, state: Option<StateDir>) -> Self {
        FolderSource {
            paths,
            options,
            state,
            carrier_endpoint: None,
            on_reload: None,
            incremental: Arc::default(),
        }
    }

    /// Calls `observer` after each reload of the watch (see [`ReloadObserver`]).
    pub fn with_reload_observer(mut self, observer: ReloadObserver) -> Self {
        self.on_reload = Some(observer);
        self
    }

    fn observe(&self, published: bool) {
        if let Some(o) = &self.on_reload {
            (o.0)(published);
        }
    }

    /// The address carriers should send calls to (`sip:203.0.113.10:5060`), printed with
    /// generated credentials.
    pub fn with_carrier_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.carrier_endpoint = Some(endpoint.into());
        self
    }

    /// Loads, adds generated credentials and compiles, once, logging every verdict (module docs).
    /// `Err` when the specs cannot be served at all: a missing path, a file-level problem or a
    /// schema refusal (all logged first), or a state folder that cannot be read or written.
    pub fn load(&self) -> Result<LoadOutcome, WatchError> {
        match self.attempt()? {
            Attempt::Served(served) => {
                log_served(&served);
                self.announce(&served.generated);
                Ok(LoadOutcome { snapshot: served.snapshot, generated: served.generated })
            }
            Attempt::Rejected(rejection) => {
                warn!("the specs cannot be served: nothing is loaded");
                log_rejection(&rejection);
                Err(WatchError::Rejected {
                    problems: rejection.problems,
                    refused: rejection.refused,
                })
            }
        }
    }

    /// Watches the paths and reloads on every change (module docs), publishing each served
    /// snapshot whose hash differs from the current one (`tx`'s value, normally the snapshot of
    /// [`FolderSource::load`]). Returns when `shutdown` resolves; `Err` only if no watcher at all
    /// can be created.
    pub async fn watch(
        self,
        tx: tokio::sync::watch::Sender<Arc<Snapshot>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), WatchError> {
        self.watch_with(tx, shutdown, false).await
    }

    async fn watch_with(
        self,
        tx: SnapshotSender,
        shutdown: impl Future<Output = ()>,
        force_polling: bool,
    ) -> Result<(), WatchError> {
        let targets = Targets::new(&self.paths);
        let source = Arc::new(self);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut watcher = if force_polling {
            FileWatcher::polling(&events_tx)?
        } else {
            FileWatcher::native_or_polling(&events_tx)?
        };
        watcher.place(&targets, &events_tx)?;
        let mut seen = targets.layout();
        let mut logged = Logged {
            verdicts: tx.borrow().verdicts.clone(),
            rejection: None,
            retired: Retired::spawn(),
        };
        // A first reload catches what changed between `load` and the watches being placed.
        let mut burst = Some(Burst::new(DEBOUNCE, MAX_DELAY));
        let mut retry = tokio::time::interval_at(Instant::now() + RETRY_INTERVAL, RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);

        loop {
            let due = burst.as_ref().map(Burst::due);
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                event = events.recv() => match event {
                    Some(Ok(event)) => {
                        if targets.is_relevant(&event) {
                            burst.get_or_insert_with(|| Burst::new(DEBOUNCE, MAX_DELAY)).extend();
                        }
                    }
                    Some(Err(e)) => {
                        if watcher.is_polling() {
                            debug!(error = %e, "polling the spec paths");
                        } else {
                            warn!(error = %e, "the file watch failed: polling the spec paths every {}s instead", RETRY_INTERVAL.as_secs());
                            watcher = FileWatcher::polling(&events_tx)?;
                            burst.get_or_insert_with(|| Burst::new(DEBOUNCE, MAX_DELAY)).extend();
                        }
                    }
                    // `events_tx` lives as long as this loop.
                    None => return Ok(()),
                },
                () = sleep_until(due), if due.is_some() => {
                    burst = None;
                    watcher.place(&targets, &events_tx)?;
                    seen = targets.layout();
                    source.reload(&tx, &mut logged).await;
                }
                _ = retry.tick() => {
                    let now = targets.layout();
                    if now != seen {
                        debug!("a spec path appeared or changed type: reloading");
                        burst.get_or_insert_with(|| Burst::new(DEBOUNCE, MAX_DELAY)).extend();
                    }
                }
            }
        }
    }

    /// One reload in the watch loop: serve it, keep the current snapshot, or log why not.
    async fn reload(self: &Arc<Self>, tx: &SnapshotSender, logged: &mut Logged) {
        let source = Arc::clone(self);
        let attempt = match tokio::task::spawn_blocking(move || source.attempt()).await {
            Ok(Ok(attempt)) => attempt,
            Ok(Err(e)) => {
                error!(error = %e, "reload failed: keeping config {}", tx.borrow().hash);
                return;
            }
            Err(e) => {
                error!(error = %e, "reload task failed: keeping config {}", tx.borrow().hash);
                return;
            }
        };
        match attempt {
            Attempt::Rejected(rejection) => {
                let current = tx.borrow().hash.clone();
                if logged.rejection.as_ref() == Some(&rejection) {
                    debug!(
                        "the specs still have the problems logged before: keeping config {current}"
                    );
                } else {
                    warn!(
                        "the specs were edited into a state that cannot be served: keeping config {current}"
                    );
                    log_rejection(&rejection);
                    logged.rejection = Some(rejection);
                    self.observe(false);
                }
            }
            Attempt::Served(served) => {
                let was_rejected = logged.rejection.take().is_some();
                self.announce(&served.generated);
                let same_hash = tx.borrow().hash == served.snapshot.hash;
                if !same_hash || logged.verdicts != served.snapshot.verdicts {
                    log_served(&served);
                    logged.verdicts.clone_from(&served.snapshot.verdicts);
                } else if was_rejected {
                    info!("the specs can be served again: config {}", served.snapshot.hash);
                } else {
                    debug!(config = %served.snapshot.hash, "the specs are unchanged");
                }
                // An equal hash: nothing that changed changes how calls are handled.
                if !same_hash {
                    let old = tx.send_replace(Arc::new(served.snapshot));
                    logged.retired.retire(old);
                    self.observe(true);
                }
            }
        }
    }

    /// Load, the rule of the module docs, generated credentials, compile. Blocking.
    fn attempt(&self) -> Result<Attempt, StateError> {
        let started = std::time::Instant::now();
        // A panic in an earlier attempt leaves caches that are merely stale: still usable.
        let mut incremental = self.incremental.lock().unwrap_or_else(|e| e.into_inner());
        let incremental = &mut *incremental;
        let mut loaded = load_paths_cached(&self.paths, &mut incremental.files);
        let load_time = started.elapsed();
        if !loaded.problems.is_empty() || !loaded.refused.is_empty() {
            return Ok(Attempt::Rejected(Rejection {
                problems: loaded.problems,
                refused: loaded.refused,
                origins: loaded.origins,
            }));
        }
        let generated = match &self.state {
            Some(state) => state.ensure_generated_credentials(&mut loaded.specs)?,
            None => Vec::new(),
        };
        let compiled = incremental.compiler.compile(&loaded.specs, &self.options);
        let compile_time = started.elapsed();
        let hash = compiled.table.config_hash();
        debug!(
            load_ms = load_time.as_millis(),
            compile_ms = (compile_time - load_time).as_millis(),
            hash_ms = (started.elapsed() - compile_time).as_millis(),
            "specs read and compiled"
        );
        // The inputs are dropped here, on this blocking thread, not where calls are served.
        drop(loaded.specs);
        Ok(Attempt::Served(Served {
            snapshot: Snapshot {
                table: Arc::new(compiled.table),
                hash,
                verdicts: compiled.verdicts,
                loaded_at: SystemTime::now(),
            },
            origins: loaded.origins,
            notices: loaded.notices,
            generated,
        }))
    }

    fn announce(&self, generated: &[GeneratedCredentials]) {
        for credentials in generated {
            credentials.announce(self.carrier_endpoint.as_deref());
        }
    }
}

/// Logs the verdicts of a served load and its summary line.
fn log_served(served: &Served) {
    for notice in &served.notices {
        debug!("{notice}");
    }
    for verdict in &served.snapshot.verdicts {
        log_verdict(verdict, served.origins.get(&verdict.object));
    }
    let table = &served.snapshot.table;
    let not_served = served.snapshot.verdicts.iter().filter(|v| v.state == State::Refused).count();
    info!(
        inbound = table.inbound.len(),
        outbound = table.outbound.len(),
        transfers = table.transfers.len(),
        refused = not_served,
        "loaded {} trunks, {} numbers, config {}",
        table.inbound.len() + table.outbound.len(),
        table.number_count(),
        served.snapshot.hash,
    );
}

/// Logs every problem and refused verdict of a rejected load.
fn log_rejection(rejection: &Rejection) {
    for problem in &rejection.problems {
        let location = match problem.line {
            Some(line) => format!("{}:{line}", problem.file.display()),
            None => problem.file.display().to_string(),
        };
        let object = problem.object.as_ref().map(ToString::to_string).unwrap_or_default();
        warn!(
            location,
            object,
            field = problem.field,
            reason = %problem.reason,
            "{}",
            problem.message
        );
    }
    for verdict in &rejection.refused {
        log_verdict(verdict, rejection.origins.get(&verdict.object));
    }
}

type SnapshotSender = tokio::sync::watch::Sender<Arc<Snapshot>>;

/// What the watch loop has logged, so that each verdict and problem is logged when it changes,
/// not on every reload.
struct Logged {
    /// The verdicts of the last served load.
    verdicts: Vec<Verdict>,
    /// The problems of the last load, while the specs stay rejected.
    rejection: Option<Rejection>,
    retired: Retired,
}

/// Where a replaced snapshot goes: calls still running may hold its table, and whichever of
/// them let go of it last would drop it (every trunk, the number index) on the task serving
/// its SIP messages. So the source keeps a reference to each one it replaced, looks every
/// [`RETIRED_SWEEP`] for those nobody else holds, and drops them on a blocking thread.
#[derive(Debug)]
pub(crate) struct Retired {
    tx: mpsc::UnboundedSender<Arc<Snapshot>>,
}

/// How often retired snapshots are looked at.
pub(crate) const RETIRED_SWEEP: Duration = Duration::from_secs(1);

impl Retired {
    /// Starts the task that drops retired snapshots; it ends once this is dropped and every
    /// snapshot retired is gone.
    pub(crate) fn spawn() -> Retired {
        let (tx, mut rx) = mpsc::unbounded_channel::<Arc<Snapshot>>();
        tokio::spawn(async move {
            let mut held: Vec<Arc<Snapshot>> = Vec::new();
            let mut sweep = tokio::time::interval(RETIRED_SWEEP);
            let mut open = true;
            while open || !held.is_empty() {
                tokio::select! {
                    old = rx.recv(), if open => match old {
                        Some(old) => held.push(old),
                        None => open = false,
                    },
                    _ = sweep.tick() => {}
                }
                let (free, still): (Vec<_>, Vec<_>) = held
                    .into_iter()
                    .partition(|s| Arc::strong_count(s) == 1 && Arc::strong_count(&s.table) == 1);
                held = still;
                if !free.is_empty() {
                    tokio::task::spawn_blocking(move || drop(free));
                }
            }
        });
        Retired { tx }
    }

    /// Hands over a snapshot that is no longer served.
    pub(crate) fn retire(&self, old: Arc<Snapshot>) {
        // The task ends only after this sender is dropped: the send cannot fail.
        let _ = self.tx.send(old);
    }
}

/// The spec paths, absolute (event paths are compared with them).
struct Targets {
    paths: Vec<PathBuf>,
}

impl Targets {
    fn new(paths: &[PathBuf]) -> Targets {
        Targets {
            paths: paths
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                .collect(),
        }
    }

    /// What to watch now: every path that is a folder, recursively, and the parent folder of
    /// every path (to see it replaced, deleted or created). Missing ones are left out. A poller
    /// needs no parent: it scans each path afresh, and the layout check sees one come back.
    fn watches(&self, polling: bool) -> Vec<(PathBuf, RecursiveMode)> {
        let mut watches: BTreeMap<PathBuf, RecursiveMode> = BTreeMap::new();
        for path in &self.paths {
            if polling {
                if path.exists() {
                    watches.insert(path.clone(), RecursiveMode::Recursive);
                }
                continue;
            }
            if let Some(parent) = path.parent()
                && parent.is_dir()
            {
                watches.entry(parent.to_path_buf()).or_insert(RecursiveMode::NonRecursive);
            }
            if path.is_dir() {
                watches.insert(path.clone(), RecursiveMode::Recursive);
            }
        }
        watches.into_iter().collect()
    }

    /// Whether each path and its parent exist, and whether the path is a folder.
    fn layout(&self) -> Vec<(bool, bool, bool)> {
        self.paths
            .iter()
            .map(|p| (p.parent().is_some_and(Path::is_dir), p.exists(), p.is_dir()))
            .collect()
    }

    /// Whether an event may change what a load reads.
    fn is_relevant(&self, event: &Event) -> bool {
        match event.kind {
            // Opening and reading (ours included) change nothing.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return false,
            _ => {}
        }
        if event.need_rescan() || event.paths.is_empty() {
            return true;
        }
        event.paths.iter().any(|changed| {
            self.paths.iter().any(|path| {
                changed.starts_with(path)
                    || path.starts_with(changed)
                    || is_atomic_writer_entry(changed, path)
            })
        })
    }
}

/// Kubernetes mounts a ConfigMap or Secret as links through a hidden `..data` link that it
/// swaps on update; a watched file in such a folder changes when a `..`-named sibling does.
fn is_atomic_writer_entry(changed: &Path, path: &Path) -> bool {
    changed.parent().is_some_and(|dir| Some(dir) == path.parent())
        && changed.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".."))
}

/// The native watcher, or the polling one.
struct FileWatcher {
    inner: Box<dyn Watcher + Send>,
    polling: bool,
    placed: Vec<(PathBuf, RecursiveMode)>,
}

type Events = mpsc::UnboundedSender<notify::Result<Event>>;

impl FileWatcher {
    fn native_or_polling(events: &Events) -> Result<FileWatcher, WatchError> {
        let tx = events.clone();
        match notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        }) {
            Ok(watcher) => {
                Ok(FileWatcher { inner: Box::new(watcher), polling: false, placed: Vec::new() })
            }
            Err(e) => {
                warn!(error = %e, "cannot watch files: polling the spec paths every {}s instead", RETRY_INTERVAL.as_secs());
                FileWatcher::polling(events)
            }
        }
    }

    fn polling(events: &Events) -> Result<FileWatcher, WatchError> {
        let tx = events.clone();
        // Contents, not only modification times: those are kept in whole seconds, so two edits
        // within a second would look like one.
        let config = notify::Config::default()
            .with_poll_interval(RETRY_INTERVAL)
            .with_compare_contents(true);
        let watcher = notify::PollWatcher::new(
            move |event| {
                let _ = tx.send(event);
            },
            config,
        )
        .map_err(WatchError::Watch)?;
        Ok(FileWatcher { inner: Box::new(watcher), polling: true, placed: Vec::new() })
    }

    fn is_polling(&self) -> bool {
        self.polling
    }

    /// Places the watches `targets` asks for now, dropping the previous ones first: a folder
    /// deleted and re-created is a new inode, which the old watch does not see. A native watch
    /// that cannot be placed switches to polling.
    fn place(&mut self, targets: &Targets, events: &Events) -> Result<(), WatchError> {
        for (path, _) in std::mem::take(&mut self.placed) {
            let _ = self.inner.unwatch(&path);
        }
        for (path, mode) in targets.watches(self.polling) {
            match self.inner.watch(&path, mode) {
                Ok(()) => self.placed.push((path, mode)),
                // Gone since `watches()` looked: the next layout check will see it.
                Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => {}
                Err(e) if !self.polling => {
                    warn!(error = %e, path = %path.display(), "cannot watch: polling the spec paths every {}s instead", RETRY_INTERVAL.as_secs());
                    *self = FileWatcher::polling(events)?;
                    return self.place(targets, events);
                }
                Err(e) => debug!(error = %e, path = %path.display(), "cannot poll"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingTable;
    use crate::config::number::E164;
    use tokio::sync::watch;

    /// `ROOT/specs` under the system temp dir (the parent is watched too, so it is the test's
    /// own), removed when dropped.
    struct Fixture {
        root: PathBuf,
        specs: PathBuf,
    }

    impl Fixture {
        fn new(test: &str) -> Fixture {
            let root =
                std::env::temp_dir().join(format!("trunkline-watch-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let specs = root.join("specs");
            std::fs::create_dir_all(&specs).unwrap();
            Fixture { root, specs }
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.specs.join(name), text).unwrap();
        }

        /// Writes as editors do: a temporary file renamed over the old one.
        fn write_by_rename(&self, name: &str, text: &str) {
            let tmp = self.specs.join(format!(".{name}.swp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.specs.join(name)).unwrap();
        }

        fn source(&self) -> FolderSource {
            FolderSource::new(vec![self.specs.clone()], CompileOptions::default(), None)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn trunk(name: &str, numbers: &[&str]) -> String {
        let numbers: String = numbers
            .iter()
            .map(|n| format!("    - {{number: \"{n}\", agent: support}}\n"))
            .collect();
        format!(
            "apiVersion: trunkline.dev/v1alpha1\nkind: InboundTrunk\n\
             metadata: {{name: {name}, namespace: voice}}\nspec:\n  numbers:\n{numbers}  \
             destination: {{uri: \"sip:agents.example.com:5070\"}}\n  auth:\n    \
             allowedAddresses: [\"203.0.113.0/24\"]\n"
        )
    }

    fn routes(snapshot: &Snapshot, number: &str) -> bool {
        snapshot.table.number_owner(&E164::parse_canonical(number).unwrap()).is_some()
    }

    /// A running watch: the receiver, and what stops it.
    struct Running {
        rx: watch::Receiver<Arc<Snapshot>>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), WatchError>>,
    }

    async fn start(source: FolderSource, force_polling: bool) -> Running {
        // `cargo test -- --nocapture` shows what the watch logs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trunkline=debug")
            .with_test_writer()
            .try_init();
        let outcome = source.load().unwrap();
        let (tx, rx) = watch::channel(Arc::new(outcome.snapshot));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(source.watch_with(
            tx,
            async move {
                let _ = stopped.await;
            },
            force_polling,
        ));
        // Let the watches be placed before the test edits files (a change made earlier is
        // still caught, by the first reload, but then it is not a test of the watch).
        tokio::time::sleep(Duration::from_millis(300)).await;
        Running { rx, stop: Some(stop), task }
    }

    impl Running {
        /// The next published snapshot, within 5 s.
        async fn next(&mut self) -> Arc<Snapshot> {
            tokio::time::timeout(Duration::from_secs(5), self.rx.changed())
                .await
                .expect("a snapshot within 5 s")
                .unwrap();
            self.rx.borrow_and_update().clone()
        }

        /// Asserts nothing is published for well over a debounce and a reload.
        async fn nothing_published(&mut self) {
            let waited = tokio::time::timeout(Duration::from_millis(1500), self.rx.changed()).await;
            assert!(waited.is_err(), "published {}", self.rx.borrow().hash);
        }

        fn current(&self) -> Arc<Snapshot> {
            self.rx.borrow().clone()
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn an_added_number_appears_in_the_next_snapshot() {
        let fx = Fixture::new("added");
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100"]));
        let mut running = start(fx.source(), false).await;
        let first = running.current();
        assert!(routes(&first, "+14155550100") && !routes(&first, "+14155550101"));

        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100", "+14155550101"]));
        let next = running.next().await;
        assert!(routes(&next, "+14155550101"));
        assert_ne!(next.hash, first.hash);
        running.stop().await;
    }

    #[tokio::test]
    async fn a_yaml_syntax_error_keeps_the_last_snapshot_until_it_is_fixed() {
        let fx = Fixture::new("syntax");
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100"]));
        let mut running = start(fx.source(), false).await;
        let good = running.current();

        fx.write_by_rename(
            "acme.yaml",
            "apiVersion: trunkline.dev/v1alpha1\nkind: [InboundTrunk\n",
        );
        running.nothing_published().await;
        assert_eq!(running.current().hash, good.hash);
        assert!(routes(&running.current(), "+14155550100"));

        fx.write_by_rename("acme.yaml", &trunk("acme-in", &["+14155550100", "+14155550102"]));
        let fixed = running.next().await;
        assert!(routes(&fixed, "+14155550102"));
        running.stop().await;
    }

    #[tokio::test]
    async fn a_schema_error_in_one_file_keeps_the_last_snapshot() {
        let fx = Fixture::new("schema");
        fx.write("a.yaml", &trunk("a-in", &["+14155550100"]));
        fx.write("b.yaml", &trunk("b-in", &["+14155550200"]));
        let mut running = start(fx.source(), false).await;
        let good = running.current();
        assert!(routes(&good, "+14155550200"));

        // Served, this would drop trunk b-in and its number.
        fx.write("b.yaml", &trunk("b-in", &["+1415555O2OO"]));
        running.nothing_published().await;
        assert_eq!(running.current().hash, good.hash);

        fx.write("b.yaml", &trunk("b-in", &["+14155550201"]));
        let fixed = running.next().await;
        assert!(routes(&fixed, "+14155550201") && routes(&fixed, "+14155550100"));
        running.stop().await;
    }

    #[tokio::test]
    async fn a_single_file_path_replaced_by_a_rename_is_reloaded() {
        let fx = Fixture::new("file");
        let file = fx.specs.join("acme.yaml");
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100"]));
        fx.write("other.yaml", &trunk("other-in", &["+14155550200"]));
        let source = FolderSource::new(vec![file], CompileOptions::default(), None);
        let mut running = start(source, false).await;
        assert!(!routes(&running.current(), "+14155550200"));

        fx.write("other.yaml", &trunk("other-in", &["+14155550201"]));
        running.nothing_published().await;
        fx.write_by_rename("acme.yaml", &trunk("acme-in", &["+14155550107"]));
        let next = running.next().await;
        assert!(routes(&next, "+14155550107"));
        // The watch survives the rename.
        fx.write_by_rename("acme.yaml", &trunk("acme-in", &["+14155550108"]));
        assert!(routes(&*running.next().await, "+14155550108"));
        running.stop().await;
    }

    #[tokio::test]
    async fn an_unchanged_rewrite_publishes_nothing() {
        let fx = Fixture::new("unchanged");
        let text = trunk("acme-in", &["+14155550100"]);
        fx.write("acme.yaml", &text);
        let mut running = start(fx.source(), false).await;
        fx.write("acme.yaml", &text);
        fx.write_by_rename("acme.yaml", &text);
        fx.write("notes.txt", "not a spec");
        running.nothing_published().await;
        running.stop().await;
    }

    #[tokio::test]
    async fn a_deleted_and_recreated_folder_keeps_the_last_table_meanwhile() {
        deleted_and_recreated("recreated", false).await;
    }

    #[tokio::test]
    async fn a_deleted_and_recreated_folder_is_found_again_by_polling() {
        deleted_and_recreated("recreated-polling", true).await;
    }

    async fn deleted_and_recreated(test: &str, force_polling: bool) {
        let fx = Fixture::new(test);
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100"]));
        let mut running = start(fx.source(), force_polling).await;
        let good = running.current();

        std::fs::remove_dir_all(&fx.specs).unwrap();
        running.nothing_published().await;
        assert_eq!(running.current().hash, good.hash);

        std::fs::create_dir(&fx.specs).unwrap();
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100", "+14155550103"]));
        let next = running.next().await;
        assert!(routes(&next, "+14155550103"));

        // The watch on the new folder works too.
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550104"]));
        let next = running.next().await;
        assert!(routes(&next, "+14155550104") && !routes(&next, "+14155550103"));
        running.stop().await;
    }

    #[tokio::test]
    async fn a_path_whose_parent_was_deleted_too_is_found_again() {
        let fx = Fixture::new("parent");
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100"]));
        let mut running = start(fx.source(), false).await;

        // Nothing watches the parent of ROOT: the layout check every 2 s finds it.
        std::fs::remove_dir_all(&fx.root).unwrap();
        running.nothing_published().await;
        std::fs::create_dir_all(&fx.specs).unwrap();
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550106"]));
        let next = running.next().await;
        assert!(routes(&next, "+14155550106"));
        running.stop().await;
    }

    #[tokio::test]
    async fn the_polling_fallback_sees_changes() {
        let fx = Fixture::new("polling");
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100"]));
        let mut running = start(fx.source(), true).await;
        fx.write("acme.yaml", &trunk("acme-in", &["+14155550100", "+14155550105"]));
        let next = running.next().await;
        assert!(routes(&next, "+14155550105"));
        running.stop().await;
    }

    #[test]
    fn a_first_load_with_a_missing_path_or_a_bad_file_is_an_error() {
        let fx = Fixture::new("first");
        let missing =
            FolderSource::new(vec![fx.root.join("nope")], CompileOptions::default(), None);
        assert!(matches!(
            missing.load(),
            Err(WatchError::Rejected { problems, .. }) if problems.len() == 1
        ));
        fx.write("a.yaml", &trunk("a-in", &["+1415555O1OO"]));
        assert!(matches!(
            fx.source().load(),
            Err(WatchError::Rejected { refused, .. }) if refused.len() == 1
        ));
    }

    #[test]
    fn a_load_with_a_state_dir_serves_generated_credentials_and_announces_them_once() {
        let fx = Fixture::new("generated");
        fx.write(
            "acme.yaml",
            &trunk("acme-in", &["+14155550100"])
                .replace("    allowedAddresses", "    digest: {}\n    allowedAddresses"),
        );
        let state = || Some(StateDir::open(&fx.root.join("state")).unwrap());
        let source = FolderSource::new(vec![fx.specs.clone()], CompileOptions::default(), state());
        let first = source.load().unwrap();
        assert_eq!(first.generated.len(), 1);
        let username = &first.generated[0].username;
        assert!(first.snapshot.table.trunk_by_digest_user(username).is_some());

        let source = FolderSource::new(vec![fx.specs.clone()], CompileOptions::default(), state());
        let again = source.load().unwrap();
        assert!(again.generated.is_empty());
        assert_eq!(again.snapshot.hash, first.snapshot.hash);
    }

    #[test]
    fn the_watch_future_can_be_spawned() {
        fn is_send<T: Send>(_: &T) {}
        let fx = Fixture::new("send");
        let (tx, _rx) = watch::channel(Arc::new(Snapshot {
            table: Arc::new(RoutingTable::default()),
            hash: String::new(),
            verdicts: Vec::new(),
            loaded_at: SystemTime::now(),
        }));
        is_send(&fx.source().watch(tx, std::future::pending()));
    }
}
