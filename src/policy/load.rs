//! Reading the policy folder and compiling it: parse the schema and every
//! policy file, re-key each policy by its `@id` annotation, and validate the
//! set against the schema. Every problem found is collected, with its file
//! and line, before giving up; nothing here decides anything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator};
use miette::Diagnostic;

use super::{DEFAULT_POLICIES, DEFAULT_SCHEMA};
use super::{PolicyError, Problem};

/// The text of one schema or policy file, with the path it is reported by.
pub(super) struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// The files found in a policy folder.
pub(super) struct Files {
    pub schemas: Vec<Source>,
    pub policies: Vec<Source>,
}

/// The embedded defaults, as (schemas, policies).
pub(super) fn builtin_sources() -> (Vec<Source>, Vec<Source>) {
    (
        vec![builtin_schema()],
        vec![source("<built-in>/default.cedar", DEFAULT_POLICIES)],
    )
}

fn builtin_schema() -> Source {
    source("<built-in>/drawbridge.cedarschema", DEFAULT_SCHEMA)
}

fn source(path: &str, text: &str) -> Source {
    Source {
        path: PathBuf::from(path),
        text: text.to_owned(),
    }
}

/// Reads `dir/*.cedarschema` and `dir/*.cedar`, in name order. `None` when
/// the folder does not exist or holds no `.cedar` file (use the defaults);
/// the built-in schema stands in when there is no `.cedarschema` file.
pub(super) fn read_dir(dir: &Path) -> Result<Option<Files>, PolicyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PolicyError::Io { path, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();

    let mut files = Files {
        schemas: Vec::new(),
        policies: Vec::new(),
    };
    for path in paths {
        let list = match path.extension().and_then(|e| e.to_str()) {
            Some("cedarschema") => &mut files.schemas,
            Some("cedar") => &mut files.policies,
            _ => continue,
        };
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        list.push(Source { path, text });
    }
    if files.policies.is_empty() {
        return Ok(None);
    }
    if files.schemas.is_empty() {
        files.schemas.push(builtin_schema());
    }
    Ok(Some(files))
}

/// Parses and validates; returns the schema, the policies keyed by `@id`,
/// and the sorted ids, or every problem found.
pub(super) fn compile(
    schemas: &[Source],
    policies: &[Source],
) -> Result<(Schema, PolicySet, Vec<String>), Vec<Problem>> {
    let mut problems = Vec::new();
    let schema = compile_schema(schemas, &mut problems);

    let mut set = PolicySet::new();
    // policy id -> (index into `policies`, line where the policy starts)
    let mut origins: HashMap<String, (usize, usize)> = HashMap::new();
    for (index, file) in policies.iter().enumerate() {
        parse_policy_file(index, policies, &mut set, &mut origins, &mut problems);
        tracing::debug!(file = %file.path.display(), "parsed policy file");
    }

    let Some(schema) = schema else {
        return Err(problems);
    };
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    let locate = |id: &PolicyId, diag: &dyn Diagnostic| match origins.get(AsRef::<str>::as_ref(id))
    {
        Some(&(index, line)) => {
            let file = &policies[index];
            let mut problem = problem_at(diag, &file.path, Some(&file.text));
            if problem.line.is_none() {
                problem.line = Some(line);
            }
            problem
        }
        None => problem_at(diag, Path::new("<unknown>"), None),
    };
    for warning in result.validation_warnings() {
        let problem = locate(warning.policy_id(), warning);
        tracing::warn!(%problem, "policy validation warning");
    }
    problems.extend(result.validation_errors().map(|e| locate(e.policy_id(), e)));
    for policy in set.policies() {
        if let Err(message) = super::requirements::from_policy(policy) {
            let (path, line) = match origins.get(AsRef::<str>::as_ref(policy.id())) {
                Some(&(index, line)) => (policies[index].path.clone(), Some(line)),
                None => (PathBuf::from("<unknown>"), None),
            };
            problems.push(Problem {
                file: path,
                line,
                column: None,
                message: format!("policy `{}`: {message}", policy.id()),
            });
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    let mut ids: Vec<String> = origins.into_keys().collect();
    ids.sort();
    Ok((schema, set, ids))
}

fn compile_schema(schemas: &[Source], problems: &mut Vec<Problem>) -> Option<Schema> {
    let mut fragments = Vec::new();
    for file in schemas {
        match SchemaFragment::from_cedarschema_str(&file.text) {
            Ok((fragment, warnings)) => {
                for warning in warnings {
                    let problem = problem_at(&warning, &file.path, Some(&file.text));
                    tracing::warn!(%problem, "policy schema warning");
                }
                fragments.push(fragment);
            }
            Err(e) => problems.extend(problems_from(&e, &file.path, Some(&file.text))),
        }
    }
    if fragments.len() != schemas.len() {
        return None;
    }
    match Schema::from_schema_fragments(fragments) {
        Ok(schema) => Some(schema),
        Err(e) => {
            // Spans are only meaningful when there is a single file.
            let (path, text) = match schemas {
                [only] => (only.path.clone(), Some(only.text.as_str())),
                _ => (joined_paths(schemas), None),
            };
            problems.extend(problems_from(&e, &path, text));
            None
        }
    }
}

/// Parses one file and adds its policies to `set` under their `@id`s.
fn parse_policy_file(
    index: usize,
    files: &[Source],
    set: &mut PolicySet,
    origins: &mut HashMap<String, (usize, usize)>,
    problems: &mut Vec<Problem>,
) {
    let file = &files[index];
    let parsed = match PolicySet::from_str(&file.text) {
        Ok(parsed) => parsed,
        Err(e) => {
            problems.extend(problems_from(&e, &file.path, Some(&file.text)));
            return;
        }
    };
    let problem = |line: usize, message: String| Problem {
        file: file.path.clone(),
        line: Some(line),
        column: None,
        message,
    };
    for template in parsed.templates() {
        let line = find_line(&file.text, &template.to_cedar(), &mut 0);
        problems.push(problem(
            line,
            "templates (policies with ?principal or ?resource) are not supported".to_owned(),
        ));
    }
    // `from_str` names the policies policy0, policy1, ... in file order;
    // walking them in that order lets us find each one's line in the text.
    let mut parsed: Vec<_> = parsed.policies().collect();
    parsed.sort_by_key(|p| {
        let id: &str = p.id().as_ref();
        id.strip_prefix("policy")
            .and_then(|n| n.parse::<usize>().ok())
    });
    let mut cursor = 0;
    for policy in parsed {
        let text = policy.to_cedar().unwrap_or_default();
        let line = find_line(&file.text, &text, &mut cursor);
        let Some(id) = policy
            .annotation("id")
            .map(str::trim)
            .filter(|id| !id.is_empty())
        else {
            problems.push(problem(
                line,
                "policy has no @id(\"...\") annotation; every policy needs a stable id".to_owned(),
            ));
            continue;
        };
        if let Some(&(first, first_line)) = origins.get(id) {
            let first = files[first].path.display();
            problems.push(problem(
                line,
                format!("duplicate policy id `{id}` (first used at {first}:{first_line})"),
            ));
            continue;
        }
        match set.add(policy.new_id(PolicyId::new(id))) {
            Ok(()) => {
                origins.insert(id.to_owned(), (index, line));
            }
            Err(e) => problems.push(problem(line, format!("policy `{id}`: {e}"))),
        }
    }
}

/// The 1-based line where `needle` occurs in `text` at or after `*cursor`
/// (which is advanced past it); the cursor's line if it is not found.
fn find_line(text: &str, needle: &str, cursor: &mut usize) -> usize {
    let start = (*cursor).min(text.len());
    let offset = match text.get(start..).and_then(|rest| rest.find(needle)) {
        Some(found) if !needle.is_empty() => start + found,
        _ => start,
    };
    *cursor = offset + needle.len().min(text.len() - offset);
    line_col(text, offset).0
}

/// A diagnostic and its related diagnostics (how Cedar reports several
/// errors in one value), each as a problem.
fn problems_from(diag: &dyn Diagnostic, file: &Path, text: Option<&str>) -> Vec<Problem> {
    let mut problems = vec![problem_at(diag, file, text)];
    if let Some(related) = diag.related() {
        problems.extend(related.map(|d| problem_at(d, file, text)));
    }
    problems
}

/// One diagnostic as a problem, located by its first labelled span.
fn problem_at(diag: &dyn Diagnostic, file: &Path, text: Option<&str>) -> Problem {
    let span = diag.labels().and_then(|mut labels| labels.next());
    let (line, column) = match (text, &span) {
        (Some(text), Some(span)) => {
            let (line, column) = line_col(text, span.offset());
            (Some(line), Some(column))
        }
        _ => (None, None),
    };
    let mut message = diag.to_string();
    if let Some(label) = span.as_ref().and_then(|s| s.label()) {
        message.push_str(&format!(": {label}"));
    }
    if let Some(help) = diag.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    Problem {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

fn joined_paths(files: &[Source]) -> PathBuf {
    let names: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    PathBuf::from(names.join(", "))
}
