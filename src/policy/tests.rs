//! Unit tests: the default policies decide as issue #2 requires, and loading
//! reports broken or invalid files with their location.

use std::collections::BTreeMap;
use std::fs;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|g| (*g).to_owned()).collect()
}

/// Asks `engine` one question about target "db-1" with `target_labels`.
fn ask(
    engine: &PolicyEngine,
    user: &str,
    user_groups: &[String],
    action: Action,
    target_labels: &BTreeMap<String, String>,
    grant_active: bool,
    requester: Option<&str>,
) -> Decision {
    engine.decide(&Query {
        principal: Principal {
            name: user,
            groups: user_groups,
        },
        action,
        target: TargetRef {
            name: "db-1",
            labels: target_labels,
        },
        login: "admin",
        grant_active,
        requester,
        forward_to: None,
    })
}

#[test]
fn builtin_policies_parse_and_validate() {
    let (schemas, policies) = load::builtin_sources();
    let compiled = load::compile(&schemas, &policies);
    assert!(compiled.is_ok(), "{:?}", compiled.err());
    let engine = PolicyEngine::builtin();
    assert_eq!(engine.origin(), "built-in");
    assert_eq!(
        engine.policy_ids(),
        [
            "anyone-may-request",
            "approvers-may-approve",
            "break-glass-group",
            "connect-with-active-grant",
            "forbid-prod-connect-without-grant",
            "forbid-prod-forward",
            "forbid-self-approval",
            "forward-with-active-grant",
            "prod-root-needs-two-approvers",
        ]
    );
}

fn ask_forward(
    engine: &PolicyEngine,
    target_labels: &BTreeMap<String, String>,
    grant: bool,
) -> Decision {
    engine.decide(&Query {
        principal: Principal {
            name: "alice",
            groups: &[],
        },
        action: Action::Forward,
        target: TargetRef {
            name: "db-1",
            labels: target_labels,
        },
        login: "admin",
        grant_active: grant,
        requester: None,
        forward_to: Some(("127.0.0.1", 5432)),
    })
}

#[test]
fn forwarding_needs_a_grant_and_is_never_allowed_to_prod() {
    let engine = PolicyEngine::builtin();
    let staging = labels(&[("env", "staging")]);
    let prod = labels(&[("env", "prod")]);
    let allowed = ask_forward(&engine, &staging, true);
    assert!(allowed.allowed, "{allowed:?}");
    assert_eq!(allowed.policy_ids, ["forward-with-active-grant"]);
    assert!(!ask_forward(&engine, &staging, false).allowed);
    let denied = ask_forward(&engine, &prod, true);
    assert!(!denied.allowed);
    assert_eq!(denied.policy_ids, ["forbid-prod-forward"]);
}

#[test]
fn a_forward_query_without_a_destination_fails_closed() {
    let engine = PolicyEngine::builtin();
    let staging = labels(&[("env", "staging")]);
    let mut q = Query {
        principal: Principal {
            name: "alice",
            groups: &[],
        },
        action: Action::Forward,
        target: TargetRef {
            name: "db-1",
            labels: &staging,
        },
        login: "admin",
        grant_active: true,
        requester: None,
        forward_to: None,
    };
    assert!(!engine.decide(&q).allowed);
    q.forward_to = Some(("db", 5432));
    assert!(engine.decide(&q).allowed);
}

#[test]
fn engine_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<PolicyEngine>();
}

#[test]
fn prod_connect_needs_a_grant() {
    let engine = PolicyEngine::builtin();
    let prod = labels(&[("env", "prod")]);
    let dev = groups(&["dev"]);

    let denied = ask(&engine, "alice", &dev, Action::Connect, &prod, false, None);
    assert!(!denied.allowed);
    assert_eq!(denied.policy_ids, ["forbid-prod-connect-without-grant"]);
    assert!(denied.errors.is_empty(), "{:?}", denied.errors);

    let allowed = ask(&engine, "alice", &dev, Action::Connect, &prod, true, None);
    assert!(allowed.allowed, "{allowed:?}");
    assert_eq!(allowed.policy_ids, ["connect-with-active-grant"]);
}

#[test]
fn non_prod_connect_needs_a_grant_too() {
    let engine = PolicyEngine::builtin();
    for target_labels in [labels(&[("env", "staging")]), labels(&[])] {
        let d = ask(
            &engine,
            "bob",
            &[],
            Action::Connect,
            &target_labels,
            false,
            None,
        );
        assert!(!d.allowed);
        // A default denial: no permit matched, no forbid needed.
        assert!(d.policy_ids.is_empty(), "{d:?}");
        assert!(d.errors.is_empty(), "{:?}", d.errors);

        let d = ask(
            &engine,
            "bob",
            &[],
            Action::Connect,
            &target_labels,
            true,
            None,
        );
        assert!(d.allowed, "{d:?}");
    }
}

#[test]
fn anyone_may_request() {
    let engine = PolicyEngine::builtin();
    let prod = labels(&[("env", "prod")]);
    for grant_active in [false, true] {
        let d = ask(
            &engine,
            "carol",
            &[],
            Action::Request,
            &prod,
            grant_active,
            None,
        );
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.policy_ids, ["anyone-may-request"]);
    }
}

#[test]
fn approvers_approve_others_requests_only() {
    let engine = PolicyEngine::builtin();
    let prod = labels(&[("env", "prod")]);
    let approvers = groups(&["dev", "approvers", "approvers"]);

    let d = ask(
        &engine,
        "dave",
        &approvers,
        Action::Approve,
        &prod,
        false,
        Some("alice"),
    );
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["approvers-may-approve"]);

    let d = ask(
        &engine,
        "erin",
        &groups(&["dev"]),
        Action::Approve,
        &prod,
        false,
        Some("alice"),
    );
    assert!(!d.allowed);
    assert!(d.errors.is_empty(), "{:?}", d.errors);

    let d = ask(
        &engine,
        "dave",
        &approvers,
        Action::Approve,
        &prod,
        false,
        Some("dave"),
    );
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["forbid-self-approval"]);
}

#[test]
fn approve_without_requester_fails_closed() {
    let engine = PolicyEngine::builtin();
    let d = ask(
        &engine,
        "dave",
        &groups(&["approvers"]),
        Action::Approve,
        &labels(&[]),
        false,
        None,
    );
    assert!(!d.allowed);
    assert_eq!(d.errors.len(), 1, "{d:?}");
}

#[test]
fn evaluation_error_fails_closed() {
    // Cedar skips a forbid that errors (here: integer overflow, which the
    // validator cannot see) and would allow; the engine must deny.
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("default.cedar"), DEFAULT_POLICIES).expect("write");
    fs::write(
        tmp.path().join("overflow.cedar"),
        "@id(\"overflowing-forbid\")\nforbid (principal, action == Action::\"request\", resource)\n\
         when { 9223372036854775807 + 1 > 0 };\n",
    )
    .expect("write");
    let engine = PolicyEngine::load(tmp.path()).expect("load");
    let d = ask(
        &engine,
        "carol",
        &[],
        Action::Request,
        &labels(&[]),
        false,
        None,
    );
    assert!(!d.allowed, "{d:?}");
    assert!(d.policy_ids.is_empty(), "{d:?}");
    assert_eq!(d.errors.len(), 1, "{d:?}");
    assert!(d.errors[0].contains("overflowing-forbid"), "{d:?}");
}

#[test]
fn missing_or_empty_dir_uses_builtin() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = PolicyEngine::load(&tmp.path().join("absent")).expect("load");
    assert_eq!(engine.origin(), "built-in");
    let engine = PolicyEngine::load(tmp.path()).expect("load");
    assert_eq!(engine.origin(), "built-in");
}

#[test]
fn dir_with_policies_and_builtin_schema_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = DEFAULT_POLICIES.replace(
        "// @id(\"standing-dev-staging\")\n// permit (principal in Group::\"dev\", action == Action::\"connect\", resource)\n// when {",
        "@id(\"standing-dev-staging\")\npermit (principal in Group::\"dev\", action == Action::\"connect\", resource)\nwhen {",
    );
    assert_ne!(text, DEFAULT_POLICIES, "the standing-access example moved");
    fs::write(tmp.path().join("default.cedar"), text).expect("write");
    let engine = PolicyEngine::load(tmp.path()).expect("load");
    assert_eq!(
        engine.policy_ids().len(),
        PolicyEngine::builtin().policy_ids().len() + 1
    );

    let staging = labels(&[("env", "staging")]);
    let d = ask(
        &engine,
        "bob",
        &groups(&["dev"]),
        Action::Connect,
        &staging,
        false,
        None,
    );
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["standing-dev-staging"]);
    // Standing access never reaches prod.
    let prod = labels(&[("env", "prod")]);
    let d = ask(
        &engine,
        "bob",
        &groups(&["dev"]),
        Action::Connect,
        &prod,
        false,
        None,
    );
    assert!(!d.allowed);
}

#[test]
fn broken_policy_file_names_file_and_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("a.cedar"), DEFAULT_POLICIES).expect("write");
    let broken = "// ok so far\n@id(\"x\")\npermit (principal, action, resource)\nwhen { context.login == };\n";
    fs::write(tmp.path().join("broken.cedar"), broken).expect("write");
    fs::write(
        tmp.path().join("noid.cedar"),
        "\n\nforbid (principal, action, resource);\n",
    )
    .expect("write");

    let err = PolicyEngine::load(tmp.path()).expect_err("must fail");
    let PolicyError::Invalid(problems) = &err else {
        panic!("{err}")
    };
    let text = err.to_string();
    assert!(text.contains("broken.cedar:4:"), "{text}");
    assert!(text.contains("noid.cedar:3"), "{text}");
    assert!(problems.len() >= 2, "{problems:?}");
}

#[test]
fn duplicate_ids_are_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("a.cedar"), DEFAULT_POLICIES).expect("write");
    fs::write(
        tmp.path().join("b.cedar"),
        "@id(\"anyone-may-request\")\npermit (principal, action, resource);\n",
    )
    .expect("write");
    let err = PolicyEngine::load(tmp.path()).expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("b.cedar:1"), "{text}");
    assert!(
        text.contains("duplicate policy id `anyone-may-request`"),
        "{text}"
    );
}

#[test]
fn schema_violations_are_rejected_with_location() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = "@id(\"ok\")\npermit (principal, action == Action::\"request\", resource);\n\n\
               @id(\"bad-attr\")\npermit (principal, action == Action::\"connect\", resource)\n\
               when { principal.department == \"ops\" };\n\n\
               @id(\"bad-action\")\npermit (principal, action == Action::\"delete\", resource);\n";
    fs::write(tmp.path().join("bad.cedar"), bad).expect("write");
    fs::write(tmp.path().join("drawbridge.cedarschema"), DEFAULT_SCHEMA).expect("write");

    let err = PolicyEngine::load(tmp.path()).expect_err("must fail");
    let PolicyError::Invalid(problems) = &err else {
        panic!("{err}")
    };
    let text = err.to_string();
    assert_eq!(problems.len(), 2, "{text}");
    assert!(text.contains("bad.cedar:6:"), "{text}");
    assert!(text.contains("bad.cedar:9:"), "{text}");
}

#[test]
fn broken_schema_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("a.cedar"), DEFAULT_POLICIES).expect("write");
    fs::write(
        tmp.path().join("s.cedarschema"),
        "entity User {\n  name: String,\n};\naction x appliesTo {\n principal: Nope };\n",
    )
    .expect("write");
    let err = PolicyEngine::load(tmp.path()).expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("s.cedarschema"), "{text}");
}

#[test]
fn requirements_come_from_annotations_and_the_strictest_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(
        tmp.path().join("p.cedar"),
        r#"@id("loose") @approvals("1") @max_duration("8h")
           permit (principal, action == Action::"request", resource);
           @id("strict") @approvals("3") @max_duration("30m") @max_sessions("1")
           permit (principal, action == Action::"request", resource)
           when { resource.hasTag("env") && resource.getTag("env") == "prod" };
           @id("mfa") @mfa("required")
           permit (principal, action == Action::"connect", resource) when { context.grant_active };"#,
    )
    .expect("write");
    let engine = PolicyEngine::load(tmp.path()).expect("load");
    let prod = labels(&[("env", "prod")]);
    let dev = labels(&[("env", "dev")]);
    let strict = ask(&engine, "alice", &[], Action::Request, &prod, false, None);
    assert_eq!(strict.requirements.approvals, 3);
    assert_eq!(
        strict.requirements.max_duration,
        Some(std::time::Duration::from_secs(1800))
    );
    assert_eq!(strict.requirements.max_sessions, Some(1));
    let loose = ask(&engine, "alice", &[], Action::Request, &dev, false, None);
    assert_eq!(loose.requirements.approvals, 1);
    assert_eq!(loose.requirements.max_sessions, None);
    assert!(
        ask(&engine, "alice", &[], Action::Connect, &dev, true, None)
            .requirements
            .mfa
    );
}

#[test]
fn bad_requirement_annotations_are_load_errors_with_a_location() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(
        tmp.path().join("p.cedar"),
        "@id(\"ok\")\npermit (principal, action == Action::\"request\", resource);\n\n@id(\"bad\") @approvals(\"two\")\npermit (principal, action == Action::\"request\", resource);\n",
    )
    .expect("write");
    let err = PolicyEngine::load(tmp.path()).expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("p.cedar:4") && text.contains("@approvals(\"two\")"),
        "{text}"
    );
}
