use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system's temp dir, unique to this process and call, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("trunkline-spool-{test}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn record(i: usize) -> Vec<u8> {
    format!(r#"{{"recordId":"r{i}","answered":true,"codec":"PCMU","n":{i}}}"#).into_bytes()
}

fn all(spool: &Spool) -> Vec<(String, Vec<u8>)> {
    spool.peek(usize::MAX).expect("peek")
}

fn ids(records: &[(String, Vec<u8>)]) -> Vec<String> {
    records.iter().map(|(id, _)| id.clone()).collect()
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut numbers = list_segments(dir).expect("list segments");
    numbers.sort_unstable();
    numbers
}

#[test]
fn records_come_out_in_push_order_and_leave_when_acked() {
    let dir = TempDir::new("order");
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open");
    assert!(spool.is_empty());
    for i in 0..5 {
        spool.push(&format!("id-{i}"), &record(i)).expect("push");
    }
    assert_eq!(spool.len(), 5);
    let first = spool.peek(2).expect("peek");
    assert_eq!(first, vec![("id-0".to_owned(), record(0)), ("id-1".to_owned(), record(1))]);
    // Peeking does not consume.
    assert_eq!(spool.peek(2).expect("peek"), first);
    spool.ack(2).expect("ack");
    assert_eq!(ids(&all(&spool)), ["id-2", "id-3", "id-4"]);
    assert_eq!(spool.len(), 3);
    spool.ack(3).expect("ack");
    assert!(spool.is_empty());
    assert_eq!(spool.bytes(), 0);
    assert!(spool.peek(10).expect("peek").is_empty());
}

#[test]
fn ids_and_records_come_back_byte_for_byte() {
    let dir = TempDir::new("bytes");
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open");
    let id = "quote\" backslash\\ tab\t é 🎧";
    let body = br#"{ "spaced" : [1, 2.5e3, "\u00e9\n"], "nested": {"a": null} }"#;
    spool.push(id, body).expect("push");
    spool.sync().expect("sync");
    drop(spool);
    let spool = Spool::open(&dir.0, 1 << 20).expect("reopen");
    assert_eq!(all(&spool), vec![(id.to_owned(), body.to_vec())]);
}

#[test]
fn reopening_returns_exactly_the_records_not_acked() {
    let dir = TempDir::new("reopen");
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open");
    for i in 0..6 {
        spool.push(&format!("id-{i}"), &record(i)).expect("push");
    }
    spool.sync().expect("sync");
    spool.ack(4).expect("ack");
    let bytes = spool.bytes();
    drop(spool);

    let mut spool = Spool::open(&dir.0, 1 << 20).expect("reopen");
    assert_eq!(all(&spool), vec![("id-4".to_owned(), record(4)), ("id-5".to_owned(), record(5))]);
    assert_eq!(spool.bytes(), bytes);
    assert_eq!(spool.skipped(), 0);

    // What this run pushes comes after what it found, and survives the next reopen too.
    spool.push("id-6", &record(6)).expect("push");
    spool.ack(1).expect("ack");
    drop(spool);
    let spool = Spool::open(&dir.0, 1 << 20).expect("reopen again");
    assert_eq!(ids(&all(&spool)), ["id-5", "id-6"]);
}

#[test]
fn everything_acked_before_a_restart_stays_acked() {
    let dir = TempDir::new("all-acked");
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open");
    spool.push("a", &record(0)).expect("push");
    drop(spool);
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("reopen");
    // Acknowledge what was found, before this run has written anything.
    spool.ack(1).expect("ack");
    drop(spool);
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("reopen");
    assert!(spool.is_empty());
    spool.push("b", &record(1)).expect("push");
    drop(spool);
    let spool = Spool::open(&dir.0, 1 << 20).expect("reopen");
    assert_eq!(ids(&all(&spool)), ["b"]);
}

#[test]
fn a_torn_last_line_is_skipped_and_the_records_before_it_kept() {
    let dir = TempDir::new("torn");
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open");
    for i in 0..3 {
        spool.push(&format!("id-{i}"), &record(i)).expect("push");
    }
    spool.sync().expect("sync");
    drop(spool);
    // A crash in the middle of the next write: half a line, no newline.
    let segment = dir.0.join(format!("seg-{:010}.jsonl", segments(&dir.0)[0]));
    let line = encode_line("id-3", &record(3));
    let mut file = OpenOptions::new().append(true).open(&segment).expect("open segment");
    file.write_all(&line[..line.len() / 2]).expect("tear");
    drop(file);

    let mut spool = Spool::open(&dir.0, 1 << 20).expect("reopen");
    assert_eq!(ids(&all(&spool)), ["id-0", "id-1", "id-2"]);
    assert_eq!(spool.skipped(), 1);
    // New records are not glued to the torn bytes.
    spool.push("id-4", &record(4)).expect("push");
    drop(spool);
    let spool = Spool::open(&dir.0, 1 << 20).expect("reopen again");
    assert_eq!(ids(&all(&spool)), ["id-0", "id-1", "id-2", "id-4"]);
    assert_eq!(all(&spool)[3].1, record(4));
}

#[test]
fn a_full_spool_refuses_records_and_takes_them_again_after_an_ack() {
    let dir = TempDir::new("full");
    let line = encode_line("id-0", &record(0)).len() as u64;
    let mut spool = Spool::open(&dir.0, 3 * line).expect("open");
    for i in 0..3 {
        spool.push(&format!("id-{i}"), &record(i)).expect("push");
    }
    assert_eq!(spool.bytes(), 3 * line);
    match spool.push("id-3", &record(3)) {
        Err(PushError::SpoolFull { waiting, max_bytes }) => {
            assert_eq!((waiting, max_bytes), (3 * line, 3 * line));
        }
        other => panic!("expected SpoolFull, got {other:?}"),
    }
    assert_eq!(ids(&all(&spool)), ["id-0", "id-1", "id-2"], "the refused record is not taken");
    spool.ack(1).expect("ack");
    spool.push("id-3", &record(3)).expect("room again after the ack");
    assert_eq!(ids(&all(&spool)), ["id-1", "id-2", "id-3"]);
    assert!(spool.bytes() <= 3 * line);
}

#[test]
fn a_segment_is_deleted_once_all_its_records_are_acked() {
    let dir = TempDir::new("reclaim");
    let line = encode_line("id-0", &record(0)).len() as u64;
    // Two records per segment.
    let mut spool = Spool::open_with(&dir.0, 1 << 20, 2 * line).expect("open");
    for i in 0..6 {
        spool.push(&format!("id-{i}"), &record(i)).expect("push");
    }
    assert_eq!(segments(&dir.0), [1, 2, 3]);
    spool.ack(1).expect("ack");
    assert_eq!(segments(&dir.0), [1, 2, 3], "segment 1 still holds a record");
    spool.ack(2).expect("ack");
    assert_eq!(segments(&dir.0), [2, 3]);
    spool.ack(3).expect("ack");
    // The segment being written stays until it is rolled.
    assert_eq!(segments(&dir.0), [3]);
    spool.push("id-6", &record(6)).expect("push");
    spool.push("id-7", &record(7)).expect("push");
    spool.ack(1).expect("ack");
    assert_eq!(segments(&dir.0), [4]);
    drop(spool);
    let spool = Spool::open_with(&dir.0, 1 << 20, 2 * line).expect("reopen");
    assert_eq!(ids(&all(&spool)), ["id-7"]);
}

#[test]
fn many_records_across_many_segments_survive_restarts_in_order() {
    let dir = TempDir::new("many");
    let mut spool = Spool::open_with(&dir.0, 1 << 20, 1000).expect("open");
    for i in 0..500 {
        spool.push(&format!("id-{i}"), &record(i)).expect("push");
    }
    spool.sync().expect("sync");
    assert!(segments(&dir.0).len() > 20, "records spread over many segments");
    spool.ack(123).expect("ack");
    drop(spool);
    let mut spool = Spool::open_with(&dir.0, 1 << 20, 1000).expect("reopen");
    let expected: Vec<_> = (123..500).map(|i| (format!("id-{i}"), record(i))).collect();
    assert_eq!(all(&spool), expected);
    // Drain in batches as the webhook sender would.
    let mut delivered = Vec::new();
    while !spool.is_empty() {
        let batch = spool.peek(50).expect("peek");
        delivered.extend(batch.iter().cloned());
        spool.ack(batch.len()).expect("ack");
    }
    assert_eq!(delivered, expected);
    assert!(segments(&dir.0).len() <= 1);
}

#[test]
fn a_second_spool_on_the_same_directory_is_refused() {
    let dir = TempDir::new("lock");
    let spool = Spool::open(&dir.0, 1 << 20).expect("open");
    let second = Spool::open(&dir.0, 1 << 20).expect_err("the directory is in use");
    assert_eq!(second.kind(), io::ErrorKind::WouldBlock);
    drop(spool);
    Spool::open(&dir.0, 1 << 20).expect("free again once the first is dropped");
}

#[test]
fn what_is_not_one_json_object_is_refused() {
    let dir = TempDir::new("not-a-record");
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open");
    for bad in [&b""[..], b"[1]", b"\"text\"", b"{\"a\":1", b"{\n\"a\":1}", b"{}{}", b"{} x"] {
        assert!(
            matches!(spool.push("id", bad), Err(PushError::NotARecord)),
            "{:?} was taken",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(spool.is_empty());
}

#[test]
fn an_ack_of_more_than_is_waiting_is_an_error_and_changes_nothing() {
    let dir = TempDir::new("over-ack");
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open");
    spool.push("a", &record(0)).expect("push");
    let err = spool.ack(2).expect_err("only one waiting");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(ids(&all(&spool)), ["a"]);
}

#[test]
fn a_cursor_that_is_not_ours_is_refused_at_open() {
    let dir = TempDir::new("bad-cursor");
    fs::create_dir_all(&dir.0).expect("mkdir");
    fs::write(dir.0.join(CURSOR), "three 4\n").expect("write");
    let err = Spool::open(&dir.0, 1 << 20).expect_err("bad cursor");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Ack(usize),
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..200).prop_map(Op::Push),
        2 => (0usize..8).prop_map(Op::Ack),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random pushes, acks and restarts against a VecDeque: the spool returns exactly the
    /// records the model holds, in order, and never holds more than its bound.
    #[test]
    fn the_spool_behaves_like_a_bounded_queue_across_restarts(
        ops in proptest::collection::vec(op(), 1..80),
        max_bytes in 200u64..4000,
        segment_bytes in 100u64..600,
    ) {
        let dir = TempDir::new("prop");
        let mut spool = Spool::open_with(&dir.0, max_bytes, segment_bytes).expect("open");
        let mut model: VecDeque<(String, Vec<u8>)> = VecDeque::new();
        let mut next = 0;
        for op in ops {
            match op {
                Op::Push(padding) => {
                    let id = format!("id-{next}");
                    let body = format!(r#"{{"n":{next},"pad":"{}"}}"#, "x".repeat(padding));
                    next += 1;
                    match spool.push(&id, body.as_bytes()) {
                        Ok(()) => model.push_back((id, body.into_bytes())),
                        Err(PushError::SpoolFull { waiting, .. }) => {
                            prop_assert_eq!(waiting, spool.bytes());
                            let line = encode_line(&id, body.as_bytes()).len() as u64;
                            prop_assert!(waiting + line > max_bytes);
                        }
                        Err(e) => prop_assert!(false, "push failed: {e}"),
                    }
                }
                Op::Ack(n) => {
                    let n = n.min(model.len());
                    spool.ack(n).expect("ack");
                    model.drain(..n);
                }
                Op::Sync => spool.sync().expect("sync"),
                Op::Reopen => {
                    drop(spool);
                    spool = Spool::open_with(&dir.0, max_bytes, segment_bytes).expect("reopen");
                    prop_assert_eq!(spool.skipped(), 0);
                }
            }
            prop_assert!(spool.bytes() <= max_bytes);
            prop_assert_eq!(spool.len(), model.len());
            prop_assert_eq!(all(&spool), Vec::from(model.clone()));
        }
        // Only the segments holding waiting records, plus the one being written, are left.
        let mut holding: Vec<u64> = spool.waiting.iter().map(|e| e.segment).collect();
        holding.extend(spool.active.as_ref().map(|a| a.number));
        holding.sort_unstable();
        holding.dedup();
        prop_assert_eq!(segments(&dir.0), holding);
    }
}

// Handover: a gateway takes over the spool a gone gateway left beside its own.

/// A spool in `dir` holding `ids` (pushed, synced), then closed: what a deleted pod leaves.
fn left_behind(dir: &Path, ids: &[&str]) {
    let mut spool = Spool::open(dir, 1 << 20).expect("open");
    for (i, id) in ids.iter().enumerate() {
        spool.push(id, &record(i)).expect("push");
    }
    spool.sync().expect("sync");
}

#[test]
fn a_gone_gateways_records_move_into_this_spool_in_order_and_its_directory_goes() {
    let parent = TempDir::new("adopt");
    let gone = parent.0.join("pod-a");
    let mut old = Spool::open(&gone, 1 << 20).expect("open");
    for i in 0..5 {
        old.push(&format!("a{i}"), &record(i)).expect("push");
    }
    old.sync().expect("sync");
    // Delivered before the pod went: not adopted.
    old.ack(1).expect("ack");
    drop(old);

    let own = parent.0.join("pod-b");
    let mut spool = Spool::open(&own, 1 << 20).expect("open");
    spool.push("b0", &record(0)).expect("push");
    let adopted = spool.adopt_from(&gone).expect("adopt");
    assert_eq!(adopted, Adoption::Taken { records: 4, left: 0, removed: true });
    assert!(!gone.exists(), "the adopted directory is still there");
    assert_eq!(ids(&all(&spool)), ["b0", "a1", "a2", "a3", "a4"]);
    assert_eq!(all(&spool)[1].1, record(1));
    // Durable: the adopted records are this spool's after a restart.
    drop(spool);
    let spool = Spool::open(&own, 1 << 20).expect("reopen");
    assert_eq!(ids(&all(&spool)), ["b0", "a1", "a2", "a3", "a4"]);
}

#[test]
fn a_spool_whose_lock_is_held_is_skipped_and_left_as_it_is() {
    let parent = TempDir::new("adopt-held");
    let live_dir = parent.0.join("pod-live");
    let mut live = Spool::open(&live_dir, 1 << 20).expect("open");
    live.push("l0", &record(0)).expect("push");
    live.sync().expect("sync");
    let mut spool = Spool::open(&parent.0.join("pod-b"), 1 << 20).expect("open");
    assert_eq!(spool.adopt_from(&live_dir).expect("adopt"), Adoption::Skipped);
    assert!(spool.is_empty());
    assert_eq!(ids(&all(&live)), ["l0"]);
    // This spool's own directory is never adopted either: it holds that lock itself.
    let own = spool.dir().to_path_buf();
    assert_eq!(spool.adopt_from(&own).expect("adopt"), Adoption::Skipped);
}

#[test]
fn of_two_gateways_adopting_one_directory_only_one_takes_it() {
    let parent = TempDir::new("adopt-race");
    let gone = parent.0.join("pod-a");
    left_behind(&gone, &["a0", "a1"]);
    let first = Handover::open(&gone).expect("open").expect("the first gets the lock");
    assert_eq!(first.len(), 2);
    assert!(Handover::open(&gone).expect("open").is_none(), "the second got the lock too");
    let mut spool = Spool::open(&parent.0.join("pod-c"), 1 << 20).expect("open");
    assert_eq!(spool.adopt_from(&gone).expect("adopt"), Adoption::Skipped);
    drop(first);
    assert_eq!(
        spool.adopt_from(&gone).expect("adopt"),
        Adoption::Taken { records: 2, left: 0, removed: true }
    );
}

#[test]
fn a_full_spool_adopts_what_fits_and_leaves_the_rest_for_the_next_round() {
    let parent = TempDir::new("adopt-full");
    let gone = parent.0.join("pod-a");
    left_behind(&gone, &["a0", "a1", "a2", "a3", "a4"]);
    let line = encode_line("a0", &record(0)).len() as u64;
    let mut spool = Spool::open(&parent.0.join("pod-b"), 3 * line).expect("open");
    spool.push("b0", &record(0)).expect("push");

    let adopted = spool.adopt_from(&gone).expect("adopt");
    assert_eq!(adopted, Adoption::Taken { records: 2, left: 3, removed: false });
    assert_eq!(ids(&all(&spool)), ["b0", "a0", "a1"]);
    assert!(gone.join("lock").exists(), "the directory with records left was removed");
    // What is left is exactly what was not taken, durably.
    let rest = Handover::open(&gone).expect("open").expect("free");
    assert_eq!(ids(&rest.from.peek(10).expect("peek")), ["a2", "a3", "a4"]);
    drop(rest);

    // Deliveries make room: the next round takes the rest, and the directory goes.
    spool.ack(3).expect("ack");
    let adopted = spool.adopt_from(&gone).expect("adopt");
    assert_eq!(adopted, Adoption::Taken { records: 3, left: 0, removed: true });
    assert_eq!(ids(&all(&spool)), ["a2", "a3", "a4"]);
    assert!(!gone.exists());
}

#[test]
fn a_handover_moves_in_batches_and_a_full_batch_says_so() {
    let parent = TempDir::new("adopt-batch");
    let gone = parent.0.join("pod-a");
    left_behind(&gone, &["a0", "a1", "a2"]);
    let line = encode_line("a0", &record(0)).len() as u64;
    let mut spool = Spool::open(&parent.0.join("pod-b"), 2 * line).expect("open");
    let mut handover = Handover::open(&gone).expect("open").expect("free");
    assert_eq!(handover.move_into(&mut spool, 1).expect("move"), Moved { records: 1, full: false });
    assert_eq!(handover.move_into(&mut spool, 5).expect("move"), Moved { records: 1, full: true });
    assert_eq!(handover.len(), 1);
    // Not empty: finishing keeps the directory and its record.
    assert!(!handover.finish().expect("finish"));
    let rest = Handover::open(&gone).expect("open").expect("free");
    assert_eq!(ids(&rest.from.peek(10).expect("peek")), ["a2"]);
}

#[test]
fn a_directory_holding_anything_but_spool_files_is_never_removed() {
    let parent = TempDir::new("adopt-foreign");
    let gone = parent.0.join("pod-a");
    left_behind(&gone, &["a0"]);
    fs::write(gone.join("notes.txt"), "not the spool's").expect("write");
    assert!(sibling_spools(&parent.0.join("pod-b")).is_err(), "pod-b does not exist yet");
    let mut spool = Spool::open(&parent.0.join("pod-b"), 1 << 20).expect("open");
    assert!(sibling_spools(spool.dir()).expect("siblings").is_empty());
    // Even when asked directly, the records move but the directory and the file stay.
    let adopted = spool.adopt_from(&gone).expect("adopt");
    assert_eq!(adopted, Adoption::Taken { records: 1, left: 0, removed: false });
    assert_eq!(fs::read_to_string(gone.join("notes.txt")).expect("read"), "not the spool's");
}

#[test]
fn only_spool_directories_beside_this_one_are_siblings() {
    let parent = TempDir::new("siblings");
    let spool = Spool::open(&parent.0.join("pod-own"), 1 << 20).expect("open");
    left_behind(&parent.0.join("pod-a"), &["a0"]);
    left_behind(&parent.0.join("pod-c"), &[]);
    fs::create_dir_all(parent.0.join("no-lock")).expect("dir");
    fs::write(parent.0.join("no-lock/seg-0000000001.jsonl"), "").expect("write");
    fs::create_dir_all(parent.0.join("other-app")).expect("dir");
    fs::write(parent.0.join("other-app/lock"), "").expect("write");
    fs::write(parent.0.join("other-app/data.db"), "").expect("write");
    fs::write(parent.0.join("lock"), "").expect("a plain file");
    std::os::unix::fs::symlink(parent.0.join("pod-a"), parent.0.join("link-to-a")).expect("link");

    let found = sibling_spools(spool.dir()).expect("siblings");
    let names: Vec<_> =
        found.iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["pod-a", "pod-c"]);
}

#[test]
fn adopting_a_directory_that_is_gone_is_skipped_and_creates_nothing() {
    let parent = TempDir::new("adopt-gone");
    let mut spool = Spool::open(&parent.0.join("pod-b"), 1 << 20).expect("open");
    let nowhere = parent.0.join("pod-x");
    assert_eq!(spool.adopt_from(&nowhere).expect("adopt"), Adoption::Skipped);
    assert!(!nowhere.exists());
}

#[test]
fn a_lock_file_removed_after_it_was_opened_is_not_a_lock() {
    let dir = TempDir::new("lock-gone");
    fs::create_dir_all(&dir.0).expect("dir");
    fs::write(dir.0.join(LOCK), "").expect("lock file");
    let opened = OpenOptions::new().write(true).open(dir.0.join(LOCK)).expect("open");
    // A handover ends meanwhile: the lock file is removed, then a new spool is made there.
    fs::remove_file(dir.0.join(LOCK)).expect("remove");
    assert!(matches!(take_lock(&dir.0, &opened).expect("lock"), Locked::Gone));
    let spool = Spool::open(&dir.0, 1 << 20).expect("a fresh spool");
    let reopened = OpenOptions::new().write(true).open(dir.0.join(LOCK)).expect("open");
    assert!(matches!(take_lock(&dir.0, &reopened).expect("lock"), Locked::Held));
    drop(spool);
    assert!(matches!(take_lock(&dir.0, &reopened).expect("lock"), Locked::Ours));
}

#[test]
fn a_failed_fsync_breaks_the_spool_for_pushes_but_what_waits_is_still_delivered() {
    let dir = TempDir::new("broken");
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open");
    spool.push("r1", &record(1)).expect("push");
    spool.sync().expect("sync");
    spool.push("r2", &record(2)).expect("push");
    spool.fail_next_sync = true;
    let error = spool.sync().expect_err("the disk failed");
    assert_eq!(error.raw_os_error(), Some(5));
    assert!(spool.broken().is_some_and(|why| why.contains("os error 5")), "{:?}", spool.broken());
    // A later sync does not pretend: the same failure, without trying again.
    assert!(spool.sync().is_err());
    assert!(matches!(spool.push("r3", &record(3)), Err(PushError::Broken(_))));
    // What was taken before is still there to deliver and acknowledge.
    assert_eq!(ids(&all(&spool)), ["r1", "r2"]);
    spool.ack(2).expect("ack");
    assert!(spool.is_empty());
    drop(spool);
    // A restart opens it again from the disk (here intact): it takes records again.
    let mut spool = Spool::open(&dir.0, 1 << 20).expect("open again");
    assert!(spool.broken().is_none());
    spool.push("r4", &record(4)).expect("push after the restart");
}
