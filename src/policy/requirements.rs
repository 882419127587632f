//! Requirements a policy attaches to what it permits, written as annotations on
//! the `permit`:
//!
//! ```cedar
//! @id("prod-root-needs-two")
//! @approvals("2")          // approvals needed before the grant starts (default 1)
//! @max_duration("1h")      // longest grant (default: the gateway's access.max_grant)
//! @max_sessions("1")       // sessions one grant may open (default: unlimited)
//! @mfa("required")         // TOTP at connect time (on `connect` permits)
//! permit (principal, action == Action::"request", resource) when { ... };
//! ```
//!
//! When several permits decide a query, the strictest value of each wins.

use std::time::Duration;

use cedar_policy::Policy;

/// Annotation names this module understands.
pub const APPROVALS: &str = "approvals";
pub const MAX_DURATION: &str = "max_duration";
pub const MAX_SESSIONS: &str = "max_sessions";
pub const MFA: &str = "mfa";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// At least 1 once a request is permitted.
    pub approvals: u32,
    pub max_duration: Option<Duration>,
    pub max_sessions: Option<u32>,
    pub mfa: bool,
}

impl Requirements {
    /// The strictest combination of `self` and `other`.
    fn tighten(self, other: Requirements) -> Requirements {
        Requirements {
            approvals: self.approvals.max(other.approvals),
            max_duration: min_some(self.max_duration, other.max_duration),
            max_sessions: min_some(self.max_sessions, other.max_sessions),
            mfa: self.mfa || other.mfa,
        }
    }

    /// Combines the annotations of the policies that permitted a query.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Requirements {
        policies
            .into_iter()
            .filter_map(|p| from_policy(p).ok())
            .fold(
                Requirements {
                    approvals: 1,
                    ..Default::default()
                },
                Requirements::tighten,
            )
    }
}

fn min_some<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The requirements one policy states; an error names the bad annotation. Load
/// rejects policies with bad annotations, so `of` never meets one in practice.
pub fn from_policy(policy: &Policy) -> Result<Requirements, String> {
    let number = |name: &str| -> Result<Option<u32>, String> {
        policy
            .annotation(name)
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("@{name}({v:?}) must be a whole number of at least 1"))
            })
            .transpose()
    };
    let max_duration = policy
        .annotation(MAX_DURATION)
        .map(|v| {
            humantime::parse_duration(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("@{MAX_DURATION}({v:?}) must be a duration such as \"30m\""))
        })
        .transpose()?;
    let mfa = match policy.annotation(MFA) {
        None | Some("optional") => false,
        Some("required") => true,
        Some(v) => {
            return Err(format!(
                "@{MFA}({v:?}) must be \"required\" or \"optional\""
            ));
        }
    };
    Ok(Requirements {
        approvals: number(APPROVALS)?.unwrap_or(0),
        max_duration,
        max_sessions: number(MAX_SESSIONS)?,
        mfa,
    })
}
