//! From bytes to a [`Scenario`]: structure check (locator), typed parse (serde_yaml with
//! `deny_unknown_fields`), then the rules that need the whole document, each error placed at
//! the line and column of the key or value it is about. Every problem is reported: when serde
//! refuses the whole document, each part (a top-level key, a link, a step, ...) is read alone so
//! that one bad part does not hide the others, and the rules then check what could be read.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use super::locate::{only, Kind, Locator, Pos, Seg, Seg::I, Seg::K};
use super::*;
use crate::config;
use crate::profile::{Change, Profile};

/// Kernel features `requires` may name, beyond what the links imply.
pub const KNOWN_FEATURES: &[&str] = &[
    "tcx",
    "bonding",
    "vlan",
    "wireguard",
    "dummy",
    "vxlan",
    "macvlan",
    "vrf",
    "ifb",
    "bridge",
    "veth",
    "xdp",
    "netkit",
    "btf",
];

/// Action keys of a step, as written in files.
pub const ACTION_KEYS: &[&str] = &[
    "start",
    "restart",
    "apply",
    "delete",
    "add-pod",
    "delete-pod",
    "link",
    "foreign",
    "route",
    "stop",
    "cleanup",
    "traffic",
];

const BOND_MODES: &[&str] =
    &["balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb"];
const MACVLAN_MODES: &[&str] = &["bridge", "private", "vepa", "passthru"];
const VLAN_PROTOCOLS: &[&str] = &["802.1Q", "802.1ad"];
const COMMON_LINK_KEYS: &[&str] = &["name", "kind", "up", "mtu", "mac", "addresses", "master"];

/// Keys a link of `kind` may carry beyond the common ones.
fn kind_keys(kind: LinkKind) -> &'static [&'static str] {
    match kind {
        LinkKind::Veth => &["peer", "peer_in"],
        LinkKind::Bond => &["mode", "miimon"],
        LinkKind::Vlan => &["parent", "id", "protocol"],
        LinkKind::Macvlan => &["parent", "mode"],
        LinkKind::Vxlan => &["vni", "port", "parent"],
        LinkKind::Vrf => &["table"],
        LinkKind::Bridge | LinkKind::Dummy | LinkKind::Ifb | LinkKind::Wireguard => &[],
    }
}

const ALL_KINDS: [LinkKind; 10] = [
    LinkKind::Veth,
    LinkKind::Bond,
    LinkKind::Vlan,
    LinkKind::Bridge,
    LinkKind::Dummy,
    LinkKind::Ifb,
    LinkKind::Wireguard,
    LinkKind::Macvlan,
    LinkKind::Vxlan,
    LinkKind::Vrf,
];

// ---------------------------------------------------------------------------------------------
// Raw layer: what serde_yaml reads. Types that are already exact (links, routes, pods, expect)
// are the public ones.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a scenario: a map with `profile`, `topology` and `steps`")]
struct RawScenario {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    profile: String,
    #[serde(default)]
    requires: Option<RawRequires>,
    #[serde(default)]
    node: Option<NodeSpec>,
    topology: TopologySpec,
    #[serde(default)]
    agent: Option<BTreeMap<String, Scalar>>,
    #[serde(default)]
    agent_file: Option<String>,
    #[serde(default)]
    pods: Vec<PodSpec>,
    steps: Vec<RawStep>,
}

/// A ConfigMap value: a string, or a YAML boolean or number normalised to its string; `None`
/// for null (which removes a key in `restart`).
struct Scalar(Option<String>);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, Visitor};
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, boolean or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `requires`: a list of features, or `{features: [...], kernel: {min, max}}`.
struct RawRequires(Requires);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequiresMap {
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    kernel: Option<KernelBounds>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelBounds {
    #[serde(default)]
    min: Option<String>,
    #[serde(default)]
    max: Option<String>,
}

impl<'de> Deserialize<'de> for RawRequires {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRequires;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of features or `{features: [...], kernel: {min, max}}`")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawRequires, A::Error> {
                let features = Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(RawRequires(Requires { features, ..Default::default() }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRequires, A::Error> {
                let m = RequiresMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let (kernel_min, kernel_max) = m.kernel.map(|k| (k.min, k.max)).unwrap_or_default();
                Ok(RawRequires(Requires { features: m.features, kernel_min, kernel_max }))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawRequires, E> {
                Ok(RawRequires(Requires::default()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a step: a map with one action key such as `start: {}`"
)]
#[allow(dead_code)] // `start`, `stop`, `cleanup` are read to check their shape; presence comes from the locator
struct RawStep {
    #[serde(default)]
    start: Option<Empty>,
    #[serde(default)]
    restart: Option<RawRestart>,
    #[serde(default)]
    apply: Option<String>,
    #[serde(default)]
    delete: Option<String>,
    #[serde(default)]
    add_pod: Option<PodSpec>,
    #[serde(default)]
    delete_pod: Option<String>,
    #[serde(default)]
    link: Option<RawLinkAction>,
    #[serde(default)]
    foreign: Option<RawForeign>,
    #[serde(default)]
    route: Option<RawRouteAction>,
    #[serde(default)]
    stop: Option<Empty>,
    #[serde(default)]
    cleanup: Option<Empty>,
    #[serde(default)]
    traffic: Option<RawTraffic>,
    #[serde(default)]
    expect: Option<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    from: String,
    link: String,
    #[serde(default)]
    vlan: Option<i64>,
    to: String,
    #[serde(default)]
    proto: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    count: Option<i64>,
}

/// At most this many packets per `traffic` step: enough to tell programs apart, few enough to
/// stay quick in a VM under emulation.
const MAX_TRAFFIC_COUNT: i64 = 1000;

/// `{}`: actions that take no arguments.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    #[serde(default)]
    agent: BTreeMap<String, Scalar>,
    #[serde(default)]
    profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinkAction {
    #[serde(default)]
    add: Option<LinkSpec>,
    #[serde(default)]
    delete: Option<String>,
    #[serde(default)]
    set: Option<LinkSet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkSet {
    name: String,
    up: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForeign {
    device: String,
    direction: ForeignDirection,
    program: String,
    #[serde(default)]
    mode: Option<ForeignXdpMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteAction {
    #[serde(default)]
    add: Option<RouteSpec>,
    #[serde(default)]
    delete: Option<RouteSpec>,
}

/// The parts of a ConfigMap manifest `agent_file` reads; other keys (apiVersion, metadata) are
/// not looked at.
#[derive(Deserialize)]
struct RawConfigMap {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, Scalar>,
}

// ---------------------------------------------------------------------------------------------
// Messages

/// The closest candidate to `word`, if close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        // A candidate the word is a prefix of ("v1.14" → "v1.14.4") beats an equally near one.
        .map(|c| (strsim::normalized_damerau_levenshtein(word, c) + if c.starts_with(word) { 0.2 } else { 0.0 }, c))
        .filter(|(score, _)| *score >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `unknown WHAT "word", did you mean "x"?` or `...; expected one of: a, b`.
pub fn unknown(what: &str, word: &str, candidates: &[&str]) -> String {
    match suggest(word, candidates.iter().copied()) {
        Some(s) => format!("unknown {what} \"{word}\", did you mean \"{s}\"?"),
        None if candidates.is_empty() => format!("unknown {what} \"{word}\" (none are allowed here)"),
        None => format!("unknown {what} \"{word}\"; expected one of: {}", candidates.join(", ")),
    }
}

/// Rewrites a serde_yaml error into this module's wording and position.
fn from_serde(path: &Path, e: &serde_yaml::Error) -> ScenarioError {
    let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
    let mut msg = e.to_string();
    let suffix = format!(" at line {line} column {col}");
    if msg.ends_with(&suffix) {
        msg.truncate(msg.len() - suffix.len());
    }
    // serde_yaml prefixes the path (`topology.links[1]: ...`); the position says it better.
    let mut field = None;
    if let Some((prefix, rest)) = msg.split_once(": ") {
        if !prefix.contains(' ') && !prefix.contains('`') {
            field = prefix.rsplit('.').next().map(|s| s.split('[').next().unwrap_or(s).to_string());
            msg = rest.to_string();
        }
    }
    let ticked: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    let message = if msg.starts_with("unknown field `") {
        unknown("key", ticked[0], &ticked[1..])
    } else if msg.starts_with("unknown variant `") {
        unknown(field.as_deref().unwrap_or("value"), ticked[0], &ticked[1..])
    } else if msg.starts_with("missing field `") {
        format!("missing key \"{}\"", ticked[0])
    } else if msg.starts_with("duplicate field `") {
        format!("duplicate key \"{}\"", ticked[0])
    } else {
        match field {
            Some(f) if !f.is_empty() => format!("\"{f}\": {msg}"),
            _ => msg,
        }
    };
    ScenarioError::At { path: path.to_path_buf(), line, col, message }
}

// ---------------------------------------------------------------------------------------------
// Names and values

/// A Linux interface name: 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name must not be empty".into());
    }
    if name.len() > 15 {
        return Err(format!("interface name \"{name}\" is {} bytes long, at most 15 fit", name.len()));
    }
    if name == "." || name == ".." {
        return Err(format!("\"{name}\" is not a valid interface name"));
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace()) {
        return Err(format!("interface name \"{name}\" contains {c:?}, which interface names cannot hold"));
    }
    Ok(())
}

/// A Kubernetes object name (DNS-1123 subdomain), as pod names are.
fn check_dns_subdomain(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} \"{name}\" is not a valid Kubernetes name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253)"
        ))
    }
}

/// A Kubernetes namespace name (DNS-1123 label).
fn check_dns_label(what: &str, name: &str) -> Result<(), String> {
    if name.len() <= 63 && !name.contains('.') {
        check_dns_subdomain(what, name)
    } else {
        Err(format!(
            "{what} \"{name}\" is not a valid Kubernetes namespace name (a DNS label of at most 63 characters)"
        ))
    }
}

fn check_mac(mac: &str) -> Result<(), String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(format!("mac \"{mac}\" is not a MAC address (six hex octets separated by ':')"));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(0);
    if first & 1 == 1 {
        return Err(format!("mac \"{mac}\" is a multicast address; a link needs a unicast one"));
    }
    Ok(())
}

fn check_kernel_version(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('.').collect();
    if (2..=3).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        Ok(())
    } else {
        Err(format!("kernel version \"{v}\" is not of the form MAJOR.MINOR or MAJOR.MINOR.PATCH (quote it: \"6.10\")"))
    }
}

fn check_profile(name: &str) -> Result<(), String> {
    let implemented: Vec<&str> = Profile::implemented().iter().map(|p| p.as_str()).collect();
    match Profile::parse(name) {
        Some(p) if Profile::implemented().contains(&p) => Ok(()),
        Some(_) => {
            Err(format!("profile \"{name}\" is known but not implemented yet; implemented: {}", implemented.join(", ")))
        }
        None => {
            let known: Vec<&str> = Profile::ALL.iter().map(|p| p.as_str()).collect();
            Err(format!("{} (implemented: {})", unknown("profile", name, &known), implemented.join(", ")))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checker

/// The scenario being checked: where it came from and where its nodes are.
struct Ctx<'a> {
    path: &'a Path,
    loc: &'a Locator,
    /// Every problem found so far.
    errors: RefCell<Vec<ScenarioError>>,
}

impl Ctx<'_> {
    fn push(&self, e: ScenarioError) {
        self.errors.borrow_mut().push(e);
    }
    /// The value, or `None` with its error kept.
    fn ok<T>(&self, r: Result<T, ScenarioError>) -> Option<T> {
        r.map_err(|e| self.push(e)).ok()
    }
    fn failed(&self) -> bool {
        !self.errors.borrow().is_empty()
    }
    fn err(&self, pos: Pos, message: impl Into<String>) -> ScenarioError {
        ScenarioError::At { path: self.path.to_path_buf(), line: pos.line, col: pos.col, message: message.into() }
    }
    fn at(&self, path: &[Seg], message: impl Into<String>) -> ScenarioError {
        self.err(self.loc.at(path), message)
    }
    fn key_at(&self, path: &[Seg], message: impl Into<String>) -> ScenarioError {
        self.err(self.loc.key_at(path), message)
    }
}

fn with<'a>(base: &[Seg<'a>], more: &[Seg<'a>]) -> Vec<Seg<'a>> {
    let mut v = base.to_vec();
    v.extend_from_slice(more);
    v
}

/// Scenarios are a few kilobytes; a far larger file is a mistake, refused before parsing.
pub const MAX_BYTES: usize = 1 << 20;

/// Parses and validates; every problem of the file, sorted by position, when it is invalid.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Scenario, Vec<ScenarioError>> {
    if bytes.len() > MAX_BYTES {
        return Err(vec![ScenarioError::File {
            path: path.to_path_buf(),
            message: format!("the file is {} bytes, too large for a scenario (at most {MAX_BYTES})", bytes.len()),
        }]);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, col) = line_col(bytes, e.valid_up_to());
        vec![ScenarioError::At {
            path: path.to_path_buf(),
            line,
            col,
            message: format!("the file is not UTF-8 text (invalid byte 0x{:02x})", bytes[e.valid_up_to()]),
        }]
    })?;
    let loc = Locator::new(text, "scenario").map_err(|e| {
        vec![ScenarioError::At { path: path.to_path_buf(), line: e.pos.line, col: e.pos.col, message: e.message }]
    })?;
    let cx = Ctx { path, loc: &loc, errors: RefCell::default() };
    let parts = match serde_yaml::from_str::<RawScenario>(text) {
        Ok(raw) => Parts::from(raw),
        Err(whole) => {
            let parts = read_parts(&cx, text);
            // Parts read alone that all pass (an alias to an anchor in another part): the
            // document's own error stands.
            if !cx.failed() {
                cx.push(from_serde(path, &whole));
            }
            parts
        }
    };
    let scenario = build(&cx, parts);
    let mut errors = cx.errors.into_inner();
    match scenario {
        Some(s) if errors.is_empty() => Ok(s),
        _ => {
            if errors.is_empty() {
                errors.push(ScenarioError::File { path: path.to_path_buf(), message: "not a valid scenario".into() });
            }
            sort_errors(&mut errors);
            Err(errors)
        }
    }
}

/// Errors in file order: by file, then line and column (stable, so one place keeps its order).
pub fn sort_errors(errors: &mut [ScenarioError]) {
    errors.sort_by(|a, b| {
        let key = |e: &ScenarioError| match e {
            ScenarioError::At { path, line, col, .. } => (path.clone(), *line, *col),
            ScenarioError::Read { path, .. } | ScenarioError::File { path, .. } => (path.clone(), 0, 0),
        };
        key(a).cmp(&key(b))
    });
}

/// The document as parts, each `None` where it could not be read (its error is in the context).
#[derive(Default)]
struct Parts {
    name: Option<String>,
    description: Option<String>,
    profile: Option<String>,
    requires: Option<RawRequires>,
    node: Option<NodeSpec>,
    links: Vec<Option<LinkSpec>>,
    routes: Vec<Option<RouteSpec>>,
    agent: Option<BTreeMap<String, Scalar>>,
    agent_file: Option<String>,
    pods: Vec<Option<PodSpec>>,
    steps: Vec<Option<RawStep>>,
}

impl From<RawScenario> for Parts {
    fn from(r: RawScenario) -> Parts {
        Parts {
            name: r.name,
            description: r.description,
            profile: Some(r.profile),
            requires: r.requires,
            node: r.node,
            links: r.topology.links.into_iter().map(Some).collect(),
            routes: r.topology.routes.into_iter().map(Some).collect(),
            agent: r.agent,
            agent_file: r.agent_file,
            pods: r.pods.into_iter().map(Some).collect(),
            steps: r.steps.into_iter().map(Some).collect(),
        }
    }
}

const TOP_KEYS: &[&str] =
    &["name", "description", "profile", "requires", "node", "topology", "agent", "agent_file", "pods", "steps"];

/// The parts of a document serde refused as a whole, each read alone (at its own position),
/// so that every unknown key and wrong type of the file is reported.
fn read_parts(cx: &Ctx, text: &str) -> Parts {
    let read = |at: &[Seg]| -> ReadPart { read_part(cx, text, at) };
    let mut p = Parts::default();
    let mut meant = Vec::new();
    for (key, pos) in cx.loc.keys(&[]) {
        if !TOP_KEYS.contains(&key) {
            cx.push(cx.err(pos, unknown("key", key, TOP_KEYS)));
            meant.extend(suggest(key, TOP_KEYS.iter().copied()));
        }
    }
    // A required key given with a typo is reported once, as the typo.
    for required in ["profile", "topology", "steps"] {
        if cx.loc.node(&[K(required)]).is_none() && !meant.contains(&required) {
            cx.push(cx.at(&[], format!("missing key \"{required}\"")));
        }
    }
    p.name = read(&[K("name")]).value::<Option<String>>().flatten();
    p.description = read(&[K("description")]).value::<Option<String>>().flatten();
    p.profile = read(&[K("profile")]).value::<String>();
    p.requires = read(&[K("requires")]).value::<Option<RawRequires>>().flatten();
    p.node = read(&[K("node")]).value::<Option<NodeSpec>>().flatten();
    p.agent = read(&[K("agent")]).value::<Option<BTreeMap<String, Scalar>>>().flatten();
    p.agent_file = read(&[K("agent_file")]).value::<Option<String>>().flatten();
    if matches!(cx.loc.node(&[K("topology")]).map(|n| &n.kind), Some(Kind::Map(_))) {
        for (key, pos) in cx.loc.keys(&[K("topology")]) {
            if !["links", "routes"].contains(&key) {
                cx.push(cx.err(pos, unknown("key", key, &["links", "routes"])));
            }
        }
        p.links = read_list(cx, text, &[K("topology"), K("links")]);
        p.routes = read_list(cx, text, &[K("topology"), K("routes")]);
    } else {
        read(&[K("topology")]).value::<TopologySpec>();
    }
    p.pods = read_list(cx, text, &[K("pods")]);
    p.steps = read_list(cx, text, &[K("steps")]);
    p
}

/// One part of the document, to be read as some type.
struct ReadPart<'c, 'a> {
    cx: &'c Ctx<'a>,
    /// The document with only this part left, or `None` when the key is absent.
    text: Option<String>,
}

fn read_part<'c, 'a>(cx: &'c Ctx<'a>, text: &str, at: &[Seg]) -> ReadPart<'c, 'a> {
    ReadPart { cx, text: cx.loc.node(at).map(|n| only(text, n)) }
}

impl ReadPart<'_, '_> {
    /// The part as `T` (`None` with the error kept); an absent key is `None` without one.
    fn value<T: serde::de::DeserializeOwned>(self) -> Option<T> {
        let text = self.text?;
        serde_yaml::from_str(&text).map_err(|e| self.cx.push(from_serde(self.cx.path, &e))).ok()
    }
}

/// A list of the document read item by item (an absent list is empty).
fn read_list<T: serde::de::DeserializeOwned>(cx: &Ctx, text: &str, at: &[Seg]) -> Vec<Option<T>> {
    match cx.loc.node(at).map(|n| &n.kind) {
        Some(Kind::Seq(items)) => items
            .iter()
            .map(|n| serde_yaml::from_str(&only(text, n)).map_err(|e| cx.push(from_serde(cx.path, &e))).ok())
            .collect(),
        Some(_) => read_part(cx, text, at)
            .value::<Option<Vec<T>>>()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .map(Some)
            .collect(),
        None => Vec::new(),
    }
}

/// 1-based line and column (in characters) of byte offset `at`, which must end valid UTF-8.
fn line_col(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let col = std::str::from_utf8(&before[start..]).map_or(at - start, |s| s.chars().count()) + 1;
    (line, col)
}

fn build(cx: &Ctx, raw: Parts) -> Option<Scenario> {
    if let Some(p) = &raw.profile {
        cx.ok(check_profile(p).map_err(|m| cx.at(&[K("profile")], m)));
    }

    let requires = raw.requires.map(|r| r.0).unwrap_or_default();
    check_requires(cx, &requires);

    let node = raw.node.unwrap_or_default();
    if let Some(ip) = &node.ip {
        if ip.parse::<IpAddr>().is_err() {
            cx.push(cx.at(&[K("node"), K("ip")], format!("node ip \"{ip}\" is not an IP address")));
        }
    }

    let mut links = check_topology(cx, &raw.links, &raw.routes);

    let base = cx.path.parent().unwrap_or(Path::new(""));
    // Where each agent value was written, for warnings: the ConfigMap file or this file.
    let mut origin: BTreeMap<String, (PathBuf, usize, usize)> = BTreeMap::new();
    let (mut agent, agent_ignored, agent_file) = match &raw.agent_file {
        Some(f) => match cx.ok(load_agent_file(cx, base, f)) {
            Some(AgentFile { agent, ignored, path, positions }) => {
                for (k, (line, col)) in positions {
                    origin.insert(k, (path.clone(), line, col));
                }
                (agent, ignored, Some(path))
            }
            None => (BTreeMap::new(), Vec::new(), None),
        },
        None => (BTreeMap::new(), Vec::new(), None),
    };
    for (key, value) in raw.agent.unwrap_or_default() {
        let at = [K("agent"), K(&key)];
        if cx.ok(check_agent_key(cx, &at, &key)).is_none() {
            continue;
        }
        let Some(value) = value.0 else {
            cx.push(cx.key_at(&at, format!("agent key \"{key}\" has no value; quote it or remove the key")));
            continue;
        };
        if let Err(m) = config::check_value(&key, &value) {
            cx.push(cx.at(&at, format!("agent key \"{key}\": {m}")));
            continue;
        }
        let p = cx.loc.at(&at);
        origin.insert(key.clone(), (cx.path.to_path_buf(), p.line, p.col));
        agent.insert(key, value);
    }

    let mut pods: BTreeMap<String, Pos> = BTreeMap::new();
    for (i, pod) in raw.pods.iter().enumerate() {
        let at = [K("pods"), I(i)];
        match pod {
            Some(pod) => {
                cx.ok(check_pod(cx, &at, pod, &pods));
                pods.insert(pod.key(), cx.loc.at(&at));
            }
            // Unreadable (its error is kept): still a pod for the steps, so that they do not
            // report it missing as well.
            None => {
                if let Some(k) = unread_pod_key(cx, &at) {
                    pods.insert(k, cx.loc.at(&at));
                }
            }
        }
    }

    if raw.steps.is_empty() && cx.loc.node(&[K("steps")]).is_some() {
        cx.push(cx.at(&[K("steps")], "a scenario needs at least one step"));
    }
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.into_iter().enumerate() {
        steps.push(step.and_then(|step| check_step(cx, i, step, base, &mut links, &mut pods)));
    }

    let name = match raw.name {
        Some(n) if n.trim().is_empty() => {
            cx.push(cx.at(&[K("name")], "name must not be empty"));
            None
        }
        Some(n) => Some(n),
        None => Some(cx.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
    };
    if cx.failed() {
        return None;
    }
    let steps: Vec<Step> = steps.into_iter().collect::<Option<_>>()?;
    let profile = raw.profile?;
    let mut warnings = refusal_warnings(cx, &profile, &agent, &origin, &steps);
    warnings.extend(unmodelled_warnings(cx, &profile, &agent, &steps));
    warnings.extend(expectation_warnings(cx, &agent, &steps));
    Some(Scenario {
        path: cx.path.to_path_buf(),
        name: name?,
        description: raw.description,
        profile,
        requires,
        node,
        topology: TopologySpec {
            links: raw.links.into_iter().collect::<Option<_>>()?,
            routes: raw.routes.into_iter().collect::<Option<_>>()?,
        },
        agent,
        agent_ignored,
        agent_file,
        pods: raw.pods.into_iter().collect::<Option<_>>()?,
        steps,
        warnings,
    })
}

/// `NAMESPACE/NAME` of a pod entry serde could not read, from its `name` and `namespace`.
fn unread_pod_key(cx: &Ctx, at: &[Seg]) -> Option<String> {
    let scalar = |key: &str| match cx.loc.node(&with(at, &[K(key)])).map(|n| &n.kind) {
        Some(Kind::Scalar(s)) => Some(s.clone()),
        _ => None,
    };
    Some(format!("{}/{}", scalar("namespace").unwrap_or_else(default_namespace), scalar("name")?))
}

/// Values the agent refuses at start-up ([`config::start_refusal`]) are agent behaviour: the
/// `start` step (or the `restart` that brings one, by a key or a profile change) fails with
/// upstream's message. When no step of the scenario expects an error, that is most likely not
/// what the author meant: a warning at the value (`path:line:col: warning: ...`).
fn refusal_warnings(
    cx: &Ctx,
    profile: &str,
    agent: &BTreeMap<String, String>,
    origin: &BTreeMap<String, (PathBuf, usize, usize)>,
    steps: &[Step],
) -> Vec<String> {
    if steps.iter().any(|s| s.expect.error.is_some()) {
        return Vec::new();
    }
    let Some(mut profile) = Profile::parse(profile) else { return Vec::new() };
    let mut out = Vec::new();
    let mut warn = |path: &Path, line: usize, col: usize, hint: String, step: &str| {
        out.push(format!(
            "{}:{line}:{col}: warning: {hint}; {step} will fail (expect that with `error:`)",
            path.display()
        ));
    };
    let refused = |map: &BTreeMap<String, String>, p: Profile| -> BTreeMap<String, String> {
        map.iter().filter_map(|(k, v)| config::start_refusal_hint(k, v, p).map(|h| (k.clone(), h))).collect()
    };
    let mut before = refused(agent, profile);
    for (k, hint) in &before {
        if let Some((path, line, col)) = origin.get(k) {
            warn(path, *line, *col, hint.clone(), "the start step");
        }
    }
    let mut current = agent.clone();
    for (i, step) in steps.iter().enumerate() {
        let Action::Restart { agent: changes, profile: new_profile } = &step.action else { continue };
        for (k, v) in changes {
            match v {
                Some(v) => current.insert(k.clone(), v.clone()),
                None => current.remove(k),
            };
        }
        if let Some(p) = new_profile.as_deref().and_then(Profile::parse) {
            profile = p;
        }
        let now = refused(&current, profile);
        for (k, hint) in &now {
            if before.get(k) == Some(hint) {
                continue;
            }
            let at = if changes.contains_key(k) {
                vec![K("steps"), I(i), K("restart"), K("agent"), K(k)]
            } else {
                vec![K("steps"), I(i), K("restart"), K("profile")]
            };
            let p = cx.loc.at(&at);
            warn(cx.path, p.line, p.col, hint.clone(), &format!("step {} (restart)", i + 1));
        }
        before = now;
    }
    out
}

/// Configurations whose upstream behaviour is not modelled (the "not modelled" rows of
/// docs/fidelity.md) get a warning at the step that needs it, so that a passing run is not
/// taken for upstream's word: `cleanup` after XDP attached as a pinned bpf_link (v1.15+), which
/// upstream's `cilium cleanup` may remove with the bpffs and the harness leaves attached.
fn unmodelled_warnings(cx: &Ctx, profile: &str, agent: &BTreeMap<String, String>, steps: &[Step]) -> Vec<String> {
    let Some(mut profile) = Profile::parse(profile) else { return Vec::new() };
    let accelerated = |m: &BTreeMap<String, String>| {
        ["node-port-acceleration", "bpf-lb-acceleration"]
            .iter()
            .filter_map(|k| m.get(*k))
            .any(|v| matches!(v.trim(), "native" | "testing-only" | "best-effort"))
    };
    let mut current = agent.clone();
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match &step.action {
            Action::Restart { agent: changes, profile: p } => {
                for (k, v) in changes {
                    match v {
                        Some(v) => current.insert(k.clone(), v.clone()),
                        None => current.remove(k),
                    };
                }
                if let Some(p) = p.as_deref().and_then(Profile::parse) {
                    profile = p;
                }
            }
            Action::Cleanup if profile.has(Change::XdpBpfLink) && accelerated(&current) => {
                let p = cx.loc.at(&[K("steps"), I(i), K("cleanup")]);
                out.push(format!(
                    "{}:{}:{}: warning: not modelled: `cilium cleanup` after XDP attached as a pinned \
                     bpf_link ({} and later); here the XDP program stays attached (docs/fidelity.md)",
                    cx.path.display(),
                    p.line,
                    p.col,
                    Change::XdpBpfLink.row().since_profile().map_or("", |p| p.as_str())
                ));
            }
            _ => {}
        }
    }
    out
}

fn check_requires(cx: &Ctx, r: &Requires) {
    let list = matches!(cx.loc.node(&[K("requires")]).map(|n| &n.kind), Some(Kind::Seq(_)));
    for (i, f) in r.features.iter().enumerate() {
        if !KNOWN_FEATURES.contains(&f.as_str()) {
            let at = if list { vec![K("requires"), I(i)] } else { vec![K("requires"), K("features"), I(i)] };
            cx.push(cx.at(&at, unknown("feature", f, KNOWN_FEATURES)));
        }
    }
    for (key, v) in [("min", &r.kernel_min), ("max", &r.kernel_max)] {
        if let Some(v) = v {
            cx.ok(check_kernel_version(v).map_err(|m| cx.at(&[K("requires"), K("kernel"), K(key)], m)));
        }
    }
}

fn check_agent_key(cx: &Ctx, at: &[Seg], key: &str) -> Result<(), ScenarioError> {
    if config::known_keys().contains(&key) {
        Ok(())
    } else {
        Err(cx.key_at(at, unknown("key", key, config::known_keys())))
    }
}

/// What `agent_file` contributes.
struct AgentFile {
    agent: BTreeMap<String, String>,
    ignored: Vec<String>,
    path: PathBuf,
    /// Line and column of each modelled key's value in the file.
    positions: BTreeMap<String, (usize, usize)>,
}

/// Reads `agent_file` (relative to the scenario's folder): a ConfigMap manifest whose `data`
/// keys the profiles model become agent settings; the others are returned as ignored.
fn load_agent_file(cx: &Ctx, base: &Path, file: &str) -> Result<AgentFile, ScenarioError> {
    let resolved = base.join(file);
    let bytes = std::fs::read(&resolved).map_err(|e| {
        cx.at(&[K("agent_file")], format!("cannot read agent_file \"{file}\" ({}): {e}", resolved.display()))
    })?;
    let (agent, ignored, positions) = parse_config_map(&resolved, &bytes)?;
    Ok(AgentFile { agent, ignored, path: resolved, positions })
}

/// Reads a `cilium-config` ConfigMap manifest: the `data` keys the profiles model (values
/// checked), and the names of the others, which are ignored rather than rejected.
pub fn load_config_map(path: &Path) -> Result<(BTreeMap<String, String>, Vec<String>), ScenarioError> {
    let bytes = std::fs::read(path).map_err(|source| ScenarioError::Read { path: path.to_path_buf(), source })?;
    parse_config_map(path, &bytes).map(|(agent, ignored, _)| (agent, ignored))
}

/// [`load_config_map`] on text already read (standard input); `name` is what errors call it.
pub fn parse_config_map_text(
    name: &Path,
    bytes: &[u8],
) -> Result<(BTreeMap<String, String>, Vec<String>), ScenarioError> {
    parse_config_map(name, bytes).map(|(agent, ignored, _)| (agent, ignored))
}

/// The modelled keys of a ConfigMap, the names of the others, and where each modelled value is.
type ConfigMapKeys = (BTreeMap<String, String>, Vec<String>, BTreeMap<String, (usize, usize)>);

fn parse_config_map(resolved: &Path, bytes: &[u8]) -> Result<ConfigMapKeys, ScenarioError> {
    let resolved = resolved.to_path_buf();
    let at_file =
        |line: usize, col: usize, message: String| ScenarioError::At { path: resolved.clone(), line, col, message };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, col) = line_col(bytes, e.valid_up_to());
        at_file(line, col, "the ConfigMap file is not UTF-8 text".into())
    })?;
    let loc = Locator::new(text, "ConfigMap").map_err(|e| at_file(e.pos.line, e.pos.col, e.message))?;
    let cm: RawConfigMap = serde_yaml::from_str(text).map_err(|e| from_serde(&resolved, &e))?;
    if cm.kind.as_deref() != Some("ConfigMap") {
        let p = loc.at(&[K("kind")]);
        let found = cm.kind.map_or("no kind".to_string(), |k| format!("kind \"{k}\""));
        return Err(at_file(p.line, p.col, format!("agent_file must be a ConfigMap manifest, found {found}")));
    }
    let mut agent = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut positions = BTreeMap::new();
    for (key, value) in cm.data {
        let p = loc.at(&[K("data"), K(&key)]);
        positions.insert(key.clone(), (p.line, p.col));
        if !config::known_keys().contains(&key.as_str()) {
            ignored.push(key);
            continue;
        }
        let Some(value) = value.0 else {
            return Err(at_file(p.line, p.col, format!("ConfigMap key \"{key}\" has no value")));
        };
        config::check_value(&key, &value)
            .map_err(|m| at_file(p.line, p.col, format!("ConfigMap key \"{key}\": {m}")))?;
        agent.insert(key, value);
    }
    Ok((agent, ignored, positions))
}

// ---------------------------------------------------------------------------------------------
// Topology

/// The links of the node at a point of the scenario, with their kind (`None`: a link whose
/// entry could not be read, known by name only).
type Links = BTreeMap<String, Option<LinkKind>>;

fn check_topology(cx: &Ctx, links: &[Option<LinkSpec>], routes: &[Option<RouteSpec>]) -> Links {
    let links_at = [K("topology"), K("links")];
    let mut known: Links = BTreeMap::new();
    let mut first: HashMap<String, Pos> = HashMap::new();
    // Names first, so that references can point forward. A veth peer kept in the node
    // namespace (`peer_in: node`) is a link of the node too.
    for (i, l) in links.iter().enumerate() {
        let at = with(&links_at, &[I(i)]);
        let Some(l) = l else {
            // Unreadable (its error is kept): known by name, so that references to it are not
            // reported too.
            if let Some(Kind::Scalar(name)) = cx.loc.node(&with(&at, &[K("name")])).map(|n| &n.kind) {
                known.insert(name.clone(), None);
            }
            continue;
        };
        let mut names = vec![(l.name.clone(), with(&at, &[K("name")]))];
        if l.kind == LinkKind::Veth && l.peer_in == Some(PeerIn::Node) {
            names.push((l.peer_name(), with(&at, &[K("peer")])));
        }
        for (name, name_at) in names {
            if let Err(m) = check_ifname(&name) {
                cx.push(cx.at(&name_at, m));
            }
            if let Some(p) = first.get(&name) {
                cx.push(cx.at(&name_at, format!("duplicate link name \"{name}\" (first defined at line {})", p.line)));
                continue;
            }
            first.insert(name.clone(), cx.loc.at(&name_at));
            known.insert(name, Some(l.kind));
        }
    }
    for (i, l) in links.iter().enumerate() {
        if let Some(l) = l {
            check_link(cx, &with(&links_at, &[I(i)]), l, &known);
        }
    }
    if links.iter().all(Option::is_some) {
        let all: Vec<LinkSpec> = links.iter().flatten().cloned().collect();
        cx.ok(check_cycles(cx, &all));
    }
    cx.ok(check_addresses(
        cx,
        links.iter().enumerate().filter_map(|(i, l)| l.as_ref().map(|l| (with(&links_at, &[I(i)]), l))),
    ));
    for (i, r) in routes.iter().enumerate() {
        if let Some(r) = r {
            check_route(cx, &[K("topology"), K("routes"), I(i)], r, &known);
        }
    }
    known
}

/// Rules for one link that need only the link and the names known so far.
fn check_link(cx: &Ctx, at: &[Seg], l: &LinkSpec, known: &Links) {
    let who = format!("link \"{}\"", l.name);
    let extra = kind_keys(l.kind);
    for (key, pos) in cx.loc.keys(at) {
        if !COMMON_LINK_KEYS.contains(&key) && !extra.contains(&key) {
            let valid_for: Vec<&str> =
                ALL_KINDS.iter().filter(|k| kind_keys(**k).contains(&key)).map(|k| k.as_str()).collect();
            cx.push(cx.err(
                pos,
                format!(
                    "{who}: key \"{key}\" is not valid for a {} link (it is for: {})",
                    l.kind.as_str(),
                    valid_for.join(", ")
                ),
            ));
        }
    }
    let required: &[&str] = match l.kind {
        LinkKind::Vlan => &["parent", "id"],
        LinkKind::Macvlan => &["parent"],
        LinkKind::Vxlan => &["vni"],
        LinkKind::Vrf => &["table"],
        _ => &[],
    };
    let given = |k: &str| match k {
        "parent" => l.parent.is_some(),
        "id" => l.id.is_some(),
        "vni" => l.vni.is_some(),
        _ => l.table.is_some(),
    };
    for missing in required.iter().filter(|k| !given(k)) {
        cx.push(cx.at(at, format!("{who}: a {} link needs \"{missing}\"", l.kind.as_str())));
    }
    if let Some(peer) = &l.peer {
        cx.ok(check_ifname(peer).map_err(|m| cx.at(&with(at, &[K("peer")]), format!("{who}: peer: {m}"))));
    }
    if let Some(mtu) = l.mtu {
        if !(68..=65535).contains(&mtu) {
            cx.push(cx.at(&with(at, &[K("mtu")]), format!("{who}: mtu {mtu} is out of range 68–65535")));
        }
    }
    if let Some(mac) = &l.mac {
        cx.ok(check_mac(mac).map_err(|m| cx.at(&with(at, &[K("mac")]), format!("{who}: {m}"))));
    }
    if let Some(id) = l.id {
        if !(1..=4094).contains(&id) {
            cx.push(cx.at(&with(at, &[K("id")]), format!("{who}: vlan id {id} is out of range 1–4094")));
        }
    }
    if let Some(p) = &l.protocol {
        if !VLAN_PROTOCOLS.contains(&p.as_str()) {
            cx.push(
                cx.at(&with(at, &[K("protocol")]), format!("{who}: {}", unknown("vlan protocol", p, VLAN_PROTOCOLS))),
            );
        }
    }
    if let Some(m) = &l.mode {
        let (what, list) =
            if l.kind == LinkKind::Bond { ("bond mode", BOND_MODES) } else { ("macvlan mode", MACVLAN_MODES) };
        if !list.contains(&m.as_str()) {
            cx.push(cx.at(&with(at, &[K("mode")]), format!("{who}: {}", unknown(what, m, list))));
        }
    }
    if let Some(vni) = l.vni {
        if vni > 0xFF_FFFF {
            cx.push(cx.at(&with(at, &[K("vni")]), format!("{who}: vni {vni} is out of range 0–16777215")));
        }
    }
    if l.table == Some(0) {
        cx.push(cx.at(&with(at, &[K("table")]), format!("{who}: vrf table must not be 0")));
    }
    if let Some(parent) = &l.parent {
        if !known.contains_key(parent) {
            cx.push(
                cx.at(&with(at, &[K("parent")]), format!("{who}: parent \"{parent}\" is not a link of this scenario")),
            );
        }
    }
    if let Some(master) = &l.master {
        match known.get(master) {
            None => cx.push(
                cx.at(&with(at, &[K("master")]), format!("{who}: master \"{master}\" is not a link of this scenario")),
            ),
            Some(Some(k)) if !matches!(k, LinkKind::Bond | LinkKind::Bridge | LinkKind::Vrf) => cx.push(cx.at(
                &with(at, &[K("master")]),
                format!(
                    "{who}: master \"{master}\" is a {} link; only a bond, bridge or vrf can be a master",
                    k.as_str()
                ),
            )),
            Some(_) => {}
        }
    }
    for (i, a) in l.addresses.iter().enumerate() {
        if a.parse::<IpNet>().is_err() {
            cx.push(cx.at(
                &with(at, &[K("addresses"), I(i)]),
                format!("{who}: address \"{a}\" is not a CIDR (an IPv4 or IPv6 address with /PREFIX)"),
            ));
        }
    }
}

/// Masters and parents must form no cycle: links are created references first.
fn check_cycles(cx: &Ctx, links: &[LinkSpec]) -> Result<(), ScenarioError> {
    let index: HashMap<&str, usize> = links.iter().enumerate().map(|(i, l)| (l.name.as_str(), i)).collect();
    let deps = |i: usize| -> Vec<usize> {
        let l = &links[i];
        [&l.master, &l.parent].into_iter().flatten().filter_map(|n| index.get(n.as_str()).copied()).collect()
    };
    // Peel off links whose references are all resolved; what remains sits on or behind a cycle.
    let mut left: BTreeSet<usize> = (0..links.len()).collect();
    loop {
        let ready: Vec<usize> = left.iter().copied().filter(|i| deps(*i).iter().all(|d| !left.contains(d))).collect();
        if ready.is_empty() {
            break;
        }
        for i in ready {
            left.remove(&i);
        }
    }
    let Some(&start) = left.iter().next() else { return Ok(()) };
    let mut walk = vec![start];
    let mut cur = start;
    loop {
        cur = deps(cur).into_iter().find(|d| left.contains(d)).unwrap_or(start);
        if let Some(p) = walk.iter().position(|x| *x == cur) {
            let cycle = &walk[p..];
            let mut names: Vec<&str> = cycle.iter().map(|i| links[*i].name.as_str()).collect();
            names.push(names[0]);
            let l = &links[cycle[0]];
            let next = &links[cycle.get(1).copied().unwrap_or(cycle[0])].name;
            let key = if l.master.as_deref() == Some(next) { "master" } else { "parent" };
            return Err(cx.at(
                &[K("topology"), K("links"), I(cycle[0]), K(key)],
                format!("links form a cycle of masters/parents: {}", names.join(" -> ")),
            ));
        }
        walk.push(cur);
    }
}

fn check_addresses<'s, 'a>(
    cx: &Ctx,
    links: impl Iterator<Item = (Vec<Seg<'s>>, &'a LinkSpec)>,
) -> Result<(), ScenarioError> {
    let mut seen: HashMap<IpAddr, &str> = HashMap::new();
    for (at, l) in links {
        for (i, a) in l.addresses.iter().enumerate() {
            let Ok(net) = a.parse::<IpNet>() else { continue };
            if let Some(other) = seen.insert(net.addr(), &l.name) {
                cx.push(cx.at(
                    &with(&at, &[K("addresses"), I(i)]),
                    format!("link \"{}\": address {} is already on link \"{other}\"", l.name, net.addr()),
                ));
                seen.insert(net.addr(), other);
            }
        }
    }
    Ok(())
}

fn check_route(cx: &Ctx, at: &[Seg], r: &RouteSpec, known: &Links) {
    let who = format!("route to {}", r.dst);
    let dst_family = if r.dst == "default" {
        None
    } else {
        match r.dst.parse::<IpNet>() {
            Ok(n) => Some(n.addr().is_ipv4()),
            Err(_) => {
                cx.push(
                    cx.at(&with(at, &[K("dst")]), format!("route dst \"{}\" is neither `default` nor a CIDR", r.dst)),
                );
                None
            }
        }
    };
    if let Some(via) = &r.via {
        match via.parse::<IpAddr>() {
            Err(_) => cx.push(cx.at(&with(at, &[K("via")]), format!("{who}: via \"{via}\" is not an IP address"))),
            Ok(ip) if dst_family.is_some_and(|v4| v4 != ip.is_ipv4()) => cx.push(
                cx.at(&with(at, &[K("via")]), format!("{who}: via {via} is not of the destination's address family")),
            ),
            Ok(_) => {}
        }
    }
    if !known.contains_key(&r.dev) {
        cx.push(cx.at(&with(at, &[K("dev")]), format!("{who}: dev \"{}\" is not a link of this scenario", r.dev)));
    }
    if let Some(t) = &r.table {
        let bad = match t.id() {
            Some(0) | None => true,
            Some(_) => matches!(t, RouteTable::Name(n) if n != "main" && n != "local"),
        };
        if bad {
            cx.push(
                cx.at(&with(at, &[K("table")]), format!("{who}: table must be `main`, `local` or a number from 1")),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods and steps

fn check_pod(cx: &Ctx, at: &[Seg], pod: &PodSpec, pods: &BTreeMap<String, Pos>) -> Result<(), ScenarioError> {
    check_dns_subdomain("pod name", &pod.name).map_err(|m| cx.at(&with(at, &[K("name")]), m))?;
    check_dns_label("pod namespace", &pod.namespace).map_err(|m| cx.at(&with(at, &[K("namespace")]), m))?;
    if let Some(p) = pods.get(&pod.key()) {
        return Err(
            cx.at(&with(at, &[K("name")]), format!("pod {} already exists (defined at line {})", pod.key(), p.line))
        );
    }
    Ok(())
}

/// `NAMESPACE/NAME`, or `NAME` in namespace `default`.
fn pod_key(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("default/{name}")
    }
}

/// A policy fixture as the agent will load it (against the schemas in use: the embedded ones or
/// `--crd`'s); the message carries the fixture's `path:line:col` of each problem.
fn check_policy_fixture(path: &Path) -> Result<(), String> {
    match crate::policy::load_fixture(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string().replace('\n', "\n  ")),
    }
}

/// One step: its action (`None` when invalid; the errors are kept) and its expectations,
/// checked against the links and pods of that point of the scenario.
fn check_step(
    cx: &Ctx,
    i: usize,
    mut raw: RawStep,
    base: &Path,
    links: &mut Links,
    pods: &mut BTreeMap<String, Pos>,
) -> Option<Step> {
    let at = [K("steps"), I(i)];
    let line = cx.loc.at(&at).line;
    let expect = raw.expect.take().unwrap_or_default();
    let action = cx.ok(step_action(cx, i, raw, expect.error.is_some(), base, links, pods));
    if let Some(a) = action.as_ref().filter(|a| expect.traffic.is_some() && !matches!(a, Action::Traffic(_))) {
        let message = format!("expect.traffic is only for a traffic step, not after `{}`", a.key());
        cx.push(cx.key_at(&with(&at, &[K("expect"), K("traffic")]), message));
    }
    check_expect(cx, &with(&at, &[K("expect")]), &expect, links, pods);
    Some(Step { action: action?, expect, line })
}

fn step_action(
    cx: &Ctx,
    i: usize,
    raw: RawStep,
    expects_error: bool,
    base: &Path,
    links: &mut Links,
    pods: &mut BTreeMap<String, Pos>,
) -> Result<Action, ScenarioError> {
    let at = [K("steps"), I(i)];
    let actions: Vec<(&str, Pos)> = cx.loc.keys(&at).into_iter().filter(|(k, _)| ACTION_KEYS.contains(k)).collect();
    match actions.len() {
        0 => {
            return Err(
                cx.at(&at, format!("step {} has no action; give exactly one of: {}", i + 1, ACTION_KEYS.join(", ")))
            )
        }
        1 => {}
        _ => {
            let names: Vec<&str> = actions.iter().map(|(k, _)| *k).collect();
            return Err(cx.err(
                actions[1].1,
                format!("step {} has {} actions ({}); give exactly one per step", i + 1, names.len(), names.join(", ")),
            ));
        }
    }
    let key = actions[0].0;
    let a = |more: &[Seg<'static>]| with(&at, &with(&[K(key)], more));
    let fixture = |p: &str| -> Result<PathBuf, ScenarioError> {
        let resolved = base.join(p);
        if resolved.is_file() {
            Ok(resolved)
        } else {
            Err(cx.at(&a(&[]), format!("{key}: fixture \"{p}\" does not exist (resolved to {})", resolved.display())))
        }
    };
    let action = match key {
        "start" => Action::Start,
        "stop" => Action::Stop,
        "cleanup" => Action::Cleanup,
        "restart" => {
            let r = raw.restart.unwrap_or_default();
            let mut agent = BTreeMap::new();
            for (k, v) in r.agent {
                let kat = with(&at, &[K("restart"), K("agent"), K(&k)]);
                if cx.ok(check_agent_key(cx, &kat, &k)).is_none() {
                    continue;
                }
                if let Some(v) = &v.0 {
                    if let Err(m) = config::check_value(&k, v) {
                        cx.push(cx.at(&kat, format!("agent key \"{k}\": {m}")));
                    }
                }
                agent.insert(k, v.0);
            }
            if let Some(p) = &r.profile {
                cx.ok(check_profile(p).map_err(|m| cx.at(&a(&[K("profile")]), m)));
            }
            Action::Restart { agent, profile: r.profile }
        }
        "apply" | "delete" => {
            let p = if key == "apply" { raw.apply } else { raw.delete };
            let p = p.ok_or_else(|| cx.at(&a(&[]), format!("{key} needs the path of a policy fixture")))?;
            let resolved = fixture(&p)?;
            // A step that expects an error may name an invalid fixture on purpose.
            if !expects_error {
                check_policy_fixture(&resolved).map_err(|m| cx.at(&a(&[]), format!("{key}: {m}")))?;
            }
            if key == "apply" {
                Action::Apply(resolved)
            } else {
                Action::Delete(resolved)
            }
        }
        "add-pod" => {
            let pod = raw.add_pod.ok_or_else(|| cx.at(&a(&[]), "add-pod needs `{name, namespace, labels}`"))?;
            cx.ok(check_pod(cx, &a(&[]), &pod, pods));
            pods.insert(pod.key(), cx.loc.at(&a(&[])));
            Action::AddPod(pod)
        }
        "delete-pod" => {
            let name = raw.delete_pod.ok_or_else(|| cx.at(&a(&[]), "delete-pod needs a pod name"))?;
            let k = pod_key(&name);
            if pods.remove(&k).is_none() {
                return Err(cx.at(&a(&[]), format!("delete-pod: pod {k} does not exist at this step")));
            }
            Action::DeletePod(k)
        }
        "link" => link_action(cx, &a(&[]), raw.link, links)?,
        "foreign" => {
            let f = raw.foreign.ok_or_else(|| cx.at(&a(&[]), "foreign needs `{device, direction, program}`"))?;
            // Besides the scenario's links: the agent's own devices, and pods' node-side veths.
            let known = links.contains_key(&f.device)
                || f.device.starts_with("cilium_")
                || f.device.strip_prefix("pod:").is_some_and(|p| pods.contains_key(p));
            if !known {
                return Err(cx.at(
                    &a(&[K("device")]),
                    format!("foreign: device \"{}\" is neither a link of this scenario at this step, a cilium_ device nor pod:NAMESPACE/NAME of a pod", f.device),
                ));
            }
            let fits = match f.program.as_str() {
                "foreign_tc" => f.direction != ForeignDirection::Xdp,
                "foreign_xdp" => f.direction == ForeignDirection::Xdp,
                other => {
                    return Err(cx.at(
                        &a(&[K("program")]),
                        format!("foreign: {}", unknown("program", other, &["foreign_tc", "foreign_xdp"])),
                    ))
                }
            };
            if !fits {
                return Err(cx.at(
                    &a(&[K("direction")]),
                    "foreign: foreign_tc goes with direction ingress or egress, foreign_xdp with direction xdp",
                ));
            }
            if f.mode.is_some() && f.program != "foreign_xdp" {
                return Err(cx.at(&a(&[K("mode")]), "foreign: mode (native or generic) is for foreign_xdp only"));
            }
            Action::Foreign { device: f.device, direction: f.direction, program: f.program, mode: f.mode }
        }
        "route" => {
            let keys = cx.loc.keys(&a(&[]));
            let r = match raw.route {
                Some(r) if keys.len() == 1 => r,
                _ => return Err(cx.at(&a(&[]), "route needs exactly one of `add: ROUTE`, `delete: ROUTE`")),
            };
            match (r.add, r.delete) {
                (Some(route), None) => {
                    check_route(cx, &a(&[K("add")]), &route, links);
                    Action::RouteAdd(route)
                }
                (None, Some(route)) => {
                    check_route(cx, &a(&[K("delete")]), &route, links);
                    Action::RouteDelete(route)
                }
                _ => return Err(cx.at(&a(&[]), "route needs exactly one of `add: ROUTE`, `delete: ROUTE`")),
            }
        }
        "traffic" => {
            let t = raw.traffic.ok_or_else(|| cx.at(&a(&[]), "traffic needs `{from, link, to}`"))?;
            Action::Traffic(check_traffic(cx, &a(&[]), t, links, pods)?)
        }
        _ => unreachable!("action keys are listed in ACTION_KEYS"),
    };
    Ok(action)
}

fn check_traffic(
    cx: &Ctx,
    at: &[Seg],
    t: RawTraffic,
    links: &Links,
    pods: &BTreeMap<String, Pos>,
) -> Result<TrafficSpec, ScenarioError> {
    let a = |more: &[Seg<'static>]| with(at, more);
    let from = match t.from.as_str() {
        "outside" => TrafficFrom::Outside,
        "node" => TrafficFrom::Node,
        other => match other.strip_prefix("pod:") {
            Some(p) => {
                let k = pod_key(p);
                if !pods.contains_key(&k) {
                    return Err(cx.at(&a(&[K("from")]), format!("traffic: pod {k} does not exist at this step")));
                }
                TrafficFrom::Pod(k)
            }
            None => {
                return Err(cx.at(
                    &a(&[K("from")]),
                    format!("traffic: from \"{other}\" is none of `outside`, `node`, `pod:NAMESPACE/NAME`"),
                ))
            }
        },
    };
    match links.get(&t.link) {
        // A link whose entry could not be read has its error already.
        Some(Some(LinkKind::Veth) | None) => {}
        Some(Some(kind)) => {
            return Err(cx.at(
                &a(&[K("link")]),
                format!(
                    "traffic: link \"{}\" is a {}, not a veth: packets enter and leave through a veth's peer in the wire namespace (name a bond slave, not the bond)",
                    t.link,
                    kind.as_str()
                ),
            ))
        }
        None => {
            let known: Vec<&str> = links.keys().map(String::as_str).collect();
            let hint = suggest(&t.link, known.iter().copied()).map(|s| format!("; did you mean \"{s}\"?")).unwrap_or_default();
            return Err(cx.at(
                &a(&[K("link")]),
                format!("traffic: link \"{}\" is not a link of this scenario at this step{hint}", t.link),
            ));
        }
    }
    let vlan = match t.vlan {
        None => None,
        Some(v @ 1..=4094) => Some(v as u16),
        Some(v) => return Err(cx.at(&a(&[K("vlan")]), format!("traffic: vlan id {v} is outside 1-4094"))),
    };
    let to: IpAddr =
        t.to.parse().map_err(|_| cx.at(&a(&[K("to")]), format!("traffic: to \"{}\" is not an IP address", t.to)))?;
    if to.is_unspecified() || to.is_multicast() || to.is_loopback() {
        return Err(cx.at(&a(&[K("to")]), format!("traffic: to {to} must be a unicast address")));
    }
    let proto = match t.proto.as_deref() {
        None | Some("udp") => TrafficProto::Udp,
        Some("tcp") => TrafficProto::Tcp,
        Some("icmp") => TrafficProto::Icmp,
        Some(other) => {
            return Err(
                cx.at(&a(&[K("proto")]), format!("traffic: {}", unknown("proto", other, &["udp", "tcp", "icmp"])))
            )
        }
    };
    let port = match (proto, t.port) {
        (_, None) => 8080,
        (TrafficProto::Icmp, Some(_)) => {
            return Err(cx.at(&a(&[K("port")]), "traffic: port is for udp and tcp, icmp has none"))
        }
        (_, Some(p @ 1..=65535)) => p as u16,
        (_, Some(p)) => return Err(cx.at(&a(&[K("port")]), format!("traffic: port {p} is outside 1-65535"))),
    };
    let count = match t.count {
        None => 3,
        Some(c @ 1..=MAX_TRAFFIC_COUNT) => c as u32,
        Some(c) => return Err(cx.at(&a(&[K("count")]), format!("traffic: count {c} is outside 1-{MAX_TRAFFIC_COUNT}"))),
    };
    Ok(TrafficSpec { from, link: t.link, vlan, to, proto, port, count })
}

fn link_action(cx: &Ctx, at: &[Seg], raw: Option<RawLinkAction>, links: &mut Links) -> Result<Action, ScenarioError> {
    let keys = cx.loc.keys(at);
    let raw = match raw {
        Some(r) if keys.len() == 1 => r,
        _ => return Err(cx.at(at, "link needs exactly one of `add: LINK`, `delete: NAME`, `set: {name, up}`")),
    };
    if let Some(l) = raw.add {
        let lat = with(at, &[K("add")]);
        check_ifname(&l.name).map_err(|m| cx.at(&with(&lat, &[K("name")]), m))?;
        if links.contains_key(&l.name) {
            return Err(
                cx.at(&with(&lat, &[K("name")]), format!("link add: link \"{}\" already exists at this step", l.name))
            );
        }
        check_link(cx, &lat, &l, links);
        if l.master.as_deref() == Some(&l.name) || l.parent.as_deref() == Some(&l.name) {
            return Err(cx.at(&lat, format!("link \"{}\" refers to itself", l.name)));
        }
        links.insert(l.name.clone(), Some(l.kind));
        return Ok(Action::LinkAdd(l));
    }
    if let Some(name) = raw.delete {
        if links.remove(&name).is_none() {
            return Err(cx.at(&with(at, &[K("delete")]), format!("link delete: \"{name}\" is not a link at this step")));
        }
        return Ok(Action::LinkDelete(name));
    }
    if let Some(s) = raw.set {
        if !links.contains_key(&s.name) {
            return Err(cx.at(
                &with(at, &[K("set"), K("name")]),
                format!("link set: \"{}\" is not a link at this step", s.name),
            ));
        }
        return Ok(Action::LinkSet { name: s.name, up: s.up });
    }
    Err(cx.at(at, "link needs exactly one of `add: LINK`, `delete: NAME`, `set: {name, up}`"))
}

/// The devices the agent makes itself, which expectations may name besides the node's links
/// and its pods: `cilium_host`/`cilium_net`, the encapsulation devices and WireGuard's.
pub fn agent_devices() -> [&'static str; 5] {
    [
        crate::datapath::HOST_DEVICE,
        crate::datapath::SECOND_HOST_DEVICE,
        config::TunnelProtocol::Vxlan.device(),
        config::TunnelProtocol::Geneve.device(),
        config::WIREGUARD_DEVICE,
    ]
}

/// The program names an expectation may give: the plan's programs and the foreign ones.
fn program_names() -> Vec<&'static str> {
    crate::datapath::programs().collect()
}

/// What an expectation's program entry is: its full name and the hooks it can be on.
fn known_program(name: &str) -> Option<(&'static str, &'static [&'static str])> {
    // The kernel keeps 15 bytes of a name, and an expectation may give those.
    let full = program_names().into_iter().find(|n| *n == name || (name.len() == 15 && n.starts_with(name)))?;
    let hooks: &[&str] = match full {
        "foreign_tc" => &["ingress", "egress"],
        "foreign_xdp" => &["xdp"],
        _ => match crate::datapath::LOADER_PROGRAMS.iter().find(|(p, _)| p.symbol == full)?.1 {
            crate::observed::Hook::Ingress => &["ingress"],
            crate::observed::Hook::Egress => &["egress"],
            crate::observed::Hook::Xdp => &["xdp"],
        },
    };
    Some((full, hooks))
}

fn check_expect(cx: &Ctx, at: &[Seg], e: &Expect, links: &Links, pods: &BTreeMap<String, Pos>) {
    let agent = agent_devices();
    for (i, d) in e.devices.iter().flatten().enumerate() {
        let dat = with(at, &[K("devices"), I(i)]);
        if let Err(m) = check_ifname(d) {
            cx.push(cx.at(&dat, format!("devices: {m}")));
        } else if !links.contains_key(d) && !agent.contains(&d.as_str()) {
            cx.push(cx.at(&dat, not_a_link("devices", d, links.keys().map(String::as_str))));
        }
    }
    for (dev, hooks) in e.attachments.iter().flatten() {
        let dat = with(at, &[K("attachments"), K(dev)]);
        let pod = dev.strip_prefix("pod:");
        if let Some(pod) = pod {
            if !pods.contains_key(pod) {
                let names: Vec<String> = pods.keys().map(|k| format!("pod:{k}")).collect();
                let hint = suggest(dev, names.iter().map(String::as_str))
                    .map_or(String::new(), |s| format!(", did you mean \"{s}\"?"));
                cx.push(
                    cx.key_at(&dat, format!("attachments: \"{dev}\" names no pod of this scenario at this step{hint}")),
                );
            }
        } else if let Err(m) = check_ifname(dev) {
            cx.push(cx.key_at(&dat, format!("attachments: {m}")));
        } else if !links.contains_key(dev) && !agent.contains(&dev.as_str()) {
            let pod_names: Vec<String> = pods.keys().map(|k| format!("pod:{k}")).collect();
            let candidates = links.keys().map(String::as_str).chain(agent).chain(pod_names.iter().map(String::as_str));
            cx.push(cx.key_at(&dat, not_a_link("attachments", dev, candidates)));
        }
        if let DeviceExpect::Hooks(h) = hooks {
            for (hook, list) in [("ingress", &h.ingress), ("egress", &h.egress)] {
                for (i, p) in list.iter().flatten().enumerate() {
                    check_program(cx, &with(&dat, &[K(hook), I(i)]), p, hook, pod.is_some());
                }
            }
            if let Some(XdpExpect::Program(p)) = &h.xdp {
                check_program(cx, &with(&dat, &[K("xdp")]), p, "xdp", pod.is_some());
            }
        }
    }
    if let Some(t) = &e.traffic {
        for (what, map) in [("programs", &t.programs), ("drops", &t.drops)] {
            for (dev, hooks) in map.iter().flatten() {
                let dat = with(at, &[K("traffic"), K(what), K(dev)]);
                let known = links.contains_key(dev)
                    || dev.starts_with("cilium_")
                    || dev.strip_prefix("pod:").is_some_and(|p| pods.contains_key(p));
                if !known {
                    let names: Vec<&str> = links.keys().map(String::as_str).collect();
                    let hint = suggest(dev, names.iter().copied())
                        .map(|s| format!("; did you mean \"{s}\"?"))
                        .unwrap_or_default();
                    cx.push(cx.key_at(
                        &dat,
                        format!(
                            "traffic.{what}: \"{dev}\" is neither a link of this scenario at this step, a cilium_ device nor pod:NAMESPACE/NAME of a pod{hint}"
                        ),
                    ));
                    continue;
                }
                for (hook, progs) in [("ingress", &hooks.ingress), ("egress", &hooks.egress), ("xdp", &hooks.xdp)] {
                    if progs.iter().flat_map(|m| m.keys()).any(|p| p.is_empty()) {
                        cx.push(cx.key_at(&with(&dat, &[K(hook)]), "a program name must not be empty"));
                    }
                }
            }
        }
    }
    for (i, r) in e.regenerated.iter().flatten().enumerate() {
        if r != "host" && !pods.contains_key(r) {
            cx.push(cx.at(
                &with(at, &[K("regenerated"), I(i)]),
                format!("regenerated: \"{r}\" is neither `host` nor NAMESPACE/NAME of a pod of this scenario"),
            ));
        }
    }
}

/// `WHAT: "name" is not a link of this scenario at this step (...)`, with a "did you mean".
fn not_a_link<'a>(what: &str, name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let hint = suggest(name, candidates).map_or(String::new(), |s| format!(", did you mean \"{s}\"?"));
    format!(
        "{what}: \"{name}\" is neither a link of this scenario at this step nor a device the agent makes ({}){hint}",
        agent_devices().join(", ")
    )
}

/// A program entry under `hook` of a device (`on_pod`: a pod's device): a program some profile
/// attaches, or another tool's, on a hook it can be on.
fn check_program(cx: &Ctx, at: &[Seg], p: &ProgramExpect, hook: &str, on_pod: bool) {
    let xdp = hook == "xdp";
    // The long form's `program` value, or the bare name.
    let name_at =
        if cx.loc.node(&with(at, &[K("program")])).is_some() { with(at, &[K("program")]) } else { at.to_vec() };
    if p.program.is_empty() {
        cx.push(cx.at(at, "a program name must not be empty"));
    } else {
        match known_program(&p.program) {
            None => cx.push(cx.at(
                &name_at,
                format!("{} (no profile attaches it)", unknown("program", &p.program, &program_names())),
            )),
            Some((full, hooks)) if !hooks.contains(&hook) => {
                cx.push(cx.at(&name_at, format!("{full} is attached on {}, never on {hook}", hooks.join(" or "))))
            }
            Some((full, _)) => {
                let container = full.ends_with("_container");
                if on_pod && !container && !full.starts_with("foreign_") {
                    cx.push(cx.at(&name_at, format!("{full} is never attached to a pod's device (the pods get cil_from_container and cil_to_container)")));
                } else if !on_pod && container {
                    cx.push(cx.at(
                        &name_at,
                        format!("{full} is attached to pods' devices only (write the device as pod:NAMESPACE/NAME)"),
                    ));
                }
            }
        }
    }
    let mechanisms: &[&str] = if xdp { &["xdp"] } else { &["tc", "tcx"] };
    if let Some(m) = &p.mechanism {
        if !mechanisms.contains(&m.as_str()) {
            cx.push(cx.at(&with(at, &[K("mechanism")]), unknown("mechanism", m, mechanisms)));
        }
    }
    if let Some(m) = &p.mode {
        if !xdp {
            cx.push(cx.key_at(&with(at, &[K("mode")]), "`mode` is only for xdp programs"));
        } else if !["native", "generic"].contains(&m.as_str()) {
            cx.push(cx.at(&with(at, &[K("mode")]), unknown("xdp mode", m, &["native", "generic"])));
        }
    }
}

/// Expectations that are valid but most likely not meant: programs expected on an agent
/// device that the configuration never makes, at any step (`cilium_geneve` without
/// `tunnel-protocol: geneve`, `cilium_wg0` without `enable-wireguard`).
fn expectation_warnings(cx: &Ctx, agent: &BTreeMap<String, String>, steps: &[Step]) -> Vec<String> {
    let mut values: Vec<(&str, &str)> = agent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for s in steps {
        if let Action::Restart { agent, .. } = &s.action {
            values.extend(agent.iter().filter_map(|(k, v)| v.as_deref().map(|v| (k.as_str(), v))));
        }
    }
    let ever = |key: &str, value: &str| values.iter().any(|(k, v)| *k == key && v.trim().eq_ignore_ascii_case(value));
    let made = |dev: &str| match dev {
        "cilium_geneve" => ever("tunnel-protocol", "geneve") || ever("tunnel", "geneve"),
        d if d == config::WIREGUARD_DEVICE => ever("enable-wireguard", "true"),
        _ => true,
    };
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        for (dev, hooks) in s.expect.attachments.iter().flatten() {
            let DeviceExpect::Hooks(h) = hooks else { continue };
            let expects_some = [&h.ingress, &h.egress].iter().any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
                || matches!(h.xdp, Some(XdpExpect::Program(_)));
            if expects_some && !made(dev) {
                let p = cx.loc.key_at(&[K("steps"), I(i), K("expect"), K("attachments"), K(dev)]);
                out.push(format!(
                    "{}:{}:{}: warning: programs expected on {dev}, which this configuration never makes (the agent makes it only with {})",
                    cx.path.display(),
                    p.line,
                    p.col,
                    if dev == "cilium_geneve" { "`tunnel-protocol: geneve`" } else { "`enable-wireguard: \"true\"`" }
                ));
            }
        }
    }
    out
}

/// The error for a scenario whose name an earlier file of the same check already uses, placed
/// at its `name` key (or the file's start when the name is the file stem).
pub fn name_taken(s: &Scenario, first: &Path) -> ScenarioError {
    let pos = std::fs::read(&s.path)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| Locator::new(&t, "scenario").ok())
        .map_or(Pos::START, |l| l.at(&[K("name")]));
    ScenarioError::At {
        path: s.path.clone(),
        line: pos.line,
        col: pos.col,
        message: format!("scenario name \"{}\" is already used by {}", s.name, first.display()),
    }
}
