//! End-to-end tests of the recording module on real files: write, read, verify, replay, and
//! the core guarantee that any change to a recording is detected.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{LEN_PREFIX, MAGIC};
use super::proto::{self, record::Body};
use super::*;

/// No checkpoints unless a test asks for them, so record positions are predictable.
fn no_checkpoints() -> CheckpointPolicy {
    CheckpointPolicy {
        every_records: u64::MAX,
        interval: Duration::from_secs(3600),
    }
}

fn event(rec: &mut Recorder, body: Body) {
    rec.append(Instant::now(), body).expect("append");
}

fn meta(id: &str) -> SessionMeta {
    SessionMeta {
        session_id: id.to_string(),
        user: "alice".into(),
        target: "web-1".into(),
        login: "root".into(),
        protocol: "ssh".into(),
        grant_id: Some(42),
        started_at_unix_ms: 1_790_000_000_000,
    }
}

fn new_key() -> (Arc<RecordingKey>, KeyRing) {
    let (key, _pkcs8) = RecordingKey::generate().expect("generate key");
    let mut ring = KeyRing::new();
    ring.insert(key.public_key_bytes()).expect("insert key");
    (Arc::new(key), ring)
}

/// Writes a small (~1.3 KB) but varied recording; returns the seal summary and the
/// concatenated output.
fn write_sample(dir: &Path, key: Arc<RecordingKey>) -> (SealSummary, Vec<u8>) {
    let mut rec = Recorder::create(dir, &meta("s1"), key, no_checkpoints()).expect("create");
    let mut output = Vec::new();
    let term = "xterm-256color".to_string();
    event(
        &mut rec,
        Body::Pty(proto::Pty {
            channel: 0,
            term,
            cols: 80,
            rows: 24,
        }),
    );
    rec.note("policy: allow (grant 42)").expect("note");
    for i in 0..8u32 {
        rec.input(0, format!("echo line {i}\r").as_bytes())
            .expect("input");
        let line = format!("line {i}: the quick brown fox jumps over the lazy dog\r\n");
        rec.output(i % 2, line.as_bytes()).expect("output");
        output.extend_from_slice(line.as_bytes());
    }
    event(
        &mut rec,
        Body::Resize(proto::Resize {
            channel: 0,
            cols: 120,
            rows: 40,
        }),
    );
    let command = "uname -a".to_string();
    event(
        &mut rec,
        Body::Exec(proto::Exec {
            channel: 1,
            command,
        }),
    );
    event(
        &mut rec,
        Body::ExitStatus(proto::ExitStatus {
            channel: 1,
            status: 0,
        }),
    );
    let summary = rec.seal("client closed").expect("seal");
    (summary, output)
}

/// Byte offsets where frames start (and the file length, the end of the last frame).
fn frame_bounds(bytes: &[u8]) -> Vec<usize> {
    let mut bounds = vec![MAGIC.len()];
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let prefix: [u8; 4] = bytes[at..at + LEN_PREFIX].try_into().expect("prefix");
        at += LEN_PREFIX + u32::from_be_bytes(prefix) as usize;
        bounds.push(at);
    }
    assert_eq!(at, bytes.len(), "sample file ends on a frame boundary");
    bounds
}

fn verify_bytes(path: &PathBuf, bytes: &[u8], keys: &KeyRing) -> VerifyReport {
    fs::write(path, bytes).expect("write mutated copy");
    verify_file(path, keys)
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let (summary, output) = write_sample(dir.path(), key.clone());
    assert_eq!(summary.path, dir.path().join("s1.dbr"));

    let report = verify_file(&summary.path, &ring);
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, summary.records);
    assert_eq!(report.final_hash, Some(summary.final_hash));

    let recording = read_file(&summary.path).expect("read");
    assert!(!recording.torn_tail);
    assert_eq!(recording.records.len() as u64, summary.records);
    assert_eq!(recording.meta(), Some(meta("s1")));
    assert_eq!(
        recording.start().map(|s| s.key_id.as_str()),
        Some(key.key_id())
    );
    let seal = recording.seal().expect("sealed");
    assert_eq!(seal.end_reason, "client closed");
    assert_eq!(seal.output_bytes, output.len() as u64);
    assert_eq!(seal.records + 1, summary.records);
    for (i, r) in recording.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
    }
}

#[test]
fn every_byte_flip_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let (summary, _) = write_sample(dir.path(), key);
    let original = fs::read(&summary.path).expect("read");
    assert!(
        (1000..2500).contains(&original.len()),
        "size {}",
        original.len()
    );
    let copy = dir.path().join("copy.dbr");
    for pos in 0..original.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bytes = original.clone();
            bytes[pos] ^= mask;
            let report = verify_bytes(&copy, &bytes, &ring);
            assert!(
                !report.ok() && !report.problems.is_empty(),
                "flip {mask:#x} at byte {pos} undetected: {report}"
            );
        }
    }

    // A flip inside a middle record's payload is pinned on the next record's chain link.
    let bounds = frame_bounds(&original);
    let k = 5;
    let mut bytes = original.clone();
    bytes[bounds[k + 1] - 1] ^= 0x01; // last byte of record k (its data)
    let report = verify_bytes(&copy, &bytes, &ring);
    let expected = format!("record {}: chain mismatch (record {k} was altered", k + 1);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().starts_with(&expected)),
        "{report}"
    );
}

#[test]
fn truncation_at_every_length_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let (summary, _) = write_sample(dir.path(), key);
    let original = fs::read(&summary.path).expect("read");
    let bounds = frame_bounds(&original);
    let copy = dir.path().join("copy.dbr");
    for len in 0..original.len() {
        let report = verify_bytes(&copy, &original[..len], &ring);
        assert!(!report.ok(), "truncation to {len} bytes undetected");
        match bounds.iter().position(|b| *b == len) {
            // Cut on a frame boundary after record 0: whole records verify, but unsealed.
            Some(n) if n > 0 => {
                assert!(report.problems.is_empty(), "{len}: {report}");
                assert!(!report.sealed);
                assert_eq!(report.records, n as u64);
            }
            _ => assert!(!report.problems.is_empty(), "{len}: {report}"),
        }
    }
}

#[test]
fn removed_or_swapped_record_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let (summary, _) = write_sample(dir.path(), key);
    let original = fs::read(&summary.path).expect("read");
    let b = frame_bounds(&original);
    let copy = dir.path().join("copy.dbr");

    let mut removed = original[..b[6]].to_vec();
    removed.extend_from_slice(&original[b[7]..]);
    let report = verify_bytes(&copy, &removed, &ring);
    assert!(!report.ok());
    let text = report.to_string();
    assert!(text.contains("record 6: seq is 7, expected 6"), "{text}");
    assert!(text.contains("record 6: chain mismatch"), "{text}");

    let mut swapped = original[..b[6]].to_vec();
    swapped.extend_from_slice(&original[b[7]..b[8]]);
    swapped.extend_from_slice(&original[b[6]..b[7]]);
    swapped.extend_from_slice(&original[b[8]..]);
    assert!(!verify_bytes(&copy, &swapped, &ring).ok());

    // Dropping the seal leaves a clean but unsealed file.
    let report = verify_bytes(&copy, &original[..b[b.len() - 2]], &ring);
    assert!(
        !report.ok() && !report.sealed && report.problems.is_empty(),
        "{report}"
    );
}

#[test]
fn unknown_key_is_a_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _ring) = new_key();
    let (summary, _) = write_sample(dir.path(), key);
    let (_other, other_ring) = new_key();
    for ring in [KeyRing::new(), other_ring] {
        let report = verify_file(&summary.path, &ring);
        assert!(!report.ok());
        assert!(report.sealed);
        assert_eq!(report.problems.len(), 1, "{report}");
        assert!(
            report.problems[0].what.contains("unknown key id"),
            "{report}"
        );
    }
}

#[test]
fn unsealed_and_torn_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let mut rec =
        Recorder::create(dir.path(), &meta("crash"), key, no_checkpoints()).expect("create");
    rec.output(0, b"hello\r\n").expect("output");
    rec.input(0, b"exit\r").expect("input");
    let path = rec.path().to_path_buf();
    drop(rec); // the writer "crashes": no seal

    let report = verify_file(&path, &ring);
    assert!(!report.ok() && !report.sealed, "{report}");
    assert!(report.problems.is_empty(), "{report}");
    assert_eq!(report.records, 3);
    let recording = read_file(&path).expect("read unsealed");
    assert_eq!(recording.records.len(), 3);
    assert!(recording.seal().is_none());

    // Half a frame at the end: a torn tail, named by its record.
    let mut bytes = fs::read(&path).expect("read");
    bytes.extend_from_slice(&[0, 0, 0, 40, 8, 3]);
    fs::write(&path, &bytes).expect("write");
    let report = verify_file(&path, &ring);
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(report.problems[0].record, Some(3));
    assert!(report.problems[0].what.contains("torn tail"), "{report}");
    let recording = read_file(&path).expect("read torn");
    assert!(recording.torn_tail);
    assert_eq!(recording.records.len(), 3);

    // Recovery on restart cuts the torn tail and seals; a second recovery is refused.
    let (new_key, mut new_ring) = new_key();
    let summary = Recorder::seal_interrupted(&path, new_key.clone(), &ring, "gateway restarted")
        .expect("recover");
    assert_eq!(summary.records, 4);
    let report = verify_file(&path, &new_ring);
    assert!(report.ok(), "{report}");
    assert_eq!(report.final_hash, Some(summary.final_hash));
    assert!(Recorder::seal_interrupted(&path, new_key.clone(), &ring, "again").is_err());
    // Both keys in one ring (rotation): still OK.
    new_ring
        .insert(ring.get(ring.key_ids().next().expect("id")).expect("pk"))
        .expect("insert");
    assert!(verify_file(&path, &new_ring).ok());

    // Recovery refuses to sign over an edited record.
    let mut rec = Recorder::create(
        dir.path(),
        &meta("crash2"),
        new_key.clone(),
        no_checkpoints(),
    )
    .expect("create");
    rec.output(0, b"secret\r\n").expect("output");
    rec.note("x").expect("note");
    let path = rec.path().to_path_buf();
    drop(rec);
    let mut bytes = fs::read(&path).expect("read");
    let at = bytes.windows(6).position(|w| w == b"secret").expect("find");
    bytes[at] = b'S';
    fs::write(&path, &bytes).expect("write");
    assert!(matches!(
        Recorder::seal_interrupted(&path, new_key, &new_ring, "restart"),
        Err(RecordingError::Format { .. })
    ));
}

#[test]
fn garbage_and_oversized_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_key, ring) = new_key();
    let path = dir.path().join("g.dbr");
    let report = verify_bytes(&path, b"hello world, not a recording", &ring);
    assert!(report.problems[0].what.contains("bad magic"), "{report}");
    let report = verify_bytes(&path, b"DRAWBRIDGE-REC v1\n", &ring);
    assert!(report.problems[0].what.contains("unsupported"), "{report}");
    let mut huge = MAGIC.to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let report = verify_bytes(&path, &huge, &ring);
    assert!(
        report.problems[0].what.contains("exceeds the limit"),
        "{report}"
    );
    assert!(matches!(
        read_file(&path),
        Err(RecordingError::Format { .. })
    ));
}

#[test]
fn replay_writes_exactly_the_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _ring) = new_key();
    let (summary, output) = write_sample(dir.path(), key);
    let recording = read_file(&summary.path).expect("read");
    let mut out = Vec::new();
    replay(&recording, f64::INFINITY, None, &mut out).expect("replay");
    assert_eq!(out, output);
    let mut out = Vec::new();
    replay(&recording, 1000.0, Some(Duration::from_millis(1)), &mut out).expect("replay");
    assert_eq!(out, output);
    for bad in [0.0, -1.0, f64::NAN] {
        assert!(matches!(
            replay(&recording, bad, None, &mut Vec::new()),
            Err(RecordingError::InvalidSpeed(_))
        ));
    }
}

#[test]
fn file_mode_and_creation_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let sub = dir.path().join("recordings/nested");
    let rec = Recorder::create(&sub, &meta("m"), key.clone(), no_checkpoints()).expect("create");
    let mode = fs::metadata(rec.path()).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(matches!(
        Recorder::create(&sub, &meta("m"), key.clone(), no_checkpoints()),
        Err(RecordingError::Io(_))
    ));
    for id in ["", ".", "..", "a/b", ".hidden", "x\0y"] {
        assert!(matches!(
            Recorder::create(&sub, &meta(id), key.clone(), no_checkpoints()),
            Err(RecordingError::InvalidSessionId(_))
        ));
    }
    let summary = rec.seal("done").expect("seal");
    assert_eq!(summary.records, 2);
    assert!(verify_file(&summary.path, &ring).ok());
}

#[test]
fn large_data_is_chunked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ring) = new_key();
    let mut rec =
        Recorder::create(dir.path(), &meta("big"), key, no_checkpoints()).expect("create");
    let data: Vec<u8> = (0..(format::MAX_DATA_CHUNK * 5 / 2))
        .map(|i| i as u8)
        .collect();
    rec.output(3, &data).expect("output");
    let summary = rec.seal("done").expect("seal");
    assert_eq!(summary.records, 5); // start, 3 chunks, seal
    assert!(verify_file(&summary.path, &ring).ok());
    let recording = read_file(&summary.path).expect("read");
    let mut out = Vec::new();
    replay(&recording, f64::INFINITY, None, &mut out).expect("replay");
    assert_eq!(out, data);
    assert!(
        recording.records[1..4]
            .iter()
            .all(|r| matches!(&r.body, Some(Body::Output(d)) if d.channel == 3))
    );
}
