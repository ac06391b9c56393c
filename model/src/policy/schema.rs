//! Validation of a policy document against the CRD's OpenAPI v3 schema, the way the API server
//! does it for `kubectl apply` (Kubernetes >= 1.25: strict server-side field validation).
//!
//! The CRD manifests are read at run time from the shared folder (never copied into the
//! repository, never embedded): `$HOSTDP_SHARED_DIR/upstream/crds-<version>/`, or else the first
//! `shared/upstream/crds-<version>/` found walking up from the current directory and then from
//! this crate's source directory (the repository's root has `shared` one level up). A binary run
//! where neither exists (a VM, an installed copy) must be given `HOSTDP_SHARED_DIR`; the error says
//! so.
//!
//! The OpenAPI schema is turned into a JSON Schema (draft 4, which OpenAPI v3.0 follows) with the
//! API server's own readings of it:
//! - unknown fields: the API server prunes them, but `kubectl apply` asks for strict field
//!   validation since 1.25, which rejects them. So every object schema with `properties` and no
//!   `additionalProperties` / `x-kubernetes-preserve-unknown-fields: true` gets
//!   `additionalProperties: false`.
//! - `x-kubernetes-int-or-string: true` accepts an integer or a string; `nullable: true` allows null.
//! - null values of non-nullable object fields are pruned before validation, as the API server
//!   does (`description:` with nothing after it is not an error).
//! - `format`: only the formats the API server knows are checked; others (`idn-hostname` in
//!   these CRDs) are annotations, as there. `cidr` is checked like Go's `net.ParseCIDR`.
//! - `metadata` is validated apart, as ObjectMeta (see `super::check_metadata`).

use std::path::{Path, PathBuf};

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, Validator};
use serde_json::{Map, Value};

use super::yaml::{escape_pointer, YamlDoc};
use super::{Diagnostic, PolicyError, PolicyKind};

/// The upstream release whose CRDs are used.
pub const CRD_VERSION: &str = "v1.14.4";

/// Formats the Kubernetes API server checks (apiextensions' supported formats); others are dropped.
const K8S_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "date-time",
];

/// Compiled schemas of both policy CRDs.
pub struct SchemaSet {
    cnp: Compiled,
    ccnp: Compiled,
    /// Where the CRDs were read from, for messages.
    pub dir: PathBuf,
}

struct Compiled {
    /// The transformed schema, kept to look up property names for suggestions.
    schema: Value,
    validator: Validator,
}

/// The shared folder's `upstream/crds-<CRD_VERSION>` directory, found as described in the module
/// documentation.
pub fn crd_dir() -> Result<PathBuf, PolicyError> {
    let leaf = Path::new("upstream").join(format!("crds-{CRD_VERSION}"));
    if let Some(dir) = std::env::var_os("HOSTDP_SHARED_DIR") {
        let d = PathBuf::from(dir).join(&leaf);
        return if d.is_dir() {
            Ok(d)
        } else {
            Err(PolicyError::Schema { path: d, message: "HOSTDP_SHARED_DIR has no such directory".into() })
        };
    }
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in &starts {
        for anc in start.ancestors() {
            let d = anc.join("shared").join(&leaf);
            if d.is_dir() {
                return Ok(d);
            }
        }
    }
    Err(PolicyError::Schema {
        path: PathBuf::from("shared").join(leaf),
        message: format!(
            "not found above {} nor {}; set HOSTDP_SHARED_DIR to the shared folder",
            starts[0].display(),
            env!("CARGO_MANIFEST_DIR")
        ),
    })
}

impl SchemaSet {
    /// Reads and compiles both CRDs from `dir` (a `crds-<version>` directory).
    pub fn load(dir: &Path) -> Result<SchemaSet, PolicyError> {
        Ok(SchemaSet {
            cnp: Compiled::load(&dir.join("ciliumnetworkpolicies.yaml"))?,
            ccnp: Compiled::load(&dir.join("ciliumclusterwidenetworkpolicies.yaml"))?,
            dir: dir.to_path_buf(),
        })
    }

    /// Prunes nulls (as the API server does) and validates `doc.value` under `root` (a JSON
    /// pointer, "" for the document itself). Returns the pruned value.
    pub(crate) fn validate(
        &self,
        kind: PolicyKind,
        doc: &YamlDoc,
        root: &str,
        value: &Value,
        out: &mut Vec<Diagnostic>,
    ) -> Value {
        let c = match kind {
            PolicyKind::CiliumNetworkPolicy => &self.cnp,
            PolicyKind::CiliumClusterwideNetworkPolicy => &self.ccnp,
        };
        let mut value = value.clone();
        prune_nulls(&mut value, &c.schema);
        for err in c.validator.iter_errors(&value) {
            let ptr = err.instance_path().as_str().to_string();
            let schema_path = err.schema_path().as_str().to_string();
            let full = format!("{root}{ptr}");
            match err.kind() {
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    let known = known_properties(&c.schema, &schema_path);
                    for key in unexpected {
                        let kptr = format!("{full}/{}", escape_pointer(key));
                        let pos = doc.locate(&kptr, true);
                        let mut message = format!("unknown field {key:?}");
                        if let Some(s) = suggest(key, &known) {
                            message.push_str(&format!(" (did you mean {s:?}?)"));
                        }
                        out.push(Diagnostic::at(
                            pos,
                            field_path(&value, &format!("{ptr}/{}", escape_pointer(key))),
                            message,
                        ));
                    }
                }
                ValidationErrorKind::Required { property } => {
                    let name = property.as_str().unwrap_or_default();
                    out.push(Diagnostic::at(
                        doc.locate(&full, true),
                        field_path(&value, &ptr),
                        format!("missing required field {name:?}"),
                    ));
                }
                ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::OneOfMultipleValid { .. }
                    if is_selector_one_of(&schema_path) =>
                {
                    let obj = err.instance();
                    let both = obj.get("endpointSelector").is_some() && obj.get("nodeSelector").is_some();
                    let message = if both {
                        "rule cannot have both endpointSelector and nodeSelector"
                    } else {
                        "rule must have one of endpointSelector or nodeSelector"
                    };
                    out.push(Diagnostic::at(doc.locate(&full, true), field_path(&value, &ptr), message.into()));
                }
                ValidationErrorKind::Pattern { pattern } => {
                    let mut shown: String = pattern.chars().take(48).collect();
                    if shown.len() < pattern.len() {
                        shown.push('…');
                    }
                    // The CRD checks CIDRs by pattern only; say what is meant.
                    let what =
                        if pattern.contains(r"\/([0-9]|[1-2][0-9]|3[0-2])$") { "is not a CIDR: it " } else { "" };
                    out.push(Diagnostic::at(
                        doc.locate(&full, false),
                        field_path(&value, &ptr),
                        format!("{} {what}does not match the pattern {shown}", err.instance()),
                    ));
                }
                ValidationErrorKind::Enum { options } => {
                    let list = options
                        .as_array()
                        .map(|a| a.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default();
                    out.push(Diagnostic::at(
                        doc.locate(&full, false),
                        field_path(&value, &ptr),
                        format!("unsupported value {}: supported values: {list}", err.instance()),
                    ));
                }
                ValidationErrorKind::Type { .. } => {
                    let expected = lookup_schema(&c.schema, &schema_path)
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "another type".into());
                    out.push(Diagnostic::at(
                        doc.locate(&full, false),
                        field_path(&value, &ptr),
                        format!("must be of type {}, not {}", expected.trim_matches('"'), json_type(err.instance())),
                    ));
                }
                _ => out.push(Diagnostic::at(doc.locate(&full, false), field_path(&value, &ptr), err.to_string())),
            }
        }
        value
    }
}

impl Compiled {
    fn load(path: &Path) -> Result<Compiled, PolicyError> {
        let schema_err = |message: String| PolicyError::Schema { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| schema_err(format!("read: {e}")))?;
        let docs = super::yaml::parse_documents(&text)
            .map_err(|e| schema_err(format!("parse at line {}: {}", e.pos.line, e.message)))?;
        let crd = docs.into_iter().next().ok_or_else(|| schema_err("no document".into()))?.value;
        let versions = crd.pointer("/spec/versions").and_then(Value::as_array);
        let schema = versions
            .and_then(|vs| vs.iter().find(|v| v.get("name").and_then(Value::as_str) == Some("v2")))
            .and_then(|v| v.pointer("/schema/openAPIV3Schema"))
            .ok_or_else(|| schema_err("no openAPIV3Schema for version v2".into()))?;
        let schema = to_json_schema(schema);
        let validator = jsonschema::options()
            .with_draft(Draft::Draft4)
            .should_validate_formats(true)
            .with_format("cidr", is_cidr)
            .build(&schema)
            .map_err(|e| schema_err(format!("compile schema: {e}")))?;
        Ok(Compiled { schema, validator })
    }
}

/// Go's `net.ParseCIDR`: an address, a slash and a prefix length that fits the family.
pub fn is_cidr(s: &str) -> bool {
    s.parse::<ipnet::IpNet>().is_ok()
}

/// Rewrites the CRD's OpenAPI schema into the JSON Schema the API server effectively applies.
fn to_json_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else { return schema.clone() };
    let mut out = Map::new();
    for (k, v) in map {
        let v = match k.as_str() {
            "properties" => match v {
                Value::Object(props) => {
                    Value::Object(props.iter().map(|(name, s)| (name.clone(), to_json_schema(s))).collect())
                }
                other => other.clone(),
            },
            "items" | "additionalProperties" | "not" => match v {
                Value::Object(_) => to_json_schema(v),
                other => other.clone(),
            },
            "allOf" | "anyOf" | "oneOf" => match v {
                Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
                other => other.clone(),
            },
            "format" => match v.as_str() {
                Some(f) if K8S_FORMATS.contains(&f) => v.clone(),
                _ => continue,
            },
            "description" => continue,
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    let flag = |name: &str| map.get(name).and_then(Value::as_bool) == Some(true);
    if flag("x-kubernetes-int-or-string") {
        out.remove("type");
        out.insert("anyOf".into(), serde_json::json!([{"type": "integer"}, {"type": "string"}]));
    }
    if flag("nullable") {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), serde_json::json!([t, "null"]));
        }
    }
    let is_object = out.get("type").and_then(Value::as_str) == Some("object");
    if is_object
        && out.contains_key("properties")
        && !out.contains_key("additionalProperties")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

/// Drops null values of object fields whose schema is not nullable, as the API server does
/// before validating a custom resource.
fn prune_nulls(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|s| s.is_object());
            map.retain(|k, v| {
                let sub = props.and_then(|p| p.get(k)).or(extra);
                let nullable = sub
                    .and_then(|s| s.get("type"))
                    .and_then(Value::as_array)
                    .is_some_and(|t| t.iter().any(|x| x == "null"));
                !v.is_null() || nullable
            });
            for (k, v) in map.iter_mut() {
                if let Some(sub) = props.and_then(|p| p.get(k)).or(extra) {
                    prune_nulls(v, sub);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for v in items {
                    prune_nulls(v, sub);
                }
            }
        }
        _ => {}
    }
}

fn is_selector_one_of(schema_path: &str) -> bool {
    schema_path.ends_with("/oneOf")
        && (schema_path == "/properties/spec/oneOf" || schema_path.starts_with("/properties/specs/"))
}

/// The value at the schema pointer `schema_path` (the keyword that failed).
fn lookup_schema<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a Value> {
    schema.pointer(schema_path)
}

/// Property names of the object schema whose `additionalProperties` keyword failed.
fn known_properties(schema: &Value, schema_path: &str) -> Vec<String> {
    let parent = schema_path.strip_suffix("/additionalProperties").unwrap_or(schema_path);
    schema
        .pointer(&format!("{parent}/properties"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn suggest(key: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&key.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A JSON pointer into `value` written as Kubernetes writes field paths:
/// `spec.ingress[0].toPorts[0]`, map keys with dots as `matchLabels[k8s:app.name]`.
pub fn field_path(value: &Value, pointer: &str) -> String {
    let mut out = String::new();
    let mut cur = Some(value);
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        match cur {
            Some(Value::Array(a)) => {
                out.push_str(&format!("[{seg}]"));
                cur = seg.parse::<usize>().ok().and_then(|i| a.get(i));
            }
            other => {
                if seg.contains(['.', '/', ':']) {
                    out.push_str(&format!("[{seg}]"));
                } else {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&seg);
                }
                cur = other.and_then(|v| v.get(&seg));
            }
        }
    }
    if out.is_empty() {
        "<document>".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cidr_format_and_strictness() {
        let raw = json!({"type": "object", "properties": {
            "c": {"type": "string", "format": "cidr"},
            "h": {"type": "string", "format": "idn-hostname"},
            "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "p": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"a": {"type": "string"}}},
            "i": {"x-kubernetes-int-or-string": true, "type": "string"},
        }});
        let schema = to_json_schema(&raw);
        let v = jsonschema::options()
            .with_draft(Draft::Draft4)
            .should_validate_formats(true)
            .with_format("cidr", is_cidr)
            .build(&schema)
            .unwrap();
        assert!(v.is_valid(&json!({"c": "10.0.0.0/8", "h": "%%%", "m": {"x": "y"}, "p": {"z": 1}, "i": 3})));
        assert!(v.is_valid(&json!({"c": "fd00::/64", "i": "x"})));
        assert!(!v.is_valid(&json!({"c": "10.0.0.0/33"})));
        assert!(!v.is_valid(&json!({"c": "10.0.0.0"})));
        assert!(!v.is_valid(&json!({"unknown": 1})));
    }

    #[test]
    fn field_paths() {
        let v = json!({"spec": {"ingress": [{"toPorts": [{"ports": [{"port": "1"}]}]}], "endpointSelector": {"matchLabels": {"k8s:a.b": "x"}}}});
        assert_eq!(
            field_path(&v, "/spec/ingress/0/toPorts/0/ports/0/port"),
            "spec.ingress[0].toPorts[0].ports[0].port"
        );
        assert_eq!(
            field_path(&v, "/spec/endpointSelector/matchLabels/k8s:a.b"),
            "spec.endpointSelector.matchLabels[k8s:a.b]"
        );
    }
}
