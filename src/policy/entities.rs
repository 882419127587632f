//! Turns one [`Query`] into a Cedar request and entity set: the user with
//! their groups, the target with its labels as tags, and the action's
//! context. Built fresh per decision, from the query alone (no IO), and
//! checked against the schema so a mismatch is an error, never a silent
//! "attribute missing".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema,
};

use super::{Action, Query};

/// Entity type names declared in `policies/drawbridge.cedarschema`.
const USER: &str = "User";
const GROUP: &str = "Group";
const TARGET: &str = "Target";
const ACTION: &str = "Action";

/// Builds the request and entities for `q`, validated against `schema`.
/// The error is a sentence for [`Decision::errors`](super::Decision::errors).
pub(super) fn build(q: &Query<'_>, schema: &Schema) -> Result<(Request, Entities), String> {
    let principal = uid(USER, q.principal.name)?;
    let action = uid(ACTION, q.action.cedar_id())?;
    let resource = uid(TARGET, q.target.name)?;

    let context = context(q)?;
    let request = Request::new(
        principal.clone(),
        action,
        resource.clone(),
        context,
        Some(schema),
    )
    .map_err(|e| format!("invalid policy request: {e}"))?;

    // A user may be listed in a group twice; Cedar rejects duplicate entities.
    let groups: BTreeSet<&str> = q.principal.groups.iter().map(String::as_str).collect();
    let group_uids = groups
        .iter()
        .map(|g| uid(GROUP, g))
        .collect::<Result<Vec<_>, _>>()?;

    let user = Entity::new(
        principal,
        HashMap::from([("name".to_owned(), string(q.principal.name))]),
        group_uids.iter().cloned().collect::<HashSet<_>>(),
    )
    .map_err(|e| format!("invalid user entity: {e}"))?;
    let target = Entity::new_with_tags(
        resource,
        [("name".to_owned(), string(q.target.name))],
        [],
        q.target
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), string(value))),
    )
    .map_err(|e| format!("invalid target entity: {e}"))?;
    let group_entities = group_uids
        .into_iter()
        .map(|g| Entity::new_no_attrs(g, HashSet::new()));

    // The requester of an approval is referred to by uid only: equality with
    // the principal needs no entity data, and the gateway knows nothing more
    // about them here. (If the requester is the principal, the principal's
    // entity serves for both.)
    let entities = Entities::from_entities(
        [user, target].into_iter().chain(group_entities),
        Some(schema),
    )
    .map_err(|e| format!("invalid policy entities: {e}"))?;
    Ok((request, entities))
}

/// The per-action context, as declared in the schema.
fn context(q: &Query<'_>) -> Result<Context, String> {
    let login = ("login".to_owned(), string(q.login));
    let pairs = match q.action {
        Action::Connect | Action::Request => vec![
            login,
            (
                "grant_active".to_owned(),
                RestrictedExpression::new_bool(q.grant_active),
            ),
        ],
        Action::BreakGlass => vec![login],
        Action::Forward => {
            let (host, port) = q
                .forward_to
                .ok_or_else(|| "a forward query must name the destination".to_owned())?;
            vec![
                login,
                (
                    "grant_active".to_owned(),
                    RestrictedExpression::new_bool(q.grant_active),
                ),
                ("host".to_owned(), string(host)),
                (
                    "port".to_owned(),
                    RestrictedExpression::new_long(i64::from(port)),
                ),
            ]
        }
        Action::Approve => {
            let requester = q
                .requester
                .ok_or_else(|| "an approve query must name the requester".to_owned())?;
            vec![
                login,
                (
                    "requester".to_owned(),
                    RestrictedExpression::new_entity_uid(uid(USER, requester)?),
                ),
            ]
        }
    };
    Context::from_pairs(pairs).map_err(|e| format!("invalid policy context: {e}"))
}

fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let type_name = EntityTypeName::from_str(type_name)
        .map_err(|e| format!("invalid entity type `{type_name}`: {e}"))?;
    Ok(EntityUid::from_type_name_and_id(
        type_name,
        EntityId::new(id),
    ))
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}
