//! `replay`, `export` and `verify`: the auditor's commands, run on the gateway host against the
//! recordings folder, the audit log and the gateway's public recording keys.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::terminal;
use crate::config::Config;
use crate::recording::{self, check, check::FullReport, check::Status, replay as playback};

#[derive(Args)]
pub struct ReplayArgs {
    /// Session id (as shown by `drawbridge sessions`) or a recording file.
    session: String,
    /// Playback speed; 2 plays twice as fast. 0 prints everything at once.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Longest pause to reproduce, e.g. 2s.
    #[arg(long, value_parser = crate::time::parse_duration)]
    max_idle: Option<Duration>,
    /// Start this far into the recording, e.g. 50m or 1h2m3s: the screen as it was then is
    /// drawn first.
    #[arg(long, value_parser = crate::time::parse_duration)]
    from: Option<Duration>,
    /// Print only the timeline of events (commands, exit statuses, SFTP, SQL, HTTP,
    /// forwards), at once.
    #[arg(long, conflicts_with_all = ["from", "speed", "max_idle", "no_events"])]
    timeline: bool,
    /// Do not show the events on standard error during playback.
    #[arg(long)]
    no_events: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Session id (as shown by `drawbridge sessions`) or a recording file.
    session: String,
    #[arg(long, value_enum, default_value_t = ExportFormat::Asciicast)]
    format: ExportFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// asciicast v2: plays in `asciinema play`.
    Asciicast,
    /// One JSON object per record, every byte kept (hex).
    Jsonl,
}

#[derive(Args)]
pub struct SearchArgs {
    /// Text to look for (case-insensitive) on terminal screens, in commands and
    /// in recorded events (SQL, HTTP, SFTP).
    text: String,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    json: bool,
}

/// `search`: which sessions showed or ran TEXT, and when.
pub fn search(config: &Config, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&config.recordings_dir)
        .with_context(|| config.recordings_dir.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dbr"))
        .collect();
    paths.sort();
    let mut found = 0;
    for path in paths {
        let Ok(rec) = recording::read_file(&path) else {
            continue;
        };
        let Some(meta) = rec.meta() else { continue };
        if args.user.as_ref().is_some_and(|u| u != &meta.user)
            || args.target.as_ref().is_some_and(|t| t != &meta.target)
        {
            continue;
        }
        for hit in recording::search::search(&rec, &args.text) {
            found += 1;
            if args.json {
                let line = serde_json::json!({
                    "session": meta.session_id, "user": meta.user, "target": meta.target,
                    "offset_us": hit.offset_us, "kind": hit.kind, "line": hit.line,
                });
                println!("{line}");
            } else {
                let ms = hit.offset_us / 1000;
                println!(
                    "{}\t{}@{}\t+{}:{:02}.{:03}\t{}\t{}",
                    meta.session_id,
                    meta.login,
                    meta.target,
                    ms / 60_000,
                    ms / 1000 % 60,
                    ms % 1000,
                    hit.kind,
                    hit.line
                );
            }
        }
    }
    Ok(if found > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Recording files to verify (each also compared with its seal in the audit log);
    /// default: everything (`--all`).
    paths: Vec<PathBuf>,
    /// The audit log and every recording, cross-checked (the default without paths).
    #[arg(long, conflicts_with = "paths")]
    all: bool,
    /// One JSON document instead of text.
    #[arg(long)]
    json: bool,
}

fn recording_path(config: &Config, session: &str) -> PathBuf {
    let as_path = PathBuf::from(session);
    if as_path.exists() {
        return as_path;
    }
    config.recordings_dir.join(format!("{session}.dbr"))
}

pub fn replay(config: &Config, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let path = recording_path(config, &args.session);
    let cannot = || format!("cannot replay {}", path.display());
    if args.timeline {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        playback::timeline::write_timeline(&path, &mut out).with_context(cannot)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let options = playback::Options {
        speed: if args.speed <= 0.0 {
            f64::INFINITY
        } else {
            args.speed
        },
        max_idle: args.max_idle,
        from: args.from,
        terminal: std::io::stdout().is_terminal(),
        index_cache: index_cache_dir(),
    };
    // Keys only when someone types at a terminal; otherwise plain playback.
    let key_mode = if std::io::stdin().is_terminal() {
        terminal::KeyMode::enter()
            .inspect_err(|e| eprintln!("drawbridge: replay keys are off: {e}"))
            .ok()
    } else {
        None
    };
    let keys = key_mode.as_ref().map(|_| terminal::read_keys());
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let events = (!args.no_events).then(|| playback::Events {
        terminal: std::io::stderr().is_terminal(),
        out: &mut err,
    });
    let played = playback::play(&path, &options, keys, &mut out, events);
    // Restore the terminal before an error is printed.
    drop(key_mode);
    played.with_context(cannot)?;
    Ok(ExitCode::SUCCESS)
}

/// Where seek indexes are cached: `$XDG_CACHE_HOME/drawbridge/replay-index`, else
/// `~/.cache/drawbridge/replay-index`; none without either variable.
fn index_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("drawbridge").join("replay-index"))
}

pub fn export(config: &Config, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let path = recording_path(config, &args.session);
    let rec =
        recording::read_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out: Box<dyn std::io::Write> = match &args.output {
        Some(file) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(file).with_context(|| file.display().to_string())?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match args.format {
        ExportFormat::Asciicast => recording::export::asciicast(&rec, &mut out)?,
        ExportFormat::Jsonl => recording::export::jsonl(&rec, &mut out)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = crate::keys::load_key_ring(&config.data_dir)?;
    let report = if args.paths.is_empty() {
        check::verify_all(&config.recordings_dir, &keys)
            .with_context(|| config.recordings_dir.display().to_string())?
    } else {
        check::verify_paths(&args.paths, &config.recordings_dir, &keys)
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json_report(&report))?);
    } else {
        print_report(&report);
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &FullReport) {
    for c in report.segments.iter().chain(&report.recordings) {
        let r = &c.report;
        let path = r.path.display();
        match c.status {
            Status::Ok => println!("OK\t{path}\t{} records, sealed", r.records),
            Status::Open => println!(
                "OPEN\t{path}\t{} records, not sealed yet (being written)",
                r.records
            ),
            Status::Failed => {
                println!("FAIL\t{path}");
                for problem in &r.problems {
                    println!("\t{problem}");
                }
                if !r.sealed && r.problems.is_empty() {
                    println!("\tnot sealed");
                }
            }
        }
    }
    for f in &report.findings {
        println!("FAIL\t{}\t{}", f.subject, f.what);
    }
    let failed = report
        .recordings
        .iter()
        .filter(|c| c.status == Status::Failed)
        .count();
    println!(
        "{} recordings verified, {failed} failed; {} audit-log segments; {} cross-check problems",
        report.recordings.len(),
        report.segments.len(),
        report.findings.len()
    );
}

#[derive(Serialize)]
struct JsonFile {
    path: String,
    status: Status,
    records: u64,
    sealed: bool,
    final_hash: Option<String>,
    last_checkpoint: Option<u64>,
    problems: Vec<JsonProblem>,
}

#[derive(Serialize)]
struct JsonProblem {
    record: Option<u64>,
    what: String,
}

fn json_report(report: &FullReport) -> serde_json::Value {
    let file = |c: &check::Checked| JsonFile {
        path: c.report.path.display().to_string(),
        status: c.status,
        records: c.report.records,
        sealed: c.report.sealed,
        final_hash: c.report.final_hash.map(|h| recording::format::hex(&h)),
        last_checkpoint: c.report.last_checkpoint,
        problems: c
            .report
            .problems
            .iter()
            .map(|p| JsonProblem {
                record: p.record,
                what: p.what.clone(),
            })
            .collect(),
    };
    serde_json::json!({
        "ok": report.ok(),
        "audit_log": report.segments.iter().map(file).collect::<Vec<_>>(),
        "recordings": report.recordings.iter().map(file).collect::<Vec<_>>(),
        "findings": report.findings,
    })
}
