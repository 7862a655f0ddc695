//! A bounded, durable on-disk queue of session records: what the webhook sink reads from, so
//! that a slow or dead webhook, or a restart of the gateway, loses no record.
//!
//! Takes: records (one JSON object each, no newline inside) under their record id, from the
//! record writer ([`Spool::push`], then [`Spool::sync`] once per batch window). Gives: the oldest
//! records not yet delivered ([`Spool::peek`]), which the webhook sender removes once delivered
//! ([`Spool::ack`]). Synchronous and std only: callers run it on a blocking thread (or
//! `tokio::task::spawn_blocking`), one owner at a time.
//!
//! # On disk
//!
//! ```text
//! DIR/lock                   held (flock) while a Spool is open: a second process is refused
//! DIR/cursor                 "SEGMENT OFFSET\n": the first record not yet acknowledged
//! DIR/seg-0000000001.jsonl   append-only segments, rolled at about 1 MiB
//! DIR/seg-0000000002.jsonl
//! ```
//!
//! Each record is one line: `{"id":"<record id>","record":<the record>}\n`. JSON lines rather
//! than a length-prefixed binary form because an operator can read (and replay) a spool with
//! `cat`/`jq` in a crisis, and a torn line is still easy to tell: records hold no newline, so a
//! line without its final newline, or one that does not parse, is torn. A record is appended with one `write` to the
//! segment; [`Spool::sync`] makes everything pushed so far durable (fsync of every segment
//! written since the last sync, and of the directory when a segment was created).
//!
//! The acknowledgement cursor is written atomically (write to `cursor.tmp`, fsync, rename to
//! `cursor`, fsync the directory), then the segments wholly before it are deleted. A segment
//! is never appended to by a later process: every [`Spool::open`] starts writing a new segment,
//! numbered after every existing segment and after the cursor's, so the bytes after a torn
//! line are never records and a cursor never points into bytes written by another run.
//!
//! # Guarantees
//!
//! - **Never lose a synced record.** A record for which `sync` returned `Ok` is returned by
//!   every later [`Spool::open`] until it is acknowledged. After SIGTERM or a process crash
//!   (SIGKILL) no record whose `push` returned `Ok` is lost, since its bytes are in the kernel
//!   (what the caller still held in memory, at most its batch window, is); after a power loss
//!   or kernel crash the records pushed since the last `sync` (one batch window) may be lost.
//! - **At least once.** A crash after delivery and before `ack` returns the record again; the
//!   record id is the idempotency key the receiver uses to drop the duplicate.
//! - **A torn last line** (a crash in the middle of a write) is skipped, not an error, and
//!   counted ([`Spool::skipped`]) so the caller can log it.
//!
//! # A disk that fails
//!
//! A failed fsync is final for the spool: after one, Linux may have dropped the dirty pages
//! and marked them clean, so a second fsync that succeeds proves nothing (PostgreSQL's
//! "fsyncgate"). The spool keeps what it knows ([`Spool::broken`] says why) and refuses every
//! later push with [`PushError::Broken`]; records already waiting are still delivered and
//! acknowledged. The gateway counts each refusal (`refused`, which pages through
//! TrunklineRecordsRefused), logs the cause once, and keeps serving calls and its records
//! file; a restart opens the spool again from what is on disk.
//!
//! # The bound
//!
//! `max_bytes` bounds the bytes of records waiting ([`Spool::bytes`]: the length of their lines
//! on disk). A push that would take the spool over it is refused with [`PushError::SpoolFull`]:
//! the record is not taken, the caller counts it (a metric and a log line) and keeps writing
//! its other sinks; pushes are accepted again as soon as acknowledgements make room. The disk
//! holds at most `max_bytes` plus the acknowledged part of the oldest segment (under one
//! segment, 1 MiB) plus the lock and cursor files. A spool found holding more than `max_bytes`
//! (the bound was lowered between runs) keeps every record and refuses pushes until it drains;
//! a single record whose line is longer than `max_bytes` is always refused.
//!
//! # Handover
//!
//! In a cluster the gateways of a fleet may keep their spools on one shared volume, each in
//! its own directory (the pod's name) under one parent. A pod deleted while its webhook was
//! down leaves records in a directory no one opens again; a gateway started with
//! `--records-spool-adopt` takes them over ([`sibling_spools`], [`Spool::adopt_from`], or
//! [`Handover`] step by step):
//!
//! - **Which directories.** The siblings of this spool's directory that are spools: a `lock`
//!   file and nothing but spool files (`lock`, `cursor`, `cursor.tmp`, `seg-*.jsonl`); links
//!   and any directory holding anything else are never touched.
//! - **Who takes one.** Its lock decides, tried without waiting: a live gateway holds its own
//!   (skipped), and of two gateways adopting at once only one gets it. A lock file that was
//!   removed or replaced between opening and locking it (a handover that just ended) is
//!   treated as gone; [`Spool::open`] checks the same, so a gateway restarting into a
//!   directory being handed over either waits for nothing (refused, `WouldBlock`) or gets a
//!   fresh spool, never a lock on a removed file.
//! - **How records move.** In batches, oldest first: each record is pushed into this spool,
//!   this spool is synced, then the batch is acknowledged in the adopted one. At least once: a
//!   crash between the sync and the acknowledgement delivers those records twice (the record
//!   id is the idempotency key).
//! - **The bound holds.** When this spool refuses a record as full, adoption stops; the rest
//!   stays where it is, and the directory too, for a later round.
//! - **The directory goes** once nothing is left in it: its spool files are removed, then the
//!   directory (only if empty: anything else put there keeps it).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where a segment is rolled: the next record that would take it past this starts a new one.
const SEGMENT_BYTES: u64 = 1 << 20;
/// Records moved per batch of a handover (one sync of this spool and one acknowledgement in
/// the adopted one each).
pub const HANDOVER_BATCH: usize = 256;

const CURSOR: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
const LOCK: &str = "lock";
const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".jsonl";
const LINE_PREFIX: &[u8] = b"{\"id\":";
const RECORD_KEY: &[u8] = b",\"record\":";

/// Why [`Spool::push`] did not take a record.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The spool holds `max_bytes` already: the record was not taken.
    #[error("the spool is full ({waiting} bytes waiting, bound {max_bytes}): record not spooled")]
    SpoolFull { waiting: u64, max_bytes: u64 },
    /// The record is not one JSON object on one line (a fault of the caller).
    #[error("a record must be one JSON object with no newline inside")]
    NotARecord,
    /// Writing the segment failed.
    #[error("writing to the spool failed: {0}")]
    Write(#[from] io::Error),
    /// An fsync failed earlier: the spool takes no more records (see "A disk that fails").
    #[error("the spool takes no more records since an fsync failed: {0}")]
    Broken(String),
}

/// A record waiting, as the index holds it: where its line is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    segment: u64,
    offset: u64,
    len: u64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    number: u64,
    file: File,
    len: u64,
}

/// The spool: see the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Records waiting, oldest first.
    waiting: VecDeque<Entry>,
    bytes: u64,
    active: Option<Active>,
    /// The number the next segment gets.
    next_segment: u64,
    /// No segment numbered below this is on disk (or it is deleted again at the next open).
    oldest_segment: u64,
    /// Segments written since the last sync, other than the active one.
    unsynced: Vec<File>,
    dir_unsynced: bool,
    skipped: usize,
    /// Why the spool takes no more records: the first failed fsync.
    broken: Option<String>,
    /// Tests: the next sync fails as a failing disk's would.
    #[cfg(test)]
    fail_next_sync: bool,
    /// Held for the life of the spool: released (by the kernel) when it is dropped.
    _lock: File,
}

impl Spool {
    /// Opens (creating) the spool directory; records left by an earlier process (SIGTERM or
    /// SIGKILL) are found again. A torn last line (a crash mid-write) is skipped, not an error.
    /// A directory already open in another `Spool` (this process or another) is refused with
    /// `ErrorKind::WouldBlock`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        Self::open_with(dir, max_bytes, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, max_bytes: u64, segment_bytes: u64) -> io::Result<Spool> {
        // A lock file removed by a handover between our open and our lock is opened again.
        for _ in 0..3 {
            fs::create_dir_all(dir)?;
            let lock =
                OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK))?;
            match take_lock(dir, &lock)? {
                Locked::Ours => return Spool::load(dir, max_bytes, segment_bytes, lock),
                Locked::Held => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("spool directory {} is in use by another spool", dir.display()),
                    ));
                }
                Locked::Gone => continue,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("spool directory {} keeps being removed under us", dir.display()),
        ))
    }

    /// Indexes what the locked directory holds.
    fn load(dir: &Path, max_bytes: u64, segment_bytes: u64, lock: File) -> io::Result<Spool> {
        let cursor = read_cursor(dir)?;
        let mut segments = list_segments(dir)?;
        segments.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            waiting: VecDeque::new(),
            bytes: 0,
            active: None,
            next_segment: 1,
            oldest_segment: 1,
            unsynced: Vec::new(),
            dir_unsynced: false,
            skipped: 0,
            broken: None,
            #[cfg(test)]
            fail_next_sync: false,
            _lock: lock,
        };
        let (cursor_segment, cursor_offset) = cursor.unwrap_or((0, 0));
        spool.next_segment = cursor_segment.max(segments.last().copied().unwrap_or(0)) + 1;
        spool.oldest_segment = spool.next_segment;
        for number in segments {
            if number < cursor_segment {
                // Wholly acknowledged; its deletion was not done (or not durable) last time.
                remove_if_present(&spool.segment_path(number))?;
                continue;
            }
            let from = if number == cursor_segment { cursor_offset } else { 0 };
            if spool.load_segment(number, from)? == 0 {
                // Nothing waiting in it (all acknowledged, or only a torn line), and segments
                // of an earlier run are never appended to: its space is reclaimed now.
                remove_if_present(&spool.segment_path(number))?;
            } else {
                spool.oldest_segment = spool.oldest_segment.min(number);
            }
        }
        Ok(spool)
    }

    /// Appends one record (one JSON object, no newline inside) under its id. `Err(SpoolFull)`
    /// when the spool holds `max_bytes` already: the record is not taken (the caller counts it).
    /// The record is durable only after the next [`Spool::sync`].
    pub fn push(&mut self, id: &str, record: &[u8]) -> Result<(), PushError> {
        if let Some(why) = &self.broken {
            return Err(PushError::Broken(why.clone()));
        }
        if !is_one_object(record) {
            return Err(PushError::NotARecord);
        }
        let line = encode_line(id, record);
        let len = line.len() as u64;
        if self.bytes.saturating_add(len) > self.max_bytes {
            return Err(PushError::SpoolFull { waiting: self.bytes, max_bytes: self.max_bytes });
        }
        let roll = match &self.active {
            None => true,
            Some(active) => active.len > 0 && active.len + len > self.segment_bytes,
        };
        if roll {
            self.roll()?;
        }
        let active = self.active.as_mut().expect("roll() leaves an active segment");
        if let Err(e) = active.file.write_all(&line) {
            // A partial write is a torn line: start a new segment so that no record follows
            // it; the records already in this one are still synced by the next sync.
            if let Some(torn) = self.active.take() {
                self.unsynced.push(torn.file);
            }
            return Err(e.into());
        }
        self.waiting.push_back(Entry { segment: active.number, offset: active.len, len });
        active.len += len;
        self.bytes += len;
        Ok(())
    }

    /// Makes everything pushed so far durable (fsync of the segments written, and of the
    /// directory when a segment was created). The writer calls it once per batch window. A
    /// failure breaks the spool for good (see "A disk that fails"); later calls return the
    /// same error without trying again.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::other(why.clone()));
        }
        let result = self.sync_all();
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
        }
        result
    }

    /// Why the spool takes no more records, once an fsync failed.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        for file in &self.unsynced {
            file.sync_data()?;
        }
        self.unsynced.clear();
        if let Some(active) = &self.active {
            active.file.sync_data()?;
        }
        if self.dir_unsynced {
            sync_dir(&self.dir)?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Up to `n` records not yet acknowledged, oldest first, as (id, bytes).
    pub fn peek(&self, n: usize) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::with_capacity(n.min(self.waiting.len()));
        let mut open: Option<(u64, File)> = None;
        for entry in self.waiting.iter().take(n) {
            if open.as_ref().map(|(number, _)| *number) != Some(entry.segment) {
                open = Some((entry.segment, File::open(self.segment_path(entry.segment))?));
            }
            let (_, file) = open.as_ref().expect("the entry's segment was opened above");
            let len = usize::try_from(entry.len).map_err(|_| corrupt("a record too large"))?;
            let mut line = vec![0; len];
            file.read_exact_at(&mut line, entry.offset)?;
            let (id, record) = decode_line(&line).ok_or_else(|| {
                corrupt(&format!(
                    "segment {} changed under the spool at offset {}",
                    entry.segment, entry.offset
                ))
            })?;
            out.push((id, record.to_vec()));
        }
        Ok(out)
    }

    /// The oldest `n` peeked records were delivered: they are removed, durably (a later
    /// [`Spool::open`] does not return them); a segment's space is reclaimed when all of its
    /// records are acknowledged. `n` larger than [`Spool::len`] is `ErrorKind::InvalidInput`.
    pub fn ack(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        if n > self.waiting.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ack of {n} records when {} are waiting", self.waiting.len()),
            ));
        }
        let acked: u64 = self.waiting.iter().take(n).map(|e| e.len).sum();
        let cursor = match self.waiting.get(n) {
            Some(next) => (next.segment, next.offset),
            None => match &self.active {
                Some(active) => (active.number, active.len),
                // Nothing written by this process: everything loaded is acknowledged.
                None => (self.next_segment, 0),
            },
        };
        write_cursor(&self.dir, cursor)?;
        self.waiting.drain(..n);
        self.bytes -= acked;
        // The cursor is durable: a deletion lost in a crash is done again at the next open.
        while self.oldest_segment < cursor.0 {
            remove_if_present(&self.segment_path(self.oldest_segment))?;
            self.oldest_segment += 1;
        }
        Ok(())
    }

    /// Takes over the records of another (gone) gateway's spool in `dir`, as far as this
    /// spool's bound allows, and removes `dir` once it is empty (see "# Handover").
    /// [`Adoption::Skipped`] when another spool holds its lock, or it is not there.
    pub fn adopt_from(&mut self, dir: &Path) -> io::Result<Adoption> {
        match Handover::open(dir)? {
            None => Ok(Adoption::Skipped),
            Some(handover) => handover.run(|h| h.move_into(self, HANDOVER_BATCH)),
        }
    }

    /// This spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records waiting (pushed or found at open, not acknowledged).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Bytes waiting: what counts against `max_bytes`.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Lines skipped at open because they were torn (a crash mid-write) or unreadable.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{SEGMENT_PREFIX}{number:010}{SEGMENT_SUFFIX}"))
    }

    /// Starts a new segment; the previous one is synced at the next [`Spool::sync`].
    fn roll(&mut self) -> io::Result<()> {
        let number = self.next_segment;
        let file =
            OpenOptions::new().create_new(true).append(true).open(self.segment_path(number))?;
        self.next_segment += 1;
        self.dir_unsynced = true;
        if self.waiting.is_empty() {
            // Every record written so far is acknowledged (the cursor on disk says so), the
            // segment just left included: nothing before the new one is needed.
            while self.oldest_segment < number {
                remove_if_present(&self.segment_path(self.oldest_segment))?;
                self.oldest_segment += 1;
            }
        }
        if let Some(previous) = self.active.replace(Active { number, file, len: 0 }) {
            self.unsynced.push(previous.file);
        }
        Ok(())
    }

    /// Indexes the complete records of a segment from `from` on and says how many it found;
    /// torn or unreadable lines are skipped.
    fn load_segment(&mut self, number: u64, from: u64) -> io::Result<usize> {
        let file = File::open(self.segment_path(number))?;
        let mut reader = BufReader::new(file);
        let mut offset = 0u64;
        let mut line = Vec::new();
        let mut found = 0;
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line)? as u64;
            if read == 0 {
                return Ok(found);
            }
            if offset >= from {
                if decode_line(&line).is_some() {
                    self.waiting.push_back(Entry { segment: number, offset, len: read });
                    self.bytes += read;
                    found += 1;
                } else {
                    self.skipped += 1;
                }
            }
            offset += read;
        }
    }
}

/// What [`Spool::adopt_from`] did with a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// Another spool holds its lock (a live gateway, or another gateway adopting it), or it is
    /// gone: nothing taken.
    Skipped,
    /// `records` moved into this spool; `left` stayed (this spool is full); `removed`: the
    /// directory was emptied and removed.
    Taken { records: usize, left: usize, removed: bool },
}

/// One batch of [`Handover::move_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub records: usize,
    /// The receiving spool refused a record as full: stop, leave the rest for later.
    pub full: bool,
}

/// Another gateway's spool, locked by this process to take its records (see "# Handover").
/// Dropping it releases the lock and leaves what was not moved.
#[derive(Debug)]
pub struct Handover {
    from: Spool,
}

impl Handover {
    /// Locks the spool in `dir`, without waiting and without creating anything: `Ok(None)`
    /// when another spool holds it, or it (or its lock file) is not there.
    pub fn open(dir: &Path) -> io::Result<Option<Handover>> {
        let lock = match OpenOptions::new().write(true).open(dir.join(LOCK)) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match take_lock(dir, &lock)? {
            Locked::Ours => {
                // Never pushed to: the bound does not matter, nor the segment size.
                let from = Spool::load(dir, u64::MAX, SEGMENT_BYTES, lock)?;
                Ok(Some(Handover { from }))
            }
            Locked::Held | Locked::Gone => Ok(None),
        }
    }

    /// The directory handed over.
    pub fn dir(&self) -> &Path {
        &self.from.dir
    }

    /// Records still in it.
    pub fn len(&self) -> usize {
        self.from.len()
    }

    /// Whether every record was moved.
    pub fn is_empty(&self) -> bool {
        self.from.is_empty()
    }

    /// Torn lines skipped when it was opened (a crash of its gateway mid-write).
    pub fn skipped(&self) -> usize {
        self.from.skipped()
    }

    /// Moves up to `max` records, oldest first, into `to`: pushed, `to` synced, then
    /// acknowledged here. Stops early, `full`, at the first record `to` refuses as full. A
    /// failed write or sync of `to` is an error and acknowledges nothing of the batch (what was
    /// pushed is delivered twice at worst).
    pub fn move_into(&mut self, to: &mut Spool, max: usize) -> io::Result<Moved> {
        let batch = self.from.peek(max)?;
        let mut records = 0;
        let mut full = false;
        for (id, record) in &batch {
            match to.push(id, record) {
                Ok(()) => records += 1,
                Err(PushError::SpoolFull { .. }) => {
                    full = true;
                    break;
                }
                Err(PushError::NotARecord) => {
                    // `peek` returns only whole records: this cannot happen; never lose it.
                    return Err(corrupt(&format!(
                        "record {id} in {} is not one object",
                        self.dir().display()
                    )));
                }
                Err(PushError::Write(e)) => return Err(e),
                Err(PushError::Broken(why)) => return Err(io::Error::other(why)),
            }
        }
        to.sync()?;
        self.from.ack(records)?;
        Ok(Moved { records, full })
    }

    /// Moves everything, one `batch` after another (each a [`Handover::move_into`], so that a
    /// caller sharing its spool can lock it per batch), until nothing is left or a batch finds
    /// the receiving spool full; then [`Handover::finish`].
    pub fn run(
        mut self,
        mut batch: impl FnMut(&mut Handover) -> io::Result<Moved>,
    ) -> io::Result<Adoption> {
        let mut records = 0;
        loop {
            let moved = batch(&mut self)?;
            records += moved.records;
            if moved.full || moved.records == 0 || self.is_empty() {
                break;
            }
        }
        let left = self.len();
        let removed = self.finish()?;
        Ok(Adoption::Taken { records, left, removed })
    }

    /// Ends the handover: when no record is left and the directory holds only spool files,
    /// they are removed and then the directory, while its lock is still held; says whether it
    /// was removed. Otherwise the directory is left as it is.
    pub fn finish(self) -> io::Result<bool> {
        let dir = self.from.dir.clone();
        if !self.from.is_empty() || !holds_only_spool_files(&dir)? {
            return Ok(false);
        }
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            if name != LOCK {
                remove_if_present(&dir.join(name))?;
            }
        }
        // The lock file last: a gateway that opened it before now finds it replaced or gone.
        remove_if_present(&dir.join(LOCK))?;
        let removed = match fs::remove_dir(&dir) {
            Ok(()) => true,
            // Something was put there meanwhile: it stays, and so does the directory.
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => false,
            Err(e) => return Err(e),
        };
        drop(self);
        Ok(removed)
    }
}

/// The spools beside `own` (the directories under its parent holding a `lock` file and
/// nothing but spool files; links are never followed), sorted, `own` excluded: what a
/// gateway with `--records-spool-adopt` tries to take over.
pub fn sibling_spools(own: &Path) -> io::Result<Vec<PathBuf>> {
    let own = fs::canonicalize(own)?;
    let Some(parent) = own.parent() else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        let path = entry.path();
        if path == own || !entry.file_type()?.is_dir() {
            continue;
        }
        // A directory removed meanwhile (another gateway's handover) is simply not a spool.
        if path.join(LOCK).is_file() && holds_only_spool_files(&path).unwrap_or(false) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Whether every entry of `dir` is a file a spool writes.
fn holds_only_spool_files(dir: &Path) -> io::Result<bool> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let ours = name == LOCK
            || name == CURSOR
            || name == CURSOR_TMP
            || name.to_str().and_then(segment_number).is_some();
        if !ours || !entry.file_type()?.is_file() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What trying a spool's lock found.
enum Locked {
    /// This process holds it now.
    Ours,
    /// Another spool holds it.
    Held,
    /// The lock file was removed or replaced (a handover ended) after it was opened.
    Gone,
}

/// Tries `lock` (opened from `dir/lock`) without waiting, and checks that it is still the
/// file at `dir/lock`.
fn take_lock(dir: &Path, lock: &File) -> io::Result<Locked> {
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(Locked::Held),
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    let held = lock.metadata()?;
    match fs::metadata(dir.join(LOCK)) {
        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => Ok(Locked::Ours),
        Ok(_) => Ok(Locked::Gone),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Locked::Gone),
        Err(e) => Err(e),
    }
}

/// Whether `record` is one JSON object on one line.
fn is_one_object(record: &[u8]) -> bool {
    record.first() == Some(&b'{')
        && !record.contains(&b'\n')
        && serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok()
}

fn encode_line(id: &str, record: &[u8]) -> Vec<u8> {
    let id = serde_json::Value::String(id.to_owned()).to_string();
    let mut line =
        Vec::with_capacity(LINE_PREFIX.len() + id.len() + RECORD_KEY.len() + record.len() + 2);
    line.extend_from_slice(LINE_PREFIX);
    line.extend_from_slice(id.as_bytes());
    line.extend_from_slice(RECORD_KEY);
    line.extend_from_slice(record);
    line.extend_from_slice(b"}\n");
    line
}

/// The id and record of a complete line (with its newline), or `None` for a torn or foreign
/// one.
fn decode_line(line: &[u8]) -> Option<(String, &[u8])> {
    let body = line.strip_suffix(b"\n")?.strip_prefix(LINE_PREFIX)?;
    let mut ids = serde_json::Deserializer::from_slice(body).into_iter::<String>();
    let id = ids.next()?.ok()?;
    let rest = body.get(ids.byte_offset()..)?.strip_prefix(RECORD_KEY)?;
    let record = rest.strip_suffix(b"}")?;
    is_one_object(record).then_some((id, record))
}

fn read_cursor(dir: &Path) -> io::Result<Option<(u64, u64)>> {
    let text = match fs::read_to_string(dir.join(CURSOR)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(segment)), Some(Ok(offset)), None) => Ok(Some((segment, offset))),
        // Written by rename only, so never torn: anything else is not ours to guess at.
        _ => Err(corrupt(&format!("{} is not \"SEGMENT OFFSET\"", dir.join(CURSOR).display()))),
    }
}

fn write_cursor(dir: &Path, (segment, offset): (u64, u64)) -> io::Result<()> {
    let tmp = dir.join(CURSOR_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{segment} {offset}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(CURSOR))?;
    sync_dir(dir)
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        numbers.extend(name.to_str().and_then(segment_number));
    }
    Ok(numbers)
}

/// The number of a segment's file name (`seg-0000000001.jsonl`).
fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix(SEGMENT_PREFIX)
        .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("spool: {what}"))
}

#[cfg(test)]
mod tests;
