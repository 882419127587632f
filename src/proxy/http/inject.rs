//! What an app is told about its caller, per target ([`HttpSettings`]): the
//! signed assertion (on unless turned off), headers rendered from templates
//! (`X-Forwarded-Email: {email}`), and a vaulted static credential sent as
//! `Authorization`. Everything is rendered once when a session opens: user,
//! groups, login and target are fixed for a session's life, and the secret is
//! read from its variable or file then, never stored and never logged.

use base64ct::{Base64, Encoding};
use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

use super::upstream::ASSERTION_HEADER;
use crate::credentials::HttpCredential;
use crate::store::{HeaderTemplate, HttpSettings, StaticCredential};

/// The values a header template may name.
pub const PLACEHOLDERS: &[&str] = &["user", "email", "groups", "login", "target"];

/// Headers the gateway sets itself (framing, routing, forwarding, the
/// assertion) or takes from `--basic-*`/`--bearer-*`: no template may set them.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    ASSERTION_HEADER,
];

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("header {name:?}: {reason}")]
    Template { name: String, reason: String },
    /// Names where the secret should be (variable or file), never the secret.
    #[error("static credential: {0}")]
    Credential(String),
}

/// One session's injected headers, ready to copy into each request.
pub struct Injection {
    assertion: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    authorization: Option<HeaderValue>,
}

impl Injection {
    /// Renders `settings` (the defaults when `None`) for the caller `credential`
    /// names, reading the static credential's secret now.
    pub fn for_session(
        settings: Option<&HttpSettings>,
        credential: &HttpCredential,
    ) -> Result<Injection, InjectError> {
        let default = HttpSettings::default();
        let settings = settings.unwrap_or(&default);
        let templates = settings.headers.clone().unwrap_or_else(default_templates);
        let mut headers = Vec::with_capacity(templates.len());
        for template in &templates {
            let name = header_name(&template.name)?;
            // A header naming a value this caller lacks (no email) is not sent.
            let Some(value) = render(&template.value, credential) else {
                continue;
            };
            let value = HeaderValue::from_str(&value).map_err(|_| InjectError::Template {
                name: template.name.clone(),
                reason: "the rendered value is not a valid header value".into(),
            })?;
            headers.push((name, value));
        }
        let authorization = settings
            .credential
            .as_ref()
            .map(authorization)
            .transpose()?;
        Ok(Injection {
            assertion: settings.assertion,
            headers,
            authorization,
        })
    }

    pub fn assertion(&self) -> bool {
        self.assertion
    }

    /// Sets the rendered headers and the static credential, replacing whatever
    /// the client sent under those names.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(authorization) = &self.authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
    }
}

/// Without `--header`: who the caller is and their groups.
fn default_templates() -> Vec<HeaderTemplate> {
    [
        ("X-Forwarded-User", "{user}"),
        ("X-Forwarded-Groups", "{groups}"),
    ]
    .into_iter()
    .map(|(name, value)| HeaderTemplate {
        name: name.into(),
        value: value.into(),
    })
    .collect()
}

/// Checks a template when a target is registered, so a typo fails there and
/// not at the first request.
pub fn validate(template: &HeaderTemplate) -> Result<(), InjectError> {
    header_name(&template.name)?;
    let bad = |reason: String| InjectError::Template {
        name: template.name.clone(),
        reason,
    };
    for placeholder in placeholders(&template.value).map_err(bad)? {
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(bad(format!(
                "unknown placeholder {{{placeholder}}}; known: {}",
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let literal = template.value.replace(['{', '}'], "");
    HeaderValue::from_str(&literal)
        .map(|_| ())
        .map_err(|_| bad("not a valid header value".into()))
}

fn header_name(name: &str) -> Result<HeaderName, InjectError> {
    let bad = |reason: &str| InjectError::Template {
        name: name.to_string(),
        reason: reason.into(),
    };
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a header name"))?;
    if RESERVED.contains(&parsed.as_str()) {
        return Err(bad(
            "set by the gateway itself (use --basic-*/--bearer-* for Authorization)",
        ));
    }
    Ok(parsed)
}

/// The names between braces in `template`, in order.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("unmatched }".into());
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unmatched {")?;
        found.push(&after[..close]);
        rest = &after[close + 1..];
    }
    Ok(found)
}

/// The template with every placeholder replaced; `None` when it names a value
/// the caller does not have.
fn render(template: &str, caller: &HttpCredential) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        match &after[..close] {
            "user" => out.push_str(caller.user()),
            "email" => out.push_str(caller.email()?),
            "groups" => out.push_str(&caller.groups().join(",")),
            "login" => out.push_str(caller.login()),
            "target" => out.push_str(caller.target()),
            _ => return None,
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `Authorization` for the static credential, marked sensitive so HTTP/2 never
/// indexes it and `Debug` never prints it.
fn authorization(credential: &StaticCredential) -> Result<HeaderValue, InjectError> {
    let value = match credential {
        StaticCredential::Basic { user, password } => {
            let password = password.read().map_err(InjectError::Credential)?;
            let pair = format!("{user}:{}", password.expose());
            format!("Basic {}", Base64::encode_string(pair.as_bytes()))
        }
        StaticCredential::Bearer { token } => {
            let token = token.read().map_err(InjectError::Credential)?;
            format!("Bearer {}", token.expose())
        }
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        InjectError::Credential("the secret holds characters a header cannot carry".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, value: &str) -> HeaderTemplate {
        HeaderTemplate {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn templates_name_known_placeholders_and_headers_of_their_own() {
        assert!(validate(&template("X-Forwarded-Email", "{email}")).is_ok());
        assert!(validate(&template("X-Who", "user={user}; groups={groups}")).is_ok());
        for (name, value, why) in [
            ("X-Who", "{nickname}", "unknown placeholder"),
            ("X-Who", "{user", "unmatched {"),
            ("X-Who", "user}", "unmatched }"),
            ("Authorization", "{user}", "set by the gateway"),
            ("X-Drawbridge-Assertion", "{user}", "set by the gateway"),
            ("Host", "{target}", "set by the gateway"),
            ("bad name", "{user}", "not a header name"),
            ("X-Who", "a\nb", "not a valid header value"),
        ] {
            let e = validate(&template(name, value)).expect_err(value);
            assert!(e.to_string().contains(why), "{name}: {value}: {e}");
        }
    }

    #[test]
    fn placeholders_are_found_in_order() {
        assert_eq!(
            placeholders("a{user}b{login}").expect("ok"),
            vec!["user", "login"]
        );
        assert!(placeholders("plain").expect("ok").is_empty());
    }
}
