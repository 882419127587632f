//! Bind notes from frame bodies as clients and PostgreSQL send them.

use super::*;
use bytes::{BufMut, BytesMut};

fn policy() -> ParameterPolicy {
    ParameterPolicy::from_config(&PostgresConfig::default())
}

fn parse(name: &str, text: &str, types: &[u32]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(text.as_bytes());
    b.put_u8(0);
    b.put_u16(types.len() as u16);
    types.iter().for_each(|t| b.put_u32(*t));
    b.to_vec()
}

/// A statement Describe or Close body.
fn statement(name: &str) -> Vec<u8> {
    [b"S", name.as_bytes(), b"\0"].concat()
}

fn parameter_description(types: &[u32]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(types.len() as u16);
    types.iter().for_each(|t| b.put_u32(*t));
    b.to_vec()
}

fn bind(name: &str, formats: &[u16], values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(b"\0");
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_u16(formats.len() as u16);
    formats.iter().for_each(|f| b.put_u16(*f));
    b.put_u16(values.len() as u16);
    for value in values {
        match value {
            None => b.put_i32(-1),
            Some(v) => {
                b.put_u32(v.len() as u32);
                b.put_slice(v);
            }
        }
    }
    b.put_u16(0);
    b.to_vec()
}

/// Parse, Describe, Sync, then the target's ParameterDescription and
/// ReadyForQuery: what tokio-postgres and pgx do before binary Binds.
fn prepared(statements: &mut Statements, name: &str, text: &str, types: &[u32]) {
    statements.parsed(&parse(name, text, &[]), &policy());
    statements.describing(&statement(name));
    statements.requested();
    statements.described(&parameter_description(types));
    statements.ready();
}

#[test]
fn text_values_are_quoted_cut_and_null_is_null() {
    let mut s = Statements::default();
    s.parsed(&parse("", "select $1, $2, $3", &[]), &policy());
    let long = "x".repeat(300);
    let note = s.bind_note(
        &bind("", &[], &[Some(b"it's"), None, Some(long.as_bytes())]),
        &policy(),
    );
    let cut = format!("'{}'… (300 bytes)", "x".repeat(VALUE_LIMIT));
    assert_eq!(
        note,
        format!("bind \"\" to \"\": $1 = 'it''s', $2 = NULL, $3 = {cut}")
    );
}

#[test]
fn binary_values_are_decoded_by_the_types_the_target_described() {
    let mut s = Statements::default();
    let types = [23, 20, 16, 701, 25, 2950, 3802, 17];
    prepared(
        &mut s,
        "s0",
        "insert into t values ($1, $2, $3, $4, $5, $6, $7, $8)",
        &types,
    );
    let uuid = [
        0x67, 0xe5, 0x50, 0x44, 0x10, 0xb1, 0x42, 0x6f, 0x92, 0x47, 0xbb, 0x68, 0x0e, 0x5f, 0xe0,
        0xc8,
    ];
    let values: [&[u8]; 8] = [
        &42i32.to_be_bytes(),
        &(-7i64).to_be_bytes(),
        &[1],
        &1.5f64.to_be_bytes(),
        b"eleven",
        &uuid,
        b"\x01{\"a\": 1}",
        &[0xde, 0xad],
    ];
    let note = s.bind_note(&bind("s0", &[1], &values.map(Some)), &policy());
    assert_eq!(
        note,
        "bind \"\" to \"s0\": $1 = 42, $2 = -7, $3 = true, $4 = 1.5, $5 = 'eleven', \
         $6 = 67e55044-10b1-426f-9247-bb680e5fe0c8, $7 = '{\"a\": 1}', $8 = \\xdead"
    );
}

#[test]
fn per_value_formats_and_undescribed_types_fall_back_to_text_and_hex() {
    let mut s = Statements::default();
    s.parsed(&parse("s1", "select $1, $2", &[]), &policy());
    let note = s.bind_note(
        &bind("s1", &[0, 1], &[Some(b"12"), Some(&[0, 0, 0, 12])]),
        &policy(),
    );
    assert_eq!(note, "bind \"\" to \"s1\": $1 = '12', $2 = \\x0000000c");
}

#[test]
fn types_declared_in_parse_are_used_until_the_target_describes_them() {
    let mut s = Statements::default();
    s.parsed(&parse("s2", "select $1", &[21]), &policy());
    let note = s.bind_note(&bind("s2", &[1], &[Some(&[0xff, 0xfe])]), &policy());
    assert_eq!(note, "bind \"\" to \"s2\": $1 = -2");
}

#[test]
fn a_statement_naming_a_secret_has_every_value_masked() {
    let mut s = Statements::default();
    s.parsed(
        &parse(
            "",
            "UPDATE users SET Password_Hash = crypt($1, gen_salt('bf')) WHERE id = $2",
            &[],
        ),
        &policy(),
    );
    let note = s.bind_note(&bind("", &[], &[Some(b"hunter2"), Some(b"7")]), &policy());
    assert_eq!(note, "bind \"\" to \"\": $1 = ***, $2 = ***");
    assert!(!note.contains("hunter2"));
}

#[test]
fn a_statement_the_gateway_never_saw_is_masked() {
    // Prepared with SQL PREPARE, or forgotten: its text cannot be checked.
    let s = Statements::default();
    let note = s.bind_note(&bind("sql_prepared", &[], &[Some(b"hunter2")]), &policy());
    assert_eq!(
        note,
        "bind \"\" to \"sql_prepared\": $1 = *** (statement not seen by the gateway)"
    );
}

#[test]
fn closed_statements_are_forgotten() {
    let mut s = Statements::default();
    s.parsed(&parse("s3", "select $1", &[]), &policy());
    s.closed(&statement("s3"));
    assert!(
        s.bind_note(&bind("s3", &[], &[Some(b"1")]), &policy())
            .contains("***")
    );
}

#[test]
fn the_oldest_statements_are_forgotten_beyond_the_limit() {
    let mut s = Statements::default();
    for i in 0..=STATEMENTS_LIMIT {
        s.parsed(&parse(&format!("s{i}"), "select $1", &[]), &policy());
    }
    assert!(
        s.bind_note(&bind("s0", &[], &[Some(b"1")]), &policy())
            .contains("***")
    );
    let last = format!("s{STATEMENTS_LIMIT}");
    assert!(
        s.bind_note(&bind(&last, &[], &[Some(b"1")]), &policy())
            .ends_with("$1 = '1'")
    );
}

#[test]
fn a_describe_an_error_skipped_does_not_take_the_next_ones_types() {
    let mut s = Statements::default();
    // The first batch fails at Parse: its Describe is never answered.
    s.parsed(&parse("bad", "selec $1", &[]), &policy());
    s.describing(&statement("bad"));
    s.requested();
    // Pipelined behind it before the first ReadyForQuery came back.
    s.parsed(&parse("good", "select $1", &[]), &policy());
    s.describing(&statement("good"));
    s.requested();
    s.ready();
    s.described(&parameter_description(&[23]));
    s.ready();
    let note = s.bind_note(&bind("good", &[1], &[Some(&5i32.to_be_bytes())]), &policy());
    assert_eq!(note, "bind \"\" to \"good\": $1 = 5");
}

#[test]
fn count_mode_records_only_how_many() {
    let config = PostgresConfig {
        bind_parameters: BindParameters::Count,
        ..PostgresConfig::default()
    };
    let count = ParameterPolicy::from_config(&config);
    let mut s = Statements::default();
    s.parsed(&parse("", "select $1, $2", &[]), &count);
    let note = s.bind_note(&bind("", &[], &[Some(b"a"), None]), &count);
    assert_eq!(note, "bind \"\" to \"\": 2 parameter(s)");
}

#[test]
fn malformed_binds_are_noted_not_fatal() {
    let s = Statements::default();
    let mut body = bind("", &[], &[Some(b"abcdef")]);
    body.truncate(body.len() - 5);
    assert_eq!(
        s.bind_note(&body, &policy()),
        "bind \"\" to \"\": malformed parameters"
    );
    assert_eq!(s.bind_note(b"", &policy()), "bind: malformed");
    // A name that is not UTF-8 is not taken for the unnamed statement.
    let mut s = Statements::default();
    s.parsed(&parse("", "select $1", &[]), &policy());
    let mut body = bind("", &[], &[Some(b"hunter2")]);
    body[1] = 0xff;
    assert_eq!(s.bind_note(&body, &policy()), "bind: malformed");
}

#[test]
fn long_values_are_cut_on_a_character_boundary_and_binary_ones_at_half_the_limit() {
    let mut s = Statements::default();
    s.parsed(&parse("", "select $1, $2", &[]), &policy());
    // 255 ASCII bytes, then a two-byte character across the limit.
    let text = format!("{}é and more", "a".repeat(VALUE_LIMIT - 1));
    let blob = [7u8; 200];
    let note = s.bind_note(
        &bind("", &[0, 1], &[Some(text.as_bytes()), Some(&blob)]),
        &policy(),
    );
    let expected = format!(
        "bind \"\" to \"\": $1 = '{}'… ({} bytes), $2 = \\x{}… (200 bytes)",
        "a".repeat(VALUE_LIMIT - 1),
        text.len(),
        "07".repeat(VALUE_LIMIT / 2)
    );
    assert_eq!(note, expected);
}

#[test]
fn describes_never_answered_are_bounded() {
    let mut s = Statements::default();
    for _ in 0..=STATEMENTS_LIMIT {
        s.describing(&statement("s"));
    }
    assert_eq!(s.describing.len(), STATEMENTS_LIMIT);
}

#[test]
fn a_bind_of_thousands_of_values_makes_a_bounded_note() {
    let mut s = Statements::default();
    s.parsed(&parse("", "insert into t values ($1, …)", &[]), &policy());
    let values = vec![None; 60_000];
    let note = s.bind_note(&bind("", &[], &values), &policy());
    assert!(note.len() < NOTE_LIMIT + 100, "{} bytes", note.len());
    assert!(note.starts_with("bind \"\" to \"\": $1 = NULL, $2 = NULL"));
    let more: usize = note
        .rsplit_once(", … ")
        .and_then(|(_, tail)| tail.strip_suffix(" more"))
        .and_then(|n| n.parse().ok())
        .expect("how many more");
    let shown = note.matches(" = NULL").count();
    assert_eq!(shown + more, 60_000);
}
