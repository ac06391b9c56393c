//! Scenario files (format version 1, `docs/scenario-format.md`): parse and validate.
//!
//! The raw serde structs mirror the file one to one (`deny_unknown_fields` everywhere) so that
//! serde_yaml reports unknown keys and wrong types with the line and column of the offending key.
//! Validation that needs the whole document (references between links, cycles, kind-specific
//! keys) runs afterwards and looks lines up in a positioned tree read by saphyr-parser
//! (`scenario/locate.rs`); the rules are in `scenario/validate.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod locate;
mod validate;

pub use validate::{
    agent_devices, check_ifname, load_config_map, parse_config_map_text, sort_errors, suggest, ACTION_KEYS,
    KNOWN_FEATURES,
};

/// A parsed, validated scenario.
///
/// `agent` and `agent_file` may be given together: the ConfigMap's modelled keys are read first
/// and `agent:` keys override them, so a scenario can reuse a real ConfigMap and change one key.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file it was read from (as given, not canonicalised).
    pub path: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// Upstream behaviour profile, e.g. `v1.14.4`.
    pub profile: String,
    pub requires: Requires,
    pub node: NodeSpec,
    pub topology: TopologySpec,
    /// Agent configuration, keys and string values as in the `cilium-config` ConfigMap.
    pub agent: BTreeMap<String, String>,
    /// ConfigMap keys from `agent_file` that the profile does not model (listed, not rejected).
    pub agent_ignored: Vec<String>,
    /// The `agent_file` ConfigMap manifest, resolved against the scenario's folder.
    pub agent_file: Option<PathBuf>,
    pub pods: Vec<PodSpec>,
    pub steps: Vec<Step>,
    /// `path:line:col: warning: ...`: what is valid but likely not meant (a value the agent
    /// refuses at start-up, with no step expecting an error). `hostdp check` prints them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requires {
    /// Kernel features beyond what the links imply (`tcx`, `bonding`, ...).
    pub features: Vec<String>,
    pub kernel_min: Option<String>,
    pub kernel_max: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Kubernetes node InternalIP (used by device detection).
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    #[serde(default)]
    pub links: Vec<LinkSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// Link kinds of the format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Veth,
    Bond,
    Vlan,
    Bridge,
    Dummy,
    Ifb,
    Wireguard,
    Macvlan,
    Vxlan,
    Vrf,
}

impl LinkKind {
    /// The rtnetlink `IFLA_INFO_KIND` string, also what the capability probe reports.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Veth => "veth",
            LinkKind::Bond => "bond",
            LinkKind::Vlan => "vlan",
            LinkKind::Bridge => "bridge",
            LinkKind::Dummy => "dummy",
            LinkKind::Ifb => "ifb",
            LinkKind::Wireguard => "wireguard",
            LinkKind::Macvlan => "macvlan",
            LinkKind::Vxlan => "vxlan",
            LinkKind::Vrf => "vrf",
        }
    }
}

/// Where a veth's peer lives.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PeerIn {
    /// The scenario's wire namespace: the outside world (default).
    #[default]
    Wire,
    /// The node namespace itself.
    Node,
}

/// One link of the node namespace. Flat on purpose: kind-specific keys are checked by
/// validation against `kind`, which gives better messages than a tagged enum would.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub name: String,
    pub kind: LinkKind,
    #[serde(default = "default_true")]
    pub up: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub master: Option<String>,
    // veth
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub peer_in: Option<PeerIn>,
    // bond (mode), macvlan (mode)
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub miimon: Option<u32>,
    // vlan, macvlan, vxlan
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub protocol: Option<String>,
    // vxlan
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub port: Option<u16>,
    // vrf
    #[serde(default)]
    pub table: Option<u32>,
}

fn default_true() -> bool {
    true
}

impl Scenario {
    /// The scenario as written, with another starting profile (`run --profile`, `diff`).
    pub fn with_profile(&self, p: crate::profile::Profile) -> Scenario {
        let mut c = self.clone();
        c.profile = p.as_str().to_string();
        c
    }
}

impl LinkSpec {
    /// The veth peer's name: `peer`, or `<name>-p` truncated to 15 bytes.
    pub fn peer_name(&self) -> String {
        if let Some(p) = &self.peer {
            return p.clone();
        }
        let mut base = self.name.clone();
        while base.len() + 2 > 15 {
            base.pop();
        }
        format!("{base}-p")
    }
}

/// A route of the node namespace.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// `default` or a CIDR.
    pub dst: String,
    #[serde(default)]
    pub via: Option<String>,
    pub dev: String,
    /// `main`, `local` or a number; default main.
    #[serde(default)]
    pub table: Option<RouteTable>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RouteTable {
    Number(u32),
    Name(String),
}

impl RouteTable {
    /// The numeric table id (`main` = 254, `local` = 255), or None for an unknown name.
    pub fn id(&self) -> Option<u32> {
        match self {
            RouteTable::Number(n) => Some(*n),
            RouteTable::Name(s) if s == "main" => Some(254),
            RouteTable::Name(s) if s == "local" => Some(255),
            RouteTable::Name(s) if s == "default" => Some(253),
            RouteTable::Name(s) => s.parse().ok(),
        }
    }
}

/// An endpoint: a pod namespace joined to the node by a veth pair named like Cilium's.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

impl PodSpec {
    /// `NAMESPACE/NAME`, as used in `regenerated` and `pod:` device aliases.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One step: exactly one action, and what must hold afterwards.
#[derive(Debug, Clone)]
pub struct Step {
    pub action: Action,
    pub expect: Expect,
    /// 1-based line of the step in the file, for failure messages.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Start,
    /// Keys to change; `None` removes the key. `profile` optionally switches the profile.
    Restart {
        agent: BTreeMap<String, Option<String>>,
        profile: Option<String>,
    },
    /// A policy fixture; the path is resolved against the scenario file's folder.
    Apply(PathBuf),
    Delete(PathBuf),
    AddPod(PodSpec),
    /// The pod as `NAMESPACE/NAME` (a bare `NAME` in the file means namespace `default`).
    DeletePod(String),
    LinkAdd(LinkSpec),
    LinkDelete(String),
    LinkSet {
        name: String,
        up: bool,
    },
    Foreign {
        device: String,
        direction: ForeignDirection,
        program: String,
        /// `foreign_xdp`'s attach mode (extension): generic when not given.
        mode: Option<ForeignXdpMode>,
    },
    /// `route: {add: ROUTE}` (extension): a route appears while the agent runs.
    RouteAdd(RouteSpec),
    /// `route: {delete: ROUTE}` (extension): a route goes away while the agent runs.
    RouteDelete(RouteSpec),
    Stop,
    Cleanup,
    /// `traffic: {from, link, vlan, to, proto, port, count}`: packets sent through the node.
    Traffic(TrafficSpec),
}

/// Where a `traffic` step's packets start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TrafficFrom {
    /// The wire namespace, through the peer of `link` (its VLAN sub-interface with `vlan`).
    Outside,
    /// The node namespace, to an address the harness puts on the wire side of `link`.
    Node,
    /// A pod's namespace (`NAMESPACE/NAME`), through its lxc device and the node's routing.
    Pod(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficProto {
    Udp,
    Tcp,
    Icmp,
}

impl TrafficProto {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficProto::Udp => "udp",
            TrafficProto::Tcp => "tcp",
            TrafficProto::Icmp => "icmp",
        }
    }
}

/// A `traffic` step, validated: `count` packets of `proto` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficSpec {
    pub from: TrafficFrom,
    /// The node link the packets enter (`outside`) or leave by (`node`, pods).
    pub link: String,
    /// The 802.1Q tag on the wire side.
    pub vlan: Option<u16>,
    pub to: std::net::IpAddr,
    pub proto: TrafficProto,
    /// UDP/TCP destination port (default 8080); unused for ICMP.
    pub port: u16,
    pub count: u32,
}

impl Action {
    /// The action key as written in the file (`start`, `add-pod`, ...), for reports.
    pub fn key(&self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Restart { .. } => "restart",
            Action::Apply(_) => "apply",
            Action::Delete(_) => "delete",
            Action::AddPod(_) => "add-pod",
            Action::DeletePod(_) => "delete-pod",
            Action::LinkAdd(_) | Action::LinkDelete(_) | Action::LinkSet { .. } => "link",
            Action::Foreign { .. } => "foreign",
            Action::RouteAdd(_) | Action::RouteDelete(_) => "route",
            Action::Stop => "stop",
            Action::Cleanup => "cleanup",
            Action::Traffic(_) => "traffic",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ForeignDirection {
    Ingress,
    Egress,
    Xdp,
}

/// The netlink XDP mode of a `foreign_xdp` program (extension; generic by default).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ForeignXdpMode {
    Native,
    Generic,
}

/// What must hold after a step. Every key is optional; each one given is checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    #[serde(default)]
    pub attachments: Option<BTreeMap<String, DeviceExpect>>,
    #[serde(default)]
    pub unchanged: Option<bool>,
    #[serde(default)]
    pub regenerated: Option<Vec<String>>,
    #[serde(default)]
    pub error: Option<String>,
    /// After a `traffic` step: what arrived and which programs saw or dropped the packets.
    #[serde(default)]
    pub traffic: Option<TrafficExpect>,
}

/// `expect.traffic`: each key given is checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrafficExpect {
    /// Packets of the step that arrived at the destination.
    #[serde(default)]
    pub delivered: Option<u64>,
    /// Per link (or `pod:NAMESPACE/NAME`) and hook: how many of the step's packets each program
    /// saw. A hook given lists every program that saw any (`{}`: none did).
    #[serde(default)]
    pub programs: Option<BTreeMap<String, TrafficHooks>>,
    /// The same for the packets each program dropped.
    #[serde(default)]
    pub drops: Option<BTreeMap<String, TrafficHooks>>,
}

/// Per hook of one link: program name → packet count. A hook left out is not checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrafficHooks {
    #[serde(default)]
    pub ingress: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub egress: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub xdp: Option<BTreeMap<String, u64>>,
}

/// Expected attachments of one device: `none`, or per hook.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum DeviceExpect {
    /// Nothing on any hook.
    Nothing,
    Hooks(HookExpect),
}

/// Hooks of one device. A hook left out is not checked; `[]` means nothing there.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HookExpect {
    #[serde(default)]
    pub ingress: Option<Vec<ProgramExpect>>,
    #[serde(default)]
    pub egress: Option<Vec<ProgramExpect>>,
    /// An XDP program name or long form; `none` (or null) means no XDP program.
    #[serde(default)]
    pub xdp: Option<XdpExpect>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum XdpExpect {
    Nothing,
    Program(ProgramExpect),
}

/// A program entry: a bare name, or the long form where every key given is compared.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProgramExpect {
    pub program: String,
    #[serde(default)]
    pub mechanism: Option<String>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub priority: Option<u16>,
    #[serde(default)]
    pub handle: Option<u32>,
    /// XDP mode: `native` or `generic`.
    #[serde(default)]
    pub mode: Option<String>,
}

impl<'de> Deserialize<'de> for DeviceExpect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DeviceExpect;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`none` or a map with `ingress`, `egress`, `xdp`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DeviceExpect, E> {
                if v == "none" {
                    Ok(DeviceExpect::Nothing)
                } else {
                    Err(E::custom(format!("expected `none` or a map of hooks, found \"{v}\"")))
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<DeviceExpect, E> {
                Ok(DeviceExpect::Nothing)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DeviceExpect, A::Error> {
                HookExpect::deserialize(de::value::MapAccessDeserializer::new(map)).map(DeviceExpect::Hooks)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for XdpExpect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ProgramOrNone::deserialize(d).map(|p| match p {
            None => XdpExpect::Nothing,
            Some(p) => XdpExpect::Program(p),
        })
    }
}

/// Helper: a program entry, `none` or null.
struct ProgramOrNone;
impl ProgramOrNone {
    fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ProgramExpect>, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<ProgramExpect>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a program name or `{program: NAME, ...}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "none" {
                    Ok(None)
                } else {
                    Ok(Some(ProgramExpect { program: v.to_string(), ..Default::default() }))
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Long {
                    program: String,
                    #[serde(default)]
                    mechanism: Option<String>,
                    #[serde(default)]
                    filter: Option<String>,
                    #[serde(default)]
                    priority: Option<u16>,
                    #[serde(default)]
                    handle: Option<u32>,
                    #[serde(default)]
                    mode: Option<String>,
                }
                let l = Long::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Some(ProgramExpect {
                    program: l.program,
                    mechanism: l.mechanism,
                    filter: l.filter,
                    priority: l.priority,
                    handle: l.handle,
                    mode: l.mode,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ProgramExpect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ProgramOrNone::deserialize(d)?
            .ok_or_else(|| serde::de::Error::custom("`none` is not a program; use `[]` for an empty hook"))
    }
}

/// Errors of this module. Every message starts with `path:line:col:` where a position is known.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: cannot read scenario file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A problem at a position in a file.
    #[error("{path}:{line}:{col}: {message}")]
    At { path: PathBuf, line: usize, col: usize, message: String },
    /// A problem with no better position than the file.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

impl ScenarioError {
    pub fn path(&self) -> &Path {
        match self {
            ScenarioError::Read { path, .. } | ScenarioError::At { path, .. } | ScenarioError::File { path, .. } => {
                path
            }
        }
    }
}

/// Parses and validates a scenario file; the first of its problems when it is invalid.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    load_all(path).map_err(first)
}

/// [`load`] with every problem of the file, sorted by position.
pub fn load_all(path: &Path) -> Result<Scenario, Vec<ScenarioError>> {
    let text = std::fs::read(path).map_err(|source| vec![ScenarioError::Read { path: path.to_path_buf(), source }])?;
    parse_all(path, &text)
}

/// Parses and validates scenario text read from `path` (the path is used for messages and to
/// resolve relative fixture paths). The first problem (in file order) is returned, placed at
/// the line and column of the key or value it is about; this never panics on any input.
pub fn parse(path: &Path, text: &[u8]) -> Result<Scenario, ScenarioError> {
    parse_all(path, text).map_err(first)
}

/// [`parse`] with every problem of the text, sorted by position.
pub fn parse_all(path: &Path, text: &[u8]) -> Result<Scenario, Vec<ScenarioError>> {
    validate::parse(path, text)
}

fn first(errors: Vec<ScenarioError>) -> ScenarioError {
    errors.into_iter().next().expect("an invalid scenario has at least one error")
}

/// Validates scenario files; folders stand for their `*.yaml`/`*.yml` files (not recursive),
/// sorted. Returns how many files are valid and every error of the invalid ones. Scenario names
/// must also be unique among the files checked together.
pub fn check(paths: &[PathBuf]) -> (usize, Vec<ScenarioError>) {
    let c = check_all(paths);
    (c.ok, c.errors)
}

/// What [`check_all`] found.
#[derive(Debug, Default)]
pub struct Checked {
    /// How many files are valid.
    pub ok: usize,
    /// How many files are invalid.
    pub invalid: usize,
    /// Every error of every invalid file, by file and position.
    pub errors: Vec<ScenarioError>,
    /// The valid files' warnings (`path:line:col: warning: ...`).
    pub warnings: Vec<String>,
    /// The valid files, parsed, in the order checked: a run uses these instead of reading and
    /// parsing each file again (in a TCG guest every read of the shared folder costs
    /// milliseconds, every parse tens of them).
    pub valid: Vec<Scenario>,
}

/// [`check`] with the warnings of the valid files (backs `hostdp check`).
pub fn check_all(paths: &[PathBuf]) -> Checked {
    let mut c = Checked::default();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    let files = expand(paths, &mut c.errors);
    c.invalid = c.errors.len();
    for file in files {
        match load_all(&file) {
            Ok(s) => match names.get(&s.name) {
                Some(first) => {
                    c.errors.push(validate::name_taken(&s, first));
                    c.invalid += 1;
                }
                None => {
                    c.warnings.extend(s.warnings.iter().cloned());
                    names.insert(s.name.clone(), file);
                    c.valid.push(s);
                    c.ok += 1;
                }
            },
            Err(e) => {
                c.errors.extend(e);
                c.invalid += 1;
            }
        }
    }
    c
}

/// The scenario files `paths` stand for: files as given, folders as their sorted YAML files.
/// Unreadable folders are reported in `errors`.
pub fn expand(paths: &[PathBuf], errors: &mut Vec<ScenarioError>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if !p.is_dir() {
            files.push(p.clone());
            continue;
        }
        let entries = match std::fs::read_dir(p) {
            Ok(e) => e,
            Err(source) => {
                errors.push(ScenarioError::Read { path: p.clone(), source });
                continue;
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file() && matches!(f.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

impl LinkSpec {
    /// A link of `kind` with every optional key left out (up, no addresses).
    pub fn bare(name: &str, kind: LinkKind) -> LinkSpec {
        LinkSpec {
            name: name.into(),
            kind,
            up: true,
            mtu: None,
            mac: None,
            addresses: vec![],
            master: None,
            peer: None,
            peer_in: None,
            mode: None,
            miimon: None,
            parent: None,
            id: None,
            protocol: None,
            vni: None,
            port: None,
            table: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "profile: v1.14.4\n";

    /// `line:col: message` of the error `doc` yields.
    fn bad(doc: &str) -> String {
        match parse(Path::new("s.yaml"), doc.as_bytes()) {
            Ok(_) => panic!("expected an error for:\n{doc}"),
            Err(ScenarioError::At { line, col, message, .. }) => format!("{line}:{col}: {message}"),
            Err(e) => panic!("expected a positioned error, got {e}"),
        }
    }

    /// A document with `links` (flow items, one per line from line 4) and `steps` (default `start`).
    fn doc(links: &[&str], rest: &str) -> String {
        let mut s = format!("{HEAD}topology:\n  links:\n");
        for l in links {
            s += &format!("    - {l}\n");
        }
        s += rest;
        if !rest.contains("steps:") {
            s += "steps:\n  - start: {}\n";
        }
        s
    }

    fn ok(doc: &str) -> Scenario {
        parse(Path::new("dir/s.yaml"), doc.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{doc}"))
    }

    #[test]
    fn contract_example_parses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("scenarios")).unwrap();
        std::fs::create_dir_all(dir.path().join("fixtures/policies")).unwrap();
        // `check` validates the fixtures a scenario names: the real one.
        let l4 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies/l4-rule.yaml");
        std::fs::copy(l4, dir.path().join("fixtures/policies/l4-rule.yaml")).unwrap();
        let text = r#"name: seed-kpr-partial-bond-vlan
description: >
  kube-proxy-replacement partial, NodePort and host firewall off. The node IP lives on
  bond0.212. Applying an L4 CiliumNetworkPolicy must not change what is on the NICs.
profile: v1.14.4
node:
  ip: 10.212.0.10
  labels: {kubernetes.io/hostname: node-a}
topology:
  links:
    - {name: eth0, kind: veth, master: bond0}
    - {name: eth1, kind: veth, master: bond0}
    - {name: bond0, kind: bond, mode: 802.3ad}
    - {name: bond0.212, kind: vlan, parent: bond0, id: 212, addresses: [10.212.0.10/24]}
  routes:
    - {dst: default, via: 10.212.0.1, dev: bond0.212}
agent:
  kube-proxy-replacement: partial
  enable-node-port: "false"
  enable-host-firewall: "false"
pods:
  - {name: network-multitool, labels: {app: network-multitool}}
steps:
  - start: {}
    expect:
      devices: [bond0.212]
      attachments:
        bond0.212: {ingress: [cil_from_netdev], egress: []}
        cilium_host: {ingress: [cil_to_host], egress: [cil_from_host]}
        cilium_net: {ingress: [cil_to_host]}
        pod:default/network-multitool: {ingress: [cil_from_container]}
  - apply: ../fixtures/policies/l4-rule.yaml
    expect:
      regenerated: [default/network-multitool]
      unchanged: true
"#;
        let path = dir.path().join("scenarios/seed.yaml");
        std::fs::write(&path, text).unwrap();
        let s = load(&path).unwrap();
        assert_eq!(s.name, "seed-kpr-partial-bond-vlan");
        assert_eq!(s.profile, "v1.14.4");
        assert!(s.description.unwrap().starts_with("kube-proxy-replacement partial"));
        assert_eq!(s.node.ip.as_deref(), Some("10.212.0.10"));
        assert_eq!(s.topology.links.len(), 4);
        assert_eq!(s.topology.links[3].id, Some(212));
        assert_eq!(s.topology.routes[0].dev, "bond0.212");
        assert_eq!(s.agent.get("enable-node-port").map(String::as_str), Some("false"));
        assert_eq!(s.pods[0].key(), "default/network-multitool");
        assert_eq!(s.steps.len(), 2);
        assert_eq!((s.steps[0].action.clone(), s.steps[0].line), (Action::Start, 24));
        assert_eq!(s.steps[1].line, 32);
        assert_eq!(s.steps[1].action, Action::Apply(dir.path().join("scenarios/../fixtures/policies/l4-rule.yaml")));
        let att = s.steps[0].expect.attachments.as_ref().unwrap();
        match &att["bond0.212"] {
            DeviceExpect::Hooks(h) => {
                assert_eq!(h.ingress.as_ref().unwrap()[0].program, "cil_from_netdev");
                assert_eq!(h.egress.as_deref(), Some(&[][..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.steps[1].expect.unchanged, Some(true));
    }

    #[test]
    fn defaults_and_normalisation() {
        let s = ok(&doc(
            &["{name: eth0, kind: veth}"],
            "agent:\n  enable-node-port: true\n  bpf-filter-priority: 7\nsteps:\n  - start:\n  - stop: {}\n  - cleanup: {}\n",
        ));
        assert_eq!(s.name, "s");
        assert_eq!(s.agent["enable-node-port"], "true");
        assert_eq!(s.agent["bpf-filter-priority"], "7");
        assert_eq!(s.steps.iter().map(|s| s.action.key()).collect::<Vec<_>>(), ["start", "stop", "cleanup"]);
        assert_eq!(s.steps.iter().map(|s| s.line).collect::<Vec<_>>(), [9, 10, 11]);
        assert!(s.topology.links[0].up);
    }

    #[test]
    fn requires_list_and_map() {
        let s = ok(&doc(&["{name: eth0, kind: veth}"], "requires: [tcx, bonding]\n"));
        assert_eq!(s.requires.features, ["tcx", "bonding"]);
        let s = ok(&doc(
            &["{name: eth0, kind: veth}"],
            "requires: {features: [vlan], kernel: {min: \"6.6\", max: \"6.10\"}}\n",
        ));
        assert_eq!(
            s.requires,
            Requires { features: vec!["vlan".into()], kernel_min: Some("6.6".into()), kernel_max: Some("6.10".into()) }
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}"], "requires: [tcx, bondng]\n")),
            "5:17: unknown feature \"bondng\", did you mean \"bonding\"?"
        );
        // An unquoted version is read as written, not as a float: 6.10 stays "6.10".
        let s = ok(&doc(&["{name: eth0, kind: veth}"], "requires: {kernel: {min: 6.10}}\n"));
        assert_eq!(s.requires.kernel_min.as_deref(), Some("6.10"));
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}"], "requires: {kernel: {min: \"6.x\"}}\n")),
            "5:26: kernel version \"6.x\" is not of the form MAJOR.MINOR or MAJOR.MINOR.PATCH (quote it: \"6.10\")"
        );
    }

    #[test]
    fn unknown_keys_with_suggestions() {
        assert_eq!(
            bad(&format!("{HEAD}topolgy: {{}}\nsteps: [start: {{}}]\n")),
            "2:1: unknown key \"topolgy\", did you mean \"topology\"?"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}", "name: eth1\n      kindd: veth"], "")),
            "6:7: unknown key \"kindd\", did you mean \"kind\"?"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}"], "agent:\n  enable-nodeport: \"true\"\n")),
            "6:3: unknown key \"enable-nodeport\", did you mean \"enable-node-port\"?"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: vethx}"], "")),
            "4:26: unknown kind \"vethx\", did you mean \"veth\"?"
        );
        assert!(bad(&doc(&["{name: eth0, kind: veth}"], "zzz: 1\n"))
            .starts_with("5:1: unknown key \"zzz\"; expected one of: name,"));
    }

    #[test]
    fn structure_errors() {
        let e = |b: &[u8]| match parse(Path::new("s.yaml"), b) {
            Err(ScenarioError::At { line, col, message, .. }) => format!("{line}:{col}: {message}"),
            other => panic!("{other:?}"),
        };
        assert_eq!(e(b""), "1:1: the scenario file is empty");
        assert_eq!(e(b"# nothing\n"), "1:1: the scenario file is empty");
        assert_eq!(e(b"- a\n"), "1:1: a scenario file must be a map of keys, found a sequence");
        assert_eq!(e(b"profile: v1.14.4\nname: \xff\xfe\n"), "2:7: the file is not UTF-8 text (invalid byte 0xff)");
        assert!(e(b"a: 1\n---\nb: 2\n").starts_with("2:1: a scenario file holds exactly one YAML document"));
        let deep = format!("profile: {}{}\n", "[".repeat(5000), "]".repeat(5000));
        assert!(e(deep.as_bytes()).contains("nesting deeper than 64 levels"));
        assert_eq!(e(b"profile: v1.14.4\n"), "1:1: missing key \"topology\"");
        assert_eq!(e(b"profile: [\n"), "2:1: invalid YAML: while parsing a node, did not find expected node content");
        assert!(e(b"profile: v1.14.4\nprofile: v1.15\n").starts_with("2:1: duplicate key \"profile\""));
    }

    #[test]
    fn profiles() {
        let d = |p: &str| format!("profile: {p}\ntopology: {{links: []}}\nsteps: [{{start: {{}}}}]\n");
        assert!(parse(Path::new("x.yaml"), d("v1.16").as_bytes()).is_ok());
        assert_eq!(
            bad(&d("v1.14")),
            "1:10: unknown profile \"v1.14\", did you mean \"v1.14.4\"? (implemented: v1.14.4, v1.15, v1.16, v1.17, v1.18, v1.19)"
        );
        assert_eq!(
            bad(&d("nope")),
            "1:10: unknown profile \"nope\"; expected one of: v1.14.4, v1.15, v1.16, v1.17, v1.18, v1.19 (implemented: v1.14.4, v1.15, v1.16, v1.17, v1.18, v1.19)"
        );
    }

    #[test]
    fn link_names() {
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}", "{name: eth0, kind: dummy}"], "")),
            "5:14: duplicate link name \"eth0\" (first defined at line 4)"
        );
        assert_eq!(
            bad(&doc(&["{name: averyveryverylongname, kind: dummy}"], "")),
            "4:14: interface name \"averyveryverylongname\" is 21 bytes long, at most 15 fit"
        );
        assert_eq!(
            bad(&doc(&["{name: \"a/b\", kind: dummy}"], "")),
            "4:14: interface name \"a/b\" contains '/', which interface names cannot hold"
        );
        assert_eq!(
            bad(&doc(&["{name: \"a b\", kind: dummy}"], "")),
            "4:14: interface name \"a b\" contains ' ', which interface names cannot hold"
        );
        assert_eq!(bad(&doc(&["{name: \"\", kind: dummy}"], "")), "4:14: an interface name must not be empty");
        assert_eq!(
            bad(&doc(&["{name: v, kind: veth, peer: v-p, peer_in: node}", "{name: v-p, kind: dummy}"], "")),
            "5:14: duplicate link name \"v-p\" (first defined at line 4)"
        );
    }

    #[test]
    fn link_references_and_cycles() {
        assert_eq!(
            bad(&doc(&["{name: bond0.212, kind: vlan, parent: bond0, id: 212}"], "")),
            "4:45: link \"bond0.212\": parent \"bond0\" is not a link of this scenario"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, master: bond0}"], "")),
            "4:40: link \"eth0\": master \"bond0\" is not a link of this scenario"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, master: eth1}", "{name: eth1, kind: veth}"], "")),
            "4:40: link \"eth0\": master \"eth1\" is a veth link; only a bond, bridge or vrf can be a master"
        );
        assert_eq!(
            bad(&doc(&["{name: br0, kind: bridge, master: br1}", "{name: br1, kind: bridge, master: br0}"], "")),
            "4:41: links form a cycle of masters/parents: br0 -> br1 -> br0"
        );
        assert_eq!(
            bad(&doc(
                &[
                    "{name: eth0, kind: veth}",
                    "{name: v1, kind: vlan, parent: v2, id: 1}",
                    "{name: v2, kind: vlan, parent: v1, id: 2}"
                ],
                ""
            )),
            "5:38: links form a cycle of masters/parents: v1 -> v2 -> v1"
        );
        assert_eq!(
            bad(&doc(&["{name: br0, kind: bridge, master: br0}"], "")),
            "4:41: links form a cycle of masters/parents: br0 -> br0"
        );
        // Forward references are fine; the order of creation is derived.
        ok(&doc(&["{name: eth0, kind: veth, master: br0}", "{name: br0, kind: bridge}"], ""));
    }

    #[test]
    fn link_kind_keys_and_values() {
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, id: 5}"], "")),
            "4:32: link \"eth0\": key \"id\" is not valid for a veth link (it is for: vlan)"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}", "{name: v, kind: vlan, parent: eth0, id: 0}"], "")),
            "5:47: link \"v\": vlan id 0 is out of range 1–4094"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}", "{name: v, kind: vlan, parent: eth0, id: 5000}"], "")),
            "5:47: link \"v\": vlan id 5000 is out of range 1–4094"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}", "{name: v, kind: vlan, parent: eth0}"], "")),
            "5:7: link \"v\": a vlan link needs \"id\""
        );
        assert_eq!(
            bad(&doc(
                &["{name: eth0, kind: veth}", "{name: v, kind: vlan, parent: eth0, id: 5, protocol: 802.1x}"],
                ""
            )),
            "5:60: link \"v\": unknown vlan protocol \"802.1x\", did you mean \"802.1Q\"?"
        );
        assert_eq!(
            bad(&doc(&["{name: b, kind: bond, mode: lacp}"], "")),
            "4:35: link \"b\": unknown bond mode \"lacp\"; expected one of: balance-rr, active-backup, balance-xor, broadcast, 802.3ad, balance-tlb, balance-alb"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}", "{name: m, kind: macvlan, parent: eth0, mode: vepaa}"], "")),
            "5:52: link \"m\": unknown macvlan mode \"vepaa\", did you mean \"vepa\"?"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, mac: \"01:00:00:00:00:01\"}"], "")),
            "4:37: link \"eth0\": mac \"01:00:00:00:00:01\" is a multicast address; a link needs a unicast one"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, mac: \"zz:00:00:00:00:01\"}"], "")),
            "4:37: link \"eth0\": mac \"zz:00:00:00:00:01\" is not a MAC address (six hex octets separated by ':')"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, mtu: 10}"], "")),
            "4:37: link \"eth0\": mtu 10 is out of range 68–65535"
        );
        assert_eq!(bad(&doc(&["{name: r, kind: vrf}"], "")), "4:7: link \"r\": a vrf link needs \"table\"");
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth}", "{name: v, kind: vlan, parent: null, id: 2}"], "")),
            "5:7: link \"v\": a vlan link needs \"parent\""
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, up: maybe}"], "")),
            "4:36: \"up\": invalid type: string \"maybe\", expected a boolean"
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, addresses: [10.0.0.300/24]}"], "")),
            "4:44: link \"eth0\": address \"10.0.0.300/24\" is not a CIDR (an IPv4 or IPv6 address with /PREFIX)"
        );
        assert_eq!(
            bad(&doc(&["{name: eth0, kind: veth, addresses: [10.0.0.1]}"], "")),
            "4:44: link \"eth0\": address \"10.0.0.1\" is not a CIDR (an IPv4 or IPv6 address with /PREFIX)"
        );
        assert_eq!(
            bad(&doc(
                &[
                    "{name: eth0, kind: veth, addresses: [10.0.0.1/24]}",
                    "{name: eth1, kind: veth, addresses: [fd00::1/64, 10.0.0.1/16]}"
                ],
                ""
            )),
            "5:56: link \"eth1\": address 10.0.0.1 is already on link \"eth0\""
        );
        ok(&doc(&["{name: eth0, kind: veth, addresses: [10.0.0.1/24, \"fd00::1/64\"]}"], ""));
    }

    #[test]
    fn routes() {
        let l = ["{name: eth0, kind: veth, addresses: [10.0.0.2/24]}"];
        let r = |route: &str| doc(&l, &format!("  routes:\n    - {route}\n"));
        ok(&r("{dst: default, via: 10.0.0.1, dev: eth0, table: main}"));
        ok(&r("{dst: 10.1.0.0/16, dev: eth0, table: 100}"));
        assert_eq!(bad(&r("{dst: defualt, dev: eth0}")), "6:13: route dst \"defualt\" is neither `default` nor a CIDR");
        assert_eq!(
            bad(&r("{dst: default, via: 10.0.0, dev: eth0}")),
            "6:27: route to default: via \"10.0.0\" is not an IP address"
        );
        assert_eq!(
            bad(&r("{dst: 10.1.0.0/16, via: \"fd00::1\", dev: eth0}")),
            "6:31: route to 10.1.0.0/16: via fd00::1 is not of the destination's address family"
        );
        assert_eq!(
            bad(&r("{dst: default, dev: bond1}")),
            "6:27: route to default: dev \"bond1\" is not a link of this scenario"
        );
        assert_eq!(
            bad(&r("{dst: default, dev: eth0, table: mian}")),
            "6:40: route to default: table must be `main`, `local` or a number from 1"
        );
    }

    #[test]
    fn agent_values_and_file() {
        let l = ["{name: eth0, kind: veth}"];
        assert_eq!(
            bad(&doc(&l, "agent:\n  enable-node-port:\n")),
            "6:3: agent key \"enable-node-port\" has no value; quote it or remove the key"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cilium-config}\ndata:\n  enable-node-port: \"true\"\n  enable-host-firewall: \"true\"\n  cluster-name: default\n",
        )
        .unwrap();
        let path = dir.path().join("s.yaml");
        let text = doc(&l, "agent_file: cm.yaml\nagent:\n  enable-host-firewall: false\n");
        let s = parse(&path, text.as_bytes()).unwrap();
        assert_eq!(s.agent["enable-node-port"], "true");
        assert_eq!(s.agent["enable-host-firewall"], "false", "agent: overrides agent_file");
        assert_eq!(s.agent_ignored, ["cluster-name"]);
        assert_eq!(s.agent_file, Some(dir.path().join("cm.yaml")));

        std::fs::write(dir.path().join("pod.yaml"), "apiVersion: v1\nkind: Pod\n").unwrap();
        let e = parse(&path, doc(&l, "agent_file: pod.yaml\n").as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2:7: agent_file must be a ConfigMap manifest, found kind \"Pod\"",
                dir.path().join("pod.yaml").display()
            )
        );
        let e = parse(&path, doc(&l, "agent_file: missing.yaml\n").as_bytes()).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("{}:5:13: cannot read agent_file \"missing.yaml\"", path.display())),
            "{e}"
        );
    }

    #[test]
    fn agent_value_types() {
        let l = ["{name: eth0, kind: veth}"];
        assert_eq!(
            bad(&doc(&l, "agent:\n  enable-node-port: maybe\n")),
            "6:21: agent key \"enable-node-port\": invalid value \"maybe\" for enable-node-port: expected \"true\" or \"false\""
        );
        assert_eq!(
            bad(&doc(&l, "agent:\n  bpf-filter-priority: 0\n")),
            "6:24: agent key \"bpf-filter-priority\": invalid value \"0\" for bpf-filter-priority: expected an integer from 1 to 65535"
        );
    }

    #[test]
    fn pods() {
        let l = ["{name: eth0, kind: veth}"];
        assert_eq!(
            bad(&doc(&l, "pods:\n  - {name: a}\n  - {name: a, namespace: default}\n")),
            "7:12: pod default/a already exists (defined at line 6)"
        );
        assert!(bad(&doc(&l, "pods:\n  - {name: Web_1}\n"))
            .starts_with("6:12: pod name \"Web_1\" is not a valid Kubernetes name"));
        assert!(bad(&doc(&l, "pods:\n  - {name: a, namespace: a.b}\n"))
            .starts_with("6:26: pod namespace \"a.b\" is not a valid Kubernetes namespace name"));
    }

    #[test]
    fn steps() {
        let l = ["{name: eth0, kind: veth}"];
        let st = |steps: &str| doc(&l, &format!("steps:\n{steps}"));
        assert_eq!(
            bad(&st("  - {start: {}, stop: {}}\n")),
            "6:17: step 1 has 2 actions (start, stop); give exactly one per step"
        );
        assert_eq!(
            bad(&st("  - start: {}\n  - expect: {unchanged: true}\n")),
            "7:5: step 2 has no action; give exactly one of: start, restart, apply, delete, add-pod, delete-pod, link, foreign, route, stop, cleanup, traffic"
        );
        assert_eq!(bad(&format!("{HEAD}topology: {{}}\nsteps: []\n")), "3:8: a scenario needs at least one step");
        assert_eq!(
            bad(&st("  - start: {}\n    expect: {unchanged: true, regenrated: []}\n")),
            "7:31: unknown key \"regenrated\", did you mean \"regenerated\"?"
        );
        assert_eq!(bad(&st("  - start: {now: 1}\n")), "6:13: unknown key \"now\" (none are allowed here)");
        assert!(bad(&st("  - apply: nothing-here.yaml\n"))
            .starts_with("6:12: apply: fixture \"nothing-here.yaml\" does not exist (resolved to nothing-here.yaml)"));
        assert_eq!(
            bad(&st("  - start: {}\n  - delete-pod: web\n")),
            "7:17: delete-pod: pod default/web does not exist at this step"
        );
        assert_eq!(
            bad(&st("  - start: {}\n    expect:\n      attachments:\n        pod:default/web: none\n")),
            "9:9: attachments: \"pod:default/web\" names no pod of this scenario at this step"
        );
        assert_eq!(
            bad(&st("  - start: {}\n    expect: {regenerated: [default/web]}\n")),
            "7:28: regenerated: \"default/web\" is neither `host` nor NAMESPACE/NAME of a pod of this scenario"
        );
        assert_eq!(
            bad(&st("  - start: {}\n    expect: {attachments: {eth0: {ingress: [{program: cil_to_host, mechanism: tcz}]}}}\n")),
            "7:79: unknown mechanism \"tcz\", did you mean \"tcx\"?"
        );
        assert_eq!(
            bad(&st("  - start: {}\n    expect: {devices: [\"not a dev\"]}\n")),
            "7:24: devices: interface name \"not a dev\" contains ' ', which interface names cannot hold"
        );
        let s = ok(&st(concat!(
            "  - start: {}\n",
            "  - add-pod: {name: web, namespace: prod, labels: {app: web}}\n",
            "    expect:\n",
            "      regenerated: [prod/web]\n",
            "      attachments: {\"pod:prod/web\": {ingress: [cil_from_container]}, eth0: none}\n",
            "  - delete-pod: prod/web\n",
            "  - restart: {agent: {enable-node-port: true, devices: null}}\n",
            "  - link: {add: {name: eth1, kind: veth, addresses: [10.9.0.1/24]}}\n",
            "  - link: {set: {name: eth1, up: false}}\n",
            "  - foreign: {device: eth1, direction: ingress, program: foreign_tc}\n",
            "  - link: {delete: eth1}\n",
            "  - foreign: {device: eth0, direction: xdp, program: foreign_xdp}\n",
            "  - foreign: {device: cilium_host, direction: egress, program: foreign_tc}\n",
        )));
        let actions: Vec<Action> = s.steps.iter().map(|s| s.action.clone()).collect();
        assert_eq!(actions[2], Action::DeletePod("prod/web".into()));
        assert_eq!(
            actions[3],
            Action::Restart {
                agent: BTreeMap::from([
                    ("devices".to_string(), None),
                    ("enable-node-port".to_string(), Some("true".to_string()))
                ]),
                profile: None
            }
        );
        assert!(matches!(&actions[4], Action::LinkAdd(l) if l.name == "eth1"));
        assert_eq!(actions[5], Action::LinkSet { name: "eth1".into(), up: false });
        assert_eq!(
            actions[6],
            Action::Foreign {
                device: "eth1".into(),
                direction: ForeignDirection::Ingress,
                program: "foreign_tc".into(),
                mode: None
            }
        );
        assert_eq!(actions[7], Action::LinkDelete("eth1".into()));
        assert_eq!(s.steps[7].line, 16);
    }

    #[test]
    fn step_actions_refer_to_the_state_of_their_time() {
        let l = ["{name: eth0, kind: veth}"];
        let st = |steps: &str| doc(&l, &format!("steps:\n{steps}"));
        assert_eq!(bad(&st("  - link: {delete: eth1}\n")), "6:20: link delete: \"eth1\" is not a link at this step");
        assert_eq!(
            bad(&st("  - link: {add: {name: eth0, kind: dummy}}\n")),
            "6:24: link add: link \"eth0\" already exists at this step"
        );
        assert_eq!(
            bad(&st("  - link: {add: {name: v, kind: vlan, parent: nope, id: 3}}\n")),
            "6:47: link \"v\": parent \"nope\" is not a link of this scenario"
        );
        assert_eq!(
            bad(&st("  - link: {add: {name: d, kind: dummy}, delete: eth0}\n")),
            "6:11: link needs exactly one of `add: LINK`, `delete: NAME`, `set: {name, up}`"
        );
        assert_eq!(
            bad(&st("  - foreign: {device: eth9, direction: ingress, program: foreign_tc}\n")),
            "6:23: foreign: device \"eth9\" is neither a link of this scenario at this step, a cilium_ device nor pod:NAMESPACE/NAME of a pod"
        );
        assert_eq!(
            bad(&st("  - foreign: {device: eth0, direction: xdp, program: foreign_tc}\n")),
            "6:40: foreign: foreign_tc goes with direction ingress or egress, foreign_xdp with direction xdp"
        );
        assert_eq!(
            bad(&st("  - foreign: {device: eth0, direction: ingress, program: foreign_tc, mode: native}\n")),
            "6:76: foreign: mode (native or generic) is for foreign_xdp only"
        );
        assert_eq!(
            bad(&st("  - foreign: {device: eth0, direction: xdp, program: foreign_xdp, mode: driver}\n")),
            "6:73: unknown mode \"driver\"; expected one of: native, generic"
        );
        assert_eq!(
            bad(&st("  - route: {add: {dst: default, dev: eth9}}\n")),
            "6:38: route to default: dev \"eth9\" is not a link of this scenario"
        );
        assert_eq!(
            bad(&st("  - route: {delete: {dst: 10.0.0.0/33, dev: eth0}}\n")),
            "6:27: route dst \"10.0.0.0/33\" is neither `default` nor a CIDR"
        );
        assert_eq!(
            bad(&st("  - route: {add: {dst: default, dev: eth0}, delete: {dst: default, dev: eth0}}\n")),
            "6:12: route needs exactly one of `add: ROUTE`, `delete: ROUTE`"
        );
        let s = ok(&st(concat!(
            "  - foreign: {device: eth0, direction: xdp, program: foreign_xdp, mode: native}\n",
            "  - route: {add: {dst: default, via: 10.0.0.1, dev: eth0, table: 100}}\n",
            "  - route: {delete: {dst: default, via: 10.0.0.1, dev: eth0, table: 100}}\n",
        )));
        assert!(matches!(&s.steps[0].action, Action::Foreign { mode: Some(ForeignXdpMode::Native), .. }));
        assert!(matches!(&s.steps[1].action, Action::RouteAdd(r) if r.dev == "eth0" && r.dst == "default"));
        assert!(matches!(&s.steps[2].action, Action::RouteDelete(r) if r.via.as_deref() == Some("10.0.0.1")));
        assert_eq!(s.steps[2].action.key(), "route");
        assert_eq!(
            bad(&st("  - restart: {agent: {enable-nodeport: true}}\n")),
            "6:23: unknown key \"enable-nodeport\", did you mean \"enable-node-port\"?"
        );
        assert_eq!(
            bad(&st("  - restart: {profile: v1.20}\n")),
            "6:24: unknown profile \"v1.20\", did you mean \"v1.19\"? (implemented: v1.14.4, v1.15, v1.16, v1.17, v1.18, v1.19)"
        );
    }

    /// Truncations and byte edits of a valid document give errors, never a panic.
    #[test]
    fn traffic_steps() {
        let l = ["{name: eth0, kind: veth, addresses: [10.0.0.2/24]}", "{name: bond0, kind: bond}"];
        let st = |steps: &str| doc(&l, &format!("pods:\n  - {{name: web}}\nsteps:\n{steps}"));
        let s = ok(&st("  - traffic: {from: outside, link: eth0, vlan: 212, to: 10.0.0.2}\n    expect:\n      traffic: {delivered: 3, programs: {eth0: {ingress: {cil_from_netdev: 3}}, pod:default/web: {ingress: {}}}, drops: {eth0: {xdp: {}}}}\n  - traffic: {from: pod:web, link: eth0, to: 10.0.0.1, proto: icmp, count: 1}\n"));
        let Action::Traffic(t) = &s.steps[0].action else { panic!("{:?}", s.steps[0].action) };
        assert_eq!(
            (t.from.clone(), t.vlan, t.proto, t.port, t.count),
            (TrafficFrom::Outside, Some(212), TrafficProto::Udp, 8080, 3)
        );
        assert_eq!(s.steps[0].expect.traffic.as_ref().and_then(|t| t.delivered), Some(3));
        assert!(matches!(&s.steps[1].action, Action::Traffic(t) if t.from == TrafficFrom::Pod("default/web".into())));
        let one = |t: &str| bad(&st(&format!("  - traffic: {t}\n")));
        assert_eq!(
            one("{from: outside, link: eth9, to: 10.0.0.2}"),
            "9:36: traffic: link \"eth9\" is not a link of this scenario at this step; did you mean \"eth0\"?"
        );
        assert_eq!(one("{from: outside, link: bond0, to: 10.0.0.2}").split(':').nth(2).map(str::trim), Some("traffic"));
        assert_eq!(
            one("{from: outside, link: eth0, vlan: 4095, to: 10.0.0.2}"),
            "9:48: traffic: vlan id 4095 is outside 1-4094"
        );
        assert_eq!(
            one("{from: outside, link: eth0, vlan: 0, to: 10.0.0.2}"),
            "9:48: traffic: vlan id 0 is outside 1-4094"
        );
        assert_eq!(
            one("{from: pod:default/db, link: eth0, to: 10.0.0.1}"),
            "9:21: traffic: pod default/db does not exist at this step"
        );
        assert_eq!(one("{from: inside, link: eth0, to: 10.0.0.1}").split(": ").nth(1), Some("traffic"));
        assert_eq!(
            one("{from: node, link: eth0, to: 10.0.0.1, proto: sctp}"),
            "9:60: traffic: unknown proto \"sctp\"; expected one of: udp, tcp, icmp"
        );
        assert_eq!(one("{from: node, link: eth0, to: 10.0.0.1, port: 0}"), "9:59: traffic: port 0 is outside 1-65535");
        assert_eq!(
            one("{from: node, link: eth0, to: 10.0.0.1, proto: icmp, port: 7}"),
            "9:72: traffic: port is for udp and tcp, icmp has none"
        );
        assert_eq!(one("{from: node, link: eth0, to: nowhere}"), "9:43: traffic: to \"nowhere\" is not an IP address");
        assert_eq!(one("{from: node, link: eth0, to: 10.0.0.1, count: 0}"), "9:60: traffic: count 0 is outside 1-1000");
        assert_eq!(
            bad(&st("  - traffic: {from: node, link: eth0, to: 10.0.0.1}\n    expect: {traffic: {programs: {eth7: {}}}}\n")),
            "10:35: traffic.programs: \"eth7\" is neither a link of this scenario at this step, a cilium_ device nor pod:NAMESPACE/NAME of a pod; did you mean \"eth0\"?"
        );
        assert_eq!(
            bad(&st("  - start: {}\n    expect: {traffic: {delivered: 1}}\n")),
            "10:14: expect.traffic is only for a traffic step, not after `start`"
        );
        // A pod deleted before the step does not exist at that step.
        assert_eq!(
            bad(&st("  - delete-pod: web\n  - traffic: {from: pod:web, link: eth0, to: 10.0.0.1}\n")),
            "10:21: traffic: pod default/web does not exist at this step"
        );
    }

    #[test]
    fn mangled_input_never_panics() {
        let base = doc(
            &["{name: eth0, kind: veth, master: bond0}", "{name: bond0, kind: bond, mode: 802.3ad}", "{name: bond0.2, kind: vlan, parent: bond0, id: 2, addresses: [10.0.0.1/24]}"],
            "  routes:\n    - {dst: default, via: 10.0.0.254, dev: bond0.2}\nagent: {enable-node-port: true}\npods: [{name: web}]\nsteps:\n  - start: {}\n    expect: {attachments: {\"pod:default/web\": none, bond0.2: {ingress: [cil_from_netdev]}}}\n  - link: {set: {name: eth0, up: false}}\n",
        );
        ok(&base);
        let b = base.as_bytes();
        for i in 0..b.len() {
            let _ = parse(Path::new("m.yaml"), &b[..i]);
            for patch in [b"\xff" as &[u8], b"{", b"]", b"\n", b"- ", b": ", b"*a", b"&a ", b"\"", b"0"] {
                let mut m = b[..i].to_vec();
                m.extend_from_slice(patch);
                m.extend_from_slice(&b[i + 1..]);
                let _ = parse(Path::new("m.yaml"), &m);
            }
        }
    }

    #[test]
    fn check_expands_folders() {
        let dir = tempfile::tempdir().unwrap();
        let good = doc(&["{name: eth0, kind: veth}"], "");
        std::fs::write(dir.path().join("b.yaml"), &good).unwrap();
        std::fs::write(dir.path().join("a.yml"), "profile: v1.14.4\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
        std::fs::write(dir.path().join("c.yaml"), format!("{HEAD}name: b\n{}", &good[HEAD.len()..])).unwrap();
        let c = check_all(&[dir.path().to_path_buf(), dir.path().join("missing.yaml")]);
        let (n, errors) = (c.ok, c.errors);
        assert_eq!((n, c.invalid), (1, 3));
        // a.yml lacks two keys: both are said.
        assert_eq!(errors.len(), 4);
        assert_eq!(
            errors[0].to_string(),
            format!("{}:1:1: missing key \"topology\"", dir.path().join("a.yml").display())
        );
        assert_eq!(errors[1].to_string(), format!("{}:1:1: missing key \"steps\"", dir.path().join("a.yml").display()));
        assert_eq!(
            errors[2].to_string(),
            format!(
                "{}:2:7: scenario name \"b\" is already used by {}",
                dir.path().join("c.yaml").display(),
                dir.path().join("b.yaml").display()
            )
        );
        assert!(matches!(errors[3], ScenarioError::Read { .. }));
    }
    /// A value the agent refuses at start-up is valid input: the step fails at run time, and
    /// `check` warns at the value unless some step expects an error.
    #[test]
    fn start_refusals_are_warnings_unless_expected() {
        let agent = "agent:\n  kube-proxy-replacement: maybe\n";
        let s = ok(&doc(&["{name: eth0, kind: veth}"], agent));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        let w = &s.warnings[0];
        assert!(w.starts_with("dir/s.yaml:6:27: warning: unable to initialize kube-proxy"), "{w}");
        assert!(s.warnings[0].contains("Invalid value for --kube-proxy-replacement: maybe"), "{}", s.warnings[0]);
        let expected = format!("{agent}steps:\n  - start: {{}}\n    expect: {{error: Invalid value}}\n");
        assert!(ok(&doc(&["{name: eth0, kind: veth}"], &expected)).warnings.is_empty());
        // v1.15 takes partial; v1.16 does not, and a restart that upgrades says so at its profile.
        let up = "agent:\n  kube-proxy-replacement: partial\nsteps:\n  - start: {}\n  - restart: {profile: v1.16}\n";
        let s = ok(&doc(&["{name: eth0, kind: veth}"], up));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        let w = &s.warnings[0];
        assert!(w.starts_with("dir/s.yaml:9:24: warning: ") && w.contains("step 2 (restart)"), "{w}");
        // A misread boolean stays invalid input.
        let e = bad(&doc(&["{name: eth0, kind: veth}"], "agent:\n  enable-node-port: ture\n"));
        assert!(e.starts_with("6:21:") && e.ends_with("did you mean \"true\"?"), "{e}");
    }

    /// A configuration whose upstream behaviour is not modelled is said at the step that needs
    /// it: cleanup after XDP as a pinned bpf_link (v1.15 and later), not before.
    #[test]
    fn unmodelled_cleanup_after_an_xdp_link_is_a_warning() {
        let steps = |restart: &str| {
            format!("agent:\n  bpf-lb-acceleration: native\nsteps:\n  - start: {{}}\n{restart}  - cleanup: {{}}\n")
        };
        let s = ok(&doc(&["{name: eth0, kind: veth}"], &steps("")));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let s = ok(&doc(&["{name: eth0, kind: veth}"], &steps("  - restart: {profile: v1.15}\n")));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("warning: not modelled: `cilium cleanup` after XDP"), "{:?}", s.warnings);
        assert!(s.warnings[0].contains("(v1.15 and later)"), "{:?}", s.warnings);
    }
}
