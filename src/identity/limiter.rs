//! Rate limiting of failed authentication, per user and per source address,
//! in memory (each gateway counts its own; a restart forgets). A key that has
//! failed `limit` times within `window` is refused until the oldest of those
//! failures leaves the window, whatever credential comes next, so guessing a
//! password or a TOTP code stays slow even with the right one in the list.
//!
//! Pure apart from the mutex: callers pass the time in, so tests need no clock.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Past this many tracked keys, expired entries are swept before inserting;
/// memory stays bounded by the failure rate the window allows.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct LimiterConfig {
    pub per_user: usize,
    pub per_address: usize,
    pub window: Duration,
}

/// What is being limited: a user name (or an SSH `LOGIN@TARGET`), or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    User(String),
    Address(IpAddr),
}

pub struct FailureLimiter {
    config: LimiterConfig,
    failures: Mutex<HashMap<Subject, VecDeque<Instant>>>,
}

impl FailureLimiter {
    pub fn new(config: LimiterConfig) -> Self {
        FailureLimiter {
            config,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn limit(&self, subject: &Subject) -> usize {
        match subject {
            Subject::User(_) => self.config.per_user,
            Subject::Address(_) => self.config.per_address,
        }
    }

    /// `Err(wait)` when any of `subjects` is over its limit at `now`.
    pub fn check(&self, subjects: &[Subject], now: Instant) -> Result<(), Duration> {
        let map = self.lock();
        let mut wait = None::<Duration>;
        for s in subjects {
            let Some(times) = map.get(s) else { continue };
            let recent: Vec<_> = times
                .iter()
                .filter(|t| now.saturating_duration_since(**t) < self.config.window)
                .collect();
            if recent.len() >= self.limit(s)
                && let Some(oldest) = recent.first()
            {
                let left = self
                    .config
                    .window
                    .saturating_sub(now.saturating_duration_since(**oldest));
                wait = Some(wait.map_or(left, |w| w.max(left)));
            }
        }
        wait.map_or(Ok(()), Err)
    }

    /// Counts one failure against each of `subjects`.
    pub fn failed(&self, subjects: &[Subject], now: Instant) {
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            let window = self.config.window;
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
        }
        for s in subjects {
            let limit = self.limit(s);
            let times = map.entry(s.clone()).or_default();
            times.push_back(now);
            // Only the last `limit` failures matter; older ones cannot block.
            while times.len() > limit.max(1) {
                times.pop_front();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Subject, VecDeque<Instant>>> {
        // Each entry is a queue of instants; a panic cannot leave one invalid.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> FailureLimiter {
        FailureLimiter::new(LimiterConfig {
            per_user: 3,
            per_address: 5,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn a_user_is_refused_after_the_limit_until_the_window_moves_on() {
        let l = limiter();
        let t0 = Instant::now();
        let carol = [Subject::User("carol".into())];
        for i in 0..3 {
            assert!(l.check(&carol, t0).is_ok(), "attempt {i}");
            l.failed(&carol, t0 + Duration::from_secs(i));
        }
        let wait = l
            .check(&carol, t0 + Duration::from_secs(3))
            .expect_err("limited");
        assert_eq!(wait, Duration::from_secs(57));
        assert!(l.check(&carol, t0 + Duration::from_secs(61)).is_ok());
        assert!(l.check(&[Subject::User("bob".into())], t0).is_ok());
    }

    #[test]
    fn an_address_has_its_own_higher_limit() {
        let l = limiter();
        let t0 = Instant::now();
        let addr = Subject::Address("192.0.2.7".parse().expect("ip"));
        for i in 0..4 {
            l.failed(&[Subject::User(format!("u{i}")), addr.clone()], t0);
        }
        assert!(l.check(std::slice::from_ref(&addr), t0).is_ok());
        l.failed(std::slice::from_ref(&addr), t0);
        assert!(l.check(&[Subject::User("new".into()), addr], t0).is_err());
    }
}
