//! A validator for the structural OpenAPI v3 schemas of CRDs, as the Kubernetes API server reads
//! them (after [`super::schema`] has rewritten the Kubernetes extensions into plain keywords).
//!
//! Why our own: CRD schemas use a small subset of JSON Schema (`type`, `properties`,
//! `additionalProperties`, `required`, `items`, `enum`, `pattern`, lengths, bounds, `oneOf`,
//! `anyOf`, `allOf`, `not`, `format`), and the API server matches `pattern` with Go's RE2
//! syntax, which the `regex` crate follows (linear time, no look-around) where an ECMA-262
//! engine would not. It also keeps the model crate free of the hashing and locking crates a
//! general validator brings, and quicker to build.

use regex::Regex;
use serde_json::Value;

/// What failed, named after the keyword.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// `additionalProperties: false` and these keys are not among `properties`.
    AdditionalProperties {
        unexpected: Vec<String>,
    },
    /// A `required` property is missing.
    Required {
        property: String,
    },
    /// No branch of a `oneOf` matches.
    OneOfNotValid,
    /// More than one branch of a `oneOf` matches.
    OneOfMultipleValid,
    /// No branch of an `anyOf` matches.
    AnyOfNotValid,
    /// The value matches the schema under `not`.
    Not,
    Pattern {
        pattern: String,
    },
    Enum {
        options: Value,
    },
    /// The value's JSON type is not among these.
    Type {
        expected: Vec<String>,
    },
    MaxLength {
        limit: u64,
    },
    MinLength {
        limit: u64,
    },
    Maximum {
        limit: f64,
        exclusive: bool,
    },
    Minimum {
        limit: f64,
        exclusive: bool,
    },
    MaxItems {
        limit: u64,
    },
    MinItems {
        limit: u64,
    },
    MaxProperties {
        limit: u64,
    },
    MinProperties {
        limit: u64,
    },
    UniqueItems,
    MultipleOf {
        factor: f64,
    },
    Format {
        format: String,
    },
}

/// One failure: where in the instance, which keyword of the schema, and what.
#[derive(Debug, Clone)]
pub struct SchemaError<'v> {
    /// JSON pointer into the instance ("" for the root).
    pub instance_path: String,
    /// JSON pointer to the failing keyword in the schema (`/properties/spec/oneOf`).
    pub schema_path: String,
    pub instance: &'v Value,
    pub kind: ErrorKind,
}

impl std::fmt::Display for SchemaError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.instance;
        match &self.kind {
            ErrorKind::AdditionalProperties { unexpected } => {
                write!(f, "additional properties are not allowed ({} unexpected)", unexpected.join(", "))
            }
            ErrorKind::Required { property } => write!(f, "{property:?} is a required property"),
            ErrorKind::OneOfNotValid => write!(f, "{v} is not valid under any of the schemas listed in 'oneOf'"),
            ErrorKind::OneOfMultipleValid => {
                write!(f, "{v} is valid under more than one of the schemas listed in 'oneOf'")
            }
            ErrorKind::AnyOfNotValid => write!(f, "{v} is not valid under any of the schemas listed in 'anyOf'"),
            ErrorKind::Not => write!(f, "{v} must not match the schema under 'not'"),
            ErrorKind::Pattern { pattern } => write!(f, "{v} does not match {pattern:?}"),
            ErrorKind::Enum { options } => write!(f, "{v} is not one of {options}"),
            ErrorKind::Type { expected } => write!(f, "{v} is not of type {}", expected.join(" or ")),
            ErrorKind::MaxLength { limit } => write!(f, "{v} is longer than {limit} characters"),
            ErrorKind::MinLength { limit } => write!(f, "{v} is shorter than {limit} characters"),
            ErrorKind::Maximum { limit, exclusive: false } => write!(f, "{v} is greater than the maximum of {limit}"),
            ErrorKind::Maximum { limit, exclusive: true } => write!(f, "{v} is not less than {limit}"),
            ErrorKind::Minimum { limit, exclusive: false } => write!(f, "{v} is less than the minimum of {limit}"),
            ErrorKind::Minimum { limit, exclusive: true } => write!(f, "{v} is not greater than {limit}"),
            ErrorKind::MaxItems { limit } => write!(f, "{v} has more than {limit} items"),
            ErrorKind::MinItems { limit } => write!(f, "{v} has fewer than {limit} items"),
            ErrorKind::MaxProperties { limit } => write!(f, "{v} has more than {limit} properties"),
            ErrorKind::MinProperties { limit } => write!(f, "{v} has fewer than {limit} properties"),
            ErrorKind::UniqueItems => write!(f, "{v} has non-unique elements"),
            ErrorKind::MultipleOf { factor } => write!(f, "{v} is not a multiple of {factor}"),
            ErrorKind::Format { format } => write!(f, "{v} is not a {format:?}"),
        }
    }
}

/// A schema whose patterns are compiled once.
#[derive(Debug)]
pub struct Validator {
    schema: Value,
    /// Patterns by their text, in the order first met.
    patterns: Vec<(String, Regex)>,
}

/// Why a schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("compile the pattern at {at}")]
    Pattern {
        at: String,
        #[source]
        source: regex::Error,
    },
}

impl Validator {
    /// Compiles every `pattern` of `schema`.
    pub fn new(schema: &Value) -> Result<Validator, CompileError> {
        let mut patterns = Vec::new();
        collect_patterns(schema, "", &mut patterns)?;
        Ok(Validator { schema: schema.clone(), patterns })
    }

    pub fn is_valid(&self, instance: &Value) -> bool {
        self.iter_errors(instance).is_empty()
    }

    /// Every failure, depth-first in document order; branches of `oneOf`/`anyOf` report as one.
    pub fn iter_errors<'v>(&self, instance: &'v Value) -> Vec<SchemaError<'v>> {
        let mut out = Vec::new();
        self.check(&self.schema, instance, &mut String::new(), "", &mut out);
        out
    }

    fn regex(&self, pattern: &str) -> Option<&Regex> {
        self.patterns.iter().find(|(p, _)| p == pattern).map(|(_, r)| r)
    }

    fn check<'v>(&self, schema: &Value, v: &'v Value, ipath: &mut String, spath: &str, out: &mut Vec<SchemaError<'v>>) {
        let Some(s) = schema.as_object() else {
            // `true`/`false` schemas (additionalProperties: false is handled by its parent).
            return;
        };
        let here = ipath.clone();
        let push = |keyword: &str, kind: ErrorKind, out: &mut Vec<SchemaError<'v>>| {
            out.push(SchemaError {
                instance_path: here.clone(),
                schema_path: format!("{spath}/{keyword}"),
                instance: v,
                kind,
            })
        };
        if let Some(t) = s.get("type") {
            let expected: Vec<String> = match t {
                Value::String(one) => vec![one.clone()],
                Value::Array(many) => many.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                _ => Vec::new(),
            };
            if !expected.is_empty() && !expected.iter().any(|e| has_type(v, e)) {
                push("type", ErrorKind::Type { expected }, out);
                return;
            }
        }
        if let Some(Value::Array(options)) = s.get("enum") {
            if !options.iter().any(|o| json_eq(o, v)) {
                push("enum", ErrorKind::Enum { options: Value::Array(options.clone()) }, out);
            }
        }
        for (keyword, branches) in ["allOf", "anyOf", "oneOf"].iter().filter_map(|k| Some((*k, s.get(*k)?.as_array()?)))
        {
            let valid = branches
                .iter()
                .enumerate()
                .filter(|(i, b)| {
                    let mut sub = Vec::new();
                    self.check(b, v, &mut ipath.clone(), &format!("{spath}/{keyword}/{i}"), &mut sub);
                    if keyword == "allOf" {
                        let ok = sub.is_empty();
                        out.extend(sub);
                        return ok;
                    }
                    sub.is_empty()
                })
                .count();
            match keyword {
                "anyOf" if valid == 0 => push(keyword, ErrorKind::AnyOfNotValid, out),
                "oneOf" if valid == 0 => push(keyword, ErrorKind::OneOfNotValid, out),
                "oneOf" if valid > 1 => push(keyword, ErrorKind::OneOfMultipleValid, out),
                _ => {}
            }
        }
        if let Some(not) = s.get("not") {
            let mut sub = Vec::new();
            self.check(not, v, &mut ipath.clone(), &format!("{spath}/not"), &mut sub);
            if sub.is_empty() {
                push("not", ErrorKind::Not, out);
            }
        }
        let limit = |k: &str| s.get(k).and_then(Value::as_u64);
        let bound = |k: &str| s.get(k).and_then(Value::as_f64);
        match v {
            Value::String(text) => {
                let len = text.chars().count() as u64;
                if let Some(l) = limit("maxLength").filter(|l| len > *l) {
                    push("maxLength", ErrorKind::MaxLength { limit: l }, out);
                }
                if let Some(l) = limit("minLength").filter(|l| len < *l) {
                    push("minLength", ErrorKind::MinLength { limit: l }, out);
                }
                if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                    if self.regex(p).is_some_and(|re| !re.is_match(text)) {
                        push("pattern", ErrorKind::Pattern { pattern: p.to_string() }, out);
                    }
                }
                if let Some(f) = s.get("format").and_then(Value::as_str) {
                    if !format_ok(f, text) {
                        push("format", ErrorKind::Format { format: f.to_string() }, out);
                    }
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                let excl = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
                if let Some(m) = bound("maximum") {
                    let exclusive = excl("exclusiveMaximum");
                    if x > m || (exclusive && x == m) {
                        push("maximum", ErrorKind::Maximum { limit: m, exclusive }, out);
                    }
                }
                if let Some(m) = bound("minimum") {
                    let exclusive = excl("exclusiveMinimum");
                    if x < m || (exclusive && x == m) {
                        push("minimum", ErrorKind::Minimum { limit: m, exclusive }, out);
                    }
                }
                if let Some(f) = bound("multipleOf").filter(|f| *f > 0.0) {
                    if (x / f).fract() != 0.0 {
                        push("multipleOf", ErrorKind::MultipleOf { factor: f }, out);
                    }
                }
            }
            Value::Array(items) => {
                let n = items.len() as u64;
                if let Some(l) = limit("maxItems").filter(|l| n > *l) {
                    push("maxItems", ErrorKind::MaxItems { limit: l }, out);
                }
                if let Some(l) = limit("minItems").filter(|l| n < *l) {
                    push("minItems", ErrorKind::MinItems { limit: l }, out);
                }
                if s.get("uniqueItems").and_then(Value::as_bool) == Some(true)
                    && items.iter().enumerate().any(|(i, a)| items[..i].iter().any(|b| json_eq(a, b)))
                {
                    push("uniqueItems", ErrorKind::UniqueItems, out);
                }
                if let Some(item_schema) = s.get("items").filter(|i| i.is_object()) {
                    for (i, item) in items.iter().enumerate() {
                        let len = ipath.len();
                        ipath.push_str(&format!("/{i}"));
                        self.check(item_schema, item, ipath, &format!("{spath}/items"), out);
                        ipath.truncate(len);
                    }
                }
            }
            Value::Object(map) => {
                let n = map.len() as u64;
                if let Some(l) = limit("maxProperties").filter(|l| n > *l) {
                    push("maxProperties", ErrorKind::MaxProperties { limit: l }, out);
                }
                if let Some(l) = limit("minProperties").filter(|l| n < *l) {
                    push("minProperties", ErrorKind::MinProperties { limit: l }, out);
                }
                if let Some(Value::Array(required)) = s.get("required") {
                    for name in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(name) {
                            push("required", ErrorKind::Required { property: name.to_string() }, out);
                        }
                    }
                }
                let props = s.get("properties").and_then(Value::as_object);
                let extra = s.get("additionalProperties");
                let mut unexpected = Vec::new();
                for (key, value) in map {
                    let len = ipath.len();
                    ipath.push('/');
                    ipath.push_str(&escape(key));
                    if let Some(sub) = props.and_then(|p| p.get(key)) {
                        self.check(sub, value, ipath, &format!("{spath}/properties/{}", escape(key)), out);
                    } else {
                        match extra {
                            Some(Value::Bool(false)) => unexpected.push(key.clone()),
                            Some(sub @ Value::Object(_)) => {
                                self.check(sub, value, ipath, &format!("{spath}/additionalProperties"), out)
                            }
                            _ => {}
                        }
                    }
                    ipath.truncate(len);
                }
                if !unexpected.is_empty() {
                    push("additionalProperties", ErrorKind::AdditionalProperties { unexpected }, out);
                }
            }
            _ => {}
        }
    }
}

fn collect_patterns(schema: &Value, at: &str, out: &mut Vec<(String, Regex)>) -> Result<(), CompileError> {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{at}/{}", escape(k));
                match (k.as_str(), v) {
                    ("pattern", Value::String(p)) => {
                        if !out.iter().any(|(q, _)| q == p) {
                            let re = Regex::new(p).map_err(|source| CompileError::Pattern { at: here, source })?;
                            out.push((p.clone(), re));
                        }
                    }
                    // `enum` and `default` hold data, not schemas.
                    ("enum" | "default" | "example", _) => {}
                    _ => collect_patterns(v, &here, out)?,
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_patterns(v, &format!("{at}/{i}"), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "number" => v.is_number(),
        "integer" => v.as_i64().is_some() || v.as_u64().is_some() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

/// Equality with numbers compared by value (`1` equals `1.0`), as JSON Schema asks.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

/// The formats the API server checks (apiextensions' `supported formats`); the caller drops the
/// others as annotations. The ones not written out here are accepted, as before.
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "cidr" => s.parse::<ipnet::IpNet>().is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "hostname" => is_hostname(s),
        "mac" => is_mac(s),
        "uuid" | "uuid3" | "uuid4" | "uuid5" => is_uuid(s),
        "date" => is_date(s),
        "date-time" | "datetime" => is_date_time(s),
        _ => true,
    }
}

/// RFC 1123: labels of letters, digits and hyphens, not starting or ending with a hyphen.
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    matches!(parts.len(), 6 | 8 | 20) && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// `YYYY-MM-DD`.
fn is_date(s: &str) -> bool {
    let mut p = s.split('-');
    let (Some(y), Some(m), Some(d), None) = (p.next(), p.next(), p.next(), p.next()) else { return false };
    digits(y, 4).is_some()
        && digits(m, 2).is_some_and(|m| (1..=12).contains(&m))
        && digits(d, 2).is_some_and(|d| (1..=31).contains(&d))
}

/// RFC 3339: a date, `T`, `hh:mm:ss[.frac]` and `Z` or `±hh:mm`.
fn is_date_time(s: &str) -> bool {
    let Some((date, rest)) = s.split_once(['T', 't']) else { return false };
    let (time, zone_ok) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, true)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, z) = rest.split_at(i);
        let z = &z[1..];
        (t, z.split_once(':').is_some_and(|(h, m)| digits(h, 2).is_some() && digits(m, 2).is_some()))
    } else {
        (rest, false)
    };
    let time = time.split_once('.').map_or(time, |(t, frac)| {
        if !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()) {
            t
        } else {
            "invalid"
        }
    });
    let mut p = time.split(':');
    let hms = (p.next(), p.next(), p.next(), p.next());
    let time_ok = matches!(hms, (Some(h), Some(m), Some(sec), None)
        if digits(h, 2).is_some_and(|h| h < 24) && digits(m, 2).is_some_and(|m| m < 60) && digits(sec, 2).is_some_and(|s| s <= 60));
    is_date(date) && time_ok && zone_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(schema: Value, v: Value) -> Vec<(String, String, ErrorKind)> {
        Validator::new(&schema)
            .unwrap()
            .iter_errors(&v)
            .into_iter()
            .map(|e| (e.instance_path, e.schema_path, e.kind))
            .collect()
    }

    #[test]
    fn keywords() {
        let s = json!({"type": "object", "required": ["a"], "additionalProperties": false, "properties": {
            "a": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3},
            "n": {"type": "integer", "minimum": 1, "maximum": 65535},
            "l": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}},
            "m": {"type": "object", "additionalProperties": {"type": "string"}},
        }});
        assert!(kinds(s.clone(), json!({"a": "ab", "n": 80, "l": ["x"], "m": {"k": "v"}})).is_empty());
        let errs = kinds(s, json!({"n": 70000, "l": ["z"], "m": {"k": 1}, "zz": 1}));
        let got: Vec<_> = errs.iter().map(|(i, s, _)| (i.as_str(), s.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("", "/required"),
                ("/l/0", "/properties/l/items/enum"),
                ("/m/k", "/properties/m/additionalProperties/type"),
                ("/n", "/properties/n/maximum"),
                ("", "/additionalProperties"),
            ]
        );
        assert_eq!(errs[4].2, ErrorKind::AdditionalProperties { unexpected: vec!["zz".into()] });
        let errs = kinds(json!({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}), json!("ABCD"));
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn branches_report_once() {
        let s = json!({"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}]});
        assert_eq!(kinds(s.clone(), json!({}))[0].2, ErrorKind::OneOfNotValid);
        assert_eq!(kinds(s.clone(), json!({"a": 1, "b": 2}))[0].2, ErrorKind::OneOfMultipleValid);
        assert!(kinds(s, json!({"a": 1})).is_empty());
        let s = json!({"anyOf": [{"type": "integer"}, {"type": "string"}]});
        assert!(kinds(s.clone(), json!(3)).is_empty() && kinds(s.clone(), json!("x")).is_empty());
        assert_eq!(kinds(s, json!(true))[0].2, ErrorKind::AnyOfNotValid);
    }

    #[test]
    fn go_regexp_patterns_and_formats() {
        // A pattern a backtracking engine takes exponential time on.
        let s = json!({"type": "string", "pattern": "^([-a-zA-Z0-9_*]+[.]?)+$"});
        assert_eq!(kinds(s, json!(format!("{}!", "a".repeat(64)))).len(), 1);
        assert!(format_ok("cidr", "10.0.0.0/8") && !format_ok("cidr", "10.0.0.0/33"));
        assert!(
            format_ok("date-time", "2024-01-02T03:04:05Z") && format_ok("date-time", "2024-01-02T03:04:05.1+01:00")
        );
        assert!(!format_ok("date-time", "2024-01-02 03:04:05") && !format_ok("date-time", "2024-13-02T03:04:05Z"));
        assert!(is_hostname("a-b.example.com") && !is_hostname("-a.com"));
        assert!(format_ok("idn-hostname", "%%%"), "formats the API server does not check are accepted");
        let e = Validator::new(&json!({"properties": {"x": {"pattern": "("}}})).unwrap_err();
        assert!(e.to_string().contains("/properties/x/pattern"), "{e}");
    }
}
