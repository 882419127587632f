//! `drawbridge policy check` and `drawbridge policy explain`: run on the gateway
//! host against the policy folder and the store (for users' groups and targets'
//! labels).

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::Config;
use crate::policy::{Action, Decision, PolicyEngine, Principal, Query, TargetRef};
use crate::store::Store;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate every policy file against the schema; lists all problems with file:line.
    Check,
    /// Show how the policies decide one question, and what would change the answer.
    Explain(ExplainArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ActionArg {
    Connect,
    Request,
    Approve,
    BreakGlass,
}

#[derive(Args)]
pub struct ExplainArgs {
    #[arg(long)]
    user: String,
    #[arg(long)]
    target: String,
    #[arg(long)]
    login: String,
    #[arg(long, value_enum, default_value = "connect")]
    action: ActionArg,
    /// For connect/request: assume an active grant exists.
    #[arg(long)]
    grant_active: bool,
    /// For approve: whose request is being approved.
    #[arg(long)]
    requester: Option<String>,
}

pub async fn run(config: &Config, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check => match PolicyEngine::load(&config.policies_dir) {
            Ok(engine) => {
                println!(
                    "{}: {} policies valid ({})",
                    engine.origin(),
                    engine.policy_ids().len(),
                    engine.policy_ids().join(", ")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        PolicyCommand::Explain(args) => explain(config, args).await,
    }
}

async fn explain(config: &Config, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let engine = PolicyEngine::load(&config.policies_dir)?;
    let store = crate::gateway::open_store(config)?;
    let user = store
        .user_by_name(&args.user)
        .await?
        .ok_or_else(|| anyhow::anyhow!("unknown user {:?}", args.user))?
        .user;
    let target = store
        .target(&args.target)
        .await?
        .ok_or_else(|| anyhow::anyhow!("unknown target {:?}", args.target))?;
    let action = match args.action {
        ActionArg::Connect => Action::Connect,
        ActionArg::Request => Action::Request,
        ActionArg::Approve => Action::Approve,
        ActionArg::BreakGlass => Action::BreakGlass,
    };
    let query = |grant_active: bool| Query {
        principal: Principal {
            name: &user.name,
            groups: &user.groups,
        },
        action,
        target: TargetRef {
            name: &target.name,
            labels: &target.labels,
        },
        login: &args.login,
        grant_active,
        requester: args.requester.as_deref(),
        forward_to: None,
    };
    let decision = engine.decide(&query(args.grant_active));
    print_decision(&decision, action);
    if !decision.allowed {
        println!(
            "what would allow it: {}",
            remedy(&engine, &decision, action, &args, &query)
        );
    }
    Ok(if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_decision(d: &Decision, action: Action) {
    println!("decision: {}", if d.allowed { "ALLOW" } else { "DENY" });
    let ids = if d.policy_ids.is_empty() {
        "none (no permit matched)".to_string()
    } else {
        d.policy_ids.join(", ")
    };
    println!("decided by: {ids}");
    for e in &d.errors {
        println!("error: {e}");
    }
    if d.allowed && action == Action::Request {
        let r = &d.requirements;
        println!("approvals needed: {}", r.approvals.max(1));
        if let Some(max) = r.max_duration {
            println!("longest grant: {}", humantime::format_duration(max));
        }
        if let Some(n) = r.max_sessions {
            println!("sessions per grant: {n}");
        }
    }
    if d.allowed && d.requirements.mfa {
        println!("MFA (TOTP) required at connect");
    }
}

fn remedy<'a>(
    engine: &PolicyEngine,
    decision: &Decision,
    action: Action,
    args: &'a ExplainArgs,
    query: &dyn Fn(bool) -> Query<'a>,
) -> String {
    if action == Action::Approve && args.requester.as_deref() == Some(args.user.as_str()) {
        return "nothing: nobody may approve their own request".into();
    }
    if matches!(action, Action::Connect)
        && !args.grant_active
        && engine.decide(&query(true)).allowed
    {
        return format!(
            "an approved grant: {}",
            crate::access::request_hint(&args.target, &args.login)
        );
    }
    if decision.policy_ids.is_empty() {
        format!(
            "a policy permitting `{}` for this user and target",
            action.cedar_id()
        )
    } else {
        format!(
            "removing or narrowing the forbid(s): {}",
            decision.policy_ids.join(", ")
        )
    }
}
