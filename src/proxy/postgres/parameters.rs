//! Bind parameters in the recording: each value as an auditor can read it, or
//! `***` when its statement handles secrets.
//!
//! A Bind names a statement and carries raw values, text or binary. To mask by
//! statement and to decode binary values (what drivers such as tokio-postgres,
//! pgx and asyncpg send) the tap remembers, per prepared statement, whether its
//! text names a secret and the parameter types the target described for it.

use std::collections::{HashMap, VecDeque};

use super::wire;
use crate::config::{BindParameters, PostgresConfig};
use crate::recording::format;

/// Longer values are cut, with their full length noted.
const VALUE_LIMIT: usize = 256;
/// A Bind note's values stop at about this many bytes, with how many more
/// there were.
const NOTE_LIMIT: usize = 64 * 1024;
/// Prepared statements remembered per session; beyond it the oldest go, and
/// Binds of a forgotten statement are masked.
const STATEMENTS_LIMIT: usize = 4096;

/// What the configuration says Bind notes may show.
#[derive(Debug)]
pub struct ParameterPolicy {
    values: bool,
    /// Lowercase words that mark a statement's parameters as secret.
    mask_words: Vec<String>,
}

impl ParameterPolicy {
    pub fn from_config(config: &PostgresConfig) -> Self {
        ParameterPolicy {
            values: config.bind_parameters == BindParameters::Values,
            mask_words: config
                .mask_parameters_of
                .iter()
                .map(|w| w.to_lowercase())
                .collect(),
        }
    }

    fn masks(&self, statement: &str) -> bool {
        let lower = statement.to_lowercase();
        self.mask_words.iter().any(|w| lower.contains(w.as_str()))
    }
}

/// A prepared statement as the tap knows it.
struct Statement {
    masked: bool,
    /// Parameter type OIDs, 0 where unknown.
    types: Vec<u32>,
}

/// The session's prepared statements and the statement Describes whose
/// ParameterDescription has not come back yet.
#[derive(Default)]
pub struct Statements {
    by_name: HashMap<String, Statement>,
    /// Parse order, to forget the oldest first.
    order: VecDeque<String>,
    /// (requests sent before it, statement name) per pending Describe.
    describing: VecDeque<(u64, String)>,
    /// Requests that end in ReadyForQuery (Sync, Query, FunctionCall) sent…
    requests_sent: u64,
    /// …and ReadyForQuery seen: a Describe older than the last one never gets
    /// its answer (an error skipped it).
    ready_seen: u64,
}

impl Statements {
    /// A Parse frame's body: name, text, declared parameter types.
    pub fn parsed(&mut self, body: &[u8], policy: &ParameterPolicy) {
        let mut fields = Fields(body);
        let (Some(name), Some(text)) = (fields.cstr(), fields.cstr()) else {
            return;
        };
        let count = fields.u16().unwrap_or(0);
        let types = (0..count).map(|_| fields.u32().unwrap_or(0)).collect();
        let masked = policy.masks(text);
        if self
            .by_name
            .insert(name.to_string(), Statement { masked, types })
            .is_none()
        {
            self.order.push_back(name.to_string());
        }
        while self.by_name.len() > STATEMENTS_LIMIT {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.by_name.remove(&oldest);
        }
    }

    /// A Close or Describe frame's body names a statement when it starts with `S`.
    fn statement_named(body: &[u8]) -> Option<&str> {
        let (kind, rest) = body.split_first()?;
        (*kind == b'S').then(|| Fields(rest).cstr()).flatten()
    }

    pub fn closed(&mut self, body: &[u8]) {
        if let Some(name) = Self::statement_named(body) {
            self.by_name.remove(name);
            self.order.retain(|n| n != name);
        }
    }

    pub fn describing(&mut self, body: &[u8]) {
        if let Some(name) = Self::statement_named(body) {
            // Bounded even for a client that never sends Sync. Past the bound
            // types can go to the wrong statement: a value may be decoded
            // wrongly, never unmasked (masking does not use types).
            if self.describing.len() >= STATEMENTS_LIMIT {
                self.describing.pop_front();
            }
            self.describing
                .push_back((self.requests_sent, name.to_string()));
        }
    }

    /// The client sent a request the target will answer with ReadyForQuery.
    pub fn requested(&mut self) {
        self.requests_sent += 1;
    }

    /// The target sent ReadyForQuery.
    pub fn ready(&mut self) {
        self.ready_seen += 1;
        while self
            .describing
            .front()
            .is_some_and(|(sent, _)| *sent < self.ready_seen)
        {
            self.describing.pop_front();
        }
    }

    /// A ParameterDescription's body: the types of the oldest pending Describe.
    pub fn described(&mut self, body: &[u8]) {
        let Some((_, name)) = self.describing.pop_front() else {
            return;
        };
        let mut fields = Fields(body);
        let count = fields.u16().unwrap_or(0);
        let types: Vec<u32> = (0..count).map(|_| fields.u32().unwrap_or(0)).collect();
        if let Some(statement) = self.by_name.get_mut(&name) {
            statement.types = types;
        }
    }

    /// The note for a Bind frame's body.
    pub fn bind_note(&self, body: &[u8], policy: &ParameterPolicy) -> String {
        let mut fields = Fields(body);
        // Strict: guessing a name could show values under the wrong statement.
        let (Some(portal), Some(name)) = (fields.cstr(), fields.cstr()) else {
            return "bind: malformed".to_string();
        };
        let head = format!("bind {portal:?} to {name:?}:");
        let Some(bind) = BindValues::read(&mut fields) else {
            return format!("{head} malformed parameters");
        };
        if !policy.values {
            return format!("{head} {} parameter(s)", bind.values.len());
        }
        match self.by_name.get(name) {
            _ if bind.values.is_empty() => format!("{head} no parameters"),
            Some(statement) if !statement.masked => {
                format!("{head} {}", bind.shown(&statement.types))
            }
            Some(_) => format!("{head} {}", bind.masked()),
            None => format!(
                "{head} {} (statement not seen by the gateway)",
                bind.masked()
            ),
        }
    }
}

/// A Bind's format codes and values (None for NULL).
struct BindValues<'a> {
    formats: Vec<u16>,
    values: Vec<Option<&'a [u8]>>,
}

impl<'a> BindValues<'a> {
    fn read(fields: &mut Fields<'a>) -> Option<Self> {
        let count = fields.u16()?;
        let formats = (0..count).map(|_| fields.u16()).collect::<Option<_>>()?;
        let count = fields.u16()?;
        let values = (0..count)
            .map(|_| {
                let len = fields.u32()? as i32;
                if len < 0 {
                    Some(None)
                } else {
                    fields.take(len as usize).map(Some)
                }
            })
            .collect::<Option<_>>()?;
        Some(BindValues { formats, values })
    }

    /// `$1 = 42, $2 = 'text', $3 = NULL`, binary values decoded by `types`.
    fn shown(&self, types: &[u32]) -> String {
        let shown = self.values.iter().enumerate().map(|(i, value)| {
            let shown = match value {
                None => "NULL".to_string(),
                Some(bytes) if self.is_binary(i) => {
                    binary_value(types.get(i).copied().unwrap_or(0), bytes)
                }
                Some(bytes) => text_value(bytes),
            };
            format!("${} = {shown}", i + 1)
        });
        listed(shown, self.values.len())
    }

    /// `$1 = ***, $2 = ***`: positions kept, values not.
    fn masked(&self) -> String {
        let masked = (1..=self.values.len()).map(|n| format!("${n} = ***"));
        listed(masked, self.values.len())
    }

    /// No codes: all text; one: it applies to all; otherwise one per value.
    fn is_binary(&self, index: usize) -> bool {
        let code = match self.formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(index).copied().unwrap_or(0),
        };
        code == 1
    }
}

/// `items` joined with commas, up to [`NOTE_LIMIT`] bytes: a Bind of
/// thousands of small values must not make a note many times its size.
fn listed(items: impl Iterator<Item = String>, count: usize) -> String {
    let mut out = String::new();
    for (n, item) in items.enumerate() {
        if out.len() >= NOTE_LIMIT {
            out.push_str(&format!(", … {} more", count - n));
            break;
        }
        if n > 0 {
            out.push_str(", ");
        }
        out.push_str(&item);
    }
    out
}

/// A text-format value, quoted as SQL would (hex if it is not UTF-8).
fn text_value(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => quoted(text),
        Err(_) => hex(bytes),
    }
}

/// A binary-format value, decoded for the common types; hex otherwise.
fn binary_value(type_oid: u32, bytes: &[u8]) -> String {
    let fixed = |n: usize| bytes.len() == n;
    match type_oid {
        16 if fixed(1) => (bytes[0] != 0).to_string(),
        21 if fixed(2) => i16::from_be_bytes([bytes[0], bytes[1]]).to_string(),
        23 if fixed(4) => i32::from_be_bytes(array(bytes)).to_string(),
        26 if fixed(4) => u32::from_be_bytes(array(bytes)).to_string(),
        20 if fixed(8) => i64::from_be_bytes(array(bytes)).to_string(),
        700 if fixed(4) => f32::from_be_bytes(array(bytes)).to_string(),
        701 if fixed(8) => f64::from_be_bytes(array(bytes)).to_string(),
        // text, varchar, bpchar, name, json: the text itself.
        25 | 1043 | 1042 | 19 | 114 => text_value(bytes),
        // jsonb: a version byte, then the text.
        3802 if bytes.first() == Some(&1) => text_value(&bytes[1..]),
        2950 if fixed(16) => uuid(bytes),
        _ => hex(bytes),
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn quoted(text: &str) -> String {
    let mut cut = text.len().min(VALUE_LIMIT);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let quoted = format!("'{}'", text[..cut].replace('\'', "''"));
    if cut < text.len() {
        format!("{quoted}… ({} bytes)", text.len())
    } else {
        quoted
    }
}

fn hex(bytes: &[u8]) -> String {
    let shown = format::hex(&bytes[..bytes.len().min(VALUE_LIMIT / 2)]);
    if bytes.len() > VALUE_LIMIT / 2 {
        format!("\\x{shown}… ({} bytes)", bytes.len())
    } else {
        format!("\\x{shown}")
    }
}

fn uuid(bytes: &[u8]) -> String {
    let h = format::hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A cursor over a frame body; every read is checked, so a malformed frame
/// gives None rather than a panic.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes(array(b)))
    }

    fn cstr(&mut self) -> Option<&'a str> {
        let (text, rest) = wire::cstr(self.0)?;
        self.0 = rest;
        Some(text)
    }
}

#[cfg(test)]
#[path = "parameters_tests.rs"]
mod tests;
