//! Which endpoints a policy selects, and the policy-map entries it implies for one of them.
//!
//! Labels use Cilium's `source:key` form. A pod's identity labels are its Kubernetes labels
//! (source `k8s`) plus `k8s:io.kubernetes.pod.namespace`, `k8s:io.cilium.k8s.policy.cluster`
//! (`default`) and `k8s:io.cilium.k8s.policy.serviceaccount` (`default` unless given); namespace
//! labels are not modelled. The host endpoint has `reserved:host` plus the node's labels (source
//! `k8s`). As in the agent, node selectors select only the host endpoint and endpoint selectors only
//! pods, and the host endpoint is only policed with the host firewall on.
//!
//! Policy-map entries are a simplified, documented stand-in for the agent's per-endpoint policy
//! map: peers are numeric identities — reserved ones for entities (host 1, world 2, unmanaged 3,
//! health 4, init 5, remote-node 6, kube-apiserver 7, ingress 8; 0 means any peer) and, for a
//! peer selector, a stable hash of it in 256..=65535 (not the agent's allocation) — or CIDR
//! prefixes (`except` already subtracted). Protocol `ANY` becomes TCP and UDP (SCTP is off by
//! default in v1.14); ICMP types go in the port field with protocol 1 or 58, as the agent does.
//! `toServices`, `toFQDNs`, `toGroups`, `cidrGroupRef` need run-time resolution and give no entry.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use super::model::{Entity, IpFamily, Operator, Peer, PeerRule, Peers, Port, Protocol, Rule, Selector};
use super::Policy;

/// Cilium's label of the cluster a pod belongs to.
const CLUSTER_LABEL: &str = "k8s:io.cilium.k8s.policy.cluster";
const SERVICE_ACCOUNT_LABEL: &str = "k8s:io.cilium.k8s.policy.serviceaccount";

/// An endpoint on the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointRef {
    Host,
    Pod { namespace: String, name: String },
}

impl fmt::Display for EndpointRef {
    /// `host`, or `namespace/name` (the scenario's `pod:` references without the prefix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointRef::Host => f.write_str("host"),
            EndpointRef::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
        }
    }
}

/// An endpoint with its identity labels (`source:key` → value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: EndpointRef,
    pub labels: BTreeMap<String, String>,
}

impl Endpoint {
    pub fn pod(namespace: &str, name: &str, labels: &BTreeMap<String, String>) -> Endpoint {
        let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (label_key(k), v.clone())).collect();
        l.insert(format!("k8s:{}", super::model::POD_NAMESPACE_LABEL), namespace.to_string());
        l.entry(CLUSTER_LABEL.to_string()).or_insert_with(|| "default".into());
        l.entry(SERVICE_ACCOUNT_LABEL.to_string()).or_insert_with(|| "default".into());
        Endpoint { id: EndpointRef::Pod { namespace: namespace.into(), name: name.into() }, labels: l }
    }

    pub fn host(node_labels: &BTreeMap<String, String>) -> Endpoint {
        let mut l: BTreeMap<String, String> = node_labels.iter().map(|(k, v)| (label_key(k), v.clone())).collect();
        l.insert("reserved:host".into(), String::new());
        Endpoint { id: EndpointRef::Host, labels: l }
    }
}

/// An endpoint label key in `source:key` form: Kubernetes keys cannot hold `:`, so a key without
/// one is a `k8s` label.
fn label_key(k: &str) -> String {
    if k.contains(':') {
        k.to_string()
    } else {
        format!("k8s:{k}")
    }
}

impl Selector {
    /// Whether labels (`source:key` or plain Kubernetes keys, see [`Endpoint`]) satisfy every
    /// requirement. A selector key of source `any` matches a label of that key from any source.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let values = |key: &str| -> Vec<&str> {
            let (src, k) = key.split_once(':').unwrap_or(("any", key));
            labels
                .iter()
                .filter(|(lk, _)| {
                    let (ls, lk) = lk.split_once(':').unwrap_or(("k8s", lk.as_str()));
                    lk == k && (src == "any" || src == ls)
                })
                .map(|(_, v)| v.as_str())
                .collect()
        };
        self.match_labels.iter().all(|(k, v)| values(k).contains(&v.as_str()))
            && self.match_expressions.iter().all(|r| {
                let found = values(&r.key);
                match r.operator {
                    Operator::In => found.iter().any(|v| r.values.iter().any(|x| x == v)),
                    Operator::NotIn => !found.iter().any(|v| r.values.iter().any(|x| x == v)),
                    Operator::Exists => !found.is_empty(),
                    Operator::DoesNotExist => found.is_empty(),
                }
            })
    }

    /// A canonical text of the selector, the input of [`selector_identity`].
    pub fn canonical(&self) -> String {
        let mut s: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut exprs: Vec<String> = self
            .match_expressions
            .iter()
            .map(|r| {
                let mut vals = r.values.clone();
                vals.sort();
                format!("{} {:?} ({})", r.key, r.operator, vals.join(","))
            })
            .collect();
        exprs.sort();
        s.extend(exprs);
        s.join(";")
    }
}

impl Rule {
    /// Whether this rule applies to `endpoint`.
    pub fn selects(&self, endpoint: &Endpoint) -> bool {
        match endpoint.id {
            EndpointRef::Host => self.node_selector.as_ref().is_some_and(|s| s.matches(&endpoint.labels)),
            EndpointRef::Pod { .. } => self.endpoint_selector.as_ref().is_some_and(|s| s.matches(&endpoint.labels)),
        }
    }
}

/// The endpoints `policy` applies to, sorted (host first). The host counts only with
/// `host_firewall` (`enable-host-firewall`).
pub fn select_endpoints(
    policy: &Policy,
    pods: &[(String, String, BTreeMap<String, String>)],
    node_labels: &BTreeMap<String, String>,
    host_firewall: bool,
) -> Vec<EndpointRef> {
    let mut out = Vec::new();
    if host_firewall {
        let host = Endpoint::host(node_labels);
        if policy.rules.iter().any(|r| r.selects(&host)) {
            out.push(EndpointRef::Host);
        }
    }
    for (ns, name, labels) in pods {
        let ep = Endpoint::pod(ns, name, labels);
        if policy.rules.iter().any(|r| r.selects(&ep)) {
            out.push(ep.id);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A peer in a policy-map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerId {
    /// A numeric identity; 0 is any peer.
    Identity(u32),
    Cidr(IpNet),
}

/// One entry of an endpoint's policy map. `port` 0 with `protocol` 0 is any traffic; a named
/// port has `port` 0 and `port_name` set (resolved against the pod's container ports later).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    pub direction: Direction,
    pub peer: PeerId,
    pub port: u16,
    pub port_name: Option<String>,
    /// IP protocol number: 6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, 0 any.
    pub protocol: u8,
    pub deny: bool,
}

/// Reserved identity of an entity, as in v1.14 (`pkg/identity/numericidentity.go`).
pub fn reserved_identity(name: &str) -> Option<u32> {
    Some(match name {
        "host" => 1,
        "world" => 2,
        "unmanaged" => 3,
        "health" => 4,
        "init" => 5,
        "remote-node" => 6,
        "kube-apiserver" => 7,
        "ingress" => 8,
        _ => return None,
    })
}

/// A stable stand-in identity for a peer selector: FNV-1a of its canonical text, in 256..=65535
/// (the local cluster's allocation range). A selector that is exactly one `reserved:` label gets
/// that reserved identity.
pub fn selector_identity(sel: &Selector) -> u32 {
    if sel.match_expressions.is_empty() && sel.match_labels.len() == 1 {
        let (k, _) = sel.match_labels.iter().next().expect("one label");
        if let Some(id) = k.strip_prefix("reserved:").and_then(reserved_identity) {
            return id;
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sel.canonical().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    256 + (h % (65536 - 256)) as u32
}

fn entity_peers(e: Entity) -> Vec<PeerId> {
    let reserved = |n: &str| PeerId::Identity(reserved_identity(n).expect("known reserved name"));
    match e {
        Entity::All => vec![PeerId::Identity(0)],
        Entity::None => vec![],
        Entity::Cluster => {
            let mut v: Vec<PeerId> =
                ["host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"]
                    .iter()
                    .map(|n| reserved(n))
                    .collect();
            let mut pods = Selector::default();
            pods.match_labels.insert(CLUSTER_LABEL.into(), "default".into());
            v.push(PeerId::Identity(selector_identity(&pods)));
            v
        }
        Entity::World => vec![reserved("world")],
        Entity::Host => vec![reserved("host")],
        Entity::Init => vec![reserved("init")],
        Entity::Ingress => vec![reserved("ingress")],
        Entity::Unmanaged => vec![reserved("unmanaged")],
        Entity::RemoteNode => vec![reserved("remote-node")],
        Entity::Health => vec![reserved("health")],
        Entity::KubeApiserver => vec![reserved("kube-apiserver")],
    }
}

/// `net` minus every prefix of `except`, as a list of prefixes.
fn subtract(net: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    if except.iter().any(|x| x.contains(&net)) {
        return vec![];
    }
    if !except.iter().any(|x| net.contains(x)) || net.prefix_len() == net.max_prefix_len() {
        return vec![net];
    }
    match net.subnets(net.prefix_len() + 1) {
        Ok(halves) => halves.flat_map(|h| subtract(h, except)).collect(),
        Err(_) => vec![net],
    }
}

fn peer_ids(rule: &PeerRule) -> Vec<PeerId> {
    match &rule.peers {
        Peers::Any => vec![PeerId::Identity(0)],
        Peers::Nothing => vec![],
        Peers::List(list) => list
            .iter()
            .flat_map(|p| match p {
                Peer::Endpoints(sel) => vec![PeerId::Identity(selector_identity(sel))],
                Peer::Entity(e) => entity_peers(*e),
                Peer::Cidr { cidr, except } => subtract(*cidr, except).into_iter().map(PeerId::Cidr).collect(),
                Peer::Other { .. } => vec![],
            })
            .collect(),
    }
}

/// (port, name, protocol) triples of a peer rule.
fn port_keys(rule: &PeerRule) -> Vec<(u16, Option<String>, u8)> {
    if rule.ports.is_empty() && rule.icmps.is_empty() {
        return vec![(0, None, 0)];
    }
    let mut out = Vec::new();
    for pp in &rule.ports {
        let protos: &[u8] = match pp.protocol {
            Protocol::Tcp => &[6],
            Protocol::Udp => &[17],
            Protocol::Sctp => &[132],
            Protocol::Any => &[6, 17],
        };
        for &proto in protos {
            match &pp.port {
                Port::Number(n) => out.push((*n, None, proto)),
                Port::Name(s) => out.push((0, Some(s.clone()), proto)),
            }
        }
    }
    for icmp in &rule.icmps {
        let proto = match icmp.family {
            IpFamily::V4 => 1,
            IpFamily::V6 => 58,
        };
        out.push((u16::from(icmp.icmp_type), None, proto));
    }
    out
}

/// The policy-map entries `policy` gives `endpoint` (empty if no rule selects it), sorted and
/// without duplicates.
pub fn policy_entries(policy: &Policy, endpoint: &Endpoint) -> Vec<PolicyEntry> {
    let mut out = Vec::new();
    for rule in policy.rules.iter().filter(|r| r.selects(endpoint)) {
        let sections = [
            (Direction::Ingress, false, &rule.ingress),
            (Direction::Egress, false, &rule.egress),
            (Direction::Ingress, true, &rule.ingress_deny),
            (Direction::Egress, true, &rule.egress_deny),
        ];
        for (direction, deny, list) in sections {
            for pr in list {
                let ports = port_keys(pr);
                for peer in peer_ids(pr) {
                    for (port, port_name, protocol) in &ports {
                        out.push(PolicyEntry {
                            direction,
                            peer,
                            port: *port,
                            port_name: port_name.clone(),
                            protocol: *protocol,
                            deny,
                        });
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_subtraction() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        let x: IpNet = "10.0.0.0/9".parse().unwrap();
        assert_eq!(subtract(n, &[x]), vec!["10.128.0.0/9".parse::<IpNet>().unwrap()]);
        let y: IpNet = "10.96.0.0/12".parse().unwrap();
        let parts = subtract(n, &[y]);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| !y.contains(p) && !p.contains(&y)));
        assert_eq!(subtract(n, &[n]), vec![]);
    }

    #[test]
    fn selector_sources_and_operators() {
        use super::super::model::Requirement;
        let labels: BTreeMap<String, String> = [("k8s:app", "web"), ("reserved:host", ""), ("tier", "front")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sel = |ml: &[(&str, &str)], ex: &[(&str, Operator, &[&str])]| Selector {
            match_labels: ml.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            match_expressions: ex
                .iter()
                .map(|(k, op, vs)| Requirement {
                    key: k.to_string(),
                    operator: *op,
                    values: vs.iter().map(|v| v.to_string()).collect(),
                })
                .collect(),
        };
        assert!(Selector::default().matches(&labels));
        assert!(sel(&[("any:app", "web")], &[]).matches(&labels));
        assert!(sel(&[("k8s:app", "web")], &[]).matches(&labels));
        assert!(!sel(&[("container:app", "web")], &[]).matches(&labels));
        assert!(sel(&[("k8s:tier", "front")], &[]).matches(&labels), "a plain key is a k8s label");
        assert!(sel(&[("reserved:host", "")], &[]).matches(&labels));
        assert!(sel(&[], &[("any:app", Operator::In, &["db", "web"])]).matches(&labels));
        assert!(!sel(&[], &[("any:app", Operator::NotIn, &["web"])]).matches(&labels));
        assert!(sel(&[], &[("any:missing", Operator::NotIn, &["web"])]).matches(&labels));
        assert!(sel(&[], &[("any:app", Operator::Exists, &[])]).matches(&labels));
        assert!(sel(&[], &[("any:missing", Operator::DoesNotExist, &[])]).matches(&labels));
        assert!(!sel(&[], &[("any:app", Operator::DoesNotExist, &[])]).matches(&labels));
    }

    #[test]
    fn identities() {
        let mut s = Selector::default();
        s.match_labels.insert("reserved:host".into(), String::new());
        assert_eq!(selector_identity(&s), 1);
        s.match_labels.clear();
        s.match_labels.insert("any:app".into(), "x".into());
        let id = selector_identity(&s);
        assert!((256..=65535).contains(&id));
        assert_eq!(id, selector_identity(&s.clone()));
    }
}
