//! The request and grant life cycle against a real (in-memory) store and the
//! default policies, or small policy sets written for one test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::credentials::SshCertificateAuthority;
use crate::identity::{Identity, TotpSecret};
use crate::policy::PolicyEngine;
use crate::secret::Secret;
use crate::store::{ApprovalOutcome, NewUser, RequestState, SessionRow, SqliteStore};

const NOW: i64 = 2_000_000;

struct Fixture {
    access: Arc<Access>,
    store: Arc<SqliteStore>,
    alice: Identity,
    bob: Identity,
    dave: Identity,
    carol: Identity,
    erin: Identity,
}

async fn user(store: &SqliteStore, name: &str, groups: &[&str]) -> Identity {
    let secret = TotpSecret::generate().expect("secret");
    let password = Secret::new("pw".to_string());
    store
        .create_user(NewUser {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            admin: false,
            email: None,
            password_hash: Some(crate::identity::hash_password(&password).expect("hash")),
            totp_secret: Some(secret.bytes().to_vec()),
            ssh_keys: vec![],
        })
        .await
        .expect("user");
    let code = crate::identity::totp_code(secret.bytes(), 1_000_000);
    crate::identity::by_password_totp(store, name, &password, &code, 1_000_000)
        .await
        .expect("identity")
}

async fn target(store: &SqliteStore, name: &str, env: &str) {
    store
        .create_target(Target {
            name: name.into(),
            protocol: "ssh".into(),
            address: "127.0.0.1:22".into(),
            host_key: String::new(),
            labels: BTreeMap::from([("env".to_string(), env.to_string())]),
            postgres: None,
            http: None,
        })
        .await
        .expect("target");
}

async fn fixture_with(policy: PolicyEngine) -> Fixture {
    let store = Arc::new(SqliteStore::in_memory().expect("store"));
    target(&store, "web-1", "prod").await;
    target(&store, "stage-1", "staging").await;
    let alice = user(&store, "alice", &["dev"]).await;
    let bob = user(&store, "bob", &["approvers"]).await;
    let dave = user(&store, "dave", &["approvers"]).await;
    let carol = user(&store, "carol", &[]).await;
    let erin = user(&store, "erin", &["breakglass"]).await;
    let access = Arc::new(Access::new(
        store.clone(),
        SharedPolicy::new(policy),
        AccessLimits {
            max_grant: Duration::from_secs(8 * 3600),
            request_ttl: Duration::from_secs(3600),
        },
        Arc::new(LogSink),
    ));
    Fixture {
        access,
        store,
        alice,
        bob,
        dave,
        carol,
        erin,
    }
}

async fn fixture() -> Fixture {
    fixture_with(PolicyEngine::builtin()).await
}

fn ask<'a>(target: &'a str, login: &'a str, secs: u64) -> NewAccess<'a> {
    NewAccess {
        target,
        login,
        duration: Duration::from_secs(secs),
        reason: "INC-1",
        ticket: Some("INC-1"),
    }
}

fn policy_dir(text: &str) -> (tempfile::TempDir, PolicyEngine) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.cedar"), text).expect("write");
    let engine = PolicyEngine::load(dir.path()).expect("policies load");
    (dir, engine)
}

#[tokio::test]
async fn the_grant_clock_starts_at_approval_and_the_certificate_is_short() {
    let f = fixture().await;
    let r = f
        .access
        .request(&f.alice, ask("stage-1", "deploy", 600), NOW)
        .await
        .expect("request");
    assert_eq!(r.approvals_required, 1);
    assert!(
        f.access
            .authorize(f.alice.clone(), "stage-1", "deploy", NOW)
            .await
            .is_err()
    );
    let (row, outcome) = f
        .access
        .approve(&f.bob, r.id, None, NOW + 10)
        .await
        .expect("approve");
    assert_eq!(outcome, ApprovalOutcome::Granted);
    assert_eq!(row.grant_start, Some(NOW + 10));
    let auth = f
        .access
        .authorize(f.alice.clone(), "stage-1", "deploy", NOW + 609)
        .await
        .expect("inside the window");
    assert_eq!(auth.grant().map(|g| g.id()), Some(r.id));
    assert!(
        f.access
            .authorize(f.alice.clone(), "stage-1", "deploy", NOW + 610)
            .await
            .is_err()
    );

    let ca_key = crate::keys::new_ed25519().expect("ca");
    let ca_public = ca_key.public_key().key_data().clone();
    let ca = SshCertificateAuthority::new(ca_key, Duration::from_secs(300));
    let cred = ca.mint(&auth, "s-1", NOW + 609).expect("mint");
    let cert = &cred.certificate;
    assert_eq!(cert.valid_principals(), ["deploy".to_string()]);
    assert_eq!(cert.key_id(), "drawbridge session=s-1 user=alice");
    assert!(cert.valid_before() - cert.valid_after() <= 330);
    assert_eq!(cert.signature_key(), &ca_public);
    assert_eq!(cert.public_key(), cred.key.public_key().key_data());
}

#[tokio::test]
async fn prod_root_needs_two_approvers_and_a_repeat_counts_once() {
    let f = fixture().await;
    let r = f
        .access
        .request(&f.alice, ask("web-1", "root", 600), NOW)
        .await
        .expect("request");
    assert_eq!(r.approvals_required, 2);
    let (_, first) = f
        .access
        .approve(&f.bob, r.id, Some("ok"), NOW)
        .await
        .expect("bob");
    assert_eq!(first, ApprovalOutcome::Counted { have: 1, need: 2 });
    let (_, again) = f
        .access
        .approve(&f.bob, r.id, None, NOW)
        .await
        .expect("bob again");
    assert_eq!(again, ApprovalOutcome::Duplicate);
    assert!(
        f.access
            .authorize(f.alice.clone(), "web-1", "root", NOW)
            .await
            .is_err()
    );
    let (row, second) = f
        .access
        .approve(&f.dave, r.id, None, NOW + 5)
        .await
        .expect("dave");
    assert_eq!(second, ApprovalOutcome::Granted);
    assert_eq!(row.approved_by, ["bob", "dave"]);
    assert_eq!(row.grant_start, Some(NOW + 5));
    assert!(
        f.access
            .authorize(f.alice.clone(), "web-1", "root", NOW + 5)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn concurrent_approvals_grant_exactly_once() {
    let f = fixture().await;
    let mut approvers = Vec::new();
    for i in 0..6 {
        approvers.push(user(&f.store, &format!("approver{i}"), &["approvers"]).await);
    }
    let r = f
        .access
        .request(&f.alice, ask("web-1", "root", 600), NOW)
        .await
        .expect("request");
    let tasks: Vec<_> = approvers
        .into_iter()
        .map(|who| {
            let access = f.access.clone();
            tokio::spawn(async move { access.approve(&who, r.id, None, NOW).await })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        if let Ok((_, ApprovalOutcome::Granted)) = task.await.expect("join") {
            granted += 1;
        }
    }
    assert_eq!(granted, 1);
    let row = f.store.request(r.id).await.expect("read").expect("row");
    assert_eq!(row.state, RequestState::Approved);
    assert_eq!(row.approved_by.len(), 2);
}

#[tokio::test]
async fn nobody_approves_their_own_request_even_when_policy_would_allow_it() {
    let (_dir, permissive) = policy_dir(
        r#"@id("everyone-requests") permit (principal, action == Action::"request", resource);
           @id("everyone-approves") permit (principal, action == Action::"approve", resource);"#,
    );
    let f = fixture_with(permissive).await;
    let r = f
        .access
        .request(&f.alice, ask("web-1", "root", 60), NOW)
        .await
        .expect("request");
    assert!(matches!(
        f.access.approve(&f.alice, r.id, None, NOW).await,
        Err(AccessError::SelfApproval)
    ));
    // The permissive policy does let carol approve.
    assert!(f.access.approve(&f.carol, r.id, None, NOW).await.is_ok());
}

#[tokio::test]
async fn ineligible_approvers_and_wordless_denials_are_refused() {
    let f = fixture().await;
    let r = f
        .access
        .request(&f.alice, ask("stage-1", "deploy", 60), NOW)
        .await
        .expect("request");
    assert!(matches!(
        f.access.approve(&f.carol, r.id, None, NOW).await,
        Err(AccessError::NotAllowed { .. })
    ));
    assert!(matches!(
        f.access.deny(&f.bob, r.id, " ", NOW).await,
        Err(AccessError::Invalid(_))
    ));
    let denied = f
        .access
        .deny(&f.bob, r.id, "not during the freeze", NOW)
        .await
        .expect("deny");
    assert_eq!(denied.state, RequestState::Denied);
    let err = f
        .access
        .authorize(f.alice.clone(), "stage-1", "deploy", NOW)
        .await
        .expect_err("denied");
    assert!(
        err.to_string()
            .contains("denied by bob (not during the freeze)"),
        "{err}"
    );
    assert!(matches!(
        f.access.approve(&f.dave, r.id, None, NOW).await,
        Err(AccessError::WrongState {
            state: "denied",
            ..
        })
    ));
}

#[tokio::test]
async fn undecided_requests_expire_after_the_ttl_and_grants_after_their_end() {
    let f = fixture().await;
    let r = f
        .access
        .request(&f.alice, ask("stage-1", "deploy", 60), NOW)
        .await
        .expect("request");
    assert_eq!(f.access.expire(NOW + 3599).await.expect("sweep"), 0);
    assert_eq!(f.access.expire(NOW + 3600).await.expect("sweep"), 1);
    assert!(matches!(
        f.access.approve(&f.bob, r.id, None, NOW + 3600).await,
        Err(AccessError::WrongState {
            state: "expired",
            ..
        })
    ));
    let g = f
        .access
        .request(&f.alice, ask("stage-1", "deploy", 60), NOW)
        .await
        .expect("request");
    f.access
        .approve(&f.bob, g.id, None, NOW)
        .await
        .expect("approve");
    assert_eq!(f.access.expire(NOW + 60).await.expect("sweep"), 1);
    let row = f.store.request(g.id).await.expect("read").expect("row");
    assert_eq!(row.state, RequestState::Expired);
    let err = f
        .access
        .authorize(f.alice.clone(), "stage-1", "deploy", NOW + 61)
        .await
        .expect_err("ended");
    assert!(err.to_string().contains("expired at"), "{err}");
}

#[tokio::test]
async fn cancel_release_and_revoke_belong_to_the_right_people() {
    let f = fixture().await;
    let r = f
        .access
        .request(&f.alice, ask("stage-1", "deploy", 600), NOW)
        .await
        .expect("request");
    assert!(matches!(
        f.access.cancel(&f.bob, r.id, NOW).await,
        Err(AccessError::NotAllowed { .. })
    ));
    assert_eq!(
        f.access
            .cancel(&f.alice, r.id, NOW)
            .await
            .expect("cancel")
            .state,
        RequestState::Cancelled
    );

    let g = f
        .access
        .request(&f.alice, ask("stage-1", "deploy", 600), NOW)
        .await
        .expect("request");
    f.access
        .approve(&f.bob, g.id, None, NOW)
        .await
        .expect("approve");
    assert!(matches!(
        f.access.release(&f.bob, g.id, NOW).await,
        Err(AccessError::NotAllowed { .. })
    ));
    assert!(matches!(
        f.access.revoke(&f.alice, g.id, None, NOW).await,
        Err(AccessError::NotAllowed { .. })
    ));
    assert!(matches!(
        f.access.revoke(&f.carol, g.id, None, NOW).await,
        Err(AccessError::NotAllowed { .. })
    ));
    let released = f
        .access
        .release(&f.alice, g.id, NOW + 1)
        .await
        .expect("release");
    assert_eq!(
        (released.state, released.grant_end),
        (RequestState::Released, Some(NOW + 1))
    );
    assert!(
        f.access
            .authorize(f.alice.clone(), "stage-1", "deploy", NOW + 1)
            .await
            .is_err()
    );

    let h = f
        .access
        .request(&f.alice, ask("stage-1", "deploy", 600), NOW)
        .await
        .expect("request");
    f.access
        .approve(&f.bob, h.id, None, NOW)
        .await
        .expect("approve");
    let revoked = f
        .access
        .revoke(&f.dave, h.id, Some("done"), NOW + 2)
        .await
        .expect("revoke");
    assert_eq!(revoked.state, RequestState::Revoked);
    assert!(matches!(
        f.access.revoke(&f.dave, h.id, None, NOW + 3).await,
        Err(AccessError::WrongState {
            state: "revoked",
            ..
        })
    ));
}

#[tokio::test]
async fn break_glass_is_immediate_capped_and_only_for_its_group() {
    let f = fixture().await;
    let g = f
        .access
        .break_glass(&f.erin, ask("web-1", "root", 1800), NOW)
        .await
        .expect("break glass");
    assert!(g.break_glass);
    assert_eq!(g.state, RequestState::Approved);
    let auth = f
        .access
        .authorize(f.erin.clone(), "web-1", "root", NOW)
        .await
        .expect("in");
    assert!(auth.grant().is_some_and(|g| g.break_glass()));
    assert!(matches!(
        f.access
            .break_glass(&f.erin, ask("web-1", "root", 1801), NOW)
            .await,
        Err(AccessError::Invalid(_))
    ));
    assert!(matches!(
        f.access
            .break_glass(&f.alice, ask("web-1", "root", 60), NOW)
            .await,
        Err(AccessError::Invalid(_))
    ));
}

#[tokio::test]
async fn durations_above_the_policy_cap_are_refused_not_clamped() {
    let f = fixture().await;
    // prod root: 4h cap from policy; 8h gateway-wide.
    let err = f
        .access
        .request(&f.alice, ask("web-1", "root", 4 * 3600 + 1), NOW)
        .await
        .expect_err("cap");
    assert!(err.to_string().contains("4h"), "{err}");
    assert!(
        f.access
            .request(&f.alice, ask("web-1", "root", 4 * 3600), NOW)
            .await
            .is_ok()
    );
    assert!(
        f.access
            .request(&f.alice, ask("stage-1", "x", 8 * 3600 + 1), NOW)
            .await
            .is_err()
    );
    let mut no_reason = ask("stage-1", "x", 60);
    no_reason.reason = " ";
    assert!(matches!(
        f.access.request(&f.alice, no_reason, NOW).await,
        Err(AccessError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_one_session_grant_refuses_the_second_session() {
    let (_dir, policy) = policy_dir(
        r#"@id("connect-with-grant") permit (principal, action == Action::"connect", resource) when { context.grant_active };
           @id("one-shot") @max_sessions("1") permit (principal, action == Action::"request", resource);
           @id("approvers") permit (principal in Group::"approvers", action == Action::"approve", resource);"#,
    );
    let f = fixture_with(policy).await;
    let r = f
        .access
        .request(&f.alice, ask("web-1", "root", 600), NOW)
        .await
        .expect("request");
    assert_eq!(r.max_sessions, Some(1));
    f.access
        .approve(&f.bob, r.id, None, NOW)
        .await
        .expect("approve");
    assert!(
        f.access
            .authorize(f.alice.clone(), "web-1", "root", NOW)
            .await
            .is_ok()
    );
    f.store
        .insert_session(&SessionRow {
            id: "s-1".into(),
            user: "alice".into(),
            target: "web-1".into(),
            login: "root".into(),
            protocol: "ssh".into(),
            grant_id: Some(r.id),
            started_at: NOW,
            ended_at: None,
            end_reason: None,
            recording: String::new(),
        })
        .await
        .expect("session");
    let err = f
        .access
        .authorize(f.alice.clone(), "web-1", "root", NOW)
        .await
        .expect_err("used up");
    assert!(
        err.to_string()
            .contains("allows 1 session(s) and 1 were opened"),
        "{err}"
    );
}

#[tokio::test]
async fn disabling_a_user_cancels_requests_and_revokes_grants() {
    let f = fixture().await;
    let pending = f
        .access
        .request(&f.alice, ask("web-1", "root", 600), NOW)
        .await
        .expect("request");
    let g = f
        .access
        .request(&f.alice, ask("stage-1", "deploy", 600), NOW)
        .await
        .expect("request");
    f.access
        .approve(&f.bob, g.id, None, NOW)
        .await
        .expect("approve");
    f.store
        .set_user_disabled("alice", true, NOW + 1)
        .await
        .expect("disable");
    let p = f
        .store
        .request(pending.id)
        .await
        .expect("read")
        .expect("row");
    let gr = f.store.request(g.id).await.expect("read").expect("row");
    assert_eq!(p.state, RequestState::Cancelled);
    assert_eq!(
        (gr.state, gr.grant_end),
        (RequestState::Revoked, Some(NOW + 1))
    );
}

#[tokio::test]
async fn refusals_name_the_reason() {
    let f = fixture().await;
    let err = f
        .access
        .authorize(f.alice.clone(), "web-1", "root", NOW)
        .await
        .expect_err("no grant");
    assert!(err.to_string().contains("no active grant"), "{err}");
    let r = f
        .access
        .request(&f.alice, ask("web-1", "root", 60), NOW)
        .await
        .expect("request");
    let err = f
        .access
        .authorize(f.alice.clone(), "web-1", "root", NOW)
        .await
        .expect_err("pending");
    assert!(
        err.to_string().contains("pending approval (0/2 approvals)"),
        "{err}"
    );
    assert!(matches!(
        f.access
            .authorize(f.alice.clone(), "db-9", "root", NOW)
            .await,
        Err(AccessError::UnknownTarget(_))
    ));
    let _ = r;
}
