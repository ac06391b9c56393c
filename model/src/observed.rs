//! The vocabulary of what is observed on a node: hooks, attachment mechanisms, attachments,
//! links and routes as the rules read them, encapsulation kinds and policy-map views. Plain data,
//! filled by the kernel layer and read by the rules, the expectation check and the record.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Ingress,
    Egress,
    Xdp,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
            Hook::Xdp => "xdp",
        }
    }
}

/// How a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// A clsact cls_bpf filter, visible with `tc filter show`.
    Tc,
    /// A tcx bpf_link, visible with `bpftool net show`.
    Tcx,
    /// An XDP program attached through netlink (IFLA_XDP).
    Xdp,
}

/// One observed attachment; the item shape of the result record's `attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub device: String,
    pub hook: Hook,
    pub mechanism: Mechanism,
    /// Kernel program name (the ELF function name, at most 15 bytes).
    pub program: String,
    /// tc: the filter name (TCA_BPF_NAME), e.g. `cil_from_netdev-bond0`.
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub priority: Option<u16>,
    #[serde(default)]
    pub handle: Option<u32>,
    #[serde(default)]
    pub direct_action: Option<bool>,
    pub prog_id: u32,
    /// Program tag (hex), from the bpf syscall.
    #[serde(default)]
    pub tag: Option<String>,
    /// XDP only: `native` or `generic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `pod:NAMESPACE/NAME` when the device is a pod's lxc device (filled by the runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl Attachment {
    /// The identity `unchanged` compares: device, hook, program and mechanism (not ids).
    pub fn identity(&self) -> (String, Hook, String, Mechanism) {
        (self.device.clone(), self.hook, self.program.clone(), self.mechanism)
    }
}

/// What the loader's device detection needs to know about a link: a plain snapshot, so the
/// selection rules are pure functions testable without root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `bond`, `vlan`, ...); empty for links without one (`lo`).
    pub kind: String,
    /// IFF_UP set administratively.
    pub up: bool,
    /// IFF_SLAVE (bond/team slaves).
    pub slave: bool,
    /// IFF_LOOPBACK.
    pub loopback: bool,
    /// IFF_MULTICAST.
    pub multicast: bool,
    /// IFLA_MASTER, if enslaved.
    pub master_index: Option<u32>,
    /// IFLA_LINK for stacked devices (a VLAN's parent), if any.
    pub parent_index: Option<u32>,
    /// VLAN id, for `vlan` links.
    pub vlan_id: Option<u16>,
    /// Hardware address, if the link has one that is not all zeros.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

/// One route of any table, as device detection reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    /// Destination; `0.0.0.0/0` or `::/0` for default routes (filled like iproute2 does).
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub table: u32,
    /// Output interface index.
    pub oif: Option<u32>,
}

/// The kernel feature a link kind needs, as capability reasons name it (`kernel lacks X`).
pub fn feature_of_kind(kind: &str) -> &str {
    match kind {
        "bond" => "bonding",
        other => other,
    }
}

/// A UDP encapsulation device in collect-metadata mode (`ip link add NAME type vxlan|geneve
/// external dstport PORT`), the kind of device Cilium's agent keeps as `cilium_vxlan` /
/// `cilium_geneve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncapKind {
    Vxlan,
    Geneve,
}

impl EncapKind {
    /// The `IFLA_INFO_KIND` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EncapKind::Vxlan => "vxlan",
            EncapKind::Geneve => "geneve",
        }
    }
}

/// One decoded map entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MapEntry {
    /// `ingress` or `egress`.
    pub direction: String,
    /// Peer identity; 0 is any peer.
    pub identity: u32,
    /// `any`, a reserved identity's name (`host`, `world`, ...), `cidr` (local scope) or
    /// `endpoints` (a selector's identity).
    pub peer: String,
    /// 0 is any port (for ICMP: the type).
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`, `ANY` or the number.
    pub protocol: String,
    /// `allow` or `deny`.
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

/// A program that uses a policy map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MapUser {
    pub device: String,
    pub hook: Hook,
    pub program: String,
    pub prog_id: u32,
}

/// One policy map found through the attached programs; the item shape of `maps` in
/// `hostdp inspect --maps --format json` and of `policy_maps` in the result record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMapView {
    /// `host`, or the lxc device of a pod (`pod:NAMESPACE/NAME` in the result record).
    pub endpoint: String,
    pub map_id: u32,
    pub name: String,
    /// The attached programs that reference the map.
    pub programs: Vec<MapUser>,
    /// Sorted by direction, identity, port, protocol.
    pub entries: Vec<MapEntry>,
}
