//! The transaction syntax of `quorate kv txn`: a small text form and a JSON form.
//!
//! Text: clauses separated by newlines or `;`:
//! `if value(a) == 1; if version(b) > 0; then put a 2; then del b; else get a`.

use anyhow::{Context, bail};
use quorate_client::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use serde::Deserialize;

/// Most clauses a transaction text may hold (the wire limit is per part).
const CLAUSES_MAX: usize = 3 * quorate_api::limits::TXN_OPS_MAX;

/// Parses the text or JSON form.
pub(crate) fn parse(input: &str) -> anyhow::Result<Txn> {
    let trimmed = input.trim_start();
    if trimmed.starts_with('{') { parse_json(trimmed) } else { parse_text(input) }
}

/// Splits a clause into words: whitespace, parentheses and `;` separate; "..." quotes (with
/// `\"` and `\\` escapes).
fn words(clause: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = clause.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == '(' || c == ')' {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut word = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(e @ ('"' | '\\')) => word.push(e),
                        Some('n') => word.push('\n'),
                        Some(other) => bail!("unknown escape `\\{other}` in `{clause}`"),
                        None => bail!("unterminated quote in `{clause}`"),
                    },
                    Some(ch) => word.push(ch),
                    None => bail!("unterminated quote in `{clause}`"),
                }
            }
            out.push(word);
        } else {
            let mut word = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '(' || ch == ')' || ch == '"' {
                    break;
                }
                word.push(ch);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

/// Splits the text into clauses at newlines and at `;` outside quotes.
fn clauses(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if (c == ';' || c == '\n') && !quoted {
            out.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty() && !c.starts_with('#')).collect()
}

fn op_of(word: &str) -> anyhow::Result<CompareOp> {
    Ok(match word {
        "==" | "=" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => bail!("unknown comparison `{other}`; use ==, !=, < or >"),
    })
}

fn number(word: &str, what: &str) -> anyhow::Result<u64> {
    word.parse().with_context(|| format!("{what} must be a whole number, got `{word}`"))
}

fn compare(kind: &str, key: &str, op: &str, operand: &str) -> anyhow::Result<Compare> {
    let target = match kind {
        "value" => CompareTarget::Value(if operand == "absent" { None } else { Some(operand.as_bytes().to_vec()) }),
        "mod" | "mod_revision" => CompareTarget::ModRevision(number(operand, "a mod revision")?),
        "create" | "create_revision" => CompareTarget::CreateRevision(number(operand, "a create revision")?),
        "version" => CompareTarget::Version(number(operand, "a version")?),
        other => bail!("unknown condition `{other}`; use value, mod, create or version"),
    };
    Ok(Compare { key: key.as_bytes().to_vec(), target, op: op_of(op)? })
}

fn operation(w: &[String]) -> anyhow::Result<TxnOp> {
    match w {
        [op, key, value] if op == "put" => {
            Ok(TxnOp::Put { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec() })
        }
        [op, key] if op == "del" || op == "delete" => Ok(TxnOp::Delete { key: key.as_bytes().to_vec() }),
        [op, key] if op == "get" => Ok(TxnOp::Get { key: key.as_bytes().to_vec() }),
        _ => bail!("unknown operation `{}`; use `put KEY VALUE`, `del KEY` or `get KEY`", w.join(" ")),
    }
}

fn parse_text(text: &str) -> anyhow::Result<Txn> {
    let clauses = clauses(text);
    if clauses.is_empty() {
        bail!("the transaction is empty; e.g. `if value(a) == 1; then put a 2; else get a`");
    }
    if clauses.len() > CLAUSES_MAX {
        bail!("a transaction may hold at most {CLAUSES_MAX} clauses");
    }
    let mut txn = Txn::default();
    for clause in &clauses {
        let w = words(clause)?;
        let result = match w.split_first() {
            Some((head, rest)) if head == "if" => match rest {
                [kind, key, op, operand] => compare(kind, key, op, operand).map(|c| txn.compare.push(c)),
                _ => Err(anyhow::anyhow!("a condition looks like `if value(KEY) == VALUE`")),
            },
            Some((head, rest)) if head == "then" => operation(rest).map(|o| txn.success.push(o)),
            Some((head, rest)) if head == "else" => operation(rest).map(|o| txn.failure.push(o)),
            _ => Err(anyhow::anyhow!("each clause starts with `if`, `then` or `else`")),
        };
        result.with_context(|| format!("in clause `{clause}`"))?;
    }
    Ok(txn)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTxn {
    #[serde(default)]
    compare: Vec<JsonCompare>,
    #[serde(default)]
    success: Vec<JsonOp>,
    #[serde(default)]
    failure: Vec<JsonOp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCompare {
    key: String,
    op: String,
    /// Missing: not a value comparison; `null`: absent.
    #[serde(default, deserialize_with = "present")]
    value: Option<Option<String>>,
    mod_revision: Option<u64>,
    create_revision: Option<u64>,
    version: Option<u64>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum JsonOp {
    Put { key: String, value: String },
    Delete { key: String },
    Get { key: String },
}

fn parse_json(text: &str) -> anyhow::Result<Txn> {
    let j: JsonTxn = serde_json::from_str(text).context("the transaction is not valid JSON of the expected shape")?;
    let mut txn = Txn::default();
    for c in j.compare {
        let target = match (c.value, c.mod_revision, c.create_revision, c.version) {
            (Some(v), None, None, None) => CompareTarget::Value(v.map(String::into_bytes)),
            (None, Some(r), None, None) => CompareTarget::ModRevision(r),
            (None, None, Some(r), None) => CompareTarget::CreateRevision(r),
            (None, None, None, Some(v)) => CompareTarget::Version(v),
            _ => bail!(
                "comparison on `{}` must name exactly one of value, mod_revision, create_revision, version",
                c.key
            ),
        };
        txn.compare.push(Compare { key: c.key.into_bytes(), target, op: op_of(&c.op)? });
    }
    let op = |o: JsonOp| match o {
        JsonOp::Put { key, value } => TxnOp::Put { key: key.into_bytes(), value: value.into_bytes() },
        JsonOp::Delete { key } => TxnOp::Delete { key: key.into_bytes() },
        JsonOp::Get { key } => TxnOp::Get { key: key.into_bytes() },
    };
    txn.success = j.success.into_iter().map(op).collect();
    txn.failure = j.failure.into_iter().map(op).collect();
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn text_form() {
        let t = parse(r#"if value(a) == 1; if version("b c") > 0; then put a "x; y"; then del b; else get a"#).unwrap();
        assert_eq!(
            t.compare,
            vec![
                Compare { key: b("a"), target: CompareTarget::Value(Some(b("1"))), op: CompareOp::Equal },
                Compare { key: b("b c"), target: CompareTarget::Version(0), op: CompareOp::Greater },
            ]
        );
        assert_eq!(t.success, vec![TxnOp::Put { key: b("a"), value: b("x; y") }, TxnOp::Delete { key: b("b") }]);
        assert_eq!(t.failure, vec![TxnOp::Get { key: b("a") }]);
    }

    #[test]
    fn text_form_on_lines_with_absent_and_comments() {
        let t = parse("# create k if missing\nif value k == absent\nthen put k v\n").unwrap();
        assert_eq!(t.compare[0].target, CompareTarget::Value(None));
        assert_eq!(t.success.len(), 1);
        assert!(t.failure.is_empty());
    }

    #[test]
    fn text_errors_say_where() {
        let e = parse("if value(a) ~ 1").unwrap_err();
        assert!(format!("{e:#}").contains("unknown comparison `~`"), "{e:#}");
        let e = parse("then put a").unwrap_err();
        assert!(format!("{e:#}").contains("put KEY VALUE"), "{e:#}");
        let e = parse("when x").unwrap_err();
        assert!(format!("{e:#}").contains("starts with `if`"), "{e:#}");
        let e = parse("if mod(a) > x").unwrap_err();
        assert!(format!("{e:#}").contains("whole number"), "{e:#}");
        assert!(parse("then put a \"open").is_err());
        assert!(parse(" ; ").is_err());
    }

    #[test]
    fn json_form() {
        let t = parse(
            r#"{"compare":[{"key":"a","value":"1","op":"=="},{"key":"n","value":null,"op":"=="},
                {"key":"b","mod_revision":3,"op":"<"}],
               "success":[{"put":{"key":"a","value":"2"}},{"delete":{"key":"b"}}],
               "failure":[{"get":{"key":"a"}}]}"#,
        )
        .unwrap();
        assert_eq!(t.compare[0].target, CompareTarget::Value(Some(b("1"))));
        assert_eq!(t.compare[1].target, CompareTarget::Value(None));
        assert_eq!(t.compare[2], Compare { key: b("b"), target: CompareTarget::ModRevision(3), op: CompareOp::Less });
        assert_eq!(t.success[1], TxnOp::Delete { key: b("b") });
        assert_eq!(t.failure, vec![TxnOp::Get { key: b("a") }]);
        assert!(parse(r#"{"compare":[{"key":"a","op":"=="}]}"#).is_err());
        assert!(parse(r#"{"bogus":1}"#).is_err());
    }
}
