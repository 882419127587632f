//! Tests on real files of checkpoints, the queued writer, the audit log, restart recovery
//! and the whole-store cross-check ([`check::verify_all`]).

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::audit::{AuditIndex, audit_dir};
use super::check::{Status, verify_all};
use super::proto::record::Body;
use super::*;

fn meta(id: &str) -> SessionMeta {
    SessionMeta {
        session_id: id.to_string(),
        user: "alice".into(),
        target: "web-1".into(),
        login: "root".into(),
        protocol: "ssh".into(),
        grant_id: None,
        started_at_unix_ms: 1_790_000_000_000,
    }
}

fn new_key() -> (Arc<RecordingKey>, KeyRing) {
    let (key, _pkcs8) = RecordingKey::generate().expect("generate key");
    let mut ring = KeyRing::new();
    ring.insert(key.public_key_bytes()).expect("insert key");
    (Arc::new(key), ring)
}

fn every(n: u64) -> CheckpointPolicy {
    CheckpointPolicy {
        every_records: n,
        interval: Duration::from_secs(3600),
    }
}

fn no_failure() -> queue::OnFailure {
    Box::new(|why: &str| panic!("unexpected writer failure: {why}"))
}

#[test]
fn checkpoints_every_n_records_are_signed_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let mut rec = Recorder::create(dir.path(), &meta("c"), key, every(3)).expect("create");
    for i in 0..7u8 {
        rec.output(0, &[i; 10]).expect("output");
    }
    let summary = rec.seal("done").expect("seal");
    let report = verify_file(&summary.path, &ring);
    assert!(report.ok(), "{report}");
    let recording = read_file(&summary.path).expect("read");
    let at: Vec<usize> = (recording.records.iter().enumerate())
        .filter(|(_, r)| matches!(r.body, Some(Body::Checkpoint(_))))
        .map(|(i, _)| i)
        .collect();
    // Record 0 (start) and two outputs make 3 records, then a checkpoint, and so on.
    assert_eq!(at, vec![3, 7]);
    assert_eq!(report.last_checkpoint, Some(7));

    // A checkpoint's signature is checked: under another key ring it fails, by position.
    let (_, other) = new_key();
    let report = verify_file(&summary.path, &other);
    assert!(
        (report.problems.iter()).any(|p| p.record == Some(3) && p.what.contains("checkpoint")),
        "{report}"
    );
    assert_eq!(report.last_checkpoint, None);
}

#[test]
fn idle_writer_checkpoints_by_time_and_seals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let policy = CheckpointPolicy {
        every_records: u64::MAX,
        interval: Duration::from_millis(20),
    };
    let rec = Recorder::create(dir.path(), &meta("t"), key, policy).expect("create");
    let path = rec.path().to_path_buf();
    let writer = Writer::spawn(rec, 1 << 20, no_failure()).expect("spawn");
    writer
        .sink()
        .output(0, &bytes::Bytes::from_static(b"typed while idle"))
        .expect("queue");
    // Nothing else is queued: only the writer's own timer can make this durable. On a busy
    // machine the timer may first checkpoint the start record alone, before the output is
    // queued; what must come is a checkpoint as the last record, after the output.
    let start = Instant::now();
    let covers_the_output =
        |r: &VerifyReport| r.records >= 3 && r.last_checkpoint == Some(r.records - 1);
    let report = loop {
        let report = verify_file(&path, &ring);
        if covers_the_output(&report) {
            break report;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no timed checkpoint after the output: {report}"
        );
        std::thread::yield_now();
    };
    assert!(report.problems.is_empty() && !report.sealed, "{report}");
    let summary = writer.seal_blocking("done").expect("seal");
    assert!(verify_file(&summary.path, &ring).ok());
}

#[test]
fn a_full_queue_refuses_events_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let rec = Recorder::create(dir.path(), &meta("q"), key, every(1000)).expect("create");
    let writer = Writer::spawn(rec, 256, no_failure()).expect("spawn");
    assert!(writer.failure().is_none());
    let err = writer
        .sink()
        .output(0, &bytes::Bytes::from(vec![b'x'; 1000]))
        .expect_err("over the limit");
    assert!(
        matches!(err, RecordingError::Backlog { limit: 256 }),
        "{err}"
    );
    // Never silently: every later event is refused too, and the reason is kept.
    assert!(writer.sink().note("small").is_err());
    let why = writer.failure().expect("failure recorded");
    assert!(why.contains("queue full"), "{why}");
    // What was recorded before still seals and verifies.
    let summary = writer.seal_blocking("recording failed").expect("seal");
    assert!(verify_file(&summary.path, &ring).ok());
}

/// Nothing but the shared gatherer wakes a writer for plain events (no sync, no
/// seal, no checkpoint due within the hour), and dropping the last handle wakes
/// a parked writer so it ends and leaves its records on disk for recovery.
#[test]
fn the_gatherer_drains_queued_events_and_the_last_handle_ends_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    // The gatherer is shared with the tests running alongside: when one of
    // theirs started its linger just before, it wakes this writer too, at
    // once. A fresh writer and session then try again.
    let queued = (0..5).find_map(|attempt| {
        let rec = Recorder::create(
            dir.path(),
            &meta(&format!("g{attempt}")),
            key.clone(),
            every(1000),
        )
        .expect("create");
        let path = rec.path().to_path_buf();
        let writer = Writer::spawn(rec, 256, no_failure()).expect("spawn");
        writer
            .sink()
            .output(0, &bytes::Bytes::from(vec![b'x'; 100]))
            .expect("queue");
        writer.backlogged().then_some((writer, path))
    });
    let Some((writer, path)) = queued else {
        panic!("100 bytes and the event overhead fill half of 256");
    };
    let start = Instant::now();
    while writer.backlogged() {
        assert!(start.elapsed() < Duration::from_secs(10), "never drained");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The writer is parked with nothing owed; only the drop can wake it now.
    drop(writer);
    let start = Instant::now();
    while verify_file(&path, &ring).records < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the writer did not end and flush"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = verify_file(&path, &ring);
    assert!(report.problems.is_empty() && !report.sealed, "{report}");
}

/// Opens an audit log in `recordings/audit`.
fn open_log(recordings: &Path, key: &Arc<RecordingKey>, ring: &KeyRing) -> AuditLog {
    AuditLog::open(
        &audit_dir(recordings),
        key.clone(),
        ring,
        every(1000),
        1 << 20,
    )
    .expect("open audit log")
}

/// A sealed session recording named in the audit log, as the pipeline makes them.
async fn logged_session(
    dir: &Path,
    log: &AuditLog,
    key: &Arc<RecordingKey>,
    id: &str,
    text: &[u8],
) {
    log.event("session.start", "alice", id, "root@web-1")
        .expect("event");
    let mut rec = Recorder::create(dir, &meta(id), key.clone(), every(1000)).expect("create");
    rec.output(0, text).expect("output");
    let seal = rec.seal("client closed").expect("seal");
    log.session_sealed(id, &seal, "client closed", false)
        .expect("sealed");
}

#[tokio::test]
async fn verify_all_finds_deleted_replaced_and_planted_recordings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recordings = dir.path();
    let (key, ring) = new_key();
    let log = open_log(recordings, &key, &ring);
    logged_session(recordings, &log, &key, "s-a", b"aaa").await;
    logged_session(recordings, &log, &key, "s-b", b"bbb").await;
    log.close("test over").await.expect("close");
    let report = verify_all(recordings, &ring).expect("verify");
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.segments.len(), report.recordings.len()), (1, 2));

    // Replace s-b by another validly sealed recording of the same session id.
    let other = tempfile::tempdir().expect("tempdir");
    let mut rec =
        Recorder::create(other.path(), &meta("s-b"), key.clone(), every(1000)).expect("c");
    rec.output(0, b"innocent").expect("output");
    rec.seal("client closed").expect("seal");
    fs::copy(other.path().join("s-b.dbr"), recordings.join("s-b.dbr")).expect("copy");
    // Delete s-a; plant s-c, valid but named nowhere.
    fs::remove_file(recordings.join("s-a.dbr")).expect("rm");
    let mut rec = Recorder::create(recordings, &meta("s-c"), key.clone(), every(1000)).expect("c");
    rec.output(0, b"planted").expect("output");
    rec.seal("client closed").expect("seal");

    let report = verify_all(recordings, &ring).expect("verify");
    assert!(!report.ok());
    let said = |name: &str, what: &str| {
        (report.findings.iter()).any(|f| f.subject == name && f.what.contains(what))
    };
    assert!(said("s-a.dbr", "missing"), "{:?}", report.findings);
    assert!(
        said("s-b.dbr", "does not match its seal"),
        "{:?}",
        report.findings
    );
    assert!(
        said("s-c.dbr", "not named in the audit log"),
        "{:?}",
        report.findings
    );
    // Each file on its own still verifies: only the audit log can tell.
    assert!(report.recordings.iter().all(|c| c.report.ok()));
}

#[tokio::test]
async fn segments_chain_across_restarts_and_a_removed_segment_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recordings = dir.path();
    let (key, ring) = new_key();
    let log = open_log(recordings, &key, &ring);
    log.event("login.ok", "alice", "alice", "").expect("event");
    log.sync().await.expect("sync");
    // A crash: the segment is never sealed.
    drop(log);
    let log = open_log(recordings, &key, &ring);
    assert_eq!(log.segment(), 2);
    log.close("stopped").await.expect("close");
    let log = open_log(recordings, &key, &ring);
    assert_eq!(log.segment(), 3);
    // The open newest segment is accepted as being written.
    log.sync().await.expect("sync");
    let report = verify_all(recordings, &ring).expect("verify");
    assert!(report.ok(), "{:?}", report.findings);
    let statuses: Vec<Status> = report.segments.iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![Status::Ok, Status::Ok, Status::Open]);
    let seg1 = read_file(&report.segments[0].report.path).expect("read");
    assert!(
        seg1.seal()
            .is_some_and(|s| s.end_reason.starts_with("interrupted"))
    );
    let seg2 = read_file(&report.segments[1].report.path).expect("read");
    assert!((seg2.records.iter()).any(|r| matches!(&r.body,
        Some(Body::Event(e)) if e.kind == "audit.recovered")));
    log.close("stopped").await.expect("close");

    fs::remove_file(audit_dir(recordings).join("audit-000002.dbr")).expect("rm");
    let report = verify_all(recordings, &ring).expect("verify");
    assert!(
        (report.findings.iter())
            .any(|f| f.subject == "audit-000003.dbr" && f.what.contains("missing")),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn restart_recovery_seals_open_recordings_and_logs_their_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recordings = dir.path();
    let (key, ring) = new_key();
    let log = open_log(recordings, &key, &ring);
    // s-open: started, some output, then the gateway died mid-frame (torn tail).
    log.event("session.start", "alice", "s-open", "")
        .expect("event");
    let mut rec = Recorder::create(recordings, &meta("s-open"), key.clone(), every(2)).expect("c");
    rec.output(0, b"before the crash").expect("output");
    drop(rec);
    let path = recordings.join("s-open.dbr");
    let mut bytes = fs::read(&path).expect("read");
    bytes.extend_from_slice(&[0, 0, 1, 0, 8]);
    fs::write(&path, bytes).expect("write");
    // s-done: sealed, but its audit entry never reached the disk.
    let rec = Recorder::create(recordings, &meta("s-done"), key.clone(), every(2)).expect("c");
    rec.seal("client closed").expect("seal");
    log.sync().await.expect("sync");
    drop(log);

    let log = open_log(recordings, &key, &ring);
    let index = AuditIndex::load(&audit_dir(recordings)).expect("index");
    let mut got =
        recovery::recover_sessions(recordings, &log, &index, &key, &ring).expect("recover");
    got.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let ids: Vec<&str> = got.iter().map(|r| r.session_id.as_str()).collect();
    assert_eq!(ids, vec!["s-done", "s-open"]);
    assert_eq!(got[1].end_reason, recovery::INTERRUPTED);
    log.close("stopped").await.expect("close");

    let report = verify_all(recordings, &ring).expect("verify");
    assert!(report.ok(), "{:?} {:?}", report.findings, report.recordings);
    let open = read_file(&path).expect("read");
    assert!(!open.torn_tail);
    assert_eq!(
        open.seal().map(|s| s.end_reason.as_str()),
        Some(recovery::INTERRUPTED)
    );
    let index = AuditIndex::load(&audit_dir(recordings)).expect("index");
    assert!(
        index
            .sealed
            .get("s-open.dbr")
            .is_some_and(|s| s.interrupted)
    );
    assert!(
        index
            .sealed
            .get("s-done.dbr")
            .is_some_and(|s| !s.interrupted)
    );
}
