//! Python's text forms of template values, so that a chat template prints what it prints under
//! Python's jinja2: `repr()`/`str()` (what `{{ value }}` and `|string` write) and `json.dumps`
//! (what transformers' `tojson` filter writes).
//!
//! minijinja's own forms differ: `none`/`true` instead of `None`/`True`, JSON-like lists
//! (`["a"]` instead of `['a']`), Rust float formatting (`100000000000000000000.0` instead of
//! `1e+20`), and a `tojson` that escapes HTML characters and takes no `ensure_ascii`,
//! `separators` or `sort_keys`.

use std::fmt::Write;

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

/// Python's `str(value)`: strings as they are, undefined as nothing, anything else its repr.
pub fn str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        ValueKind::Undefined => String::new(),
        _ => repr(value),
    }
}

/// Python's `repr(value)` for the types a chat template sees (JSON data, tuples from
/// `dictsort`/`items`); other objects (macros, namespaces) in minijinja's own form.
pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if value.is_integer() => write!(out, "{value}").unwrap(),
        ValueKind::Number => out.push_str(&float_repr(f64::try_from(value.clone()).unwrap_or(f64::NAN))),
        ValueKind::String => string_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq if value.is_tuple() => {
            let items: Vec<Value> = value.try_iter().map(Iterator::collect).unwrap_or_default();
            out.push('(');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            out.push_str(if items.len() == 1 { ",)" } else { ")" });
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key);
                out.push_str(": ");
                write_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        _ => write!(out, "{value}").unwrap(),
    }
}

/// Python's string repr: single quotes unless the text has a `'` and no `"`, backslash escapes
/// for the quote, `\\`, `\n`, `\r`, `\t` and non-printable characters.
fn string_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let code = c as u32;
                match code {
                    0..=0xff => write!(out, "\\x{code:02x}").unwrap(),
                    0x100..=0xffff => write!(out, "\\u{code:04x}").unwrap(),
                    _ => write!(out, "\\U{code:08x}").unwrap(),
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for the characters that come up in text: everything but control
/// characters, the separators other than the space, and the common format characters. (Python
/// also escapes unassigned and private-use code points; we print those.)
fn is_printable(c: char) -> bool {
    !matches!(c,
        '\0'..='\x1f' | '\x7f'..='\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{2000}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{2064}' | '\u{2066}'..='\u{206f}'
        | '\u{3000}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// Python's `repr(float)`: the shortest digits that read back to the same value, in positional
/// form for decimal exponents -4..16 (always with a fractional part, `2.0`) and in scientific
/// form with a signed two-digit exponent otherwise (`1e+20`, `1e-07`).
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` gives the same shortest round-trip digits, as `d.ddde[-]x`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{sign}{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
            }
        }
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

/// The arguments of Python's `json.dumps` that transformers' `tojson` exposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    /// The indent unit; `None` puts everything on one line.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl Default for JsonOptions {
    /// transformers' defaults: `ensure_ascii=False`, no indent, separators `(", ", ": ")`.
    fn default() -> JsonOptions {
        JsonOptions {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
        }
    }
}

/// Python's `json.dumps(value, ...)`.
pub fn dumps(value: &Value, opts: &JsonOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_json(&mut out, value, opts, 0)?;
    Ok(out)
}

fn write_json(out: &mut String, value: &Value, opts: &JsonOptions, depth: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => write!(out, "{value}").unwrap(),
        ValueKind::Number => {
            let f = f64::try_from(value.clone())?;
            out.push_str(&match f {
                f if f.is_nan() => "NaN".into(),
                f if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
                f => float_repr(f),
            });
        }
        ValueKind::String => json_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', &items, opts, depth, |out, item| write_json(out, item, opts, depth + 1))?;
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                pairs.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', &pairs, opts, depth, |out, (key, item)| {
                json_string(out, key, opts.ensure_ascii);
                out.push_str(&opts.key_separator);
                write_json(out, item, opts, depth + 1)
            })?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// `[`/`{`, the items separated by the item separator (one per line when indenting), the
/// closing bracket; empty containers as `[]`/`{}` either way, as Python does.
fn write_container<T>(
    out: &mut String,
    open: char,
    close: char,
    items: &[T],
    opts: &JsonOptions,
    depth: usize,
    mut write_item: impl FnMut(&mut String, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(unit) = &opts.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_separator);
        }
        newline(out, depth + 1);
        write_item(out, item)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// JSON object keys as Python converts them: strings as they are, numbers, booleans and None
/// to their JSON text.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None | ValueKind::Bool | ValueKind::Number => dumps(key, &JsonOptions::default()),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

/// A JSON string literal as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other
/// control characters as `\u00XX`; with `ensure_ascii`, everything past ASCII as `\uXXXX`
/// (UTF-16 surrogate pairs past the BMP).
fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        // Expected values from Python 3.11's repr().
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (2.0, "2.0"),
            (0.5, "0.5"),
            (-1.25, "-1.25"),
            (1e-7, "1e-07"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "repr({f:e})");
        }
    }

    #[test]
    fn repr_of_values() {
        let v = Value::from(minijinja::value::Serde(serde_json::json!({"a": [1, 2.5, null, true], "b": "it's"})));
        assert_eq!(repr(&v), r#"{'a': [1, 2.5, None, True], 'b': "it's"}"#);
        assert_eq!(repr(&Value::from("tab\there\u{0}")), r"'tab\there\x00'");
        assert_eq!(str(&Value::from("plain")), "plain");
        assert_eq!(str(&Value::UNDEFINED), "");
    }

    #[test]
    fn dumps_ensure_ascii_uses_surrogate_pairs() {
        let opts = JsonOptions { ensure_ascii: true, ..JsonOptions::default() };
        assert_eq!(dumps(&Value::from("é😀\u{1}"), &opts).unwrap(), r#""\u00e9\ud83d\ude00\u0001""#);
    }
}
