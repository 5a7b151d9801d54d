//! The fingerprint a worker sends with a reservation for repetition (runaway) detection: a
//! hash of the tool and a canonical form of its arguments, so the same call made twice
//! hashes the same whatever the key order or number formatting. The Python client computes
//! the same bytes; `fingerprint_vectors.json` at the crate root holds the shared vectors.
//! The shape (`fingerprint_shape`) hashes the arguments' keys and value types instead, for
//! shape velocity: a loop that changes a value on every call keeps its shape;
//! `shape_vectors.json` holds its shared vectors.
//! This module never panics on its input and never recurses without a bound.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Deepest nesting of arrays and objects fingerprinted: as deep as `serde_json` parses by
/// default, and a bound on the recursion of the canonical form.
pub const FINGERPRINT_DEPTH_MAX: usize = 128;

/// Bytes of the SHA-256 digest kept: 128 bits, 32 hex characters.
const FINGERPRINT_BYTES: usize = 16;

/// Largest magnitude below which an integral float is written as an integer: every such
/// float is exactly an integer that a JSON parser in any language reads back the same.
const FLOAT_EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

/// Why arguments could not be fingerprinted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// A number that is neither a 64-bit integer nor a finite float.
    #[error("number {0} is neither a 64-bit integer nor a finite float")]
    Number(String),
    /// Arrays and objects nested deeper than [`FINGERPRINT_DEPTH_MAX`].
    #[error("arguments nested deeper than {FINGERPRINT_DEPTH_MAX} (FINGERPRINT_DEPTH_MAX)")]
    TooDeep,
}

/// The fingerprint of a call of `tool` with `args`, for
/// [`ReserveRequest::fingerprint`](crate::ReserveRequest::fingerprint): lowercase hex of the
/// first 16 bytes of SHA-256(`tool` + `"\n"` + canonical JSON of `args`).
///
/// Canonical JSON sorts object keys by code point, writes no whitespace, escapes only `"`,
/// `\` and control characters, writes integral floats below 2^53 as integers and any other
/// float as its shortest digits in exponent form (`0.5` is `5e-1`).
///
/// ```
/// let a = tollgate_client::fingerprint("search", &serde_json::json!({"q": "rust", "n": 10.0}))?;
/// let b = tollgate_client::fingerprint("search", &serde_json::json!({"n": 10, "q": "rust"}))?;
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 32);
/// # Ok::<(), tollgate_client::FingerprintError>(())
/// ```
pub fn fingerprint(tool: &str, args: &Value) -> Result<String, FingerprintError> {
    fingerprint_ignoring(tool, args, &[])
}

/// [`fingerprint`] of `args` without its top-level arguments named in `ignore`: the ones that
/// change on every call of a loop (a timestamp, a page counter, a request id), so a loop that
/// varies only them is still seen repeating. Names absent from `args` are ignored too, and
/// the result is the same as the fingerprint of `args` with those keys removed.
///
/// ```
/// use serde_json::json;
/// use tollgate_client::fingerprint_ignoring;
/// let page_1 = fingerprint_ignoring("search", &json!({"q": "news", "page": 1}), &["page"])?;
/// let page_2 = fingerprint_ignoring("search", &json!({"q": "news", "page": 2}), &["page"])?;
/// assert_eq!(page_1, page_2);
/// # Ok::<(), tollgate_client::FingerprintError>(())
/// ```
pub fn fingerprint_ignoring(
    tool: &str,
    args: &Value,
    ignore: &[&str],
) -> Result<String, FingerprintError> {
    let kept;
    let args = match args {
        Value::Object(map) if ignore.iter().any(|name| map.contains_key(*name)) => {
            let mut map = map.clone();
            map.retain(|key, _| !ignore.contains(&key.as_str()));
            kept = Value::Object(map);
            &kept
        }
        other => other,
    };
    Ok(digest_hex(tool, &canonical_json(args)?))
}

/// The shape of a call of `tool` with `args`, for
/// [`ReserveRequest::shape`](crate::ReserveRequest::shape): lowercase hex of the first 16
/// bytes of SHA-256(`tool` + `"\n"` + canonical JSON of the shape of `args`). Calls that
/// differ only in values (a page number, a timestamp, a reworded query) have one shape, so
/// the cluster can see a loop that a [`fingerprint`] misses.
///
/// The shape of an object is the object of the same keys with the shape of each value; of
/// an array, the array of its items' distinct shapes, sorted by the code points of their
/// canonical JSON; of `null`, a boolean, a number and a string, the JSON strings `"null"`,
/// `"bool"`, `"number"` and `"string"`. It is written as canonical JSON (see [`fingerprint`]);
/// the same numbers are refused, with the same depth bound.
///
/// ```
/// use serde_json::json;
/// use tollgate_client::fingerprint_shape;
/// let page_1 = fingerprint_shape("search", &json!({"q": "news", "page": 1}))?;
/// let page_2 = fingerprint_shape("search", &json!({"q": "weather", "page": 2.5}))?;
/// assert_eq!(page_1, page_2);
/// assert_ne!(page_1, fingerprint_shape("search", &json!({"q": "news"}))?);
/// # Ok::<(), tollgate_client::FingerprintError>(())
/// ```
pub fn fingerprint_shape(tool: &str, args: &Value) -> Result<String, FingerprintError> {
    Ok(digest_hex(tool, &shape_json(args, 0)?))
}

/// Lowercase hex of the first `FINGERPRINT_BYTES` of SHA-256(`tool`, newline, `canonical`).
fn digest_hex(tool: &str, canonical: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tool.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(FINGERPRINT_BYTES * 2);
    for byte in &digest[..FINGERPRINT_BYTES] {
        let _ = write!(hex, "{byte:02x}");
    }
    debug_assert_eq!(hex.len(), FINGERPRINT_BYTES * 2);
    hex
}

/// The canonical JSON of the shape of `value` (see [`fingerprint_shape`]).
fn shape_json(value: &Value, depth: usize) -> Result<String, FingerprintError> {
    let shape = match value {
        Value::Null => r#""null""#.to_owned(),
        Value::Bool(_) => r#""bool""#.to_owned(),
        Value::Number(number) => {
            // Refused as the fingerprint refuses it, so the two agree on what is an argument.
            write_number(&mut String::new(), number)?;
            r#""number""#.to_owned()
        }
        Value::String(_) => r#""string""#.to_owned(),
        Value::Array(items) => {
            let depth = nested(depth)?;
            let mut shapes = items
                .iter()
                .map(|item| shape_json(item, depth))
                .collect::<Result<Vec<_>, _>>()?;
            // Byte order of UTF-8 is code point order.
            shapes.sort_unstable();
            shapes.dedup();
            format!("[{}]", shapes.join(","))
        }
        Value::Object(map) => {
            let depth = nested(depth)?;
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
            let mut out = String::from("{");
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(&mut out, key);
                out.push(':');
                out.push_str(&shape_json(item, depth)?);
            }
            out.push('}');
            out
        }
    };
    Ok(shape)
}

/// The canonical JSON of `value`: what is hashed after the tool and a newline.
fn canonical_json(value: &Value) -> Result<String, FingerprintError> {
    let mut out = String::new();
    write_value(&mut out, value, 0)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value, depth: usize) -> Result<(), FingerprintError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => write_number(out, number)?,
        Value::String(string) => write_string(out, string),
        Value::Array(items) => {
            let depth = nested(depth)?;
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item, depth)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, nested(depth)?)?,
    }
    Ok(())
}

/// One level deeper, or the error once past [`FINGERPRINT_DEPTH_MAX`].
fn nested(depth: usize) -> Result<usize, FingerprintError> {
    let deeper = depth + 1;
    if deeper > FINGERPRINT_DEPTH_MAX {
        return Err(FingerprintError::TooDeep);
    }
    Ok(deeper)
}

fn write_object(
    out: &mut String,
    map: &Map<String, Value>,
    depth: usize,
) -> Result<(), FingerprintError> {
    // Byte order of UTF-8 is code point order; sorted here whatever order the map keeps.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
    out.push('{');
    for (index, (key, item)) in entries.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, item, depth)?;
    }
    out.push('}');
    Ok(())
}

fn write_string(out: &mut String, string: &str) {
    out.push('"');
    for c in string.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, number: &Number) -> Result<(), FingerprintError> {
    if let Some(integer) = number.as_i64() {
        let _ = write!(out, "{integer}");
    } else if let Some(integer) = number.as_u64() {
        let _ = write!(out, "{integer}");
    } else if let Some(float) = number.as_f64().filter(|_| number.is_f64()) {
        write_float(out, float).ok_or_else(|| FingerprintError::Number(number.to_string()))?;
    } else {
        return Err(FingerprintError::Number(number.to_string()));
    }
    Ok(())
}

/// `None` for NaN and the infinities.
fn write_float(out: &mut String, float: f64) -> Option<()> {
    if !float.is_finite() {
        return None;
    }
    if float.fract() == 0.0 && float.abs() < FLOAT_EXACT_INTEGER_LIMIT {
        // Exact: |float| < 2^53 fits an i64 without rounding; -0.0 becomes 0.
        let _ = write!(out, "{}", float as i64);
    } else {
        // Rust's `{:e}` writes the shortest round-trip digits as d1[.d2..dn]e<exp>.
        let _ = write!(out, "{float:e}");
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Each case: arguments and their canonical JSON, written out by hand from the rules.
    #[test]
    fn canonical_json_follows_the_rules() {
        let cases: [(Value, &str); 18] = [
            (json!({}), "{}"),
            (json!([]), "[]"),
            (json!({"b": 1, "a": 2, "B": 3}), r#"{"B":3,"a":2,"b":1}"#),
            (json!({"é": 1, "z": 2, "😀": 3}), r#"{"z":2,"é":1,"😀":3}"#),
            (json!([1, [2, {"x": null}]]), r#"[1,[2,{"x":null}]]"#),
            (json!([true, false, null]), "[true,false,null]"),
            (json!("a\"b\\c"), r#""a\"b\\c""#),
            (json!("\u{8}\u{c}\n\r\t"), r#""\b\f\n\r\t""#),
            (json!("\u{0}\u{1f}\u{7f}/"), "\"\\u0000\\u001f\u{7f}/\""),
            (json!(-42), "-42"),
            (json!(u64::MAX), "18446744073709551615"),
            (json!(i64::MIN), "-9223372036854775808"),
            (json!([1.0, -0.0, 1e15]), "[1,0,1000000000000000]"),
            (json!([0.5, 1.25, 123.456]), "[5e-1,1.25e0,1.23456e2]"),
            (json!([1e21, -1.5e-7]), "[1e21,-1.5e-7]"),
            (json!(9007199254740992.0), "9.007199254740992e15"),
            (json!(-9007199254740991.0), "-9007199254740991"),
            (json!(0.1), "1e-1"),
        ];
        for (value, expected) in cases {
            assert_eq!(canonical_json(&value).unwrap(), expected, "{value}");
        }
    }

    #[test]
    fn fingerprint_hashes_tool_newline_canonical_json() {
        // sha256(b'search\n{"q":"rust"}')[:16], by hand with hashlib.
        assert_eq!(
            fingerprint("search", &json!({"q": "rust"})).unwrap(),
            "3ba7ad80a1374742008d68e416171cfc"
        );
    }

    #[test]
    fn nesting_past_the_bound_is_an_error_not_a_stack_overflow() {
        let mut deep = json!(1);
        for _ in 0..FINGERPRINT_DEPTH_MAX {
            deep = json!([deep]);
        }
        assert!(fingerprint("t", &deep).is_ok(), "exactly at the bound");
        let deeper = json!({ "k": deep });
        assert_eq!(fingerprint("t", &deeper), Err(FingerprintError::TooDeep));
    }

    /// Each case: arguments and the canonical JSON of their shape, by hand from the rules.
    #[test]
    fn shape_json_follows_the_rules() {
        let cases: [(Value, &str); 8] = [
            (json!({}), "{}"),
            (json!([]), "[]"),
            (json!(null), r#""null""#),
            (
                json!({"q": "news", "page": 2, "on": true, "x": null}),
                r#"{"on":"bool","page":"number","q":"string","x":"null"}"#,
            ),
            (
                json!([3, "a", 1.5, "b", null]),
                r#"["null","number","string"]"#,
            ),
            (
                json!([{"b": 1}, {"a": 1}, {"b": 2}]),
                r#"[{"a":"number"},{"b":"number"}]"#,
            ),
            (json!([[1], [], ["x"]]), r#"[["number"],["string"],[]]"#),
            (json!({"é\"": [1]}), r#"{"é\"":["number"]}"#),
        ];
        for (value, expected) in cases {
            assert_eq!(shape_json(&value, 0).unwrap(), expected, "{value}");
        }
    }

    #[test]
    fn shape_nesting_past_the_bound_is_an_error_like_the_fingerprint() {
        let mut deep = json!(1);
        for _ in 0..FINGERPRINT_DEPTH_MAX {
            deep = json!([deep]);
        }
        assert!(
            fingerprint_shape("t", &deep).is_ok(),
            "exactly at the bound"
        );
        let deeper = json!({ "k": deep });
        assert_eq!(
            fingerprint_shape("t", &deeper),
            Err(FingerprintError::TooDeep)
        );
    }

    #[test]
    fn shape_vectors_shared_with_the_python_client_hold() {
        let text = include_str!("../shape_vectors.json");
        let vectors: Vec<Value> = serde_json::from_str(text).unwrap();
        assert!(vectors.len() >= 10, "{} vectors", vectors.len());
        for vector in &vectors {
            let tool = vector["tool"].as_str().unwrap();
            let expected = vector["shape"].as_str().unwrap();
            let shape = fingerprint_shape(tool, &vector["args"]).unwrap();
            assert_eq!(shape, expected, "{vector}");
            assert_eq!(
                digest_hex(tool, vector["canonical"].as_str().unwrap()),
                expected,
                "{vector}"
            );
        }
    }

    #[test]
    fn vectors_shared_with_the_python_client_hold() {
        let text = include_str!("../fingerprint_vectors.json");
        let vectors: Vec<Value> = serde_json::from_str(text).unwrap();
        assert!(vectors.len() >= 12, "{} vectors", vectors.len());
        for vector in &vectors {
            let tool = vector["tool"].as_str().unwrap();
            let expected = vector["fingerprint"].as_str().unwrap();
            let ignore: Vec<&str> = vector["ignore"]
                .as_array()
                .map(|names| names.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert_eq!(
                fingerprint_ignoring(tool, &vector["args"], &ignore).unwrap(),
                expected,
                "{vector}"
            );
        }
    }
}
