//! One login for every app. Browsers hold the gateway's session cookie on the
//! gateway's own host only (host-only cookies: `localhost` is not a domain
//! browsers or curl share cookies under). When an app needs a login, the
//! gateway's login page hands the session over with a one-time code: it
//! redirects to `https://APP/.drawbridge/callback?code=…`, and the app host
//! exchanges the code for its own host-only cookie. Codes are single use and
//! live 60 seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::secret::Secret;

/// Where an app receives the code.
pub const CALLBACK_PATH: &str = "/.drawbridge/callback";
const CODE_TTL: Duration = Duration::from_secs(60);

/// A code's token, the host allowed to redeem it, and when it was issued.
struct Pending {
    token: Secret<String>,
    host: String,
    issued: Instant,
}

#[derive(Default)]
pub struct Handoff {
    codes: Mutex<HashMap<String, Pending>>,
}

impl Handoff {
    /// A code that `host` alone may redeem for `token`.
    pub fn issue(&self, token: &str, host: &str) -> Option<String> {
        let code: String = crate::keys::random_bytes::<24>()
            .ok()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let now = Instant::now();
        // Held for an insert and a sweep of expired codes; never across IO.
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, p| now.duration_since(p.issued) < CODE_TTL);
        codes.insert(
            code.clone(),
            Pending {
                token: Secret::new(token.to_string()),
                host: host.to_string(),
                issued: now,
            },
        );
        Some(code)
    }

    /// The token for `code`, once, and only on the host it was issued for.
    pub fn redeem(&self, code: &str, host: &str) -> Option<Secret<String>> {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        let pending = codes.remove(code)?;
        (pending.host == host && pending.issued.elapsed() < CODE_TTL).then_some(pending.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_single_use_and_bound_to_their_host() {
        let h = Handoff::default();
        let code = h.issue("dbt_1", "app.localhost:8443").expect("code");
        assert!(h.redeem(&code, "other.localhost:8443").is_none());
        // A wrong-host attempt burns the code too.
        assert!(h.redeem(&code, "app.localhost:8443").is_none());
        let code = h.issue("dbt_1", "app.localhost:8443").expect("code");
        assert_eq!(
            h.redeem(&code, "app.localhost:8443")
                .map(|t| t.expose().clone()),
            Some("dbt_1".into())
        );
        assert!(h.redeem(&code, "app.localhost:8443").is_none());
    }
}
