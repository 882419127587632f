//! Property tests of tamper evidence, exhaustive over one small recording (40 records, a
//! checkpoint every 5, sealed): every single-byte change, every truncation, and deleting,
//! duplicating or swapping any record is detected, and the report points at the record that
//! was touched. Also key rotation, and the fuzz entry on deterministic mutations.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::format::{LEN_PREFIX, MAGIC};
use super::fuzz::{check_untrusted_bytes, seed_key_ring};
use super::proto::{self, record::Body};
use super::*;

/// Records in the sample, the seal included.
const SAMPLE_RECORDS: usize = 40;

/// Set to run the single-byte test with all 255 replacement values at every offset (about
/// 800,000 verifications) instead of the bit flips and boundary values CI runs.
const ALL_VALUES_ENV: &str = "DRAWBRIDGE_TAMPER_ALL_VALUES";

/// Set to rewrite the fuzz seed recording (`fuzz/seeds/sealed-40.dbr`) from [`sample`].
const WRITE_SEED_ENV: &str = "DRAWBRIDGE_WRITE_FUZZ_SEED";

/// The committed fuzz seed; must stay a valid recording under [`seed_key_ring`].
const FUZZ_SEED: &[u8] = include_bytes!("../../fuzz/seeds/sealed-40.dbr");

/// The test key whose public half is [`fuzz::SEED_PUBLIC_KEY`]: Ed25519 seed `[0x5e; 32]`
/// as a PKCS#8 v1 document.
fn seed_key() -> RecordingKey {
    let mut pkcs8 = format::unhex("302e020100300506032b657004220420").expect("hex");
    pkcs8.extend_from_slice(&[0x5e; 32]);
    RecordingKey::from_pkcs8(&pkcs8).expect("seed key")
}

fn every(n: u64) -> CheckpointPolicy {
    CheckpointPolicy {
        every_records: n,
        interval: Duration::from_secs(3600),
    }
}

fn meta(id: &str) -> SessionMeta {
    SessionMeta {
        session_id: id.to_string(),
        user: "alice".into(),
        target: "db-1".into(),
        login: "postgres".into(),
        protocol: "ssh".into(),
        grant_id: Some(7),
        started_at_unix_ms: 1_790_000_000_000,
    }
}

/// A valid recording in memory, with the byte offsets where its frames start.
struct Sample {
    bytes: Vec<u8>,
    /// Start of each frame, then the file length: frame `k` is `bounds[k]..bounds[k + 1]`.
    bounds: Vec<usize>,
    /// Positions of the checkpoints.
    checkpoints: Vec<u64>,
}

impl Sample {
    fn frame(&self, k: usize) -> &[u8] {
        &self.bytes[self.bounds[k]..self.bounds[k + 1]]
    }

    /// The file with its frames in this order (indices into the original).
    fn with_frames(&self, order: &[usize]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for &k in order {
            out.extend_from_slice(self.frame(k));
        }
        out
    }

    /// Index of the frame holding byte `offset`; `None` inside the magic line.
    fn frame_at(&self, offset: usize) -> Option<usize> {
        (offset >= MAGIC.len()).then(|| self.bounds.partition_point(|b| *b <= offset) - 1)
    }

    fn seal_index(&self) -> usize {
        SAMPLE_RECORDS - 1
    }
}

/// Writes the sample with `key`: a pty, varied output and input (some frames longer than
/// 127 bytes, so lengths take two varint bytes), a resize, an exec, a note, an exit status.
fn sample_with(key: RecordingKey) -> Sample {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rec =
        Recorder::create(dir.path(), &meta("tamper"), Arc::new(key), every(5)).expect("create");
    let pty = proto::Pty {
        channel: 0,
        term: "xterm".into(),
        cols: 80,
        rows: 24,
    };
    rec.append(Instant::now(), Body::Pty(pty)).expect("pty");
    for i in 0..27u8 {
        match i % 3 {
            0 => rec.input(0, &[b'a' + i % 26, b'\r']).expect("input"),
            _ => rec
                .output(0, &vec![b'0' + i % 10; usize::from(i) * 9])
                .expect("output"),
        }
    }
    let resize = proto::Resize {
        channel: 0,
        cols: 132,
        rows: 43,
    };
    rec.append(Instant::now(), Body::Resize(resize))
        .expect("resize");
    let exec = proto::Exec {
        channel: 1,
        command: "pg_dump prod".into(),
    };
    rec.append(Instant::now(), Body::Exec(exec)).expect("exec");
    rec.note("grant 7 ends in 5m").expect("note");
    let exit = proto::ExitStatus {
        channel: 1,
        status: 3,
    };
    rec.append(Instant::now(), Body::ExitStatus(exit))
        .expect("exit");
    let summary = rec.seal("client closed").expect("seal");
    let bytes = fs::read(&summary.path).expect("read");
    let recording = read_file(&summary.path).expect("parse");
    let checkpoints = (recording.records.iter())
        .filter(|r| matches!(r.body, Some(Body::Checkpoint(_))))
        .map(|r| r.seq)
        .collect();
    let bounds = frame_bounds(&bytes);
    assert_eq!(bounds.len(), SAMPLE_RECORDS + 1, "sample size changed");
    Sample {
        bytes,
        bounds,
        checkpoints,
    }
}

fn sample() -> (Sample, KeyRing) {
    (sample_with(seed_key()), seed_key_ring())
}

fn frame_bounds(bytes: &[u8]) -> Vec<usize> {
    let mut bounds = vec![MAGIC.len()];
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let prefix: [u8; 4] = bytes[at..at + LEN_PREFIX].try_into().expect("prefix");
        at += LEN_PREFIX + u32::from_be_bytes(prefix) as usize;
        bounds.push(at);
    }
    bounds
}

fn verify(bytes: &[u8], ring: &KeyRing) -> VerifyReport {
    verify_bytes(Path::new("tampered.dbr"), bytes, ring)
}

/// True when the report's first problem names record `k`: found at `k` itself, or as the
/// chain break at `k + 1` that says record `k` was altered (a changed byte that still
/// decodes is only visible through the next record's link).
fn names_record(report: &VerifyReport, k: usize) -> bool {
    let Some(first) = report.problems.first() else {
        return false;
    };
    let k = k as u64;
    first.record == Some(k)
        || (first.record == Some(k + 1) && first.what.contains(&format!("record {k} was altered")))
}

/// The replacement values tried for a byte: all 255 others under [`ALL_VALUES_ENV`],
/// otherwise each single-bit flip, its complement, 0x00, 0xff and the neighbours ±1 (which
/// turn a varint's continuation bit or a length by one).
fn replacements(original: u8, all: bool) -> Vec<u8> {
    let mut values: Vec<u8> = if all {
        (0..=255).collect()
    } else {
        let flips = (0..8).map(|bit| original ^ (1 << bit));
        let edges = [
            !original,
            0,
            0xff,
            original.wrapping_add(1),
            original.wrapping_sub(1),
        ];
        flips.chain(edges).collect()
    };
    values.retain(|v| *v != original);
    values.sort_unstable();
    values.dedup();
    values
}

#[test]
fn the_sample_verifies() {
    let (s, ring) = sample();
    let report = verify(&s.bytes, &ring);
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, SAMPLE_RECORDS as u64);
    assert_eq!(s.checkpoints, vec![5, 11, 17, 23, 29, 35]);
    assert!(s.bytes.len() > 2000, "{} bytes", s.bytes.len());
}

#[test]
fn every_single_byte_change_is_detected_and_located() {
    let (s, ring) = sample();
    let all = std::env::var_os(ALL_VALUES_ENV).is_some();
    let offsets: Vec<usize> = (0..s.bytes.len()).collect();
    let threads = thread::available_parallelism().map_or(2, |n| n.get());
    // Offsets are independent; spread them over the cores so the exhaustive run stays short.
    thread::scope(|scope| {
        for chunk in offsets.chunks(offsets.len().div_ceil(threads)) {
            let (s, ring) = (&s, &ring);
            scope.spawn(move || {
                for &offset in chunk {
                    for value in replacements(s.bytes[offset], all) {
                        let mut bytes = s.bytes.clone();
                        bytes[offset] = value;
                        assert_change_located(s, &verify(&bytes, ring), offset, value);
                    }
                }
            });
        }
    });
}

fn assert_change_located(s: &Sample, report: &VerifyReport, offset: usize, value: u8) {
    let change = format!("byte {offset} set to {value:#04x}");
    assert!(!report.ok(), "{change} undetected: {report}");
    match s.frame_at(offset) {
        None => assert_eq!(report.problems[0].record, None, "{change}: {report}"),
        Some(k) => assert!(names_record(report, k), "{change} (record {k}): {report}"),
    }
}

#[test]
fn every_truncation_is_detected_and_located() {
    let (s, ring) = sample();
    for len in 0..s.bytes.len() {
        let report = verify(&s.bytes[..len], &ring);
        assert!(!report.ok(), "cut to {len} bytes undetected");
        if len <= MAGIC.len() {
            // Nothing but (part of) the magic line: a whole-file problem.
            assert_eq!(report.problems.len(), 1, "{len}: {report}");
            assert_eq!(report.problems[0].record, None, "{len}: {report}");
        } else if let Ok(whole) = s.bounds.binary_search(&len) {
            // Cut between frames: every record left is intact but the seal is gone; what was
            // cut shows in the count, and the audit log's copy of the seal flags it.
            assert!(report.problems.is_empty(), "{len}: {report}");
            assert!(
                !report.sealed && report.records == whole as u64,
                "{len}: {report}"
            );
            let proven = s.checkpoints.iter().copied().filter(|c| *c < whole as u64);
            assert_eq!(report.last_checkpoint, proven.max(), "{len}: {report}");
            assert!(report.to_string().contains("NOT SEALED"), "{report}");
        } else {
            let k = s.frame_at(len).expect("inside a frame");
            let first = &report.problems[0];
            assert_eq!(first.record, Some(k as u64), "{len}: {report}");
            assert!(first.what.contains("torn tail"), "{len}: {report}");
            assert_eq!(report.problems.len(), 1, "{len}: {report}");
        }
    }
}

#[test]
fn deleting_any_record_is_detected_and_located() {
    let (s, ring) = sample();
    for k in 0..SAMPLE_RECORDS {
        let order: Vec<usize> = (0..SAMPLE_RECORDS).filter(|i| *i != k).collect();
        let report = verify(&s.with_frames(&order), &ring);
        assert!(!report.ok(), "deleting record {k} undetected");
        if k == s.seal_index() {
            // Without its seal the file is intact but open: only the audit log can tell a
            // crash from a removed seal (tests_audit covers that cross-check).
            assert!(!report.sealed && report.problems.is_empty(), "{report}");
            assert_eq!(report.records, k as u64);
        } else {
            assert_eq!(
                report.problems[0].record,
                Some(k as u64),
                "delete {k}: {report}"
            );
            let what = format!("seq is {}, expected {k}", k + 1);
            assert!(report.problems[0].what.contains(&what), "{report}");
        }
    }
}

#[test]
fn swapping_any_two_records_is_detected_and_located() {
    let (s, ring) = sample();
    for i in 0..SAMPLE_RECORDS {
        for j in i + 1..SAMPLE_RECORDS {
            let mut order: Vec<usize> = (0..SAMPLE_RECORDS).collect();
            order.swap(i, j);
            let report = verify(&s.with_frames(&order), &ring);
            assert!(!report.ok(), "swapping {i} and {j} undetected");
            let first = &report.problems[0];
            assert_eq!(first.record, Some(i as u64), "swap {i}, {j}: {report}");
            let what = format!("seq is {j}, expected {i}");
            assert!(first.what.contains(&what), "swap {i}, {j}: {report}");
        }
    }
}

#[test]
fn duplicating_any_record_is_detected_and_located() {
    let (s, ring) = sample();
    for k in 0..SAMPLE_RECORDS {
        let mut order: Vec<usize> = (0..SAMPLE_RECORDS).collect();
        order.insert(k + 1, k);
        let report = verify(&s.with_frames(&order), &ring);
        assert!(!report.ok(), "duplicating record {k} undetected");
        let at = Some(k as u64 + 1);
        assert_eq!(report.problems[0].record, at, "duplicate {k}: {report}");
        if k == s.seal_index() {
            assert!(
                report.problems[0].what.contains("after the seal"),
                "{report}"
            );
        } else {
            let what = format!("seq is {k}, expected {}", k + 1);
            assert!(report.problems[0].what.contains(&what), "{report}");
        }
    }
}

/// Writes a session with checkpoints every 2 records; `seal` says whether to seal it or to
/// leave it as a crash would.
fn session(dir: &Path, id: &str, key: Arc<RecordingKey>, seal: bool) -> std::path::PathBuf {
    let mut rec = Recorder::create(dir, &meta(id), key, every(2)).expect("create");
    for i in 0..4u8 {
        rec.output(0, &[b'a' + i; 30]).expect("output");
    }
    let path = rec.path().to_path_buf();
    if seal {
        rec.seal("client closed").expect("seal");
    }
    path
}

#[test]
fn recordings_signed_before_a_key_rotation_still_verify() {
    let data = tempfile::tempdir().expect("tempdir");
    let recordings = tempfile::tempdir().expect("tempdir");
    let (keys, _) = crate::keys::load_or_create(data.path()).expect("keys");
    let old = keys.recording.clone();
    let before = session(recordings.path(), "before", old.clone(), true);
    let crashed = session(recordings.path(), "crashed", old.clone(), false);

    let (old_id, new_id) = crate::keys::rotate_recording_key(data.path()).expect("rotate");
    assert_eq!(old_id, old.key_id());
    let (keys, _) = crate::keys::load_or_create(data.path()).expect("reload keys");
    let new = keys.recording.clone();
    assert_eq!(new.key_id(), new_id);
    let after = session(recordings.path(), "after", new.clone(), true);
    let ring = crate::keys::load_key_ring(data.path()).expect("key ring");
    // Recovery after the restart seals the crashed file with the new key; its checkpoints
    // stay signed by the old one.
    Recorder::seal_interrupted(&crashed, new.clone(), &ring, "interrupted").expect("recover");

    for path in [&before, &crashed, &after] {
        let report = verify_file(path, &ring);
        assert!(report.ok(), "{report}");
    }
    let seal_key = |path: &Path| {
        read_file(path)
            .expect("read")
            .seal()
            .expect("seal")
            .key_id
            .clone()
    };
    assert_eq!(seal_key(&before), old_id);
    assert_eq!(
        (seal_key(&crashed), seal_key(&after)),
        (new_id.clone(), new_id)
    );

    // Without the old public key, exactly what the old key signed fails, by position.
    let mut new_only = KeyRing::new();
    new_only.insert(new.public_key_bytes()).expect("insert");
    let unknown = |path: &Path| -> Vec<u64> {
        let report = verify_file(path, &new_only);
        assert!(
            (report.problems.iter()).all(|p| p.what.contains(&format!("unknown key id {old_id}"))),
            "{report}"
        );
        report.problems.iter().filter_map(|p| p.record).collect()
    };
    // start, output, checkpoint 2, output, output, checkpoint 5, output, seal 7.
    assert_eq!(unknown(&before), vec![2, 5, 7]);
    assert_eq!(unknown(&crashed), vec![2, 5]);
    assert_eq!(unknown(&after), Vec::<u64>::new());
}

#[test]
fn fuzz_seed_is_a_valid_recording() {
    let (s, ring) = sample();
    if std::env::var_os(WRITE_SEED_ENV).is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sealed-40.dbr");
        fs::write(&path, &s.bytes).expect("write seed");
    }
    let report = check_untrusted_bytes(FUZZ_SEED);
    assert!(
        report.ok(),
        "fuzz/seeds/sealed-40.dbr no longer verifies; rewrite it with \
         {WRITE_SEED_ENV}=1 cargo test --lib recording::tests_tamper: {report}"
    );
    assert_eq!(
        seed_key().public_key_bytes(),
        ring.get(seed_key().key_id()).expect("key")
    );
}

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One random edit of the kinds a fuzzer or an attacker makes: bytes flipped, set, inserted,
/// removed or duplicated, a cut, a frame length rewritten, whole frames moved or repeated.
fn mutate(s: &Sample, bytes: &mut Vec<u8>, rng: &mut Rng) {
    let len = bytes.len().max(1);
    match rng.below(9) {
        0 => {
            let at = rng.below(len).min(bytes.len().saturating_sub(1));
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 1 << rng.below(8);
            }
        }
        1 => {
            if let Some(b) = bytes.get_mut(rng.below(len)) {
                *b = rng.next() as u8;
            }
        }
        2 => bytes.truncate(rng.below(len)),
        3 => {
            let at = rng.below(len + 1).min(bytes.len());
            let n = 1 + rng.below(16);
            let junk = rng.bytes(n);
            bytes.splice(at..at, junk);
        }
        4 => {
            let at = rng.below(len).min(bytes.len());
            let end = (at + 1 + rng.below(64)).min(bytes.len());
            bytes.drain(at..end);
        }
        5 => {
            let at = rng.below(len).min(bytes.len());
            let end = (at + 1 + rng.below(256)).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            let to = rng.below(bytes.len() + 1);
            bytes.splice(to..to, copy);
        }
        6 => {
            // A frame's length prefix (of the original layout) set to anything.
            let at = s.bounds[rng.below(SAMPLE_RECORDS)];
            if at + LEN_PREFIX <= bytes.len() {
                let value = (rng.next() as u32) >> rng.below(32);
                bytes[at..at + LEN_PREFIX].copy_from_slice(&value.to_be_bytes());
            }
        }
        7 => {
            let mut order: Vec<usize> = (0..SAMPLE_RECORDS).collect();
            let k = rng.below(SAMPLE_RECORDS);
            order.insert(rng.below(SAMPLE_RECORDS + 1), k);
            *bytes = s.with_frames(&order);
        }
        _ => {
            let mut order: Vec<usize> = (0..SAMPLE_RECORDS).collect();
            order.swap(rng.below(SAMPLE_RECORDS), rng.below(SAMPLE_RECORDS));
            order.remove(rng.below(SAMPLE_RECORDS));
            *bytes = s.with_frames(&order);
        }
    }
}

#[test]
fn fuzz_entry_holds_on_thousands_of_deterministic_mutations() {
    let (s, _) = sample();
    let mut rng = Rng(0x5eed_d0c5_f00d_ab1e);
    for case in 0..4000 {
        let mut bytes = s.bytes.clone();
        // One to three stacked edits: single ones stay close to valid, stacked ones wander.
        for _ in 0..=rng.below(3) {
            mutate(&s, &mut bytes, &mut rng);
        }
        let report = check_untrusted_bytes(&bytes);
        if bytes != s.bytes {
            assert!(
                !report.ok(),
                "case {case}: an edited recording verifies: {report}"
            );
        }
    }
}
