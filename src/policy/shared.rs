//! The policy set in force, swappable at run time: a reload builds a new
//! [`PolicyEngine`] and swaps it in whole, so a decision never sees half of one
//! set and half of another. A broken file keeps the last good set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::PolicyEngine;

#[derive(Clone)]
pub struct SharedPolicy {
    current: Arc<RwLock<PolicyEngine>>,
}

impl SharedPolicy {
    pub fn new(engine: PolicyEngine) -> Self {
        SharedPolicy {
            current: Arc::new(RwLock::new(engine)),
        }
    }

    /// The engine in force now (one `Arc` clone; the lock is held for that only).
    pub fn current(&self) -> PolicyEngine {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads `dir` again; on success swaps the new set in, otherwise keeps the
    /// last good set and returns the error for the log.
    pub fn reload(&self, dir: &Path) -> Result<usize, super::PolicyError> {
        let engine = PolicyEngine::load(dir)?;
        let count = engine.policy_ids().len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = engine;
        Ok(count)
    }
}

/// What the policy files look like on disk (names and modification times), or
/// `None` when the folder is missing. Taken before loading, so a change made
/// while the gateway starts is not missed.
pub type Fingerprint = Option<Vec<(PathBuf, SystemTime)>>;

pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Vec<(PathBuf, SystemTime)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.modified().ok()?)))
        .filter(|(p, _)| {
            p.extension()
                .is_some_and(|x| x == "cedar" || x == "cedarschema")
        })
        .collect();
    files.sort();
    Some(files)
}

/// Reloads the policies on SIGHUP and whenever a file in `dir` changes (checked
/// every `interval`; polling keeps us free of a file-watching dependency).
/// `loaded` is the fingerprint taken just before the set in force was loaded.
pub async fn watch(dir: PathBuf, policy: SharedPolicy, interval: Duration, loaded: Fingerprint) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = loaded;
    let mut tick = tokio::time::interval(interval);
    loop {
        // Both arms are cancel-safe: a tick or a signal delivery is not lost by
        // dropping the other future.
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = fingerprint(&dir);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match policy.reload(&dir) {
            Ok(count) => {
                tracing::info!(dir = %dir.display(), policies = count, "policies reloaded")
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "policy reload failed; keeping the last good policies")
            }
        }
    }
}
