//! Validation of a policy document against the CRD's OpenAPI v3 schema, the way the API server
//! does it for `kubectl apply` (Kubernetes >= 1.25: strict server-side field validation).
//!
//! The schemas of v1.14.4's CRDs are compiled into the binary: `schemas/cilium-v1.14.4/*.json`
//! at the repository's root, derived from upstream's CRD manifests by `ci/derive-schemas` (see
//! `schemas/README.md`). A CRD manifest exported from a cluster (`kubectl get crd
//! ciliumnetworkpolicies.cilium.io -o yaml`, given with `--crd`) replaces the embedded schema of
//! its kind ([`SchemaSet::with_crds`]).
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

use serde_json::{Map, Value};

use super::openapi::{ErrorKind as ValidationErrorKind, Validator};

use super::yaml::{escape_pointer, YamlDoc};
use super::{Diagnostic, PolicyError, PolicyKind};

/// The upstream release whose CRDs are compiled in.
pub const CRD_VERSION: &str = "v1.14.4";

/// The embedded structural schemas (`openAPIV3Schema` of the `v2` version, descriptions dropped).
const EMBEDDED_CNP: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/cilium-v1.14.4/ciliumnetworkpolicies.json"));
const EMBEDDED_CCNP: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../schemas/cilium-v1.14.4/ciliumclusterwidenetworkpolicies.json"
));

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
}

struct Compiled {
    /// The transformed schema, kept to look up property names for suggestions.
    schema: Value,
    validator: Validator,
    /// Where it came from: `embedded (cilium v1.14.4)` or the CRD file's path.
    origin: String,
}

impl SchemaSet {
    /// The schemas compiled into the binary (upstream v1.14.4's).
    pub fn embedded() -> SchemaSet {
        let origin = format!("embedded (cilium {CRD_VERSION})");
        let compile = |text: &str, file: &str| {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("embedded schema {file}: {e}"));
            Compiled::new(&v, origin.clone()).unwrap_or_else(|e| panic!("embedded schema {file}: {e}"))
        };
        SchemaSet {
            cnp: compile(EMBEDDED_CNP, "ciliumnetworkpolicies.json"),
            ccnp: compile(EMBEDDED_CCNP, "ciliumclusterwidenetworkpolicies.json"),
        }
    }

    /// The embedded schemas, each kind replaced by the CRD manifest given for it. A file may
    /// hold one CRD, several documents, or a `kind: List` of them (`kubectl get crd A B -o
    /// yaml`); the policy CRDs are told apart by `spec.names.kind`.
    pub fn with_crds(files: &[PathBuf]) -> Result<SchemaSet, PolicyError> {
        let mut set = SchemaSet::embedded();
        let mut given: Vec<(PolicyKind, &Path)> = Vec::new();
        for file in files {
            for (kind, compiled) in load_crd_file(file)? {
                if let Some((_, first)) = given.iter().find(|(k, _)| *k == kind) {
                    return Err(PolicyError::Schema {
                        path: file.clone(),
                        message: format!("a second {} CRD (the first is in {})", kind.as_str(), first.display()),
                    });
                }
                given.push((kind, file));
                match kind {
                    PolicyKind::CiliumNetworkPolicy => set.cnp = compiled,
                    PolicyKind::CiliumClusterwideNetworkPolicy => set.ccnp = compiled,
                }
            }
        }
        Ok(set)
    }

    /// Where the schema of `kind` came from.
    pub fn origin(&self, kind: PolicyKind) -> &str {
        match kind {
            PolicyKind::CiliumNetworkPolicy => &self.cnp.origin,
            PolicyKind::CiliumClusterwideNetworkPolicy => &self.ccnp.origin,
        }
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
        // A CRD whose schema says nothing of `spec` (no structural schema, which the API server
        // of apiextensions/v1 never serves) would let any field and value through: the
        // embedded schema of the kind checks instead, so that no fixture passes unchecked.
        if !c.structural() {
            static EMBEDDED: std::sync::OnceLock<SchemaSet> = std::sync::OnceLock::new();
            let embedded = EMBEDDED.get_or_init(SchemaSet::embedded);
            if !std::ptr::eq(self, embedded) {
                return embedded.validate(kind, doc, root, value, out);
            }
        }
        let mut value = value.clone();
        prune_nulls(&mut value, &c.schema);
        for err in c.validator.iter_errors(&value) {
            let ptr = err.instance_path.clone();
            let schema_path = err.schema_path.clone();
            let full = format!("{root}{ptr}");
            match &err.kind {
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
                    let name = property.as_str();
                    out.push(Diagnostic::at(
                        doc.locate(&full, true),
                        field_path(&value, &ptr),
                        format!("missing required field {name:?}"),
                    ));
                }
                ValidationErrorKind::OneOfNotValid | ValidationErrorKind::OneOfMultipleValid
                    if is_selector_one_of(&schema_path) =>
                {
                    let obj = err.instance;
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
                    // The CRD checks CIDRs by pattern only; say what is wrong in the CIDR's terms.
                    let cidr = pattern.contains(r"\/([0-9]|[1-2][0-9]|3[0-2])$");
                    let problem = err.instance.as_str().filter(|_| cidr).and_then(cidr_problem);
                    let message = match problem {
                        Some(p) => format!("{} is not a CIDR: {p}", err.instance),
                        None => format!("{} does not match the pattern {shown}", err.instance),
                    };
                    out.push(Diagnostic::at(doc.locate(&full, false), field_path(&value, &ptr), message));
                }
                ValidationErrorKind::Enum { options } => {
                    let list = options
                        .as_array()
                        .map(|a| a.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default();
                    out.push(Diagnostic::at(
                        doc.locate(&full, false),
                        field_path(&value, &ptr),
                        format!("unsupported value {}: supported values: {list}", err.instance),
                    ));
                }
                ValidationErrorKind::Type { .. } => {
                    let expected = lookup_schema(&c.schema, &schema_path)
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "another type".into());
                    out.push(Diagnostic::at(
                        doc.locate(&full, false),
                        field_path(&value, &ptr),
                        format!("must be of type {}, not {}", expected.trim_matches('"'), json_type(err.instance)),
                    ));
                }
                _ => out.push(Diagnostic::at(doc.locate(&full, false), field_path(&value, &ptr), err.to_string())),
            }
        }
        value
    }
}

impl Compiled {
    /// Whether the schema describes `spec`'s fields (and so refuses unknown ones).
    fn structural(&self) -> bool {
        self.schema.pointer("/properties/spec/properties").is_some_and(|p| p.as_object().is_some_and(|m| !m.is_empty()))
    }

    /// Compiles an `openAPIV3Schema`.
    fn new(openapi: &Value, origin: String) -> Result<Compiled, String> {
        let schema = to_json_schema(openapi);
        let validator = Validator::new(&schema).map_err(|e| {
            let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
            format!("compile schema: {e}{cause}")
        })?;
        Ok(Compiled { schema, validator, origin })
    }
}

/// The policy CRDs of one manifest file, each compiled.
fn load_crd_file(path: &Path) -> Result<Vec<(PolicyKind, Compiled)>, PolicyError> {
    let err = |message: String| PolicyError::Schema { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("read: {e}")))?;
    let docs = super::yaml::parse_documents(&text)
        .map_err(|e| err(format!("not YAML: line {}: {}", e.pos.line, e.message)))?;
    let mut crds = Vec::new();
    for doc in docs {
        match doc.value.get("kind").and_then(Value::as_str) {
            Some("List") => {
                crds.extend(doc.value.get("items").and_then(Value::as_array).into_iter().flatten().cloned())
            }
            _ => crds.push(doc.value),
        }
    }
    let mut out = Vec::new();
    for crd in crds {
        if crd.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
            let found = crd.get("kind").map_or("no kind".to_string(), |k| format!("kind {k}"));
            return Err(err(format!(
                "not a CustomResourceDefinition ({found}); export one with `kubectl get crd \
                 ciliumnetworkpolicies.cilium.io -o yaml`"
            )));
        }
        let kind = match crd.pointer("/spec/names/kind").and_then(Value::as_str) {
            Some("CiliumNetworkPolicy") => PolicyKind::CiliumNetworkPolicy,
            Some("CiliumClusterwideNetworkPolicy") => PolicyKind::CiliumClusterwideNetworkPolicy,
            other => {
                return Err(err(format!(
                    "the CRD of {}, not of CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy",
                    other.unwrap_or("no kind (spec.names.kind is missing)")
                )))
            }
        };
        let versions = crd.pointer("/spec/versions").and_then(Value::as_array);
        let schema = versions
            .and_then(|vs| vs.iter().find(|v| v.get("name").and_then(Value::as_str) == Some("v2")))
            .and_then(|v| v.pointer("/schema/openAPIV3Schema"))
            .ok_or_else(|| err(format!("the {} CRD has no openAPIV3Schema for version v2", kind.as_str())))?;
        out.push((kind, Compiled::new(schema, path.display().to_string()).map_err(err)?));
    }
    if out.is_empty() {
        return Err(err("holds no CustomResourceDefinition".into()));
    }
    Ok(out)
}

/// Go's `net.ParseCIDR`: an address, a slash and a prefix length that fits the family.
pub fn is_cidr(s: &str) -> bool {
    s.parse::<ipnet::IpNet>().is_ok()
}

/// Why `s` is not a CIDR, in the terms of its parts (`prefix length 33 exceeds 32`), or `None`
/// when it is one.
pub fn cidr_problem(s: &str) -> Option<String> {
    if is_cidr(s) {
        return None;
    }
    let Some((addr, len)) = s.split_once('/') else {
        return Some(match addr_family(s) {
            Some(_) => format!("{s} has no prefix length (write {s}/LENGTH)"),
            None => format!("{s:?} is neither an address with a prefix length nor an address"),
        });
    };
    let Some(max) = addr_family(addr) else {
        return Some(format!("{addr:?} is not an IPv4 or IPv6 address"));
    };
    Some(match len.parse::<u32>() {
        Ok(n) if n > max => format!("prefix length {n} exceeds {max}"),
        _ => format!("prefix length {len:?} is not a number from 0 to {max}"),
    })
}

/// The longest prefix of `s`'s address family (32 or 128), `None` if `s` is no address.
fn addr_family(s: &str) -> Option<u32> {
    match s.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => Some(32),
        std::net::IpAddr::V6(_) => Some(128),
    }
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
        let v = Validator::new(&schema).unwrap();
        assert!(v.is_valid(&json!({"c": "10.0.0.0/8", "h": "%%%", "m": {"x": "y"}, "p": {"z": 1}, "i": 3})));
        assert!(v.is_valid(&json!({"c": "fd00::/64", "i": "x"})));
        assert!(!v.is_valid(&json!({"c": "10.0.0.0/33"})));
        assert!(!v.is_valid(&json!({"c": "10.0.0.0"})));
        assert!(!v.is_valid(&json!({"unknown": 1})));
    }

    /// What the embedded JSON holds is what `to_json_schema` reads from a CRD manifest.
    #[test]
    fn a_crd_file_replaces_the_embedded_schema_of_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let cnp: Value = serde_json::from_str(EMBEDDED_CNP).unwrap();
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "ciliumnetworkpolicies.cilium.io"},
            "spec": {"names": {"kind": "CiliumNetworkPolicy"},
                     "versions": [{"name": "v2", "schema": {"openAPIV3Schema": cnp}}]}});
        let f = dir.path().join("cnp.yaml");
        std::fs::write(&f, serde_json::to_string(&crd).unwrap()).unwrap();
        let set = SchemaSet::with_crds(std::slice::from_ref(&f)).unwrap();
        assert_eq!(set.origin(PolicyKind::CiliumNetworkPolicy), f.display().to_string());
        assert!(set.origin(PolicyKind::CiliumClusterwideNetworkPolicy).starts_with("embedded"));
        assert_eq!(set.cnp.schema, SchemaSet::embedded().cnp.schema);
        let e = SchemaSet::with_crds(&[f.clone(), f.clone()]).err().unwrap().to_string();
        assert!(e.contains("a second CiliumNetworkPolicy CRD"), "{e}");
        let bad = dir.path().join("pod.yaml");
        std::fs::write(&bad, "apiVersion: v1\nkind: Pod\n").unwrap();
        let e = SchemaSet::with_crds(&[bad]).err().unwrap().to_string();
        assert!(e.contains("pod.yaml") && e.contains("not a CustomResourceDefinition"), "{e}");
        let other = dir.path().join("other.yaml");
        std::fs::write(&other, "kind: CustomResourceDefinition\nspec: {names: {kind: CiliumNode}}\n").unwrap();
        let e = SchemaSet::with_crds(&[other]).err().unwrap().to_string();
        assert!(e.contains("the CRD of CiliumNode"), "{e}");
    }

    /// A CRD whose schema says nothing of `spec` lets no mistake through: the embedded schema
    /// and the agent's checks still say them, in their own terms.
    #[test]
    fn a_crd_without_a_structural_schema_still_checks_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "ciliumnetworkpolicies.cilium.io"},
            "spec": {"names": {"kind": "CiliumNetworkPolicy"},
                     "versions": [{"name": "v2", "schema": {"openAPIV3Schema":
                        {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
        let f = dir.path().join("cnp.yaml");
        std::fs::write(&f, serde_json::to_string(&crd).unwrap()).unwrap();
        let set = SchemaSet::with_crds(std::slice::from_ref(&f)).unwrap();
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/33]\n  ingress:\n  - fromEndpoint: [{}]\n  - toPorts: [{ports: [{port: \"70000\"}]}]\n";
        let e = super::super::parse_fixture(Path::new("p.yaml"), text, &set).unwrap_err().to_string();
        assert!(
            e.contains(
                "p.yaml:7:14: spec.egress[0].toCIDR[0]: \"10.0.0.0/33\" is not a CIDR: prefix length 33 exceeds 32"
            ),
            "{e}"
        );
        assert!(e.contains("unknown field \"fromEndpoint\" (did you mean \"fromEndpoints\"?)"), "{e}");
        assert!(e.contains("port 70000 exceeds 65535"), "{e}");
        assert_eq!(cidr_problem("10.0.0.0/8"), None);
        assert_eq!(cidr_problem("fd00::/129").as_deref(), Some("prefix length 129 exceeds 128"));
        assert_eq!(cidr_problem("10.0.0.300/8").as_deref(), Some("\"10.0.0.300\" is not an IPv4 or IPv6 address"));
        assert_eq!(cidr_problem("10.0.0.0").as_deref(), Some("10.0.0.0 has no prefix length (write 10.0.0.0/LENGTH)"));
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
