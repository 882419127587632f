//! `replay` and `verify`: the auditor's commands, run against the recordings
//! folder and the gateway's public recording keys.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::recording;

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
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Recording files; default: every recording in the recordings folder.
    paths: Vec<PathBuf>,
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
    let rec =
        recording::read_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let speed = if args.speed <= 0.0 {
        f64::INFINITY
    } else {
        args.speed
    };
    let mut out = std::io::stdout().lock();
    recording::replay(&rec, speed, args.max_idle, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = crate::keys::load_key_ring(&config.data_dir)?;
    let paths = if args.paths.is_empty() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&config.recordings_dir)
            .with_context(|| config.recordings_dir.display().to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "dbr"))
            .collect();
        found.sort();
        found
    } else {
        args.paths
    };
    let mut failed = 0;
    for path in &paths {
        let report = recording::verify_file(path, &keys);
        if report.ok() {
            println!("OK\t{}\t{} records, sealed", path.display(), report.records);
        } else {
            failed += 1;
            println!("FAIL\t{}", path.display());
            for problem in &report.problems {
                println!("\t{problem}");
            }
            if !report.sealed && report.problems.is_empty() {
                println!("\tnot sealed");
            }
        }
    }
    println!("{} recordings verified, {failed} failed", paths.len());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
