//! [`verify_all`]: the audit log and every recording, each verified and cross-checked.
//!
//! On top of [`verify_file`] for every file, this checks what no single file can prove:
//! - the audit-log segments run from 1 without gaps, each names its number, and each names
//!   the previous segment's sealed final hash (a removed or replaced segment breaks this);
//! - every recording the audit log lists as sealed exists, with exactly that final hash and
//!   record count (a deleted or replaced recording fails, named);
//! - every recording file is named in the audit log (a planted file fails).
//!
//! Unsealed files are acceptable only where a writer may be at work: the newest audit-log
//! segment, and the recordings of sessions that segment saw start and not end. A torn tail
//! is tolerated there too (the writer may be mid-frame); any other problem is not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::audit::{self, AuditIndex};
use super::verify::FileKind;
use super::{FILE_EXTENSION, KeyRing, RecordingError, VerifyReport, format, verify_file};

/// The verdict on one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Unsealed but intact, and a writer may still be at work on it.
    Open,
    Failed,
}

/// One file's report and verdict.
#[derive(Debug, Clone)]
pub struct Checked {
    pub report: VerifyReport,
    pub status: Status,
}

/// A problem found by comparing files with the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The file or session it is about.
    pub subject: String,
    pub what: String,
}

/// Everything [`verify_all`] found.
#[derive(Debug, Clone, Default)]
pub struct FullReport {
    pub segments: Vec<Checked>,
    pub recordings: Vec<Checked>,
    pub findings: Vec<Finding>,
}

impl FullReport {
    /// True when every file is OK or legitimately open and nothing is missing or replaced.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
            && self
                .segments
                .iter()
                .chain(&self.recordings)
                .all(|c| c.status != Status::Failed)
    }
}

fn finding(subject: impl Into<String>, what: impl Into<String>) -> Finding {
    Finding {
        subject: subject.into(),
        what: what.into(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sealed and clean is OK; unsealed is open if `may_be_open` and nothing but a torn tail is
/// wrong; anything else failed.
fn status(report: &VerifyReport, may_be_open: bool) -> Status {
    if report.ok() {
        Status::Ok
    } else if may_be_open
        && !report.sealed
        && report.problems.len() == usize::from(report.torn_tail)
    {
        Status::Open
    } else {
        Status::Failed
    }
}

/// Verifies the audit log in `recordings_dir/audit` and every recording in
/// `recordings_dir`. Fails only when a folder cannot be listed; every integrity problem is in
/// the report.
pub fn verify_all(recordings_dir: &Path, keys: &KeyRing) -> Result<FullReport, RecordingError> {
    let mut full = FullReport::default();
    let audit_dir = audit::audit_dir(recordings_dir);
    let current = check_segments(&audit_dir, keys, &mut full)?;
    // The index reads whole records only; a damaged segment is already reported above.
    let index = AuditIndex::load(&audit_dir).unwrap_or_default();

    let mut files: Vec<PathBuf> = std::fs::read_dir(recordings_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == FILE_EXTENSION))
        .collect();
    files.sort();
    for path in &files {
        let name = file_name(path);
        let stem = name.trim_end_matches(".dbr");
        let open_now =
            index.started.get(stem) == Some(&current) && !index.sealed.contains_key(&name);
        let report = verify_file(path, keys);
        if !matches!(report.kind, FileKind::Session(_)) && report.records > 0 {
            full.findings
                .push(finding(&name, "not a session recording"));
        }
        if !index.started.contains_key(stem) && !index.sealed.contains_key(&name) {
            full.findings
                .push(finding(&name, "recording is not named in the audit log"));
        }
        let status = status(&report, open_now);
        full.recordings.push(Checked { report, status });
    }
    cross_check(&index, &full.recordings, true, &mut full.findings);
    for (id, segment) in &index.started {
        let name = format!("{id}.{FILE_EXTENSION}");
        if !index.sealed.contains_key(&name) && !files.iter().any(|p| file_name(p) == name) {
            let what = format!(
                "session {id} started (audit segment {segment}) but its recording is missing"
            );
            full.findings.push(finding(&name, what));
        }
    }
    Ok(full)
}

/// Verifies the given files, and compares each with its seal entry in the audit log when
/// the log names it.
pub fn verify_paths(paths: &[PathBuf], recordings_dir: &Path, keys: &KeyRing) -> FullReport {
    let index = AuditIndex::load(&audit::audit_dir(recordings_dir)).unwrap_or_default();
    let mut full = FullReport::default();
    for path in paths {
        let report = verify_file(path, keys);
        let status = status(&report, false);
        full.recordings.push(Checked { report, status });
    }
    cross_check(&index, &full.recordings, false, &mut full.findings);
    full
}

/// Every seal entry against the file of that name among `checked`. When `checked` is the
/// whole folder (`whole_folder`), a seal entry without its file means the file was deleted.
fn cross_check(
    index: &AuditIndex,
    checked: &[Checked],
    whole_folder: bool,
    findings: &mut Vec<Finding>,
) {
    let by_name: BTreeMap<String, &VerifyReport> = checked
        .iter()
        .map(|c| (file_name(&c.report.path), &c.report))
        .collect();
    for (name, entry) in &index.sealed {
        let Some(report) = by_name.get(name) else {
            if whole_folder {
                let what = format!(
                    "recording of session {} is missing: the audit log has its seal (deleted?)",
                    entry.session_id
                );
                findings.push(finding(name, what));
            }
            continue;
        };
        let same_hash = report.final_hash.map(|h| h.to_vec()) == Some(entry.final_hash.clone());
        if !same_hash || report.records != entry.records {
            let what = format!(
                "does not match its seal in the audit log (expected {} records, final hash {}; \
                 found {} records, final hash {}): replaced or altered",
                entry.records,
                format::hex(&entry.final_hash),
                report.records,
                report
                    .final_hash
                    .map(|h| format::hex(&h))
                    .unwrap_or_else(|| "none".into()),
            );
            findings.push(finding(name, what));
        }
    }
}

/// Verifies the audit-log segments and their links; returns the newest segment's number
/// (0 when there is no audit log).
fn check_segments(
    dir: &Path,
    keys: &KeyRing,
    full: &mut FullReport,
) -> Result<u64, RecordingError> {
    let segments = audit::segments(dir)?;
    let newest = segments.last().map(|(n, _)| *n).unwrap_or(0);
    let mut previous: Option<(u64, Option<[u8; 32]>)> = None;
    for (n, path) in &segments {
        let name = file_name(path);
        let report = verify_file(path, keys);
        match &report.kind {
            FileKind::AuditSegment {
                segment,
                previous: prev_hash,
            } => {
                if segment != n {
                    let what = format!("names itself segment {segment}");
                    full.findings.push(finding(&name, what));
                }
                let expected = match previous {
                    Some((p, hash)) if p + 1 == *n => hash.map(|h| h.to_vec()),
                    _ if *n == 1 => Some(Vec::new()),
                    // The previous segment is missing; reported below.
                    _ => None,
                };
                if expected.is_some_and(|e| e != *prev_hash) {
                    let what =
                        "does not continue the previous segment's chain (a segment was replaced)";
                    full.findings.push(finding(&name, what));
                }
            }
            _ => full
                .findings
                .push(finding(&name, "not an audit-log segment")),
        }
        let expected_n = previous.map(|(p, _)| p + 1).unwrap_or(1);
        if *n != expected_n {
            let what = format!("segments {expected_n} to {} are missing", n - 1);
            full.findings.push(finding(&name, what));
        }
        previous = Some((*n, report.final_hash));
        let status = status(&report, *n == newest);
        full.segments.push(Checked { report, status });
    }
    Ok(newest)
}
