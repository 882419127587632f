//! `audit`: the global audit log, read on the gateway host from the recordings folder.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::recording::audit::{self, Entry};

#[derive(Args)]
pub struct AuditArgs {
    /// Only entries from this time on: RFC 3339 (2026-11-02T10:00:00Z) or an age (2h, 30m).
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,
    /// One JSON object per line (JSON Lines), for SIEMs and scripts.
    #[arg(long)]
    json: bool,
    /// Keep printing entries as the gateway writes them (they appear at each checkpoint).
    #[arg(long)]
    follow: bool,
}

/// A time in Unix milliseconds from RFC 3339 or an age before now.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("{s:?} is before 1970"))?
            .as_millis();
        return i64::try_from(ms).map_err(|_| format!("{s:?} is too far ahead"));
    }
    let age = crate::time::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration"))?;
    let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    Ok(crate::time::now_ms().saturating_sub(age_ms))
}

fn print(entry: &Entry, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(entry)?);
    } else {
        let at = crate::time::format(entry.at_unix_ms / 1000);
        let subject = if entry.subject.is_empty() {
            "-"
        } else {
            &entry.subject
        };
        println!(
            "{at}\t{}\t{}\t{subject}\t{}",
            entry.kind, entry.actor, entry.details
        );
    }
    Ok(())
}

pub async fn audit(config: &Config, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let dir = audit::audit_dir(&config.recordings_dir);
    let wanted = |e: &Entry| args.since.is_none_or(|since| e.at_unix_ms >= since);
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut from = 1;
    loop {
        let entries =
            audit::entries(&dir, from).with_context(|| format!("audit log {}", dir.display()))?;
        for entry in entries {
            if seen.insert((entry.segment, entry.seq)) && wanted(&entry) {
                print(&entry, args.json)?;
            }
            from = from.max(entry.segment);
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        // Re-reading is simple and the log only grows at checkpoints; polling twice a
        // second keeps the lag below a typical checkpoint interval.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
