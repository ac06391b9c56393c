//! Agent configuration: `cilium-config` ConfigMap keys and string values → typed settings, and
//! the settings upstream derives from them (NodePort after kube-proxy-replacement handling,
//! `AreDevicesRequired`, `DirectRoutingDeviceRequired`).
//!
//! The start-up sequence is the one of the v1.14.4 agent (`daemon/cmd/daemon_main.go initEnv`,
//! `pkg/option/config.go Populate/Validate`, `daemon/cmd/kube_proxy_replacement.go`,
//! `daemon/cmd/daemon.go newDaemon`), with the later profiles' differences keyed on
//! [`Profile`]. Kernel probes are assumed to succeed (a recent kernel).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Serialize;

use crate::profile::{Change, Profile};

/// Name of the WireGuard device the agent creates (`wgTypes.IfaceName`).
pub const WIREGUARD_DEVICE: &str = "cilium_wg0";

/// The ConfigMap keys of the six features that make v1.14.4's `AreDevicesRequired` true
/// (pkg/option/config.go); the flag matrix of `ci/bench` iterates these.
pub const V1_14_4_DEVICE_FEATURES: [&str; 6] = [
    "enable-node-port",
    "enable-host-firewall",
    "enable-bandwidth-manager",
    "enable-wireguard",
    "enable-high-scale-ipcache",
    "enable-l2-announcements",
];

/// ConfigMap keys the profiles model. Scenario validation rejects any other key in `agent:`.
pub fn known_keys() -> &'static [&'static str] {
    static KEYS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
        let mut keys = vec!["kube-proxy-replacement"];
        keys.extend(V1_14_4_DEVICE_FEATURES);
        keys.extend(OTHER_KEYS);
        keys
    });
    &KEYS
}

/// [`known_keys`] after kube-proxy-replacement and the six device-requiring features.
const OTHER_KEYS: &[&str] = &[
    "devices",
    "direct-routing-device",
    "enable-host-legacy-routing",
    "enable-ipv4",
    "enable-ipv6",
    "enable-ipv6-ndp",
    "ipv6-mcast-device",
    "node-port-acceleration",
    "encrypt-node",
    "enable-endpoint-routes",
    "bpf-filter-priority",
    "vlan-bpf-bypass",
    "enable-envoy-config",
    "enable-ipsec",
    "enable-bpf-masquerade",
    "routing-mode",
    "tunnel",
    "node-port-mode",
    "enable-runtime-device-detection",
    "enable-tcx",
    "force-device-detection",
    "datapath-mode",
    // Added by the rules: keys whose value decides whether the agent starts at all.
    "tunnel-protocol",
    "bpf-lb-acceleration",
    "bpf-lb-mode",
    "bpf-lb-dsr-dispatch",
    "enable-ipv4-masquerade",
    "enable-ipv6-masquerade",
    "ipv4-native-routing-cidr",
    "ipv6-native-routing-cidr",
    "enable-ipv4-egress-gateway",
    "enable-remote-node-identity",
    "enable-well-known-identities",
    "bpf-lb-sock",
    "enable-l7-proxy",
    "tunnel-port",
];

/// What kind of value a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    /// A list of interface names separated by white space (`strings.Fields`).
    Names,
    Name,
    Priority,
    /// A UDP port, 0 meaning the protocol's default.
    Port,
    VlanIds,
    Cidr,
    OneOf(&'static [&'static str]),
    /// Any string: the agent reads it as one and decides at start-up ([`start_refusal`]).
    Text,
}

fn kind_of(key: &str) -> Option<Kind> {
    Some(match key {
        "devices" => Kind::Names,
        "direct-routing-device" | "ipv6-mcast-device" => Kind::Name,
        "bpf-filter-priority" => Kind::Priority,
        "tunnel-port" => Kind::Port,
        "vlan-bpf-bypass" => Kind::VlanIds,
        "ipv4-native-routing-cidr" | "ipv6-native-routing-cidr" => Kind::Cidr,
        // Which values the agent takes depends on the profile: a refusal at start-up, not a type.
        "kube-proxy-replacement" => Kind::Text,
        // Refused at start-up, by kube-proxy-replacement's init or the XDP cell (v1.17+).
        "node-port-acceleration" | "bpf-lb-acceleration" => Kind::Text,
        "routing-mode" => Kind::OneOf(&["native", "tunnel"]),
        "tunnel" => Kind::OneOf(&["vxlan", "geneve", "disabled"]),
        "tunnel-protocol" => Kind::OneOf(&["vxlan", "geneve"]),
        "node-port-mode" | "bpf-lb-mode" => Kind::OneOf(&["snat", "dsr", "hybrid"]),
        "bpf-lb-dsr-dispatch" => Kind::OneOf(&["opt", "ipip", "geneve"]),
        "datapath-mode" => Kind::OneOf(&["veth", "lb-only"]),
        k if known_keys().contains(&k) => Kind::Bool,
        _ => return None,
    })
}

/// Go's `strconv.ParseBool`, which the agent's ConfigMap validation uses.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Checks one value's type (`"true"`/`"false"` for booleans, a number for priorities, ...).
/// Returns a message that says what is accepted. Keys the profiles do not model are not
/// checked here ([`known_keys`] is what rejects them).
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    let Some(kind) = kind_of(key) else { return Ok(()) };
    let v = value.trim();
    let ok = match kind {
        Kind::Bool => parse_bool(v).is_some(),
        Kind::Names => v.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()).all(valid_name_entry),
        Kind::Name => v.is_empty() || v.split(',').all(valid_name_entry),
        Kind::Priority => matches!(v.parse::<u32>(), Ok(1..=65535)),
        Kind::Port => v.parse::<u16>().is_ok(),
        Kind::VlanIds => v.split_whitespace().all(|s| matches!(s.parse::<u16>(), Ok(0..=4094))),
        Kind::Cidr => v.is_empty() || v.parse::<IpNet>().is_ok(),
        Kind::OneOf(values) => values.contains(&v),
        Kind::Text => true,
    };
    if ok {
        return Ok(());
    }
    Err(match kind {
        // Upstream reads a bad boolean as false, silently: invalid input, with the likely intent.
        Kind::Bool => match did_you_mean(v, &["true", "false"]) {
            Some(s) => {
                format!("invalid value {value:?} for {key}: expected \"true\" or \"false\", did you mean \"{s}\"?")
            }
            None => format!("invalid value {value:?} for {key}: expected \"true\" or \"false\""),
        },
        Kind::Names => format!(
            "invalid value {value:?} for {key}: expected interface names (at most 15 bytes, \
             '+' as a trailing wildcard) separated by spaces (v1.16 also takes commas)"
        ),
        Kind::Name => format!("invalid value {value:?} for {key}: expected one interface name"),
        Kind::Priority => {
            format!("invalid value {value:?} for {key}: expected an integer from 1 to 65535")
        }
        Kind::Port => format!("invalid value {value:?} for {key}: expected a port from 0 to 65535"),
        Kind::VlanIds => format!(
            "invalid value {value:?} for {key}: expected VLAN ids from 0 to 4094 separated by \
             spaces (0 allows every VLAN)"
        ),
        Kind::Cidr => format!("invalid value {value:?} for {key}: expected a CIDR"),
        Kind::OneOf(values) => {
            format!("invalid value {value:?} for {key}: expected one of {}", values.join(", "))
        }
        Kind::Text => unreachable!("any text is accepted"),
    })
}

/// The closest of `candidates` to `word`, when it looks like a typo of it.
fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    crate::scenario::suggest(word, candidates.iter().copied())
}

/// The values of `kube-proxy-replacement` the profile's agent starts with: v1.14.4 and v1.15
/// take `strict`, `partial` and `disabled` (deprecated) besides `true` and `false`; v1.16 only
/// `true` and `false`. Compared as upstream compares them: exactly (`True` is refused).
pub fn kube_proxy_replacement_values(profile: Profile) -> &'static [&'static str] {
    if profile.has(Change::KprGoBool) {
        &["true", "false", "1", "t", "T", "TRUE", "True", "0", "f", "F", "FALSE", "False"]
    } else if profile.has(Change::KprOnlyTrueFalse) {
        &["true", "false"]
    } else {
        &["strict", "partial", "disabled", "true", "false"]
    }
}

/// Why the profile's agent refuses to start with `value` for `key`, in upstream's words: a value
/// that is well-formed ConfigMap input (so not invalid input) but that the agent rejects at
/// start-up, making the `start` step (or a `restart` that brings it) fail. `None`: it starts.
pub fn start_refusal(key: &str, value: &str, profile: Profile) -> Option<String> {
    match key {
        "kube-proxy-replacement" => {
            let v = value.trim();
            if profile.has(Change::KprGoBool) {
                // v1.19 InitConfig: validateConfigMap's cast.ToBoolE, fatal before anything starts.
                return parse_bool(v).is_none().then(|| {
                    format!(
                        "Incorrect config-map flag value: option kube-proxy-replacement: \
                         strconv.ParseBool: parsing {v:?}: invalid syntax"
                    )
                });
            }
            if profile.has(Change::KprCellMessage) {
                return (!kube_proxy_replacement_values(profile).contains(&v))
                    .then(|| "invalid value for kube-proxy-replacement".to_string());
            }
            (!kube_proxy_replacement_values(profile).contains(&v)).then(|| {
                format!(
                    "unable to initialize kube-proxy replacement options: \
                     Invalid value for --kube-proxy-replacement: {v}"
                )
            })
        }
        // v1.17+ the XDP cell maps the value to a mode, NodePort or not, and fails the hive
        // on any other (v1.17.10 / v1.18.10 / v1.19.4 pkg/datapath/xdp/cell.go L36-49). Older
        // releases check it in kube-proxy-replacement's init, only with NodePort on
        // ([`Settings::validate`]).
        "node-port-acceleration" | "bpf-lb-acceleration" if profile.has(Change::XdpModeFromAcceleration) => {
            (!ACCELERATION_VALUES.contains(&value))
                .then(|| format!("Invalid value for --node-port-acceleration: {value}"))
        }
        _ => None,
    }
}

/// The values of `bpf-lb-acceleration` some release takes (`best-effort` from v1.15; `""` is
/// the flag left empty).
const ACCELERATION_VALUES: [&str; 5] = ["", "disabled", "native", "best-effort", "testing-only"];

/// `start_refusal`'s message with a hint for a likely typo (for `hostdp check`'s warning).
pub fn start_refusal_hint(key: &str, value: &str, profile: Profile) -> Option<String> {
    let m = start_refusal(key, value, profile)?;
    Some(match key {
        "kube-proxy-replacement" => match did_you_mean(value.trim(), kube_proxy_replacement_values(profile)) {
            Some(s) => format!("{m} (did you mean \"{s}\"?)"),
            None => format!("{m} ({} takes {})", profile.as_str(), kube_proxy_replacement_values(profile).join(", ")),
        },
        _ => match did_you_mean(value, &ACCELERATION_VALUES[1..]) {
            Some(s) => format!("{m} (did you mean \"{s}\"?)"),
            None => format!("{m} (takes {}; generic XDP is \"testing-only\")", ACCELERATION_VALUES[1..].join(", ")),
        },
    })
}

/// An interface name, or a prefix ending in `+`.
fn valid_name_entry(s: &str) -> bool {
    let base = s.trim_end_matches('+');
    !s.is_empty() && base.len() <= 15 && !base.contains(['/', ',', ':']) && !base.chars().any(char::is_whitespace)
}

/// How the profile's agent splits a list-valued ConfigMap key. v1.14.4/v1.15 read it through
/// viper (`strings.Fields`: white space only, so `a,b` is one name); v1.16's hive config splits
/// on commas first and splits a single element again on white space.
pub fn split_list(value: &str, profile: Profile) -> Vec<String> {
    if profile.has(Change::ListsSplitOnCommas) && value.contains(',') {
        let parts: Vec<&str> = value.split(',').collect();
        if parts.len() > 1 {
            return parts.into_iter().map(str::to_string).collect();
        }
    }
    value.split_whitespace().map(str::to_string).collect()
}

/// The XDP attach mode the agent uses (`option.Config.XDPMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum XdpMode {
    /// `xdpdrv`: XDP_FLAGS_DRV_MODE.
    Native,
    /// `xdpgeneric`: XDP_FLAGS_SKB_MODE.
    Generic,
}

/// Errors of configuration parsing and of the agent's start-up checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value of the wrong type.
    #[error("agent configuration: {0}")]
    Value(String),
    /// The upstream agent refuses to start; the message carries upstream's text.
    #[error("agent start-up failed: {0}")]
    Refused(String),
}

pub(crate) fn refused(msg: impl Into<String>) -> ConfigError {
    ConfigError::Refused(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KubeProxyReplacement {
    Strict,
    Partial,
    Disabled,
    True,
    False,
}

impl KubeProxyReplacement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Partial => "partial",
            Self::Disabled => "disabled",
            Self::True => "true",
            Self::False => "false",
        }
    }
}

/// `--node-port-acceleration` / `--bpf-lb-acceleration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Acceleration {
    Disabled,
    Native,
    /// `testing-only`: generic XDP.
    Generic,
    /// `best-effort` (v1.15+): native where the driver supports it.
    BestEffort,
}

impl Acceleration {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Native => "native",
            Self::Generic => "testing-only",
            Self::BestEffort => "best-effort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RoutingMode {
    Native,
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TunnelProtocol {
    Vxlan,
    Geneve,
}

impl TunnelProtocol {
    /// The encapsulation device's name (`defaults.VxlanDevice` / `defaults.GeneveDevice`).
    pub fn device(self) -> &'static str {
        match self {
            Self::Vxlan => "cilium_vxlan",
            Self::Geneve => "cilium_geneve",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NodePortMode {
    Snat,
    Dsr,
    Hybrid,
}

impl NodePortMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snat => "snat",
            Self::Dsr => "dsr",
            Self::Hybrid => "hybrid",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DsrDispatch {
    Opt,
    Ipip,
    Geneve,
}

impl DsrDispatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opt => "opt",
            Self::Ipip => "ipip",
            Self::Geneve => "geneve",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DatapathMode {
    Veth,
    LbOnly,
}

/// The ConfigMap, typed, with upstream's defaults for absent keys. This is what `Populate`
/// produces; nothing is derived yet.
///
/// Defaults are the agent's flag defaults, except `enable-ipv6`: the agent flag defaults to true
/// but the Helm chart always renders `enable-ipv6: "false"` (`ipv6.enabled: false`), and a
/// scenario's `agent:` map stands for a Helm-rendered ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    pub kube_proxy_replacement: KubeProxyReplacement,
    /// `kube-proxy-replacement` as written (`false` when absent): a value the profile does not
    /// take is refused at start-up ([`start_refusal`]).
    pub kube_proxy_replacement_value: String,
    pub enable_node_port: bool,
    pub enable_host_firewall: bool,
    pub enable_bandwidth_manager: bool,
    pub enable_wireguard: bool,
    pub enable_high_scale_ipcache: bool,
    pub enable_l2_announcements: bool,
    /// `--devices` as given (wildcards not expanded), duplicates removed.
    pub devices: Vec<String>,
    pub direct_routing_device: Option<String>,
    pub enable_host_legacy_routing: bool,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_ipv6_ndp: bool,
    pub ipv6_mcast_device: Option<String>,
    /// Effective acceleration (`bpf-lb-acceleration`, overridden by `node-port-acceleration`).
    pub node_port_acceleration: Acceleration,
    /// The effective acceleration as written: a value no release takes reads as `disabled`
    /// above and is refused at start-up ([`start_refusal`], [`Settings::validate`]).
    pub node_port_acceleration_value: String,
    pub encrypt_node: bool,
    pub enable_endpoint_routes: bool,
    pub bpf_filter_priority: u16,
    pub vlan_bpf_bypass: Vec<u16>,
    pub enable_envoy_config: bool,
    pub enable_ipsec: bool,
    pub enable_bpf_masquerade: bool,
    /// `enable-ipv4-masquerade && enable-ipv4`, as `Populate` computes it.
    pub enable_ipv4_masquerade: bool,
    pub enable_ipv6_masquerade: bool,
    pub ipv4_native_routing_cidr: Option<IpNet>,
    pub ipv6_native_routing_cidr: Option<IpNet>,
    /// After folding the deprecated `tunnel` key in.
    pub routing_mode: RoutingMode,
    pub tunnel_protocol: TunnelProtocol,
    /// Effective mode (`bpf-lb-mode`, overridden by `node-port-mode`).
    pub node_port_mode: NodePortMode,
    pub dsr_dispatch: DsrDispatch,
    pub enable_runtime_device_detection: bool,
    pub enable_tcx: bool,
    pub force_device_detection: bool,
    pub datapath_mode: DatapathMode,
    pub enable_ipv4_egress_gateway: bool,
    pub enable_remote_node_identity: bool,
    pub enable_well_known_identities: bool,
    pub enable_socket_lb: bool,
    pub enable_l7_proxy: bool,
    /// `tunnel-port`; 0 (the default) lets the protocol's default apply.
    pub tunnel_port: u16,
}

impl AgentConfig {
    /// Parses the ConfigMap keys of [`known_keys`]; other keys are ignored (a real ConfigMap
    /// carries many). Values are type-checked with [`check_value`]; the checks `Populate` makes
    /// (`tunnel` with `routing-mode`, the `bpf-lb-*` aliases) give [`ConfigError::Refused`].
    pub fn from_map(map: &BTreeMap<String, String>, profile: Profile) -> Result<AgentConfig, ConfigError> {
        for (k, v) in map {
            check_value(k, v).map_err(ConfigError::Value)?;
        }
        let get = |k: &str| map.get(k).map(|v| v.trim());
        let flag = |k: &str, default: bool| get(k).and_then(parse_bool).unwrap_or(default);
        let name = |k: &str| get(k).filter(|v| !v.is_empty()).map(str::to_string);

        // pkg/option/config.go populateDevices: unique entries (order lost upstream; sorted here).
        let mut devices = split_list(get("devices").unwrap_or(""), profile);
        devices.sort();
        devices.dedup();

        let vlan_bpf_bypass =
            get("vlan-bpf-bypass").unwrap_or("").split_whitespace().filter_map(|s| s.parse().ok()).collect();

        let kube_proxy_replacement_value = get("kube-proxy-replacement").unwrap_or("false").to_string();
        let kube_proxy_replacement = match kube_proxy_replacement_value.as_str() {
            v if profile.has(Change::KprGoBool) => {
                if parse_bool(v) == Some(true) {
                    KubeProxyReplacement::True
                } else {
                    KubeProxyReplacement::False
                }
            }
            "strict" => KubeProxyReplacement::Strict,
            "partial" => KubeProxyReplacement::Partial,
            "disabled" => KubeProxyReplacement::Disabled,
            "true" => KubeProxyReplacement::True,
            _ => KubeProxyReplacement::False,
        };

        // populateLoadBalancerSettings: the old name overrides the new one; both set and
        // different is fatal.
        let accel = |v: &str| match v {
            "native" => Acceleration::Native,
            "testing-only" => Acceleration::Generic,
            "best-effort" => Acceleration::BestEffort,
            _ => Acceleration::Disabled,
        };
        let node_port_acceleration = aliased(
            get("bpf-lb-acceleration"),
            get("node-port-acceleration"),
            "bpf-lb-acceleration",
            "node-port-acceleration",
            "disabled",
        )?;
        let node_port_mode =
            match aliased(get("bpf-lb-mode"), get("node-port-mode"), "bpf-lb-mode", "node-port-mode", "snat")? {
                "dsr" => NodePortMode::Dsr,
                "hybrid" => NodePortMode::Hybrid,
                _ => NodePortMode::Snat,
            };
        let dsr_dispatch = match get("bpf-lb-dsr-dispatch").unwrap_or("opt") {
            "ipip" => DsrDispatch::Ipip,
            "geneve" => DsrDispatch::Geneve,
            _ => DsrDispatch::Opt,
        };

        // Populate: the deprecated `tunnel` cannot be combined with a non-default routing-mode;
        // `tunnel: disabled` means native routing, any other value is the tunnel protocol.
        let routing = get("routing-mode").unwrap_or("tunnel");
        let mut routing_mode = if routing == "native" { RoutingMode::Native } else { RoutingMode::Tunnel };
        let mut tunnel_protocol =
            if get("tunnel-protocol") == Some("geneve") { TunnelProtocol::Geneve } else { TunnelProtocol::Vxlan };
        if let Some(t) = get("tunnel").filter(|t| !t.is_empty()) {
            if profile.has(Change::TunnelKeyRemoved) {
                // v1.15 dropped the flag; the key is ignored like any unknown ConfigMap key.
            } else {
                if routing != "tunnel" {
                    return Err(refused("Option --routing-mode cannot be used in combination with --tunnel"));
                }
                match t {
                    "disabled" => routing_mode = RoutingMode::Native,
                    "geneve" => tunnel_protocol = TunnelProtocol::Geneve,
                    _ => tunnel_protocol = TunnelProtocol::Vxlan,
                }
            }
        }

        let enable_ipv4 = flag("enable-ipv4", true);
        let enable_ipv6 = flag("enable-ipv6", false);
        let cidr = |k: &str| get(k).filter(|v| !v.is_empty()).and_then(|v| v.parse().ok());
        Ok(AgentConfig {
            kube_proxy_replacement,
            kube_proxy_replacement_value,
            // v1.19 dropped the flag: a left-over key is ignored (validateConfigMap skips it).
            enable_node_port: flag("enable-node-port", false) && !profile.has(Change::NodePortKeyRemoved),
            enable_host_firewall: flag("enable-host-firewall", false),
            enable_bandwidth_manager: flag("enable-bandwidth-manager", false),
            enable_wireguard: flag("enable-wireguard", false),
            // v1.18 dropped the flag: a left-over key is ignored.
            enable_high_scale_ipcache: flag("enable-high-scale-ipcache", false)
                && !profile.has(Change::HighScaleIpcacheRemoved),
            enable_l2_announcements: flag("enable-l2-announcements", false),
            devices,
            direct_routing_device: name("direct-routing-device"),
            enable_host_legacy_routing: flag("enable-host-legacy-routing", false),
            enable_ipv4,
            enable_ipv6,
            enable_ipv6_ndp: flag("enable-ipv6-ndp", false),
            ipv6_mcast_device: name("ipv6-mcast-device"),
            node_port_acceleration: accel(node_port_acceleration),
            node_port_acceleration_value: node_port_acceleration.to_string(),
            encrypt_node: flag("encrypt-node", false),
            enable_endpoint_routes: flag("enable-endpoint-routes", false),
            bpf_filter_priority: get("bpf-filter-priority").and_then(|v| v.parse().ok()).unwrap_or(1),
            vlan_bpf_bypass,
            enable_envoy_config: flag("enable-envoy-config", false),
            enable_ipsec: flag("enable-ipsec", false),
            enable_bpf_masquerade: flag("enable-bpf-masquerade", false),
            enable_ipv4_masquerade: flag("enable-ipv4-masquerade", true) && enable_ipv4,
            enable_ipv6_masquerade: flag("enable-ipv6-masquerade", true) && enable_ipv6,
            ipv4_native_routing_cidr: cidr("ipv4-native-routing-cidr"),
            ipv6_native_routing_cidr: cidr("ipv6-native-routing-cidr"),
            routing_mode,
            tunnel_protocol,
            node_port_mode,
            dsr_dispatch,
            enable_runtime_device_detection: flag("enable-runtime-device-detection", false),
            enable_tcx: flag("enable-tcx", true),
            force_device_detection: flag("force-device-detection", false),
            datapath_mode: if get("datapath-mode") == Some("lb-only") {
                DatapathMode::LbOnly
            } else {
                DatapathMode::Veth
            },
            enable_ipv4_egress_gateway: flag("enable-ipv4-egress-gateway", false),
            enable_remote_node_identity: flag("enable-remote-node-identity", true),
            enable_well_known_identities: flag("enable-well-known-identities", true),
            enable_socket_lb: flag("bpf-lb-sock", false),
            enable_l7_proxy: flag("enable-l7-proxy", true),
            tunnel_port: get("tunnel-port").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }
}

/// `populateLoadBalancerSettings`: `old` (when set) overrides `new`; both set and different
/// is fatal.
fn aliased<'a>(
    new: Option<&'a str>,
    old: Option<&'a str>,
    new_key: &str,
    old_key: &str,
    default: &'a str,
) -> Result<&'a str, ConfigError> {
    match (new, old) {
        (Some(n), Some(o)) if n != o => {
            Err(refused(format!("Both --{new_key} and --{old_key} were set. Only use --{new_key} instead.")))
        }
        (_, Some(o)) => Ok(o),
        (Some(n), None) => Ok(n),
        (None, None) => Ok(default),
    }
}

/// The agent's effective settings: the configuration after `initEnv`, `Validate` and
/// `initKubeProxyReplacementOptions` (see [`Settings::derive`]), and after
/// [`Settings::finish_kpr_init`] once devices are known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub profile: Profile,
    pub kube_proxy_replacement: KubeProxyReplacement,
    pub enable_node_port: bool,
    pub enable_host_port: bool,
    pub enable_external_ips: bool,
    pub enable_socket_lb: bool,
    pub enable_host_firewall: bool,
    pub enable_bandwidth_manager: bool,
    pub enable_wireguard: bool,
    pub enable_high_scale_ipcache: bool,
    pub enable_l2_announcements: bool,
    pub enable_host_legacy_routing: bool,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_ipv6_ndp: bool,
    pub encrypt_node: bool,
    pub enable_endpoint_routes: bool,
    pub enable_ipsec: bool,
    pub enable_bpf_masquerade: bool,
    pub enable_ipv4_masquerade: bool,
    pub enable_ipv6_masquerade: bool,
    pub enable_envoy_config: bool,
    pub enable_ipv4_egress_gateway: bool,
    pub enable_remote_node_identity: bool,
    pub enable_l7_proxy: bool,
    /// `tunnel-port` as configured (0: the protocol's default, see [`Settings::encap`]).
    pub tunnel_port: u16,
    pub enable_tcx: bool,
    pub force_device_detection: bool,
    pub enable_runtime_device_detection: bool,
    /// Never set from the ConfigMap (upstream has no flag for it, v1.15+); only Go code sets it.
    pub force_device_required: bool,
    pub routing_mode: RoutingMode,
    pub tunnel_protocol: TunnelProtocol,
    pub node_port_mode: NodePortMode,
    pub dsr_dispatch: DsrDispatch,
    pub node_port_acceleration: Acceleration,
    /// [`AgentConfig::node_port_acceleration_value`].
    pub node_port_acceleration_value: String,
    pub datapath_mode: DatapathMode,
    /// `--devices` as configured (wildcards unexpanded).
    pub devices: Vec<String>,
    pub direct_routing_device: Option<String>,
    pub ipv6_mcast_device: Option<String>,
    pub bpf_filter_priority: u16,
    pub vlan_bpf_bypass: Vec<u16>,
    /// `option.Config.XDPMode`: set from the acceleration by `finish_kpr_init` only.
    pub xdp_mode: Option<XdpMode>,
    /// What the agent logs as warnings on the way (deprecations, fall-backs).
    pub warnings: Vec<String>,
}

impl Settings {
    /// `initEnv` + `Validate` + `initKubeProxyReplacementOptions`: everything the agent decides
    /// before device detection. Configurations the agent refuses give [`ConfigError::Refused`].
    pub fn derive(cfg: &AgentConfig, profile: Profile) -> Result<Settings, ConfigError> {
        let mut s = Settings {
            profile,
            kube_proxy_replacement: cfg.kube_proxy_replacement,
            enable_node_port: cfg.enable_node_port,
            enable_host_port: false,
            enable_external_ips: false,
            enable_socket_lb: cfg.enable_socket_lb,
            enable_host_firewall: cfg.enable_host_firewall,
            enable_bandwidth_manager: cfg.enable_bandwidth_manager,
            enable_wireguard: cfg.enable_wireguard,
            enable_high_scale_ipcache: cfg.enable_high_scale_ipcache,
            enable_l2_announcements: cfg.enable_l2_announcements,
            enable_host_legacy_routing: cfg.enable_host_legacy_routing,
            enable_ipv4: cfg.enable_ipv4,
            enable_ipv6: cfg.enable_ipv6,
            enable_ipv6_ndp: cfg.enable_ipv6_ndp,
            encrypt_node: cfg.encrypt_node,
            enable_endpoint_routes: cfg.enable_endpoint_routes,
            enable_ipsec: cfg.enable_ipsec,
            enable_bpf_masquerade: cfg.enable_bpf_masquerade,
            enable_ipv4_masquerade: cfg.enable_ipv4_masquerade,
            enable_ipv6_masquerade: cfg.enable_ipv6_masquerade,
            enable_envoy_config: cfg.enable_envoy_config,
            enable_ipv4_egress_gateway: cfg.enable_ipv4_egress_gateway,
            enable_remote_node_identity: cfg.enable_remote_node_identity,
            enable_l7_proxy: cfg.enable_l7_proxy,
            tunnel_port: cfg.tunnel_port,
            enable_tcx: cfg.enable_tcx && profile.has(Change::Tcx),
            force_device_detection: cfg.force_device_detection && profile.has(Change::ForceDeviceDetection),
            enable_runtime_device_detection: cfg.enable_runtime_device_detection,
            force_device_required: false,
            routing_mode: cfg.routing_mode,
            tunnel_protocol: cfg.tunnel_protocol,
            node_port_mode: cfg.node_port_mode,
            dsr_dispatch: cfg.dsr_dispatch,
            node_port_acceleration: cfg.node_port_acceleration,
            node_port_acceleration_value: cfg.node_port_acceleration_value.clone(),
            datapath_mode: cfg.datapath_mode,
            devices: cfg.devices.clone(),
            direct_routing_device: cfg.direct_routing_device.clone(),
            ipv6_mcast_device: cfg.ipv6_mcast_device.clone(),
            bpf_filter_priority: cfg.bpf_filter_priority,
            vlan_bpf_bypass: cfg.vlan_bpf_bypass.clone(),
            xdp_mode: None,
            warnings: Vec::new(),
        };
        s.init_env()?;
        s.validate(cfg)?;
        if let Some(m) = start_refusal("kube-proxy-replacement", &cfg.kube_proxy_replacement_value, profile) {
            return Err(refused(m));
        }
        if let Some(m) = start_refusal("bpf-lb-acceleration", &cfg.node_port_acceleration_value, profile) {
            return Err(refused(m));
        }
        s.init_kpr_options()
            .map_err(|e| refused(format!("unable to initialize kube-proxy replacement options: {e}")))?;
        Ok(s)
    }

    /// `AreDevicesRequired()` (pkg/option/config.go) of the profile.
    pub fn are_devices_required(&self) -> bool {
        let node_port = if self.profile.has(Change::NodePortKeyRemoved) {
            self.kube_proxy_replacement == KubeProxyReplacement::True
        } else {
            self.enable_node_port
        };
        let common = node_port
            || self.enable_host_firewall
            || self.enable_wireguard
            || self.enable_high_scale_ipcache
            || self.enable_l2_announcements;
        // v1.16.x also has `|| EnableIPSecEncryptedOverlay` (not modelled: no such key here).
        common
            || (self.profile.has(Change::IpsecRequiresDevices) && self.enable_ipsec)
            || (self.profile.has(Change::BpfMasqueradeRequiresDevices) && self.enable_bpf_masquerade)
            || (self.profile.has(Change::BandwidthManagerRequiresDevices) && self.enable_bandwidth_manager)
            || (self.profile.has(Change::ForceDeviceRequired) && self.force_device_required)
    }

    /// `DirectRoutingDeviceRequired()` (pkg/option/config.go), evaluated with the current
    /// value of host legacy routing (at detection time its configured value).
    pub fn direct_routing_device_required(&self) -> bool {
        let bpf_host_routing = !self.enable_host_legacy_routing;
        if self.enable_node_port && self.node_port_acceleration != Acceleration::Disabled {
            return true;
        }
        self.enable_node_port || bpf_host_routing || self.enable_wireguard
    }

    /// v1.16.8 `NeedBPFHostOnWireGuardDevice()`: bpf_host on `cilium_wg0` ingress.
    pub fn need_bpf_host_on_wireguard_device(&self) -> bool {
        self.enable_wireguard && (!self.tunneling_enabled() || (self.enable_node_port && self.encrypt_node))
    }

    /// v1.16 `reinitializeWireguard`'s condition (v1.17 names it `NeedEgressOnWireGuardDevice`):
    /// `cil_to_wireguard` only does NodePort rev-DNAT, needed with all of these together.
    pub fn need_egress_on_wireguard_device(&self) -> bool {
        self.enable_wireguard
            && self.enable_node_port
            && self.enable_l7_proxy
            && self.routing_mode == RoutingMode::Native
            && self.kube_proxy_replacement == KubeProxyReplacement::True
    }

    /// `TunnelingEnabled()`: anything but native routing.
    pub fn tunneling_enabled(&self) -> bool {
        self.routing_mode != RoutingMode::Native
    }

    /// The encapsulation device the agent keeps (`cilium_vxlan` / `cilium_geneve`), with its
    /// UDP destination port; `None`: native routing with nothing that needs a tunnel, and both
    /// devices are deleted. Tunnel routing, the egress gateway, high-scale ipcache and DSR with
    /// Geneve dispatch each need one: v1.14.4 `Reinitialize` (pkg/datapath/loader/base.go, the
    /// `encapProto` it hands init.sh; DSR-Geneve forces geneve) with the port from
    /// pkg/option/config.go `Populate`; v1.15+ pkg/datapath/tunnel `newConfig` and its
    /// enablers (the protocol stays `tunnel-protocol`). A zero port is the protocol's default
    /// (8472 vxlan, 6081 geneve).
    pub fn encap(&self) -> Option<(TunnelProtocol, u16)> {
        let dsr_geneve = self.enable_node_port
            && self.node_port_mode != NodePortMode::Snat
            && self.dsr_dispatch == DsrDispatch::Geneve;
        let protocol = if self.tunneling_enabled() {
            self.tunnel_protocol
        } else if self.profile.has(Change::DsrGeneveForcesGeneveDevice) && dsr_geneve {
            TunnelProtocol::Geneve
        } else if self.enable_ipv4_egress_gateway || self.enable_high_scale_ipcache || dsr_geneve {
            self.tunnel_protocol
        } else {
            return None;
        };
        let port = match (self.tunnel_port, protocol) {
            (0, TunnelProtocol::Vxlan) => 8472,
            (0, TunnelProtocol::Geneve) => 6081,
            (p, _) => p,
        };
        Some((protocol, port))
    }

    pub(crate) fn masquerading_enabled(&self) -> bool {
        self.enable_ipv4_masquerade || self.enable_ipv6_masquerade
    }

    pub(crate) fn iptables_masquerading_enabled(&self) -> bool {
        !self.enable_bpf_masquerade && self.masquerading_enabled()
    }

    /// `disableNodePort()`: NodePort and friends off, and host legacy routing on.
    pub fn disable_node_port(&mut self) {
        self.enable_node_port = false;
        self.enable_host_port = false;
        self.enable_external_ips = false;
        self.enable_host_legacy_routing = true;
    }

    /// daemon_main.go `initEnv`, the checks on modelled keys, in upstream's order.
    fn init_env(&mut self) -> Result<(), ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(refused("Either IPv4 or IPv6 addressing must be enabled"));
        }
        if self.datapath_mode == DatapathMode::LbOnly {
            self.kube_proxy_replacement = KubeProxyReplacement::False;
            self.enable_socket_lb = true;
            self.enable_host_port = false;
            self.enable_node_port = true;
            self.enable_external_ips = true;
            self.routing_mode = RoutingMode::Native;
            self.enable_ipv4_masquerade = false;
            self.enable_ipv6_masquerade = false;
            self.enable_l7_proxy = false;
        }
        if self.enable_ipsec && !self.enable_ipv4 {
            return Err(refused("IPSec requires IPv4 addressing to be enabled (--enable-ipv4=\"true\")"));
        }
        if self.enable_host_firewall {
            if self.enable_ipsec {
                return Err(refused("IPSec cannot be used with the host firewall."));
            }
            if self.enable_endpoint_routes && !self.enable_remote_node_identity {
                return Err(refused(
                    "The host firewall requires remote-node identities (enable-remote-node-identity) \
                     when running with enable-endpoint-routes",
                ));
            }
        }
        if self.enable_bandwidth_manager && self.enable_ipsec {
            self.warnings
                .push("The bandwidth manager cannot be used with IPSec. Disabling the bandwidth manager.".into());
            self.enable_bandwidth_manager = false;
        }
        if self.enable_ipv6_masquerade && self.enable_bpf_masquerade && self.enable_host_firewall {
            return Err(refused("IPv6 BPF masquerade is not supported along with the host firewall."));
        }
        if self.enable_high_scale_ipcache {
            if self.tunneling_enabled() {
                return Err(refused("The high-scale IPcache mode requires native routing."));
            }
            if self.enable_ipv4_egress_gateway {
                return Err(refused("The egress gateway is not supported in high scale IPcache mode."));
            }
            if self.enable_ipsec {
                return Err(refused("IPsec is not supported in high scale IPcache mode."));
            }
            if self.enable_ipv6 {
                return Err(refused("The high-scale IPcache mode is not supported with IPv6."));
            }
        }
        Ok(())
    }

    /// `(*DaemonConfig).Validate`, the checks on modelled keys; newDaemon wraps them.
    fn validate(&self, cfg: &AgentConfig) -> Result<(), ConfigError> {
        let invalid = |m: String| refused(format!("invalid daemon configuration: {m}"));
        if self.enable_high_scale_ipcache && !cfg.enable_well_known_identities {
            // initEnv, after the checks above (kept here to see the original config).
            return Err(refused("The high-scale IPcache mode requires well-known identities to be enabled."));
        }
        if self.enable_ipv6_ndp {
            if !self.enable_ipv6 {
                return Err(invalid("IPv6NDP cannot be enabled when IPv6 is not enabled".into()));
            }
            let auto_detected = !self.profile.has(Change::NdpNeedsMcastDevice) && self.might_auto_detect_devices();
            if self.ipv6_mcast_device.is_none() && !auto_detected {
                return Err(invalid("IPv6NDP cannot be enabled without ipv6-mcast-device".into()));
            }
        }
        // checkIPv4NativeRoutingCIDR / checkIPv6NativeRoutingCIDR (IPAM cluster-pool assumed).
        if cfg.ipv4_native_routing_cidr.is_none()
            && self.enable_ipv4_masquerade
            && !self.tunneling_enabled()
            && self.enable_ipv4
        {
            return Err(invalid(
                "native routing cidr must be configured with option --ipv4-native-routing-cidr in \
                 combination with --enable-ipv4-masquerade --routing-mode=native --ipam=cluster-pool \
                 --enable-ipv4=true"
                    .into(),
            ));
        }
        if cfg.ipv6_native_routing_cidr.is_none()
            && self.enable_ipv6_masquerade
            && !self.tunneling_enabled()
            && self.enable_ipv6
        {
            return Err(invalid(
                "native routing cidr must be configured with option --ipv6-native-routing-cidr in \
                 combination with --enable-ipv6-masquerade --routing-mode=native --enable-ipv6=true"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `MightAutoDetectDevices()` (pkg/option/config.go).
    fn might_auto_detect_devices(&self) -> bool {
        ((self.enable_host_firewall || self.enable_wireguard || self.enable_high_scale_ipcache)
            && self.devices.is_empty())
            || (self.kube_proxy_replacement != KubeProxyReplacement::Disabled
                && (self.devices.is_empty() || self.direct_routing_device.is_none()))
    }

    /// `initKubeProxyReplacementOptions` (daemon/cmd/kube_proxy_replacement.go) of the profile.
    fn init_kpr_options(&mut self) -> Result<(), String> {
        use KubeProxyReplacement as K;
        let kpr = self.kube_proxy_replacement;
        if self.profile.has(Change::KprOnlyTrueFalse) {
            if !matches!(kpr, K::True | K::False) {
                return Err(format!("Invalid value for --kube-proxy-replacement: {}", kpr.as_str()));
            }
        } else if matches!(kpr, K::Strict | K::Partial | K::Disabled) {
            self.warnings.push(format!(
                "Deprecated value for --kube-proxy-replacement: {} (use either \"true\", or \"false\")",
                kpr.as_str()
            ));
        }
        if kpr == K::Disabled {
            self.disable_node_port();
            self.enable_socket_lb = false;
            return Ok(());
        }
        if matches!(kpr, K::Strict | K::True) {
            self.enable_host_port = true;
            self.enable_node_port = true;
            self.enable_external_ips = true;
            self.enable_socket_lb = true;
        }
        // CiliumEnvoyConfig L7 LB needs NodePort; v1.16 dropped the auto-enable.
        if self.profile.has(Change::EnvoyConfigEnablesNodePort)
            && self.enable_envoy_config
            && !self.enable_ipsec
            && !self.enable_node_port
        {
            self.enable_node_port = true;
        }
        if self.enable_node_port {
            if self.enable_ipsec && self.profile.has(Change::IpsecRefusesNodePort) {
                return Err("IPSec cannot be used with BPF NodePort".into());
            }
            let (mode, dispatch) = (self.node_port_mode, self.dsr_dispatch);
            // dsr accepts opt/ipip/geneve, hybrid only opt/geneve.
            if mode == NodePortMode::Hybrid && dispatch == DsrDispatch::Ipip {
                return Err(format!("Invalid value for --bpf-lb-dsr-dispatch: {}", dispatch.as_str()));
            }
            let accepted = match self.node_port_acceleration {
                Acceleration::BestEffort => self.profile.has(Change::BestEffortAcceleration),
                _ => ACCELERATION_VALUES[1..].contains(&self.node_port_acceleration_value.as_str()),
            };
            if !accepted {
                return Err(format!(
                    "Invalid value for --node-port-acceleration: {}",
                    self.node_port_acceleration_value
                ));
            }
            if self.tunneling_enabled() && mode != NodePortMode::Snat {
                if self.tunnel_protocol == TunnelProtocol::Vxlan {
                    return Err(format!("Node Port {:?} mode cannot be used with vxlan tunneling.", mode.as_str()));
                }
                if dispatch != DsrDispatch::Geneve {
                    return Err(format!(
                        "Node Port {:?} mode with {} dispatch cannot be used with geneve tunneling.",
                        mode.as_str(),
                        dispatch.as_str()
                    ));
                }
            }
            if mode == NodePortMode::Dsr && dispatch == DsrDispatch::Ipip {
                if self.datapath_mode != DatapathMode::LbOnly {
                    return Err("DSR dispatch mode ipip only supported for --datapath-mode=lb-only".into());
                }
                if self.node_port_acceleration == Acceleration::Disabled {
                    return Err("DSR dispatch mode ipip currently only available under XDP acceleration".into());
                }
            }
            if self.enable_high_scale_ipcache && (mode != NodePortMode::Dsr || dispatch != DsrDispatch::Geneve) {
                return Err("The high-scale IPcache mode requires Node Port mode \"dsr\" with geneve dispatch".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::tu::*;

    pub(crate) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    pub(crate) fn cfg(pairs: &[(&str, &str)]) -> AgentConfig {
        AgentConfig::from_map(&map(pairs), Profile::V1_14_4).unwrap()
    }

    pub(crate) fn derive(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::derive(&cfg(pairs), Profile::V1_14_4)
    }

    pub(crate) fn refused_msg(r: Result<impl std::fmt::Debug, ConfigError>) -> String {
        match r {
            Err(ConfigError::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = cfg(&[]);
        assert_eq!(c.kube_proxy_replacement, KubeProxyReplacement::False);
        assert!(!c.enable_node_port && c.enable_ipv4 && !c.enable_ipv6);
        assert_eq!(c.routing_mode, RoutingMode::Tunnel);
        assert_eq!(c.tunnel_protocol, TunnelProtocol::Vxlan);
        assert_eq!(c.bpf_filter_priority, 1);
        assert_eq!(c.node_port_acceleration, Acceleration::Disabled);
        assert_eq!(c.node_port_mode, NodePortMode::Snat);
        assert!(!c.enable_host_legacy_routing && c.enable_ipv4_masquerade && !c.enable_ipv6_masquerade);
        assert!(c.devices.is_empty() && c.direct_routing_device.is_none());
    }

    #[test]
    fn check_value_types() {
        for (k, v) in [
            ("enable-node-port", "true"),
            ("enable-node-port", "False"),
            ("bpf-filter-priority", "65535"),
            ("kube-proxy-replacement", "partial"),
            ("node-port-acceleration", "best-effort"),
            ("node-port-acceleration", "testing-only"),
            ("routing-mode", "native"),
            ("tunnel", "disabled"),
            ("node-port-mode", "hybrid"),
            ("vlan-bpf-bypass", "0 212 4094"),
            ("devices", "bond0 eth+ bond0.212"),
            ("not-modelled", "anything"),
        ] {
            assert_eq!(check_value(k, v), Ok(()), "{k}={v}");
        }
        for (k, v) in [
            ("enable-node-port", "yes"),
            ("bpf-filter-priority", "0"),
            ("bpf-filter-priority", "65536"),
            ("routing-mode", "direct"),
            ("tunnel", "ipip"),
            ("node-port-mode", "nat"),
            ("vlan-bpf-bypass", "4095"),
            ("vlan-bpf-bypass", "x"),
            ("devices", "bond0/1"),
        ] {
            let e = check_value(k, v).unwrap_err();
            assert!(e.contains(k) && e.contains("expected"), "{e}");
        }
        let e = AgentConfig::from_map(&map(&[("enable-ipv6", "maybe")]), Profile::V1_14_4).unwrap_err();
        assert!(matches!(e, ConfigError::Value(_)), "{e}");
        let e = check_value("enable-node-port", "ture").unwrap_err();
        assert!(e.ends_with("did you mean \"true\"?"), "{e}");
    }

    /// An acceleration no release takes (`generic`) is refused at start-up: from v1.17 by the
    /// XDP cell whatever NodePort says, before by kube-proxy-replacement's init with NodePort.
    #[test]
    fn unknown_acceleration_is_refused_at_start_up() {
        assert_eq!(check_value("bpf-lb-acceleration", "generic"), Ok(()));
        let at =
            |pairs: &[(&str, &str)], p: Profile| Settings::derive(&AgentConfig::from_map(&map(pairs), p).unwrap(), p);
        let want = "Invalid value for --node-port-acceleration: generic";
        for p in [Profile::V1_17, Profile::V1_18, Profile::V1_19] {
            assert_eq!(refused_msg(at(&[("bpf-lb-acceleration", "generic")], p)), want);
            assert!(at(&[("bpf-lb-acceleration", "testing-only")], p).is_ok());
        }
        // v1.16: only with NodePort on (kube-proxy-replacement true).
        assert!(at(&[("bpf-lb-acceleration", "generic")], Profile::V1_16).is_ok());
        let kpr = [("bpf-lb-acceleration", "generic"), ("kube-proxy-replacement", "true")];
        assert!(refused_msg(at(&kpr, Profile::V1_16)).ends_with(want));
        let hint = start_refusal_hint("bpf-lb-acceleration", "generic", Profile::V1_18).unwrap();
        assert!(hint.contains("\"testing-only\""), "{hint}");
    }

    /// A kube-proxy-replacement value the profile does not take is well-formed input that the
    /// agent refuses at start-up, with upstream's message.
    #[test]
    fn kube_proxy_replacement_values_are_refused_at_start_up() {
        assert_eq!(check_value("kube-proxy-replacement", "maybe"), Ok(()));
        let at = |v: &str, p: Profile| {
            Settings::derive(&AgentConfig::from_map(&map(&[("kube-proxy-replacement", v)]), p).unwrap(), p)
        };
        let m = refused_msg(at("maybe", Profile::V1_14_4));
        let want = "Invalid value for --kube-proxy-replacement: maybe";
        assert_eq!(m, format!("unable to initialize kube-proxy replacement options: {want}"));
        assert!(refused_msg(at("True", Profile::V1_15)).ends_with("--kube-proxy-replacement: True"));
        assert!(refused_msg(at("partial", Profile::V1_16)).ends_with("--kube-proxy-replacement: partial"));
        assert!(at("partial", Profile::V1_15).is_ok());
        assert!(at("false", Profile::V1_16).is_ok());
        let hint = start_refusal_hint("kube-proxy-replacement", "ture", Profile::V1_16).unwrap();
        assert!(hint.ends_with("(did you mean \"true\"?)"), "{hint}");
        let hint = start_refusal_hint("kube-proxy-replacement", "maybe", Profile::V1_14_4).unwrap();
        assert!(hint.ends_with("(v1.14.4 takes strict, partial, disabled, true, false)"), "{hint}");
        assert_eq!(start_refusal("kube-proxy-replacement", "strict", Profile::V1_14_4), None);
    }

    #[test]
    fn lists_split_on_white_space() {
        let c = cfg(&[("devices", " eth1  eth0 eth1 "), ("vlan-bpf-bypass", "300 212")]);
        assert_eq!(c.devices, names(&["eth0", "eth1"]));
        assert_eq!(c.vlan_bpf_bypass, vec![300, 212]);
        // viper (v1.14.4, v1.15): a comma is part of the name.
        assert_eq!(cfg(&[("devices", "eth0,eth1")]).devices, names(&["eth0,eth1"]));
        assert_eq!(split_list("eth0,eth1", Profile::V1_15), names(&["eth0,eth1"]));
        // hive (v1.16): commas first, then white space for a single element.
        assert_eq!(split_list("eth0,eth1", Profile::V1_16), names(&["eth0", "eth1"]));
        assert_eq!(split_list("eth0 eth1", Profile::V1_16), names(&["eth0", "eth1"]));
        assert_eq!(split_list("eth0,eth1 eth2", Profile::V1_16), names(&["eth0", "eth1 eth2"]));
    }

    #[test]
    fn every_kube_proxy_replacement_value() {
        // (kpr, enable-node-port) → NodePort after initKubeProxyReplacementOptions
        for (kpr, np, want) in [
            ("strict", "false", true),
            ("true", "false", true),
            ("partial", "false", false),
            ("partial", "true", true),
            ("false", "false", false),
            ("false", "true", true),
            ("disabled", "true", false),
            ("disabled", "false", false),
        ] {
            let s = derive(&[("kube-proxy-replacement", kpr), ("enable-node-port", np)]).unwrap();
            assert_eq!(s.enable_node_port, want, "kpr={kpr} enable-node-port={np}");
            let deprecated = s.warnings.iter().any(|w| w.contains("Deprecated value for --kube-proxy-replacement"));
            assert_eq!(deprecated, matches!(kpr, "strict" | "partial" | "disabled"), "{kpr}");
        }
        // disabled → disableNodePort, which also turns host legacy routing on before Detect.
        assert!(derive(&[("kube-proxy-replacement", "disabled")]).unwrap().enable_host_legacy_routing);
        assert!(!derive(&[("kube-proxy-replacement", "partial")]).unwrap().enable_host_legacy_routing);
        assert!(derive(&[("kube-proxy-replacement", "true")]).unwrap().enable_socket_lb);
    }

    #[test]
    fn envoy_config_and_lb_only_force_node_port() {
        let s = derive(&[("kube-proxy-replacement", "partial"), ("enable-envoy-config", "true")]).unwrap();
        assert!(s.enable_node_port);
        let s = derive(&[("kube-proxy-replacement", "disabled"), ("enable-envoy-config", "true")]).unwrap();
        assert!(!s.enable_node_port);
        let s = derive(&[("enable-envoy-config", "true"), ("enable-ipsec", "true")]).unwrap();
        assert!(!s.enable_node_port);
        let s = derive(&[("datapath-mode", "lb-only")]).unwrap();
        assert!(s.enable_node_port && s.routing_mode == RoutingMode::Native);
        assert_eq!(s.kube_proxy_replacement, KubeProxyReplacement::False);
    }

    #[test]
    fn refusals_carry_upstreams_message() {
        let m = refused_msg(derive(&[("kube-proxy-replacement", "true"), ("enable-ipsec", "true")]));
        assert!(m.contains("IPSec cannot be used with BPF NodePort"), "{m}");
        let m = refused_msg(derive(&[("enable-ipv4", "false"), ("enable-ipv6", "false")]));
        assert!(m.contains("Either IPv4 or IPv6 addressing must be enabled"));
        let m = refused_msg(derive(&[("enable-host-firewall", "true"), ("enable-ipsec", "true")]));
        assert!(m.contains("IPSec cannot be used with the host firewall."));
        let m = refused_msg(derive(&[("routing-mode", "native")]));
        assert!(m.contains("native routing cidr must be configured with option --ipv4-native-routing-cidr"), "{m}");
        assert!(derive(&[("routing-mode", "native"), ("ipv4-native-routing-cidr", "10.0.0.0/8")]).is_ok());
        let m = refused_msg(AgentConfig::from_map(
            &map(&[("tunnel", "vxlan"), ("routing-mode", "native")]),
            Profile::V1_14_4,
        ));
        assert!(m.contains("Option --routing-mode cannot be used in combination with --tunnel"));
        let c = cfg(&[("tunnel", "disabled")]);
        assert_eq!(c.routing_mode, RoutingMode::Native);
        let c = cfg(&[("tunnel", "geneve")]);
        assert_eq!((c.routing_mode, c.tunnel_protocol), (RoutingMode::Tunnel, TunnelProtocol::Geneve));
        let m = refused_msg(AgentConfig::from_map(
            &map(&[("node-port-acceleration", "native"), ("bpf-lb-acceleration", "disabled")]),
            Profile::V1_14_4,
        ));
        assert!(m.contains("Both --bpf-lb-acceleration and --node-port-acceleration were set"));
        let m = refused_msg(derive(&[("kube-proxy-replacement", "true"), ("node-port-mode", "dsr")]));
        assert!(m.contains("Node Port \"dsr\" mode cannot be used with vxlan tunneling."), "{m}");
        let m = refused_msg(derive(&[("kube-proxy-replacement", "true"), ("node-port-acceleration", "best-effort")]));
        assert!(m.contains("Invalid value for --node-port-acceleration: best-effort"), "{m}");
        let m = refused_msg(derive(&[("enable-high-scale-ipcache", "true")]));
        assert!(m.contains("The high-scale IPcache mode requires native routing."));
        let m = refused_msg(derive(&[("enable-ipv6-ndp", "true")]));
        assert!(m.contains("IPv6NDP cannot be enabled when IPv6 is not enabled"));
    }

    pub(crate) fn base() -> Settings {
        derive(&[]).unwrap()
    }

    #[test]
    fn six_features_require_devices() {
        let mut s = base();
        assert!(!s.are_devices_required());
        let toggles: [fn(&mut Settings); 6] = [
            |s| s.enable_node_port = true,
            |s| s.enable_host_firewall = true,
            |s| s.enable_bandwidth_manager = true,
            |s| s.enable_wireguard = true,
            |s| s.enable_high_scale_ipcache = true,
            |s| s.enable_l2_announcements = true,
        ];
        for t in toggles {
            let mut one = base();
            t(&mut one);
            assert!(one.are_devices_required(), "{one:?}");
        }
        // Through the ConfigMap too, for the five the agent starts with on their own.
        for k in [
            "enable-node-port",
            "enable-host-firewall",
            "enable-bandwidth-manager",
            "enable-wireguard",
            "enable-l2-announcements",
        ] {
            assert!(derive(&[(k, "true")]).unwrap().are_devices_required(), "{k}");
        }
        // High-scale ipcache needs native routing and DSR with Geneve dispatch.
        let hs = derive(&[
            ("enable-high-scale-ipcache", "true"),
            ("routing-mode", "native"),
            ("ipv4-native-routing-cidr", "10.0.0.0/8"),
            ("kube-proxy-replacement", "true"),
            ("bpf-lb-mode", "dsr"),
            ("bpf-lb-dsr-dispatch", "geneve"),
        ])
        .unwrap();
        assert!(hs.are_devices_required());
        s.profile = Profile::V1_15;
        s.enable_bandwidth_manager = true;
        assert!(!s.are_devices_required(), "v1.15 dropped the bandwidth manager");
    }

    #[test]
    fn direct_routing_device_required_follows_host_routing() {
        let mut s = base();
        assert!(s.direct_routing_device_required(), "BPF host routing is on at Detect time");
        s.enable_host_legacy_routing = true;
        assert!(!s.direct_routing_device_required());
        s.enable_wireguard = true;
        assert!(s.direct_routing_device_required());
        s.enable_wireguard = false;
        s.enable_node_port = true;
        assert!(s.direct_routing_device_required());
    }
}
