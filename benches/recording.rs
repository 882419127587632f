//! Recording throughput, in payload bytes per second:
//!
//! - `append/<chunk>`: the writer's work for terminal output arriving in 4 KiB and 16 KiB
//!   chunks: encode, chain, sign a checkpoint every 1,000 records, write to a new file on disk
//!   (the system temp folder), seal. **fsync included**: each checkpoint `fdatasync`s and the
//!   seal `fsync`s, exactly as in the gateway.
//! - `append_queued/<chunk>`: the same through the relay's path, `RecordSink` → bounded queue
//!   → writer thread, timed from the first event queued to the seal on disk.
//! - `verify/<chunk>`: `verify_file` on a 256 MiB recording of such chunks (warm page cache),
//!   and `verify_bytes` on the same bytes in memory (no IO).
//! - `baseline/sha256`: ring's SHA-256 over 16 KiB blocks on this machine, the floor under
//!   both (every recorded byte is hashed once when written and once when verified).
//!
//! `cargo bench --bench recording` (release). Recordings go to the system temp folder, or to
//! `DRAWBRIDGE_BENCH_DIR` (e.g. a tmpfs such as `/dev/shm`, to tell the writer's own cost from
//! the disk's). `DRAWBRIDGE_BENCH_RECORDING_GIB=N` also writes an N GiB recording of 16 KiB
//! chunks once, verifies it and prints both rates (not run in CI; it needs N GiB free).
//!
//! To add a bench, write a `fn name(c: &mut Criterion)` and list it in `criterion_group!`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use drawbridge::recording::{
    CheckpointPolicy, KeyRing, Recorder, RecordingKey, SessionMeta, Writer, verify_bytes,
    verify_file,
};

/// Terminal output chunk sizes: a busy shell's reads, and a bulk `cat`.
const CHUNKS: [usize; 2] = [4 * 1024, 16 * 1024];

/// Size of the recording the verify benches read.
const VERIFY_BYTES: usize = 256 * 1024 * 1024;

/// The gateway's default: a signed checkpoint and a sync every 1,000 records.
fn policy() -> CheckpointPolicy {
    CheckpointPolicy {
        every_records: 1000,
        interval: Duration::from_secs(3600),
    }
}

fn key() -> (Arc<RecordingKey>, KeyRing) {
    let (key, _pkcs8) = RecordingKey::generate().expect("generate key");
    let mut ring = KeyRing::new();
    ring.insert(key.public_key_bytes()).expect("insert key");
    (Arc::new(key), ring)
}

fn meta(id: &str) -> SessionMeta {
    SessionMeta {
        session_id: id.to_string(),
        user: "alice".into(),
        target: "web-1".into(),
        login: "root".into(),
        protocol: "ssh".into(),
        grant_id: Some(1),
        started_at_unix_ms: 1_790_000_000_000,
    }
}

/// Terminal-like output: lines of text with a colour escape, `len` bytes.
fn terminal_chunk(len: usize) -> Vec<u8> {
    let line = b"\x1b[32mdrwxr-xr-x\x1b[0m 2 root root 4096 Nov 29 15:20 lib/x86_64-linux-gnu\r\n";
    line.iter().copied().cycle().take(len).collect()
}

/// Writes `count` output records of `chunk` into a new recording in `dir` and seals it.
fn write_recording(dir: &Path, key: &Arc<RecordingKey>, chunk: &[u8], count: u64) {
    let mut rec = Recorder::create(dir, &meta("bench"), key.clone(), policy()).expect("create");
    for _ in 0..count {
        rec.output(0, chunk).expect("output");
    }
    rec.seal("bench over").expect("seal");
}

/// One throughput bench per chunk size in group `name`; `timed(chunk, iters)` appends
/// `iters` chunks and returns how long that took.
fn append_bench(c: &mut Criterion, name: &str, timed: impl Fn(&[u8], u64) -> Duration) {
    let mut group = c.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for size in CHUNKS {
        let chunk = terminal_chunk(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(kib(size)),
            &chunk,
            |b, chunk| b.iter_custom(|iters| timed(chunk, iters)),
        );
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let (key, _) = key();
    append_bench(c, "append", |chunk, iters| {
        let dir = bench_dir();
        let start = Instant::now();
        write_recording(dir.path(), &key, chunk, iters);
        start.elapsed()
    });
}

fn append_queued(c: &mut Criterion) {
    let (key, _) = key();
    append_bench(c, "append_queued", |chunk, iters| {
        let dir = bench_dir();
        let rec =
            Recorder::create(dir.path(), &meta("bench"), key.clone(), policy()).expect("create");
        // The queue may hold the whole sample: this measures the writer, not the
        // fail-closed limit.
        let on_failure = Box::new(|why: &str| panic!("writer failed: {why}"));
        let writer = Writer::spawn(rec, usize::MAX / 2, on_failure).expect("spawn");
        // Relays hand over their own buffer; the queue shares it.
        let chunk = bytes::Bytes::copy_from_slice(chunk);
        let start = Instant::now();
        for _ in 0..iters {
            writer.sink().output(0, &chunk).expect("queue");
        }
        writer.seal_blocking("bench over").expect("seal");
        start.elapsed()
    });
}

fn verify(c: &mut Criterion) {
    let (key, ring) = key();
    let mut group = c.benchmark_group("verify");
    group.sample_size(10);
    for size in CHUNKS {
        let dir = bench_dir();
        let chunk = terminal_chunk(size);
        write_recording(dir.path(), &key, &chunk, (VERIFY_BYTES / size) as u64);
        let path = dir.path().join("bench.dbr");
        let bytes = std::fs::read(&path).expect("read");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("file", kib(size)), |b| {
            b.iter(|| assert!(verify_file(&path, &ring).ok()));
        });
        group.bench_function(BenchmarkId::new("memory", kib(size)), |b| {
            b.iter(|| assert!(verify_bytes(&path, &bytes, &ring).ok()));
        });
    }
    group.finish();
}

fn baseline(c: &mut Criterion) {
    let block = terminal_chunk(16 * 1024);
    let mut group = c.benchmark_group("baseline");
    group.throughput(Throughput::Bytes(block.len() as u64));
    group.bench_function("sha256", |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, &block));
    });
    group.finish();
}

/// A new folder for bench recordings, under `DRAWBRIDGE_BENCH_DIR` if set.
fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("DRAWBRIDGE_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("bench folder")
}

fn kib(size: usize) -> String {
    format!("{}KiB", size / 1024)
}

/// One multi-GB recording, written and verified once; sizes from
/// `DRAWBRIDGE_BENCH_RECORDING_GIB`.
fn multi_gb(gib: u64) {
    let (key, ring) = key();
    let dir = bench_dir();
    let chunk = terminal_chunk(16 * 1024);
    let count = gib * 1024 * 1024 * 1024 / chunk.len() as u64;
    let payload = (count * chunk.len() as u64) as f64;
    let start = Instant::now();
    write_recording(dir.path(), &key, &chunk, count);
    let wrote = start.elapsed();
    let path = dir.path().join("bench.dbr");
    let file_len = std::fs::metadata(&path).expect("stat").len() as f64;
    let start = Instant::now();
    let report = verify_file(&path, &ring);
    let verified = start.elapsed();
    assert!(report.ok(), "{report}");
    println!(
        "multi-GB recording: {gib} GiB payload, {} records, file {:.2} GiB\n  \
         append (fsync included): {:.1} s, {:.0} MB/s of payload\n  \
         verify (page cache as it is): {:.1} s, {:.2} GB/s of file",
        report.records,
        file_len / (1u64 << 30) as f64,
        wrote.as_secs_f64(),
        payload / wrote.as_secs_f64() / 1e6,
        verified.as_secs_f64(),
        file_len / verified.as_secs_f64() / 1e9,
    );
}

criterion_group!(benches, baseline, append, append_queued, verify);

fn main() {
    benches();
    if let Some(gib) = std::env::var("DRAWBRIDGE_BENCH_RECORDING_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        multi_gb(gib);
    }
    Criterion::default().configure_from_args().final_summary();
}
