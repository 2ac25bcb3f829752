//! The jinja environment a chat template runs in, set up like transformers'
//! `apply_chat_template` sets up Python's jinja2 (transformers/utils/chat_template_utils.py):
//! `trim_blocks` and `lstrip_blocks`, loop controls, no auto-escaping, a `tojson` filter that is
//! `json.dumps` with `ensure_ascii=False`, and the globals `raise_exception(msg)` and
//! `strftime_now(fmt)`. On top of that, what minijinja does differently from Python is made
//! Python's: unknown methods on strings, dicts and lists go to `minijinja_contrib::pycompat`
//! (`.strip()`, `.items()`, `.startswith()`...), and values print as Python prints them
//! (`None`, `True`, `['a']`, `1e+20`: see `python.rs`).

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Kwargs;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, Value};

use super::python::{self, JsonOptions};

/// The name templates are compiled under; errors carry it.
pub(crate) const NAME: &str = "chat_template";

/// The message of a template's `raise_exception(msg)`, carried as the source of the render
/// error so that it can be told apart from the engine's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Raised(pub String);

/// A minijinja environment holding `source` compiled under [`NAME`].
pub(crate) fn compile(source: String) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("string", |value: &Value| python::str(value));
    env.add_test("sequence", is_sequence);
    env.add_template_owned(NAME, source)?;
    Ok(env)
}

/// `{{ value }}` writes Python's `str(value)`.
fn python_formatter(out: &mut Output, _state: &mut State, value: &Value) -> Result<(), Error> {
    match value.as_str() {
        Some(s) => out.write_str(s),
        None => out.write_str(&python::str(value)),
    }
    .map_err(Error::from)
}

/// Jinja2's `sequence` test: anything with a length and indexing, strings, dicts and undefined
/// included (minijinja's is true for lists only). Templates test `is string` / `is mapping`
/// first for that reason, but not all of them.
fn is_sequence(value: &Value) -> bool {
    use minijinja::value::ValueKind::*;
    matches!(value.kind(), Undefined | String | Bytes | Seq | Map | Iterable)
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// Python's `datetime.now().strftime(format)`: local time.
fn strftime_now(format: &str) -> Result<String, Error> {
    jiff::fmt::strtime::format(format, &jiff::ZonedDateTime::now())
        .map_err(|err| Error::new(ErrorKind::InvalidOperation, format!("strftime_now({format:?}): {err}")))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// which is `json.dumps` with those arguments, positional or by keyword.
fn tojson(value: &Value, args: &[Value], kwargs: Kwargs) -> Result<Value, Error> {
    const PARAMS: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > PARAMS.len() {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    let mut given: [Option<Value>; 4] = Default::default();
    for (i, name) in PARAMS.iter().enumerate() {
        let by_name: Option<Value> = kwargs.get(name)?;
        given[i] = match (args.get(i), by_name) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson() got multiple values for argument '{name}'"),
                ))
            }
            (Some(v), None) => Some(v.clone()),
            (None, v) => v,
        }
        .filter(|v| !v.is_none() && !v.is_undefined());
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = given;

    let indent = match indent {
        None => None,
        Some(v) if v.as_str().is_some() => Some(v.as_str().unwrap().to_string()),
        // Python: ' ' * indent (booleans are integers; negative gives '').
        Some(v) if v.kind() == minijinja::value::ValueKind::Bool => Some(" ".repeat(v.is_true() as usize)),
        Some(v) => {
            let n = i64::try_from(v.clone()).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson indent must be an integer or a string, not {v}"),
                )
            })?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let (item_separator, key_separator) = match separators {
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] if item.as_str().is_some() && key.as_str().is_some() => {
                    (item.as_str().unwrap().to_string(), key.as_str().unwrap().to_string())
                }
                _ => {
                    return Err(Error::new(ErrorKind::InvalidOperation, "tojson separators must be a pair of strings"))
                }
            }
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    python::dumps(value, &opts).map(Value::from)
}
