//! The typed policy model, and the checks the v1.14.4 agent makes when it parses a rule
//! (`pkg/policy/api/rule_validation.go`, `Rule.Sanitize`) beyond what the CRD schema enforces.
//!
//! Deliberate differences from v1.14.4, all stricter: its `Sanitize` skips `ingressDeny` /
//! `egressDeny` (the agent only fails on them later, when it computes the policy) and checks the
//! node selector of a namespaced policy only in `spec`, not `specs`; both are checked here.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::yaml::{escape_pointer, YamlDoc};
use super::{Diagnostic, PolicyKind};

/// Label source prefix of a selector key without one: any source matches.
pub const SOURCE_ANY: &str = "any";
/// Cilium's label of the namespace a pod runs in.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// A Kubernetes label selector as Cilium reads it: every key carries a label source
/// (`k8s:app`, `reserved:host`; a key written without one gets `any:`). Keys are stored in that
/// canonical `source:key` form.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One policy rule (`spec` or an element of `specs`). For a namespaced policy the endpoint
/// selector and the peer selectors already carry the namespace requirement the agent adds
/// (`k8s:io.kubernetes.pod.namespace`), so they can be matched against labels directly.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub endpoint_selector: Option<Selector>,
    pub node_selector: Option<Selector>,
    pub ingress: Vec<PeerRule>,
    pub egress: Vec<PeerRule>,
    pub ingress_deny: Vec<PeerRule>,
    pub egress_deny: Vec<PeerRule>,
    pub description: Option<String>,
    pub line: usize,
}

/// One element of `ingress`, `egress`, `ingressDeny` or `egressDeny`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRule {
    pub peers: Peers,
    /// `fromRequires` / `toRequires`: constrain other rules, allow nothing themselves.
    pub requires: Vec<Selector>,
    /// Empty: every port (unless `icmps` is set).
    pub ports: Vec<PortProtocol>,
    pub icmps: Vec<Icmp>,
    /// Some `toPorts[].rules` (HTTP, Kafka, DNS, l7proto): traffic goes through the proxy.
    pub l7: bool,
    pub line: usize,
}

/// Whom a peer rule is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Peers {
    /// No L3 field but ports or ICMP: every peer (Cilium's L4-only wildcard).
    Any,
    List(Vec<Peer>),
    /// Nothing at all (`egress: [{}]`): turns on default deny, allows nothing.
    Nothing,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    Endpoints(Selector),
    Entity(Entity),
    Cidr {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    /// `toServices`, `toFQDNs`, `toGroups`, `cidrGroupRef`: resolved by the agent at run time,
    /// kept as their YAML field name and JSON text.
    Other {
        field: String,
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    All,
    World,
    Cluster,
    Host,
    Init,
    Ingress,
    Unmanaged,
    RemoteNode,
    Health,
    None,
    KubeApiserver,
}

impl Entity {
    pub fn parse(s: &str) -> Option<Entity> {
        Some(match s {
            "all" => Entity::All,
            "world" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "init" => Entity::Init,
            "ingress" => Entity::Ingress,
            "unmanaged" => Entity::Unmanaged,
            "remote-node" => Entity::RemoteNode,
            "health" => Entity::Health,
            "none" => Entity::None,
            "kube-apiserver" => Entity::KubeApiserver,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortProtocol {
    pub port: Port,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    /// 0 means every port.
    Number(u16),
    /// An IANA service name (a container port name), lower-cased.
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Icmp {
    pub family: IpFamily,
    pub icmp_type: u8,
}

/// Walks one policy document, checking and building rules.
pub(crate) struct Ctx<'a> {
    pub doc: &'a YamlDoc,
    pub root: &'a str,
    pub diags: &'a mut Vec<Diagnostic>,
    pub kind: PolicyKind,
    pub namespace: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

impl Ctx<'_> {
    fn err(&mut self, ptr: &str, key: bool, message: impl Into<String>) {
        let pos = self.doc.locate(&format!("{}{ptr}", self.root), key);
        let path = super::schema::field_path(&self.doc.value, &format!("{}{ptr}", self.root));
        self.diags.push(Diagnostic::at(pos, path, message.into()));
    }

    /// The rules of a schema-valid policy document, or `None` after reporting problems.
    pub fn rules(&mut self, value: &Value) -> Option<Vec<Rule>> {
        let before = self.diags.len();
        let spec = value.get("spec").filter(|v| v.is_object());
        let specs = value.get("specs").and_then(Value::as_array);
        if spec.is_none() && specs.is_none() {
            self.err("", false, format!("invalid {} spec(s): empty policy: set spec or specs", self.kind.as_str()));
            return None;
        }
        let mut rules = Vec::new();
        if let Some(s) = spec {
            rules.extend(self.rule(s, "/spec".into()));
        }
        for (i, s) in specs.into_iter().flatten().enumerate() {
            rules.extend(self.rule(s, format!("/specs/{i}")));
        }
        (self.diags.len() == before).then_some(rules)
    }

    fn rule(&mut self, v: &Value, ptr: String) -> Option<Rule> {
        let es = v.get("endpointSelector");
        let ns = v.get("nodeSelector");
        match (es, ns) {
            (None, None) => self.err(&ptr, true, "rule must have one of endpointSelector or nodeSelector"),
            (Some(_), Some(_)) => self.err(&ptr, true, "rule cannot have both endpointSelector and nodeSelector"),
            (_, Some(_)) if self.kind == PolicyKind::CiliumNetworkPolicy => self.err(
                &format!("{ptr}/nodeSelector"),
                true,
                "a namespaced CiliumNetworkPolicy cannot have a nodeSelector: use a CiliumClusterwideNetworkPolicy",
            ),
            _ => {}
        }
        let endpoint_selector = es.and_then(|s| self.selector(s, &format!("{ptr}/endpointSelector")));
        let node_selector = ns.and_then(|s| self.selector(s, &format!("{ptr}/nodeSelector")));
        let host = node_selector.is_some();
        let matches_init = endpoint_selector.as_ref().is_some_and(|s| s.has_key("reserved:init"));
        // The agent confines a namespaced policy's subject to its namespace, overriding any
        // namespace the selector names itself.
        let endpoint_selector = endpoint_selector.map(|mut s| {
            if let Some(ns) = &self.namespace {
                s.match_labels.insert(format!("k8s:{POD_NAMESPACE_LABEL}"), ns.clone());
            }
            s
        });
        let mut sections = |name: &str, dir: Dir| -> Vec<PeerRule> {
            let items = v.get(name).and_then(Value::as_array).cloned().unwrap_or_default();
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.peer_rule(item, &format!("{ptr}/{name}/{i}"), dir, host, matches_init))
                .collect()
        };
        let ingress = sections("ingress", Dir::Ingress);
        let ingress_deny = sections("ingressDeny", Dir::Ingress);
        let egress = sections("egress", Dir::Egress);
        let egress_deny = sections("egressDeny", Dir::Egress);
        Some(Rule {
            endpoint_selector,
            node_selector,
            ingress,
            egress,
            ingress_deny,
            egress_deny,
            description: v.get("description").and_then(Value::as_str).map(str::to_string),
            line: self.doc.locate(&format!("{}{ptr}", self.root), false).line,
        })
    }

    /// A label selector, checked like Kubernetes' `ValidateLabelSelector` on the keys Cilium
    /// derives (`source.key`).
    fn selector(&mut self, v: &Value, ptr: &str) -> Option<Selector> {
        let before = self.diags.len();
        let mut sel = Selector::default();
        if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
            for (k, val) in m {
                let kptr = format!("{ptr}/matchLabels/{}", escape_pointer(k));
                let key = canonical_key(k);
                if !is_qualified_name(&extended_key(&key)) {
                    self.err(&kptr, true, format!("invalid label selector: key {k:?} is not a valid label key"));
                }
                let val = val.as_str().unwrap_or_default();
                if !is_label_value(val) {
                    self.err(&kptr, false, format!("invalid label selector: {val:?} is not a valid label value"));
                }
                sel.match_labels.insert(key, val.to_string());
            }
        }
        if let Some(exprs) = v.get("matchExpressions").and_then(Value::as_array) {
            for (i, e) in exprs.iter().enumerate() {
                let eptr = format!("{ptr}/matchExpressions/{i}");
                let k = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let key = canonical_key(k);
                if !is_qualified_name(&extended_key(&key)) {
                    self.err(
                        &format!("{eptr}/key"),
                        false,
                        format!("invalid label selector: key {k:?} is not a valid label key"),
                    );
                }
                let op = e.get("operator").and_then(Value::as_str).unwrap_or_default();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default();
                let operator = match op {
                    "In" => Operator::In,
                    "NotIn" => Operator::NotIn,
                    "Exists" => Operator::Exists,
                    "DoesNotExist" => Operator::DoesNotExist,
                    other => {
                        self.err(
                            &format!("{eptr}/operator"),
                            false,
                            format!("invalid label selector: {other:?} is not a valid selector operator"),
                        );
                        continue;
                    }
                };
                match operator {
                    Operator::In | Operator::NotIn if values.is_empty() => self.err(
                        &format!("{eptr}/operator"),
                        false,
                        format!("invalid label selector: values must be given when the operator is {op}"),
                    ),
                    Operator::Exists | Operator::DoesNotExist if !values.is_empty() => self.err(
                        &format!("{eptr}/values"),
                        true,
                        format!("invalid label selector: values may not be given when the operator is {op}"),
                    ),
                    _ => {}
                }
                sel.match_expressions.push(Requirement { key, operator, values });
            }
        }
        (self.diags.len() == before).then_some(sel)
    }

    /// A peer selector (`fromEndpoints`, `toRequires`...), scoped as the agent scopes it: in a
    /// namespaced policy to that namespace, in a clusterwide one to pods of any namespace (unless
    /// the selector names a namespace or a reserved label, or the subject is `reserved:init`).
    fn peer_selector(&mut self, v: &Value, ptr: &str, matches_init: bool, add_k8s: bool) -> Option<Selector> {
        let mut s = self.selector(v, ptr)?;
        if add_k8s && s.has_source("reserved") {
            return Some(s);
        }
        let ns_k8s = format!("k8s:{POD_NAMESPACE_LABEL}");
        if !s.has_key(&ns_k8s) && !s.has_key(&format!("{SOURCE_ANY}:{POD_NAMESPACE_LABEL}")) {
            match &self.namespace {
                Some(ns) => {
                    s.match_labels.insert(ns_k8s, ns.clone());
                }
                None if !matches_init => {
                    s.match_expressions.push(Requirement { key: ns_k8s, operator: Operator::Exists, values: vec![] })
                }
                None => {}
            }
        }
        Some(s)
    }

    fn peer_rule(&mut self, v: &Value, ptr: &str, dir: Dir, host: bool, matches_init: bool) -> Option<PeerRule> {
        let before = self.diags.len();
        let empty = Map::new();
        let obj = v.as_object().unwrap_or(&empty);
        let len = |k: &str| obj.get(k).and_then(Value::as_array).map_or(0, Vec::len);
        let l3: &[&str] = match dir {
            Dir::Ingress => &["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"],
            Dir::Egress => &["toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toServices", "toFQDNs", "toGroups"],
        };
        let present: Vec<&str> = l3.iter().copied().filter(|k| len(k) > 0).collect();
        if present.len() > 1 {
            self.err(
                &format!("{ptr}/{}", present[1]),
                true,
                format!("combining {} and {} is not supported yet", present[0], present[1]),
            );
        }
        let to_ports = obj.get("toPorts").and_then(Value::as_array).cloned().unwrap_or_default();
        if dir == Dir::Egress && len("toServices") > 0 && !to_ports.is_empty() {
            self.err(&format!("{ptr}/toPorts"), true, "combining toServices and toPorts is not supported yet");
        }
        let icmps_v = obj.get("icmps").and_then(Value::as_array).cloned().unwrap_or_default();
        if !icmps_v.is_empty() && !to_ports.is_empty() {
            self.err(
                &format!("{ptr}/icmps"),
                true,
                "the icmps block may only be present without toPorts: define a separate rule to use toPorts",
            );
        }

        let mut ports = Vec::new();
        let mut l7 = false;
        for (i, pr) in to_ports.iter().enumerate() {
            let pptr = format!("{ptr}/toPorts/{i}");
            let rules = pr.get("rules").filter(|r| r.is_object());
            let count = |k: &str| rules.and_then(|r| r.get(k)).and_then(Value::as_array).map_or(0, Vec::len);
            let dns = count("dns");
            let has_l7 = count("http") + count("kafka") + dns + count("l7") > 0
                || rules.and_then(|r| r.get("l7proto")).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
            l7 |= has_l7;
            if has_l7 && host {
                self.err(&format!("{pptr}/rules"), true, "host policies do not support L7 rules yet");
            }
            if dns > 0 && dir == Dir::Ingress {
                self.err(&format!("{pptr}/rules/dns"), true, "L7 protocol DNS is not supported on ingress yet");
            }
            if rules.and_then(|r| r.get("l7")).is_some() && rules.and_then(|r| r.get("l7proto")).is_none() {
                self.err(
                    &format!("{pptr}/rules/l7"),
                    true,
                    "'l7' may only be specified when a 'l7proto' is also specified",
                );
            }
            if dir == Dir::Ingress {
                if let Some(l) = pr.get("listener") {
                    let name = l.get("name").and_then(Value::as_str).unwrap_or_default();
                    self.err(&format!("{pptr}/listener"), true, format!("listener is not allowed on ingress ({name})"));
                }
            }
            let list = pr.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
            if list.len() > 40 {
                self.err(&format!("{pptr}/ports"), true, "too many ports, the max is 40");
            }
            if dns > 0 && list.is_empty() {
                self.err(&format!("{pptr}/rules/dns"), true, "port 53 must be specified for DNS rules");
            }
            for (j, p) in list.iter().enumerate() {
                let ptr = format!("{pptr}/ports/{j}");
                let Some(pp) = self.port_protocol(p, &ptr) else { continue };
                if has_l7 && dns == 0 && pp.protocol != Protocol::Tcp {
                    self.err(&format!("{ptr}/protocol"), false, "L7 rules can only apply to TCP except for DNS rules");
                }
                if has_l7 && pp.port == Port::Number(0) {
                    self.err(&format!("{ptr}/port"), false, "L7 rules can not be used when a port is 0");
                }
                ports.push(pp);
            }
        }

        let mut icmps = Vec::new();
        for (i, rule) in icmps_v.iter().enumerate() {
            let fields = rule.get("fields").and_then(Value::as_array).cloned().unwrap_or_default();
            if fields.len() > 40 {
                self.err(&format!("{ptr}/icmps/{i}/fields"), true, "too many types, the max is 40");
            }
            for f in &fields {
                let family = match f.get("family").and_then(Value::as_str) {
                    Some("IPv6") => IpFamily::V6,
                    _ => IpFamily::V4,
                };
                let t = f.get("type").and_then(Value::as_u64).unwrap_or(0).min(255) as u8;
                icmps.push(Icmp { family, icmp_type: t });
            }
        }

        let mut peers = Vec::new();
        let mut requires = Vec::new();
        let (eps, reqs, cidr, cidr_set, ents) = match dir {
            Dir::Ingress => ("fromEndpoints", "fromRequires", "fromCIDR", "fromCIDRSet", "fromEntities"),
            Dir::Egress => ("toEndpoints", "toRequires", "toCIDR", "toCIDRSet", "toEntities"),
        };
        for (i, s) in obj.get(eps).and_then(Value::as_array).into_iter().flatten().enumerate() {
            peers.extend(self.peer_selector(s, &format!("{ptr}/{eps}/{i}"), matches_init, true).map(Peer::Endpoints));
        }
        for (i, s) in obj.get(reqs).and_then(Value::as_array).into_iter().flatten().enumerate() {
            requires.extend(self.peer_selector(s, &format!("{ptr}/{reqs}/{i}"), matches_init, false));
        }
        for (i, c) in obj.get(cidr).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let text = c.as_str().unwrap_or_default();
            match parse_cidr_or_ip(text) {
                Some(net) => peers.push(Peer::Cidr { cidr: net, except: vec![] }),
                None => self.err(&format!("{ptr}/{cidr}/{i}"), false, bad_cidr("CIDR", text)),
            }
        }
        for (i, c) in obj.get(cidr_set).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let cptr = format!("{ptr}/{cidr_set}/{i}");
            let Some(text) = c.get("cidr").and_then(Value::as_str) else {
                peers.push(Peer::Other { field: format!("{cidr_set}.cidrGroupRef"), text: c.to_string() });
                continue;
            };
            let Ok(net) = text.parse::<IpNet>() else {
                self.err(&format!("{cptr}/cidr"), false, bad_cidr("CIDRRule", text));
                continue;
            };
            let mut except = Vec::new();
            for (j, e) in c.get("except").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let et = e.as_str().unwrap_or_default();
                match et.parse::<IpNet>() {
                    Ok(x) if net.contains(&x.addr()) => except.push(x),
                    Ok(_) => self.err(
                        &format!("{cptr}/except/{j}"),
                        false,
                        format!("allow CIDR prefix {text} does not contain exclude CIDR prefix {et}"),
                    ),
                    Err(_) => self.err(&format!("{cptr}/except/{j}"), false, bad_cidr("CIDR", et)),
                }
            }
            peers.push(Peer::Cidr { cidr: net.trunc(), except });
        }
        for (i, e) in obj.get(ents).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let text = e.as_str().unwrap_or_default();
            match Entity::parse(text) {
                Some(ent) => peers.push(Peer::Entity(ent)),
                None => self.err(&format!("{ptr}/{ents}/{i}"), false, format!("unsupported entity: {text}")),
            }
        }
        if dir == Dir::Egress {
            for (i, f) in obj.get("toFQDNs").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if f.get("matchName").is_some_and(|v| v != "") && f.get("matchPattern").is_some_and(|v| v != "") {
                    self.err(
                        &format!("{ptr}/toFQDNs/{i}"),
                        true,
                        "only one of matchName or matchPattern is allowed in an FQDN selector",
                    );
                }
            }
            for field in ["toServices", "toFQDNs", "toGroups"] {
                for item in obj.get(field).and_then(Value::as_array).into_iter().flatten() {
                    peers.push(Peer::Other { field: field.to_string(), text: item.to_string() });
                }
            }
        }
        if self.diags.len() > before {
            return None;
        }
        let peers = if !present.is_empty() {
            Peers::List(peers)
        } else if !to_ports.is_empty() || !icmps.is_empty() {
            Peers::Any
        } else {
            Peers::Nothing
        };
        let line = self.doc.locate(&format!("{}{ptr}", self.root), false).line;
        Some(PeerRule { peers, requires, ports, icmps, l7, line })
    }

    /// `ports[]` as the agent's `PortProtocol.sanitize`: an IANA service name, or a number read
    /// like Go's `strconv.ParseUint(port, 0, 16)`.
    fn port_protocol(&mut self, p: &Value, ptr: &str) -> Option<PortProtocol> {
        let text = p.get("port").and_then(Value::as_str).unwrap_or_default();
        let port = if text.is_empty() {
            self.err(ptr, true, "port must be specified");
            return None;
        } else if is_svc_name(text) {
            Port::Name(text.to_lowercase())
        } else {
            match parse_go_uint16(text) {
                Ok(n) => Port::Number(n),
                Err(why) => {
                    let why = match text.parse::<u64>() {
                        Ok(n) if n > 65535 => format!("port {n} exceeds 65535"),
                        _ => why.to_string(),
                    };
                    self.err(&format!("{ptr}/port"), false, format!("unable to parse port {text:?}: {why}"));
                    return None;
                }
            }
        };
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("ANY");
        let protocol = match proto.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            "ANY" | "" => Protocol::Any,
            _ => {
                self.err(
                    &format!("{ptr}/protocol"),
                    false,
                    format!("invalid protocol {proto:?}, must be {{ tcp | udp | sctp | any }}"),
                );
                return None;
            }
        };
        // `endPort` (a range, from v1.15's CRD on): at least `port`, at most 65535.
        if let Some(end) = p.get("endPort").filter(|v| !v.is_null()) {
            let end_ptr = format!("{ptr}/endPort");
            match (end.as_i64(), &port) {
                (Some(e), _) if !(0..=65535).contains(&e) => {
                    self.err(&end_ptr, false, format!("endPort {e} is out of range 0-65535"))
                }
                (Some(e), Port::Number(n)) if e < i64::from(*n) => self.err(
                    &end_ptr,
                    false,
                    format!("endPort {e} is below port {n}: a range goes from port up to endPort"),
                ),
                (Some(_), _) => {}
                (None, _) => self.err(&end_ptr, false, format!("endPort must be a number, not {end}")),
            }
        }
        Some(PortProtocol { port, protocol })
    }
}

impl Selector {
    /// Whether some requirement is about `key` (canonical `source:key`).
    pub fn has_key(&self, key: &str) -> bool {
        self.match_labels.contains_key(key) || self.match_expressions.iter().any(|r| r.key == key)
    }

    fn has_source(&self, source: &str) -> bool {
        let prefix = format!("{source}:");
        self.match_labels.keys().chain(self.match_expressions.iter().map(|r| &r.key)).any(|k| k.starts_with(&prefix))
    }
}

/// `source:key` for a selector key: Cilium splits at the first `:`, reads a leading `$` as
/// `reserved:`, and gives a bare key the `any` source.
pub fn canonical_key(k: &str) -> String {
    if let Some(rest) = k.strip_prefix('$') {
        return format!("reserved:{rest}");
    }
    match k.split_once(':') {
        Some((src, key)) if !src.is_empty() => format!("{src}:{key}"),
        Some((_, key)) => format!("{SOURCE_ANY}:{key}"),
        None => format!("{SOURCE_ANY}:{k}"),
    }
}

/// The key Kubernetes validation sees after Cilium's rewrite (`source:key` → `source.key`).
fn extended_key(canonical: &str) -> String {
    canonical.replacen(':', ".", 1)
}

fn is_name_segment(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Kubernetes qualified name: `[dns-subdomain/]name`, name at most 63 characters.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_segment(name, 63),
        None => is_name_segment(s, 63),
    }
}

/// Kubernetes label value: empty, or a name segment of at most 63 characters.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_segment(s, 63)
}

/// RFC 1123 DNS label.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// RFC 1123 DNS subdomain.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && is_dns_label(&l.to_ascii_lowercase()) && l == l.to_ascii_lowercase()
        })
}

/// IANA service name (RFC 6335 5.1): at most 15 characters, letters, digits and single inner
/// dashes, at least one letter.
fn is_svc_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b.iter().any(u8::is_ascii_alphabetic)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

fn parse_go_uint16(s: &str) -> Result<u16, &'static str> {
    let (radix, digits) = if let Some(d) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (16, d)
    } else if let Some(d) = s.strip_prefix("0o").or(s.strip_prefix("0O")) {
        (8, d)
    } else if let Some(d) = s.strip_prefix("0b").or(s.strip_prefix("0B")) {
        (2, d)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("invalid syntax");
    }
    u64::from_str_radix(digits, radix).ok().and_then(|v| u16::try_from(v).ok()).ok_or("value out of range 0-65535")
}

/// `unable to parse CIDR "10.0.0.0/33": prefix length 33 exceeds 32` (upstream's words, then why).
fn bad_cidr(what: &str, text: &str) -> String {
    match super::schema::cidr_problem(text) {
        Some(why) => format!("unable to parse {what} {text:?}: {why}"),
        None => format!("unable to parse {what} {text:?}"),
    }
}

/// `fromCIDR` entries: a prefix, or a bare address meaning a host prefix.
fn parse_cidr_or_ip(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc()).or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_names() {
        assert_eq!(parse_go_uint16("80"), Ok(80));
        assert_eq!(parse_go_uint16("65535"), Ok(65535));
        assert!(parse_go_uint16("70000").is_err());
        assert_eq!(parse_go_uint16("010"), Ok(8));
        assert!(is_svc_name("http-alt"));
        assert!(!is_svc_name("8080"));
        assert!(!is_svc_name("a--b"));
        assert_eq!(canonical_key("app"), "any:app");
        assert_eq!(canonical_key("k8s:io.kubernetes.pod.namespace"), "k8s:io.kubernetes.pod.namespace");
        assert_eq!(canonical_key("$host"), "reserved:host");
        assert!(is_qualified_name("any.app.kubernetes.io/name"));
        assert!(!is_qualified_name("any.bad!"));
        assert!(is_dns_subdomain("l4-rule.x"));
        assert!(!is_dns_subdomain("L4"));
    }
}
