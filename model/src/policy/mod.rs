//! Policy fixtures: CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML files, validated as
//! `kubectl apply` against a v1.14.4 cluster would (CRD schema, strict fields) and then as the
//! v1.14.4 agent does when it parses them (`Rule.Sanitize`), turned into a small typed model that
//! tells which endpoints a policy selects and which policy-map entries it implies.
//!
//! Pure logic: no kernel, no cluster. The CRD schemas are compiled into the binary; `--crd`
//! replaces them with a cluster's own (see [`schema`] and [`use_schemas`]).

mod model;
pub mod openapi;
pub mod schema;
mod select;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value;

pub use model::{
    Entity, Icmp, IpFamily, Operator, Peer, PeerRule, Peers, Port, PortProtocol, Protocol, Requirement, Rule, Selector,
};
pub use schema::{SchemaSet, CRD_VERSION};
pub use select::{
    policy_entries, reserved_identity, select_endpoints, selector_identity, Direction, Endpoint, EndpointRef, PeerId,
    PolicyEntry,
};

/// Errors of loading a policy fixture.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("read policy fixture {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse policy fixture {path}:{line}:{column}: {message}")]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("policy fixture {path} holds no yaml document")]
    Empty { path: PathBuf },
    #[error("CRD {path}: {message}")]
    Schema { path: PathBuf, message: String },
    #[error("invalid policy fixture {path}:\n{}", render(path, diagnostics))]
    Invalid { path: PathBuf, diagnostics: Vec<Diagnostic> },
}

fn render(path: &Path, diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("{}:{d}", path.display())).collect::<Vec<_>>().join("\n")
}

/// One problem in a fixture: where (1-based line and column of the offending key or value), which
/// field (Kubernetes field path), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn at(pos: yaml::Pos, path: String, message: String) -> Diagnostic {
        Diagnostic { line: pos.line, column: pos.column, path, message }
    }
}

impl fmt::Display for Diagnostic {
    /// `12:17: spec.ingress[0]...port: message` (the file name is prefixed by [`PolicyError`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.line, self.column, self.path, self.message)
    }
}

/// The two policy kinds of cilium.io/v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }
}

/// A parsed, valid policy. `namespace` is `None` for a clusterwide policy; a namespaced policy
/// without `metadata.namespace` lands in `default` (kubectl's default namespace).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub name: String,
    pub namespace: Option<String>,
    /// `spec` first (if any), then each of `specs`.
    pub rules: Vec<Rule>,
    /// Line of the document's first key.
    pub line: usize,
}

/// One YAML document of a fixture.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyDoc {
    Policy(Policy),
    /// Any other Kubernetes object (Pod, Service, a networking.k8s.io NetworkPolicy...): named,
    /// not validated.
    NotAPolicy {
        api_version: String,
        kind: String,
        name: Option<String>,
        line: usize,
    },
}

/// The policy API group and version the CRDs define.
pub const POLICY_API_VERSION: &str = "cilium.io/v2";

/// Kinds served under cilium.io by v1.14 (all versions): a typo of one of them is an error,
/// another cilium.io kind is simply not a policy.
const CILIUM_KINDS: &[&str] = &[
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "CiliumEndpoint",
    "CiliumNode",
    "CiliumIdentity",
    "CiliumExternalWorkload",
    "CiliumLocalRedirectPolicy",
    "CiliumEgressGatewayPolicy",
    "CiliumEnvoyConfig",
    "CiliumClusterwideEnvoyConfig",
    "CiliumNodeConfig",
    "CiliumBGPPeeringPolicy",
    "CiliumLoadBalancerIPPool",
    "CiliumEndpointSlice",
    "CiliumL2AnnouncementPolicy",
    "CiliumPodIPPool",
    "CiliumCIDRGroup",
];

static SCHEMAS: OnceLock<Arc<SchemaSet>> = OnceLock::new();

/// Makes `schemas` the ones [`load_fixture`] validates against for the rest of the process
/// (`--crd`); must come before the first validation. Returns false when it came too late.
pub fn use_schemas(schemas: SchemaSet) -> bool {
    SCHEMAS.set(Arc::new(schemas)).is_ok()
}

/// The schemas in use: those of [`use_schemas`], else the embedded ones.
pub fn schemas() -> Arc<SchemaSet> {
    SCHEMAS.get_or_init(|| Arc::new(SchemaSet::embedded())).clone()
}

/// Reads a fixture (one or more YAML documents) and validates it against the schemas in use
/// ([`schemas`]: v1.14.4's CRDs unless `--crd` gave others). Any invalid document makes the
/// whole file invalid, with every problem listed.
pub fn load_fixture(path: impl AsRef<Path>) -> Result<Vec<PolicyDoc>, PolicyError> {
    load_fixture_with(path.as_ref(), &schemas())
}

/// [`load_fixture`] with explicit schemas (another CRD version, a test).
pub fn load_fixture_with(path: &Path, schemas: &SchemaSet) -> Result<Vec<PolicyDoc>, PolicyError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })?;
    parse_fixture(path, &text, schemas)
}

/// Policy fixtures are a few kilobytes; a far larger file is refused before parsing.
pub const MAX_FIXTURE_BYTES: usize = 4 << 20;

/// [`load_fixture_with`] on text already read; `path` is only used in messages.
pub fn parse_fixture(path: &Path, text: &str, schemas: &SchemaSet) -> Result<Vec<PolicyDoc>, PolicyError> {
    if text.len() > MAX_FIXTURE_BYTES {
        return Err(PolicyError::Syntax {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!(
                "the fixture is {} bytes, too large for a policy fixture (at most {MAX_FIXTURE_BYTES})",
                text.len()
            ),
        });
    }
    let docs = yaml::parse_documents(text).map_err(|e| PolicyError::Syntax {
        path: path.to_path_buf(),
        line: e.pos.line,
        column: e.pos.column,
        message: e.message,
    })?;
    if docs.is_empty() {
        return Err(PolicyError::Empty { path: path.to_path_buf() });
    }
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for doc in &docs {
        classify(doc, "", &doc.value, schemas, &mut out, &mut diags);
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        diags.sort_by_key(|d| (d.line, d.column));
        diags.dedup();
        Err(PolicyError::Invalid { path: path.to_path_buf(), diagnostics: diags })
    }
}

fn classify(
    doc: &yaml::YamlDoc,
    root: &str,
    value: &Value,
    schemas: &SchemaSet,
    out: &mut Vec<PolicyDoc>,
    diags: &mut Vec<Diagnostic>,
) {
    let line = doc.locate(root, false).line;
    let here = |ptr: &str, key: bool| doc.locate(&format!("{root}{ptr}"), key);
    let Some(obj) = value.as_object() else {
        diags.push(Diagnostic::at(
            here("", false),
            "<document>".into(),
            "a kubernetes object must be a mapping".into(),
        ));
        return;
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        let missing = if text("apiVersion").is_none() { "apiVersion" } else { "kind" };
        diags.push(Diagnostic::at(
            here("", false),
            missing.into(),
            format!("missing required field {missing:?} (a string)"),
        ));
        return;
    };
    let name = obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_string);
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    if api_version == "v1" && kind == "List" {
        if let Some(items) = obj.get("items").and_then(Value::as_array) {
            for (i, item) in items.iter().enumerate() {
                classify(doc, &format!("{root}/items/{i}"), item, schemas, out, diags);
            }
        }
        return;
    }
    let policy_kind = match kind.as_str() {
        "CiliumNetworkPolicy" => Some(PolicyKind::CiliumNetworkPolicy),
        "CiliumClusterwideNetworkPolicy" => Some(PolicyKind::CiliumClusterwideNetworkPolicy),
        _ => None,
    };
    if group != "cilium.io" {
        out.push(PolicyDoc::NotAPolicy { api_version, kind, name, line });
        return;
    }
    let Some(policy_kind) = policy_kind else {
        if CILIUM_KINDS.contains(&kind.as_str()) {
            out.push(PolicyDoc::NotAPolicy { api_version, kind, name, line });
        } else {
            let guess = CILIUM_KINDS
                .iter()
                .map(|k| (strsim::jaro_winkler(k, &kind), *k))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(s, _)| *s > 0.8)
                .map(|(_, k)| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            diags.push(Diagnostic::at(
                here("/kind", false),
                "kind".into(),
                format!("no kind {kind:?} in {api_version}{guess}"),
            ));
        }
        return;
    };
    if api_version != POLICY_API_VERSION {
        diags.push(Diagnostic::at(
            here("/apiVersion", false),
            "apiVersion".into(),
            format!("no version {api_version:?} serves {}: use {POLICY_API_VERSION}", policy_kind.as_str()),
        ));
        return;
    }
    let before = diags.len();
    let value = schemas.validate(policy_kind, doc, root, value, diags);
    let (name, namespace) = check_metadata(doc, root, &value, policy_kind, diags);
    let refused = diags.len() > before;
    // The API server would have refused a document the schema refuses, and the agent never sees
    // it; the agent's own checks still run on it, so that every mistake is said at once (those
    // at a place the schema already reported are left out).
    let mut agent = Vec::new();
    let mut ctx = model::Ctx { doc, root, diags: &mut agent, kind: policy_kind, namespace: namespace.clone() };
    let rules = ctx.rules(&value);
    let schema_said: Vec<(usize, usize)> = diags[before..].iter().map(|d| (d.line, d.column)).collect();
    diags.extend(agent.into_iter().filter(|d| !schema_said.contains(&(d.line, d.column))));
    if let (Some(rules), false) = (rules, refused) {
        out.push(PolicyDoc::Policy(Policy { kind: policy_kind, name, namespace, rules, line }));
    }
}

/// Metadata as the API server checks ObjectMeta of a custom resource: a DNS-subdomain name, a
/// DNS-label namespace, known fields only, string labels and annotations.
fn check_metadata(
    doc: &yaml::YamlDoc,
    root: &str,
    value: &Value,
    kind: PolicyKind,
    diags: &mut Vec<Diagnostic>,
) -> (String, Option<String>) {
    const KNOWN: &[&str] = &[
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    ];
    let at = |p: &str, key: bool| doc.locate(&format!("{root}{p}"), key);
    let Some(meta) = value.get("metadata").and_then(Value::as_object) else {
        return (String::new(), None); // the schema already reported it
    };
    for k in meta.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        diags.push(Diagnostic::at(
            at(&format!("/metadata/{}", yaml::escape_pointer(k)), true),
            format!("metadata.{k}"),
            format!("unknown field {k:?}"),
        ));
    }
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    match meta.get("name") {
        None | Some(Value::Null) => diags.push(Diagnostic::at(at("/metadata", true), "metadata.name".into(), "missing required field \"name\"".into())),
        Some(Value::String(n)) if !model::is_dns_subdomain(n) => diags.push(Diagnostic::at(
            at("/metadata/name", false),
            "metadata.name".into(),
            format!("{n:?} is not a valid name: lowercase letters, digits, '-' and '.', at most 253, starting and ending alphanumeric"),
        )),
        Some(Value::String(_)) => {}
        Some(other) => diags.push(Diagnostic::at(at("/metadata/name", false), "metadata.name".into(), format!("must be a string, not {other}"))),
    }
    let namespace = match meta.get("namespace") {
        Some(Value::String(ns)) => {
            if !model::is_dns_label(ns) {
                diags.push(Diagnostic::at(
                    at("/metadata/namespace", false),
                    "metadata.namespace".into(),
                    format!("{ns:?} is not a valid namespace name"),
                ));
            }
            Some(ns.clone())
        }
        None | Some(Value::Null) => None,
        Some(other) => {
            diags.push(Diagnostic::at(
                at("/metadata/namespace", false),
                "metadata.namespace".into(),
                format!("must be a string, not {other}"),
            ));
            None
        }
    };
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m.iter().filter(|(_, v)| !v.is_string()) {
                    diags.push(Diagnostic::at(
                        at(&format!("/metadata/{field}/{}", yaml::escape_pointer(k)), false),
                        format!("metadata.{field}[{k}]"),
                        format!("must be a string, not {v}"),
                    ));
                }
            }
            Some(_) => diags.push(Diagnostic::at(
                at(&format!("/metadata/{field}"), false),
                format!("metadata.{field}"),
                "must be a map of strings".into(),
            )),
        }
    }
    let namespace = match kind {
        PolicyKind::CiliumNetworkPolicy => Some(namespace.unwrap_or_else(|| "default".to_string())),
        // The API server ignores a namespace on a cluster-scoped object.
        PolicyKind::CiliumClusterwideNetworkPolicy => None,
    };
    (name, namespace)
}

/// Every policy of a list of documents.
pub fn policies(docs: &[PolicyDoc]) -> impl Iterator<Item = &Policy> {
    docs.iter().filter_map(|d| match d {
        PolicyDoc::Policy(p) => Some(p),
        PolicyDoc::NotAPolicy { .. } => None,
    })
}

/// Labels as given in a scenario (`key: value`).
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<PolicyDoc>, PolicyError> {
        parse_fixture(Path::new("t.yaml"), text, &schemas())
    }

    /// Odd shapes give errors, never a panic.
    #[test]
    fn malformed_documents_are_errors() {
        let head = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n";
        for body in [
            "spec: []",
            "specs: {}",
            "spec: {endpointSelector: {}, ingress: x}",
            "spec: {endpointSelector: {}, ingress: [[1]]}",
            "spec: {endpointSelector: {matchLabels: [a]}}",
            "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: \"\"}]}]}]}",
            "spec: {endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [bad]}]}]}",
            "spec: {endpointSelector: {}, egress: [{icmps: [{fields: [{type: 300}]}]}]}",
            "spec: {endpointSelector: {}}\nstatus: 3",
        ] {
            let r = parse(&format!("{head}{body}\n"));
            assert!(matches!(r, Err(PolicyError::Invalid { .. })), "{body}: {r:?}");
        }
        for text in ["just a scalar\n", "- a\n- b\n", "kind: Pod\n", "apiVersion: v1\n"] {
            assert!(matches!(parse(text), Err(PolicyError::Invalid { .. })), "{text}");
        }
        assert!(matches!(parse("# nothing\n---\n"), Err(PolicyError::Empty { .. })));
        assert!(matches!(parse("a: [\n"), Err(PolicyError::Syntax { .. })));
    }

    #[test]
    fn nulls_are_pruned_and_lists_expanded() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {name: a, namespace: ns}\n  spec:\n    description:\n    endpointSelector: {}\n    ingress:\n";
        let docs = parse(text).unwrap();
        let p = policies(&docs).next().unwrap();
        assert_eq!(p.namespace.as_deref(), Some("ns"));
        assert_eq!(p.rules[0].description, None);
        assert!(p.rules[0].ingress.is_empty());
    }
}
