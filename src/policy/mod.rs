//! The policy stage: Cedar policies decide who may `connect` to, `request`
//! access to, and `approve` requests for a target.
//!
//! Policies and their schema live in `policies/` (`*.cedarschema`, `*.cedar`);
//! [`PolicyEngine::load`] reads and validates them once, at the edge, and
//! falls back to the defaults embedded in the binary when the folder is
//! missing or holds no `.cedar` file. Every policy carries an `@id("...")`
//! annotation, and decisions report those ids so audit records stay stable
//! across edits and reloads.
//!
//! Architecture invariants:
//! - [`PolicyEngine::decide`] is pure: no IO, no clock, no shared state. The
//!   caller supplies everything (who, what, which target, whether a grant is
//!   active) in a [`Query`]; the Cedar entities are built from it per call.
//! - Fail closed: a query that Cedar cannot evaluate, a policy that errors
//!   while evaluating, or an engine whose built-in policies failed to load
//!   yields "not allowed", with the reason in [`Decision::errors`].
//! - Loading reports every problem at once (parse, `@id`, schema and
//!   validation errors), each naming its file and, where Cedar knows it, line.

mod entities;
mod load;
mod requirements;
mod shared;
#[cfg(test)]
mod tests;

pub use requirements::Requirements;
pub use shared::{Fingerprint, SharedPolicy, fingerprint, watch};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::{Authorizer, PolicySet, Schema};

/// The embedded default schema (`policies/drawbridge.cedarschema`).
pub const DEFAULT_SCHEMA: &str = include_str!("../../policies/drawbridge.cedarschema");
/// The embedded default policies (`policies/default.cedar`).
pub const DEFAULT_POLICIES: &str = include_str!("../../policies/default.cedar");

/// Loaded, validated policies with their schema. Cheap to clone (one `Arc`),
/// `Send + Sync`, and immutable: reloading builds a new engine.
#[derive(Clone, Debug)]
pub struct PolicyEngine {
    state: Arc<State>,
}

#[derive(Debug)]
enum State {
    Ready(Box<Loaded>),
    /// The built-in policies failed to load (a unit test rules this out);
    /// every decision is a denial carrying this message.
    Broken(String),
}

#[derive(Debug)]
struct Loaded {
    schema: Schema,
    policies: PolicySet,
    /// The `@id`s of all loaded policies, sorted.
    ids: Vec<String>,
    /// Where the policies came from: a folder, or "built-in".
    origin: String,
}

/// The things a policy decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Open a session to the target as a given login/role.
    Connect,
    /// Ask for a just-in-time grant.
    Request,
    /// Approve somebody else's request.
    Approve,
    /// Open an emergency grant for oneself without approval.
    BreakGlass,
    /// Open a forwarded TCP connection (`ssh -L`, `ssh -W`, ProxyJump) from the
    /// target to `Query::forward_to`.
    Forward,
}

impl Action {
    /// The Cedar action id (`Action::"connect"` etc.).
    pub fn cedar_id(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::Request => "request",
            Action::Approve => "approve",
            Action::BreakGlass => "break_glass",
            Action::Forward => "forward",
        }
    }
}

/// Who is asking: the user name and the groups they belong to.
#[derive(Clone, Copy, Debug)]
pub struct Principal<'a> {
    pub name: &'a str,
    pub groups: &'a [String],
}

/// The target asked about: its name and labels (Cedar entity tags).
#[derive(Clone, Copy, Debug)]
pub struct TargetRef<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// One authorization question. Everything the policies may look at is here.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    pub principal: Principal<'a>,
    pub action: Action,
    pub target: TargetRef<'a>,
    /// The upstream login/role (`context.login`).
    pub login: &'a str,
    /// The caller has checked that an approved, unexpired grant exists for
    /// exactly this user, target and login (`context.grant_active`; ignored
    /// for [`Action::Approve`]).
    pub grant_active: bool,
    /// The user whose request is being approved (`context.requester`);
    /// required for [`Action::Approve`], ignored otherwise.
    pub requester: Option<&'a str>,
    /// Where a forwarded connection goes (`context.host`, `context.port`);
    /// required for [`Action::Forward`], ignored otherwise.
    pub forward_to: Option<(&'a str, u32)>,
}

/// The outcome of [`PolicyEngine::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// True only when Cedar allowed the request and nothing went wrong.
    pub allowed: bool,
    /// The `@id`s of the policies that determined the decision (the permits
    /// that matched when allowed, the forbids that matched when denied),
    /// sorted. Empty for a default denial (no permit matched).
    pub policy_ids: Vec<String>,
    /// Evaluation problems. Any entry here forces `allowed == false`.
    pub errors: Vec<String>,
    /// What the permitting policies ask for (approvals, longest grant, …);
    /// meaningful only when `allowed`.
    pub requirements: Requirements,
}

impl Decision {
    fn failed(error: String) -> Decision {
        Decision {
            allowed: false,
            policy_ids: Vec::new(),
            errors: vec![error],
            requirements: Requirements::default(),
        }
    }
}

impl PolicyEngine {
    /// Reads `dir/*.cedarschema` and `dir/*.cedar` and validates the policies
    /// against the schema. Uses the built-in defaults when `dir` does not
    /// exist or holds no `.cedar` file; uses the built-in schema when `dir`
    /// holds policies but no `.cedarschema` file.
    pub fn load(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let Some(files) = load::read_dir(dir)? else {
            tracing::info!(dir = %dir.display(), "no policy files found; using built-in policies");
            return Ok(PolicyEngine::builtin());
        };
        let (schema, policies, ids) =
            load::compile(&files.schemas, &files.policies).map_err(PolicyError::Invalid)?;
        tracing::info!(dir = %dir.display(), policies = ids.len(), "loaded policies");
        Ok(PolicyEngine::ready(Loaded {
            schema,
            policies,
            ids,
            origin: dir.display().to_string(),
        }))
    }

    /// The policies embedded in the binary. They are checked by a unit test;
    /// should they ever fail to load anyway, the engine denies everything.
    pub fn builtin() -> PolicyEngine {
        let (schemas, policies) = load::builtin_sources();
        match load::compile(&schemas, &policies) {
            Ok((schema, policies, ids)) => PolicyEngine::ready(Loaded {
                schema,
                policies,
                ids,
                origin: "built-in".to_owned(),
            }),
            Err(problems) => {
                let message = PolicyError::Invalid(problems).to_string();
                tracing::error!(%message, "built-in policies failed to load; denying everything");
                PolicyEngine {
                    state: Arc::new(State::Broken(message)),
                }
            }
        }
    }

    fn ready(loaded: Loaded) -> PolicyEngine {
        PolicyEngine {
            state: Arc::new(State::Ready(Box::new(loaded))),
        }
    }

    /// The `@id`s of the loaded policies, sorted.
    pub fn policy_ids(&self) -> &[String] {
        match &*self.state {
            State::Ready(loaded) => &loaded.ids,
            State::Broken(_) => &[],
        }
    }

    /// Where the policies came from: the folder given to [`load`](Self::load),
    /// or `"built-in"`.
    pub fn origin(&self) -> &str {
        match &*self.state {
            State::Ready(loaded) => &loaded.origin,
            State::Broken(_) => "built-in (broken)",
        }
    }

    /// Decides one query. Pure: no IO. Fails closed.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
        let loaded = match &*self.state {
            State::Ready(loaded) => loaded,
            State::Broken(message) => return Decision::failed(message.clone()),
        };
        let (request, entities) = match entities::build(q, &loaded.schema) {
            Ok(built) => built,
            Err(error) => return Decision::failed(error),
        };
        let response = Authorizer::new().is_authorized(&request, &loaded.policies, &entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        // Cedar skips a policy that errors and decides on the rest, so an
        // erroring forbid could let a permit through. Any error denies, and
        // then the matching permits did not determine the outcome.
        let allowed = response.decision() == cedar_policy::Decision::Allow && errors.is_empty();
        let mut policy_ids: Vec<String> = if allowed || errors.is_empty() {
            diagnostics.reason().map(|id| id.to_string()).collect()
        } else {
            Vec::new()
        };
        policy_ids.sort();
        let requirements = if allowed {
            Requirements::of(
                diagnostics
                    .reason()
                    .filter_map(|id| loaded.policies.policy(id)),
            )
        } else {
            Requirements::default()
        };
        Decision {
            allowed,
            policy_ids,
            errors,
            requirements,
        }
    }
}

/// Why [`PolicyEngine::load`] failed.
#[derive(thiserror::Error, Debug)]
pub enum PolicyError {
    /// The policy folder or one of its files could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The files were read but are not valid; every problem found is listed.
    #[error("invalid policies ({} problem{}):\n{}", .0.len(), plural(.0.len()), list(.0))]
    Invalid(Vec<Problem>),
}

/// One problem in one policy or schema file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, where Cedar gives a location.
    pub line: Option<usize>,
    /// 1-based column (in characters), where Cedar gives a location.
    pub column: Option<usize>,
    /// What is wrong, with Cedar's hint where it has one.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
