//! [`verify_file`]: checks a recording's integrity and reports every break it finds.
//!
//! Checked, in one streaming pass: the magic line; framing (length limit, torn tail); that
//! every record parses and is canonically encoded; `seq` counts up by one; each `prev_hash`
//! equals the chain value computed from the bytes before it; `time_us` never decreases;
//! exactly one start (`SessionStart` for a session, `LogStart` for an audit-log segment), as
//! record 0; only the bodies of that kind of file; every `Checkpoint` matches the chain and
//! its signature verifies; and a `Seal` as the last record whose counts and final hash match
//! and whose signature verifies under a key in the [`KeyRing`].
//!
//! After a break the verifier resynchronises on the next record's own `seq` and
//! `prev_hash`, so each edit is reported once, where it is detected, rather than as a
//! cascade. An unsealed file (writer crashed) with intact records has no problems but is not
//! [`VerifyReport::ok`]: whether it was cut short by a crash or by someone is for the audit
//! log's copy of the seal to say.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::format::{self, Hash};
use super::key::KeyRing;
use super::proto::{Checkpoint, Record, Seal, record::Body};
use super::reader::{FrameReader, Header, NextFrame};

/// Problems listed per report at most; a mangled file would otherwise list one per record.
const MAX_PROBLEMS: usize = 100;

/// Read buffer of [`verify_file`]: large reads keep the system-call count low on big files.
const READ_BUFFER: usize = 1024 * 1024;

/// One integrity break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 0-based position of the record where the break is detected (equal to its seq in an
    /// intact file); `None` for whole-file problems such as a bad magic line.
    pub record: Option<u64>,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.record {
            Some(r) => write!(f, "record {r}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// What record 0 says the file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A session recording (`SessionStart`), with its session id.
    Session(String),
    /// An audit-log segment (`LogStart`): its number and the previous segment's final hash.
    AuditSegment { segment: u64, previous: Vec<u8> },
    /// Record 0 is missing or neither.
    Unknown,
}

/// Outcome of [`verify_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub path: PathBuf,
    pub kind: FileKind,
    /// Whole frames read, the seal included.
    pub records: u64,
    /// A seal was found (it may still have problems of its own).
    pub sealed: bool,
    /// The seal's final hash, to compare with the audit log's copy.
    pub final_hash: Option<[u8; 32]>,
    /// Position of the last checkpoint whose signature verified: everything before it is
    /// proven intact even if the file is unsealed.
    pub last_checkpoint: Option<u64>,
    /// The file ends inside a frame (a writer is mid-write, or crashed).
    pub torn_tail: bool,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when the recording is sealed and has no problem at all.
    pub fn ok(&self) -> bool {
        self.sealed && self.problems.is_empty()
    }

    fn problem(&mut self, record: Option<u64>, what: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                record,
                what: what.into(),
            });
        } else if self.problems.len() == MAX_PROBLEMS {
            self.problems.push(Problem {
                record: None,
                what: "further problems not listed".into(),
            });
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (self.ok(), self.sealed) {
            (true, _) => "OK",
            (false, true) => "FAILED",
            (false, false) => "NOT SEALED",
        };
        write!(
            f,
            "{}: {state} ({} records)",
            self.path.display(),
            self.records
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Running state of one verification pass.
struct Pass<'k> {
    keys: &'k KeyRing,
    report: VerifyReport,
    /// Chain value before the current frame.
    chain: Hash,
    expected_seq: u64,
    last_time_us: u64,
    output_bytes: u64,
    input_bytes: u64,
    /// Re-encoding buffer of the canonical-encoding check.
    scratch: Vec<u8>,
}

/// Verifies the recording at `path` against the trusted `keys`. Never fails: unreadable or
/// malformed files come back as problems.
pub fn verify_file(path: &Path, keys: &KeyRing) -> VerifyReport {
    match File::open(path) {
        Ok(file) => verify_from(path, BufReader::with_capacity(READ_BUFFER, file), keys),
        Err(e) => {
            let mut report = Pass::new(path, keys).report;
            report.problem(None, format!("cannot open: {e}"));
            report
        }
    }
}

/// [`verify_file`] for a recording already in memory; `name` is what the report calls it.
/// Never panics, whatever the bytes (`fuzz/` holds the fuzz target that checks this).
pub fn verify_bytes(name: &Path, bytes: &[u8], keys: &KeyRing) -> VerifyReport {
    verify_from(name, bytes, keys)
}

fn verify_from(path: &Path, source: impl Read, keys: &KeyRing) -> VerifyReport {
    let mut pass = Pass::new(path, keys);
    pass.run(FrameReader::new(source));
    pass.report
}

impl<'k> Pass<'k> {
    fn new(path: &Path, keys: &'k KeyRing) -> Pass<'k> {
        Pass {
            keys,
            report: VerifyReport {
                path: path.to_path_buf(),
                kind: FileKind::Unknown,
                records: 0,
                sealed: false,
                final_hash: None,
                last_checkpoint: None,
                torn_tail: false,
                problems: Vec::new(),
            },
            chain: format::genesis_hash(),
            expected_seq: 0,
            last_time_us: 0,
            output_bytes: 0,
            input_bytes: 0,
            scratch: Vec::new(),
        }
    }

    fn run(&mut self, mut frames: FrameReader<impl Read>) {
        match frames.header() {
            Ok(Header::Current) => {}
            Ok(Header::Truncated) => {
                return self
                    .report
                    .problem(None, "truncated magic line (file cut short)");
            }
            Ok(Header::OtherVersion(line)) => {
                return self
                    .report
                    .problem(None, format!("unsupported format version {line:?}"));
            }
            Ok(Header::NotARecording) => {
                return self
                    .report
                    .problem(None, "bad magic: not a Drawbridge v2 recording");
            }
            Err(e) => return self.report.problem(None, format!("read error: {e}")),
        }
        loop {
            let index = self.report.records;
            match frames.next_frame() {
                Ok(NextFrame::Frame(frame)) => {
                    self.report.records += 1;
                    self.frame(index, frame);
                }
                Ok(NextFrame::End) => break,
                Ok(NextFrame::Torn { have, need }) => {
                    let what = format!("truncated frame, {have} of {need} bytes (torn tail)");
                    self.report.torn_tail = true;
                    return self.report.problem(Some(index), what);
                }
                Ok(NextFrame::TooLong(len)) => {
                    let what = format!("frame length {len} exceeds the limit (corrupt length)");
                    return self.report.problem(Some(index), what);
                }
                Err(e) => return self.report.problem(Some(index), format!("read error: {e}")),
            }
        }
        if self.report.records == 0 {
            self.report
                .problem(None, "no records (a recording starts with a start record)");
        }
    }

    fn frame(&mut self, index: u64, frame: &[u8]) {
        let prev = self.chain;
        // The chain runs over the bytes as found, so a record that does not even parse
        // still lets the next one be checked against it.
        self.chain = format::chain_next(&prev, frame);
        if self.report.sealed {
            return self.report.problem(Some(index), "record after the seal");
        }
        let record = match format::decode_record_with(frame, &mut self.scratch) {
            Ok(r) => r,
            Err(what) => return self.report.problem(Some(index), what),
        };
        if record.seq != self.expected_seq {
            let what = format!(
                "seq is {}, expected {} (records removed, inserted or reordered)",
                record.seq, self.expected_seq
            );
            self.report.problem(Some(index), what);
        }
        self.expected_seq = record.seq.wrapping_add(1);
        if record.prev_hash != prev {
            let what = match index {
                0 => "chain mismatch (header altered)".to_string(),
                i => format!(
                    "chain mismatch (record {} was altered or removed, or records after it)",
                    i - 1
                ),
            };
            self.report.problem(Some(index), what);
            // Resynchronise on the record's own claim so one edit is reported once.
            if let Ok(claimed) = <Hash>::try_from(record.prev_hash.as_slice()) {
                self.chain = format::chain_next(&claimed, frame);
            }
        }
        if record.time_us < self.last_time_us {
            self.report.problem(Some(index), "time goes backwards");
        }
        self.last_time_us = self.last_time_us.max(record.time_us);
        self.body(index, &record, &prev);
    }

    fn body(&mut self, index: u64, record: &Record, prev: &Hash) {
        let is_start = matches!(record.body, Some(Body::Start(_) | Body::LogStart(_)));
        if index == 0 {
            self.report.kind = match &record.body {
                Some(Body::Start(s)) => FileKind::Session(s.session_id.clone()),
                Some(Body::LogStart(l)) => FileKind::AuditSegment {
                    segment: l.segment,
                    previous: l.previous_final_hash.clone(),
                },
                _ => {
                    let what = "record 0 is not a SessionStart or LogStart";
                    return self.report.problem(Some(0), what);
                }
            };
        } else if is_start {
            return self.report.problem(Some(index), "a second start record");
        }
        let audit = matches!(self.report.kind, FileKind::AuditSegment { .. });
        match &record.body {
            None => self.report.problem(Some(index), "record has no known body"),
            Some(Body::Output(d)) => self.output_bytes += d.data.len() as u64,
            Some(Body::Input(d)) => self.input_bytes += d.data.len() as u64,
            Some(Body::Seal(seal)) => self.seal(index, record, seal, prev),
            Some(Body::Checkpoint(c)) => self.checkpoint(index, record, c, prev),
            Some(Body::Event(_) | Body::Sealed(_)) if !audit => {
                let what = "an audit-log entry inside a session recording";
                self.report.problem(Some(index), what);
            }
            Some(_) => {}
        }
        let session_only = matches!(
            record.body,
            Some(
                Body::Resize(_)
                    | Body::Exec(_)
                    | Body::Pty(_)
                    | Body::ExitStatus(_)
                    | Body::Output(_)
                    | Body::Input(_)
            )
        );
        if audit && session_only {
            self.report
                .problem(Some(index), "a session event inside an audit-log segment");
        }
    }

    fn checkpoint(&mut self, index: u64, record: &Record, c: &Checkpoint, prev: &Hash) {
        let mut ok = true;
        if c.records != index {
            let what = format!(
                "checkpoint counts {} records, {index} precede it",
                c.records
            );
            self.report.problem(Some(index), what);
            ok = false;
        }
        if c.chain_hash != prev {
            let what = "checkpoint's chain hash does not match the chain (a record was altered)";
            self.report.problem(Some(index), what);
            ok = false;
        }
        let message = format::checkpoint_message(record.seq, record.time_us, c);
        if let Err(what) = self.keys.verify(&c.key_id, &message, &c.signature) {
            self.report
                .problem(Some(index), format!("checkpoint: {what}"));
            ok = false;
        }
        if ok {
            self.report.last_checkpoint = Some(index);
        }
    }

    fn seal(&mut self, index: u64, record: &Record, seal: &Seal, prev: &Hash) {
        self.report.sealed = true;
        self.report.final_hash = <[u8; 32]>::try_from(seal.final_hash.as_slice()).ok();
        let mut bad = |what: String| self.report.problem(Some(index), what);
        if seal.records != index {
            bad(format!(
                "seal counts {} records, {index} precede it",
                seal.records
            ));
        }
        if seal.output_bytes != self.output_bytes || seal.input_bytes != self.input_bytes {
            bad(format!(
                "seal counts {}/{} output/input bytes, records hold {}/{}",
                seal.output_bytes, seal.input_bytes, self.output_bytes, self.input_bytes
            ));
        }
        if seal.final_hash != prev {
            bad("seal's final hash does not match the chain (a record was altered)".into());
        }
        let message = format::seal_message(record.seq, record.time_us, seal);
        if let Err(what) = self.keys.verify(&seal.key_id, &message, &seal.signature) {
            bad(format!("seal: {what}"));
        }
    }
}
