//! The datapath plan: what `reloadHostDatapath` (and init.sh, and XDP setup) do to the node's
//! links, as a list of operations computed purely from the settings, the selected devices and
//! the node's links. The kernel layer (`hostdp::sys::attach`) executes the plan.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::observed::Hook;

/// Which C source (under `bpf/`) a program comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Object {
    /// `bpf_host.c`: cil_from_netdev, cil_to_netdev, cil_from_host, cil_to_host.
    Host,
    /// `bpf_xdp.c`: cil_xdp_entry.
    Xdp,
    /// `bpf_lxc.c`: cil_from_container, cil_to_container.
    Lxc,
    /// `foreign.c`: foreign_tc, foreign_xdp (another tool's programs, not Cilium's).
    Foreign,
    /// `bpf_overlay.c`: cil_from_overlay, cil_to_overlay (on cilium_vxlan / cilium_geneve).
    Overlay,
    /// `bpf_wireguard.c` (v1.16): cil_to_wireguard, and from v1.18 cil_from_wireguard (on
    /// cilium_wg0).
    Wireguard,
}

impl Object {
    pub const ALL: [Object; 6] =
        [Object::Host, Object::Xdp, Object::Lxc, Object::Foreign, Object::Overlay, Object::Wireguard];

    /// The object built from a source file name ([`Object::source`]).
    pub fn from_source(source: &str) -> Option<Object> {
        Object::ALL.into_iter().find(|o| o.source() == source)
    }

    pub fn source(self) -> &'static str {
        match self {
            Object::Host => "bpf_host.c",
            Object::Xdp => "bpf_xdp.c",
            Object::Lxc => "bpf_lxc.c",
            Object::Foreign => "foreign.c",
            Object::Overlay => "bpf_overlay.c",
            Object::Wireguard => "bpf_wireguard.c",
        }
    }
}

/// A program: its object and ELF function name (= kernel program name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ProgramRef {
    pub object: Object,
    pub symbol: &'static str,
}

/// VLAN ids whose tagged frames the program lets through on a device (v1.14.4 `VLAN_FILTER`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum VlanAllow {
    /// `vlan-bpf-bypass` contains 0: every tag passes.
    All,
    /// These ids pass (at most 5); every other tagged frame is dropped.
    Ids(Vec<u16>),
}

/// One thing the agent does to a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Create the `cilium_host` / `cilium_net` veth pair if missing, up.
    CreateHostDevices,
    /// The encapsulation device (`cilium_vxlan` / `cilium_geneve`) in collect-metadata mode
    /// on UDP `port`: kept if it is one already, else created (deleted first if its kind or
    /// port differ), then up. v1.14.4 init.sh `create_encap_dev` and the `dstport` check after
    /// it; v1.15+ pkg/datapath/loader/netlink.go `setupTunnelDevice`. The MTU upstream sets
    /// is not modelled (nor is cilium_host's).
    EnsureEncapDevice { device: String, kind: EncapKind, port: u16 },
    /// Delete the link if it exists, and with it everything attached to it: the other
    /// protocol's encapsulation device, or both in native routing (init.sh's `ip link del`,
    /// v1.15+ `removeDevice`).
    DeleteLink { device: String },
    /// clsact qdisc + cls_bpf filter `<symbol>-<device>`, handle 1, protocol all, direct-action.
    AttachTc { device: String, hook: Hook, program: ProgramRef, priority: u16, vlan: VlanAllow, seclabel: u32 },
    /// `RemoveTCFilters`: delete every filter in that direction, Cilium's or not.
    FlushTc { device: String, hook: Hook },
    /// init.sh's clean-up for a link no longer in the device list: per direction, if a filter
    /// named like Cilium's (`bpf_host`, `cil_from_netdev`, `cil_to_netdev`) is there, delete all
    /// filters of that direction. (v1.15+ `removeObsoleteNetdevPrograms` is narrower: ingress
    /// filters starting with `cil_from_netdev`, egress ones with `cil_to_netdev`; the harness
    /// attaches no other Cilium-named filters, so one op serves both.)
    RemoveObsoleteTc { device: String },
    /// `cil_xdp_entry` attached in the given mode: as a bpf_link pinned in `link_dir` (relative
    /// to the bpffs root; netlink when the kernel refuses the link with EBUSY), or through
    /// netlink when `None`. `best_effort`: a device that refuses it is skipped, not fatal.
    AttachXdp { device: String, program: ProgramRef, mode: XdpMode, link_dir: Option<String>, best_effort: bool },
    /// `maybeUnloadObsoleteXDPPrograms` on one link: an attached XDP program goes unless it
    /// runs in mode `keep`; with `link_dir`, a link pinned there is unpinned instead of the
    /// netlink detach of both modes (whose refusals are ignored, as upstream ignores them).
    DetachXdp { device: String, keep: Option<XdpMode>, link_dir: Option<String> },
    /// v1.15+ `attachSKBProgram` (`attachTCProgram` in v1.15): with `tcx`, a bpf_link at the
    /// tail of the hook, pinned at `<bpffs>/<pin_dir>/<symbol>` (an existing pin is updated in
    /// place), after which every legacy filter in that direction is removed; where the kernel
    /// has no tcx, or without `tcx`, the tc filter of [`Op::AttachTc`], then (`remove_stale`,
    /// v1.16) Cilium's (`cil_`) filters at other priorities are deleted, and a tcx link pinned
    /// there by a newer version is unpinned (the downgrade path).
    AttachSkb {
        device: String,
        hook: Hook,
        program: ProgramRef,
        priority: u16,
        vlan: VlanAllow,
        seclabel: u32,
        /// Folder of the link pins, relative to the bpffs root (`cilium/devices/<dev>/links`).
        pin_dir: String,
        tcx: bool,
        remove_stale: bool,
    },
    /// v1.16 `detachSKBProgram`: unpin `<bpffs>/<pin_dir>/<symbol>` and delete every legacy
    /// filter in that direction.
    DetachSkb { device: String, hook: Hook, symbol: &'static str, pin_dir: String },
    /// v1.15+ `removeObsoleteNetdevPrograms` on a link that is no longer a device: if an ingress
    /// filter's name starts with `cil_from_netdev`, every ingress filter goes; likewise egress
    /// and `cil_to_netdev`. With `device_dir` (v1.16) the device's bpffs folder
    /// (`cilium/devices/<dev>`, its pinned links included) is removed first.
    RemoveObsoleteNetdev { device: String, device_dir: Option<String> },
    /// `cilium cleanup`: delete the tc filters (both directions) whose names contain
    /// `bpf_netdev`, `bpf_network`, `bpf_host`, `bpf_lxc`, `bpf_overlay` or `cil_`, and the XDP
    /// program if its name contains `cil_xdp_entry`. Other filters stay.
    RemoveCiliumFilters { device: String },
}

impl Op {
    /// The op in words, as `hostdp explain` lists a plan and failures name the op that made
    /// an attachment.
    pub fn describe(&self) -> String {
        match self {
            Op::CreateHostDevices => "create cilium_host / cilium_net".into(),
            Op::EnsureEncapDevice { device, kind, port } => {
                format!("create {device} if missing ({} external, dstport {port}), up", kind.as_str())
            }
            Op::DeleteLink { device } => format!("delete {device} if present"),
            Op::AttachTc { device, hook, program, priority, .. } => {
                format!(
                    "attach {} on {device} {} (tc filter {}-{device}, pref {priority}, handle 1)",
                    program.symbol,
                    hook.as_str(),
                    program.symbol
                )
            }
            Op::FlushTc { device, hook } => format!("remove every {} filter of {device}", hook.as_str()),
            Op::RemoveObsoleteTc { device } => {
                format!("remove Cilium's old filters from {device} (no longer a device)")
            }
            Op::RemoveCiliumFilters { device } => format!("remove Cilium's filters from {device}"),
            Op::AttachXdp { device, program, mode, link_dir, best_effort } => format!(
                "attach {} on {device} xdp ({mode:?}{}{})",
                program.symbol,
                if link_dir.is_some() { ", pinned bpf_link" } else { ", netlink" },
                if *best_effort { ", best-effort" } else { "" }
            ),
            Op::DetachXdp { device, keep: Some(m), .. } => {
                format!("detach any XDP program from {device} unless it runs in {m:?} mode")
            }
            Op::DetachXdp { device, keep: None, .. } => format!("detach any XDP program from {device}"),
            Op::AttachSkb { device, hook, program, priority, pin_dir, tcx, .. } => {
                let s = program.symbol;
                let tc = format!("tc filter {s}-{device}, pref {priority}, handle 1");
                if *tcx {
                    format!(
                        "attach {s} on {device} {} (tcx link pinned at {pin_dir}/{s}; {tc} where the kernel has no tcx)",
                        hook.as_str()
                    )
                } else {
                    format!("attach {s} on {device} {} ({tc}; unpin {pin_dir}/{s})", hook.as_str())
                }
            }
            Op::DetachSkb { device, hook, symbol, pin_dir } => {
                format!("unpin {pin_dir}/{symbol} and remove every {} filter of {device}", hook.as_str())
            }
            Op::RemoveObsoleteNetdev { device, device_dir } => match device_dir {
                Some(d) => format!("remove {d} and Cilium's netdev filters from {device} (no longer a device)"),
                None => format!("remove Cilium's netdev filters from {device} (no longer a device)"),
            },
        }
    }
}

/// The full plan of one (re)initialisation of the host datapath.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Node-config defines for the compile step (`ENABLE_NODEPORT` → `1`, ...).
    pub defines: BTreeMap<String, String>,
    pub ops: Vec<Op>,
    /// What init.sh leaves in `$RUNDIR/device.state` after this run (`None`: no file); feed it
    /// to the next run's [`plan_with_state`].
    pub device_state: Option<String>,
}

pub use crate::config::XdpMode;
use crate::config::{Settings, TunnelProtocol, WIREGUARD_DEVICE};
use crate::devices::Selection;
use crate::observed::{EncapKind, LinkInfo};
use crate::profile::Change;

/// `defaults.HostDevice` / `defaults.SecondHostDevice`.
pub const HOST_DEVICE: &str = "cilium_host";
pub const SECOND_HOST_DEVICE: &str = "cilium_net";

/// `bpffsDeviceLinksDir` relative to the bpffs root: `cilium/devices/<dev>/links`, with every
/// "." of the name turned into "-" (bpffs folder names cannot hold dots).
pub fn device_links_dir(device: &str) -> String {
    format!("{}/links", device_dir(device))
}

/// `bpffsDeviceDir` relative to the bpffs root: `cilium/devices/<dev with . as ->`.
pub fn device_dir(device: &str) -> String {
    format!("cilium/devices/{}", device.replace('.', "-"))
}

/// `bpffsEndpointLinksDir` relative to the bpffs root. Upstream names the folder by the
/// numeric endpoint id; the harness has no endpoint ids and uses the lxc device name.
pub fn endpoint_links_dir(lxc_device: &str) -> String {
    format!("cilium/endpoints/{lxc_device}/links")
}

/// Reserved identities (pkg/identity): the host programs run as `host`, bpf_xdp as `world`.
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;

const fn host_prog(symbol: &'static str) -> ProgramRef {
    ProgramRef { object: Object::Host, symbol }
}

/// The loader's symbols (pkg/datapath/loader/loader.go).
pub const CIL_FROM_NETDEV: ProgramRef = host_prog("cil_from_netdev");
pub const CIL_TO_NETDEV: ProgramRef = host_prog("cil_to_netdev");
pub const CIL_FROM_HOST: ProgramRef = host_prog("cil_from_host");
pub const CIL_TO_HOST: ProgramRef = host_prog("cil_to_host");
pub const CIL_XDP_ENTRY: ProgramRef = ProgramRef { object: Object::Xdp, symbol: "cil_xdp_entry" };
pub const CIL_FROM_CONTAINER: ProgramRef = ProgramRef { object: Object::Lxc, symbol: "cil_from_container" };
pub const CIL_TO_CONTAINER: ProgramRef = ProgramRef { object: Object::Lxc, symbol: "cil_to_container" };
pub const CIL_FROM_OVERLAY: ProgramRef = ProgramRef { object: Object::Overlay, symbol: "cil_from_overlay" };
pub const CIL_TO_OVERLAY: ProgramRef = ProgramRef { object: Object::Overlay, symbol: "cil_to_overlay" };
pub const CIL_TO_WIREGUARD: ProgramRef = ProgramRef { object: Object::Wireguard, symbol: "cil_to_wireguard" };
pub const CIL_FROM_WIREGUARD: ProgramRef = ProgramRef { object: Object::Wireguard, symbol: "cil_from_wireguard" };

/// Every program the plan attaches, with the one hook it goes on (the ops below): what a
/// scenario's expectations may name.
pub const LOADER_PROGRAMS: [(ProgramRef, Hook); 11] = [
    (CIL_FROM_NETDEV, Hook::Ingress),
    (CIL_TO_NETDEV, Hook::Egress),
    (CIL_FROM_HOST, Hook::Egress),
    (CIL_TO_HOST, Hook::Ingress),
    (CIL_XDP_ENTRY, Hook::Xdp),
    (CIL_FROM_CONTAINER, Hook::Ingress),
    (CIL_TO_CONTAINER, Hook::Egress),
    (CIL_FROM_OVERLAY, Hook::Ingress),
    (CIL_TO_OVERLAY, Hook::Egress),
    (CIL_TO_WIREGUARD, Hook::Egress),
    (CIL_FROM_WIREGUARD, Hook::Ingress),
];

/// The harness's stand-ins for another tool's programs (`foreign.c`).
pub const FOREIGN_PROGRAMS: [&str; 2] = ["foreign_tc", "foreign_xdp"];

/// Every program the harness loads: the loader's and the foreign ones.
pub fn programs() -> impl Iterator<Item = &'static str> {
    LOADER_PROGRAMS.iter().map(|(p, _)| p.symbol).chain(FOREIGN_PROGRAMS)
}

/// The full name of a program as the kernel reports it: the kernel keeps the first 15 bytes
/// (`BPF_OBJ_NAME_LEN - 1`), so `cil_from_overla` is `cil_from_overlay`. A name that is not
/// one of [`programs`] (another tool's) is returned as it is.
pub fn full_program_name(kernel: &str) -> &str {
    programs().find(|p| crate::record::same_program(p, kernel)).unwrap_or(kernel)
}

/// Both encapsulation devices, the order init.sh deletes them in.
const ENCAP_DEVICES: [TunnelProtocol; 2] = [TunnelProtocol::Vxlan, TunnelProtocol::Geneve];

/// The encapsulation device set-up of one `Reinitialize`: the device the settings need
/// ([`Settings::encap`]) is made sure of and the other protocol's deleted, or, with none
/// needed, both deleted. v1.14.4's init.sh deletes before it creates; v1.15+
/// `setupTunnelDevice` creates first.
fn encap_device_ops(settings: &Settings) -> Vec<Op> {
    let Some((protocol, port)) = settings.encap() else {
        return ENCAP_DEVICES.iter().map(|p| Op::DeleteLink { device: p.device().to_string() }).collect();
    };
    let kind = match protocol {
        TunnelProtocol::Vxlan => EncapKind::Vxlan,
        TunnelProtocol::Geneve => EncapKind::Geneve,
    };
    let ensure = Op::EnsureEncapDevice { device: protocol.device().to_string(), kind, port };
    let others =
        ENCAP_DEVICES.iter().filter(|p| **p != protocol).map(|p| Op::DeleteLink { device: p.device().to_string() });
    if settings.profile.has(Change::TunnelDeviceInGo) {
        [ensure].into_iter().chain(others).collect()
    } else {
        others.chain([ensure]).collect()
    }
}

/// `reinitializeOverlay` → `replaceOverlayDatapath` (pkg/datapath/loader/base.go, loader.go):
/// with an encapsulation device, `cil_from_overlay` on its ingress and `cil_to_overlay` on its
/// egress, as the world identity, attached the way the profile attaches netdev programs (v1.14.4
/// `replaceDatapath` tc filters; v1.15 `attachTCProgram`; v1.16 `attachSKBProgram`, tcx pinned
/// under `cilium/devices/<dev>/links`). Nothing without one.
fn overlay_ops(settings: &Settings) -> Vec<Op> {
    let Some((protocol, _)) = settings.encap() else { return Vec::new() };
    let dev = protocol.device();
    [(Hook::Ingress, CIL_FROM_OVERLAY), (Hook::Egress, CIL_TO_OVERLAY)]
        .into_iter()
        .map(|(hook, program)| {
            skb_or_tc(settings, dev, hook, program, VlanAllow::Ids(Vec::new()), IDENTITY_WORLD, device_links_dir(dev))
        })
        .collect()
}

/// `reinitializeWireguard` (pkg/datapath/loader/base.go) → `replaceWireguardDatapath`, the
/// programs of `bpf_wireguard.c` on cilium_wg0 as the world identity via `attachSKBProgram`
/// (tcx pinned under `cilium/devices/cilium_wg0/links`, tc where the kernel has no tcx), and
/// from v1.17.3 `detachSKBProgram` (the pin and every filter of the hook) for what is not needed:
/// - v1.16: with WireGuard, NodePort, the L7 proxy, native routing and
///   `kube-proxy-replacement=true` ([`Settings::need_egress_on_wireguard_device`]),
///   `cil_to_wireguard` on egress; otherwise it returns early, detaching nothing.
/// - v1.17.3 (v1.17.10 base.go L305-326, loader.go L652-682): with WireGuard on, cil_to_wireguard
///   attached or detached; without bpf_host needed on cilium_wg0, `cil_from_netdev` and v1.18's
///   `cil_from_wireguard` detached from ingress.
/// - v1.18 (v1.18.10 loader.go L777-815): `cil_from_wireguard` attached or detached on ingress
///   (`NeedIngressOnWireGuardDevice`), then v1.17's `cil_from_netdev` detached, which on tc
///   deletes every ingress filter, the fresh `cil_from_wireguard` one included.
/// - v1.19 (v1.19.4 wireguard.go L68-89): `cil_from_wireguard` on ingress always.
///
/// Other profiles have no bpf_wireguard.c.
fn wireguard_ops(settings: &Settings, links: &[LinkInfo]) -> Result<Vec<Op>, PlanError> {
    let p = settings.profile;
    if !p.has(Change::WireguardEgressProgram) {
        return Ok(Vec::new());
    }
    let detaches = p.has(Change::WireguardDetachesUnneeded);
    let egress = settings.need_egress_on_wireguard_device();
    if !settings.enable_wireguard || (!detaches && !egress) {
        return Ok(Vec::new());
    }
    if !links.iter().any(|l| l.name == WIREGUARD_DEVICE) {
        return Err(PlanError::WireguardLinkNotFound);
    }
    let pin_dir = device_links_dir(WIREGUARD_DEVICE);
    let attach = |hook: Hook, program: ProgramRef| {
        skb_or_tc(
            settings,
            WIREGUARD_DEVICE,
            hook,
            program,
            VlanAllow::Ids(Vec::new()),
            IDENTITY_WORLD,
            pin_dir.clone(),
        )
    };
    let detach = |hook: Hook, symbol: &'static str| Op::DetachSkb {
        device: WIREGUARD_DEVICE.to_string(),
        hook,
        symbol,
        pin_dir: pin_dir.clone(),
    };
    let mut ops = Vec::new();
    if egress {
        ops.push(attach(Hook::Egress, CIL_TO_WIREGUARD));
    } else {
        ops.push(detach(Hook::Egress, CIL_TO_WIREGUARD.symbol));
    }
    if p.has(Change::WireguardIngressProgram) {
        if p.has(Change::WireguardIngressAlways) || settings.need_bpf_host_on_wireguard_device() {
            ops.push(attach(Hook::Ingress, CIL_FROM_WIREGUARD));
        } else {
            ops.push(detach(Hook::Ingress, CIL_FROM_WIREGUARD.symbol));
        }
        if p.has(Change::WireguardRemovesV117Netdev) {
            ops.push(detach(Hook::Ingress, CIL_FROM_NETDEV.symbol));
        }
    } else if detaches && !settings.need_bpf_host_on_wireguard_device() {
        ops.push(detach(Hook::Ingress, CIL_FROM_NETDEV.symbol));
        if p.has(Change::WireguardRemovesV118Ingress) {
            ops.push(detach(Hook::Ingress, CIL_FROM_WIREGUARD.symbol));
        }
    }
    Ok(ops)
}

/// Errors of planning: the node-config header cannot be written (upstream's `Reinitialize`
/// fails and the agent does not start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "failed while reinitializing datapath: failed to write node configuration file: link {device}: Link not found"
    )]
    LinkNotFound { device: String },
    #[error(
        "failed while reinitializing datapath: allowed VLAN list is too big - {count} entries, please use \
         '--vlan-bpf-bypass 0' in order to allow all available VLANs"
    )]
    TooManyVlans { count: usize },
    /// `reinitializeWireguard`: cilium_wg0 is needed (v1.16: for `cil_to_wireguard`; from
    /// v1.17.3 whenever WireGuard is on).
    #[error("failed while reinitializing datapath: failed to retrieve link for interface {WIREGUARD_DEVICE}: Link not found")]
    WireguardLinkNotFound,
}

/// `vlanFilterMacros` (pkg/datapath/linux/config/config.go): for each VLAN link whose parent is
/// a device, its id passes on the parent iff the VLAN link is itself a device or its id is in
/// `vlan-bpf-bypass`; bypass 0 lets everything pass; more than five ids refuse start-up. Every
/// device must exist. The same rule in every profile: v1.14.4 L756-809 (87dd2b6445), v1.15.7
/// L811-864 (de06bcfb3c), v1.16.8 L836-885 (dc65ba9bb5, from here on it takes the selected
/// devices as `nativeDevices`), v1.17.10 L863-912 (2661dea281), v1.18.10 L770-819 (6bf2fe83d2),
/// v1.19.4 L646-695 (95e477fdcf). The programs apply the ids at the start of cil_from_netdev
/// and cil_to_netdev (`bpf/include/hostdp.h` `hostdp_vlan_filter`); which devices there are
/// differs per profile, so the traffic does (`scenarios/traffic-seed-vlan-*.yaml`).
pub fn vlan_filter(
    settings: &Settings,
    devices: &[String],
    links: &[LinkInfo],
) -> Result<BTreeMap<String, VlanAllow>, PlanError> {
    let mut indices = Vec::new();
    for d in devices {
        let l = links.iter().find(|l| &l.name == d).ok_or_else(|| PlanError::LinkNotFound { device: d.clone() })?;
        indices.push((d.clone(), l.index));
    }
    if settings.vlan_bpf_bypass.contains(&0) {
        return Ok(indices.into_iter().map(|(d, _)| (d, VlanAllow::All)).collect());
    }
    let is_device = |i: u32| indices.iter().any(|(_, x)| *x == i);
    let mut out: BTreeMap<String, VlanAllow> = BTreeMap::new();
    let mut count = 0;
    for (name, index) in &indices {
        let mut ids: Vec<u16> = links
            .iter()
            .filter(|l| l.kind == "vlan" && l.parent_index == Some(*index))
            .filter_map(|l| l.vlan_id.filter(|id| is_device(l.index) || settings.vlan_bpf_bypass.contains(id)))
            .collect();
        ids.sort_unstable();
        count += ids.len();
        out.insert(name.clone(), VlanAllow::Ids(ids));
    }
    if count > 5 {
        return Err(PlanError::TooManyVlans { count });
    }
    Ok(out)
}

/// The node_config.h defines the programs' behaviour depends on (a small subset).
fn defines(settings: &Settings, sel: &Selection, links: &[LinkInfo]) -> Result<BTreeMap<String, String>, PlanError> {
    let mut d = BTreeMap::new();
    let mut on = |k: &str, c: bool| {
        if c {
            d.insert(k.to_string(), "1".to_string());
        }
    };
    on("ENABLE_IPV4", settings.enable_ipv4);
    on("ENABLE_IPV6", settings.enable_ipv6);
    on("ENABLE_IPSEC", settings.enable_ipsec);
    on("ENABLE_WIREGUARD", settings.enable_wireguard);
    on("ENABLE_NODE_ENCRYPTION", settings.enable_wireguard && settings.encrypt_node);
    on("ENABLE_L2_ANNOUNCEMENTS", settings.enable_l2_announcements);
    on("ENABLE_EGRESS_GATEWAY", settings.enable_ipv4_egress_gateway);
    on("ENABLE_ENDPOINT_ROUTES", settings.enable_endpoint_routes);
    on("ENABLE_L7_LB", settings.enable_envoy_config);
    on("ENABLE_NODEPORT", settings.enable_node_port);
    on("ENABLE_NODEPORT_ACCELERATION", settings.enable_node_port && settings.xdp_mode.is_some());
    on("ENABLE_HOST_ROUTING", settings.enable_node_port && !settings.enable_host_legacy_routing);
    on("ENABLE_BANDWIDTH_MANAGER", settings.enable_bandwidth_manager);
    on("ENABLE_HOST_FIREWALL", settings.enable_host_firewall);
    on("ENABLE_HIGH_SCALE_IPCACHE", settings.enable_high_scale_ipcache);
    on("TUNNEL_MODE", settings.tunneling_enabled());
    if settings.enable_node_port {
        // Inside the NodePort block: the direct-routing device must exist when required.
        let ifindex = if settings.direct_routing_device_required() {
            let dev = sel.direct_routing_device.clone().unwrap_or_default();
            links.iter().find(|l| l.name == dev).map(|l| l.index).ok_or(PlanError::LinkNotFound { device: dev })?
        } else {
            0
        };
        d.insert("DIRECT_ROUTING_DEV_IFINDEX".into(), ifindex.to_string());
    }
    Ok(d)
}

/// `reinitializeXDPLocked`: `maybeUnloadObsoleteXDPPrograms` on every link whose name lacks
/// "cilium" (a program stays only on a device, in the configured mode, from v1.15), then
/// `cil_xdp_entry` on every device but `cilium_wg0`.
pub fn xdp_ops(settings: &Settings, devices: &[String], links: &[LinkInfo]) -> Vec<Op> {
    let mut ops = Vec::new();
    let as_link = settings.profile.has(Change::XdpBpfLink);
    for l in links.iter().filter(|l| !l.name.contains("cilium")) {
        let keep = settings
            .xdp_mode
            .filter(|_| devices.contains(&l.name) && settings.profile.has(Change::XdpKeepsMatchingMode));
        let link_dir = as_link.then(|| device_links_dir(&l.name));
        ops.push(Op::DetachXdp { device: l.name.clone(), keep, link_dir });
    }
    if let Some(mode) = settings.xdp_mode {
        let best_effort = settings.node_port_acceleration == crate::config::Acceleration::BestEffort
            && settings.profile.has(Change::BestEffortSkipsDevice);
        for dev in devices.iter().filter(|d| *d != WIREGUARD_DEVICE) {
            let link_dir = as_link.then(|| device_links_dir(dev));
            ops.push(Op::AttachXdp { device: dev.clone(), program: CIL_XDP_ENTRY, mode, link_dir, best_effort });
        }
    }
    ops
}

/// [`plan_with_state`] with no `device.state` left by a previous run.
pub fn plan(settings: &Settings, sel: &Selection, links: &[LinkInfo]) -> Result<Plan, PlanError> {
    plan_with_state(settings, sel, links, None)
}

/// What one `Reinitialize` + host endpoint regeneration does to the node's links, in order:
/// cilium_host/cilium_net, init.sh's clean-ups, XDP, then `reloadHostDatapath`.
/// `previous_device_state` is the `device.state` a previous run left ([`Plan::device_state`]).
pub fn plan_with_state(
    settings: &Settings,
    sel: &Selection,
    links: &[LinkInfo],
    previous_device_state: Option<&str>,
) -> Result<Plan, PlanError> {
    let devices = &sel.devices;
    let vlans = vlan_filter(settings, devices, links)?;
    let defines = defines(settings, sel, links)?;
    let exists = |n: &str| links.iter().any(|l| l.name == n);
    let mut ops = vec![Op::CreateHostDevices];
    // init.sh's encapsulation section (v1.14.4), `setupTunnelDevice` (v1.15+).
    ops.extend(encap_device_ops(settings));

    // init.sh: with neither direct routing nor NodePort, the devices a previous run recorded lose
    // their clsact qdisc (every filter). The file separates names with ';' but the script
    // splits on ',', so only a single-device state matches a link.
    let health_datapath = false; // lb-only + DSR/IPIP: not modelled beyond the error paths
    let direct = !settings.tunneling_enabled() && !health_datapath;
    let mut device_state = previous_device_state.map(str::to_string);
    if settings.profile.has(Change::InitShDeviceCleanup) {
        if direct || settings.enable_node_port {
            if !devices.is_empty() {
                device_state = Some(devices.join(";"));
            }
        } else if let Some(prev) = device_state.take() {
            for dev in prev.split(',').map(str::trim).filter(|d| !d.is_empty() && exists(d)) {
                ops.push(Op::FlushTc { device: dev.to_string(), hook: Hook::Ingress });
                ops.push(Op::FlushTc { device: dev.to_string(), hook: Hook::Egress });
            }
        }
        // init.sh: bpf_host filters on links that are no longer devices (names with "cilium"
        // are skipped; lo is not).
        for l in links {
            if !l.name.contains("cilium") && !devices.contains(&l.name) {
                ops.push(Op::RemoveObsoleteTc { device: l.name.clone() });
            }
        }
        ops.push(Op::FlushTc { device: SECOND_HOST_DEVICE.into(), hook: Hook::Egress });
    } else {
        device_state = None;
    }

    ops.extend(xdp_ops(settings, devices, links));

    // reinitializeOverlay, near the end of Reinitialize before the host endpoint regenerates.
    ops.extend(overlay_ops(settings));
    // reinitializeWireguard (v1.16+), right after it.
    ops.extend(wireguard_ops(settings, links)?);

    // reloadHostDatapath.
    let attach = |device: &str, hook: Hook, program: ProgramRef, vlan: VlanAllow| {
        skb_or_tc(settings, device, hook, program, vlan, IDENTITY_HOST, device_links_dir(device))
    };
    ops.push(attach(HOST_DEVICE, Hook::Ingress, CIL_TO_HOST, VlanAllow::Ids(Vec::new())));
    ops.push(attach(HOST_DEVICE, Hook::Egress, CIL_FROM_HOST, VlanAllow::Ids(Vec::new())));
    ops.push(attach(SECOND_HOST_DEVICE, Hook::Ingress, CIL_TO_HOST, VlanAllow::Ids(Vec::new())));
    let egress = settings.are_devices_required();
    let mut host_devices = devices.clone();
    if settings.profile.has(Change::WireguardIngressInLoader) && settings.need_bpf_host_on_wireguard_device() {
        host_devices.push(WIREGUARD_DEVICE.to_string());
    }
    for dev in host_devices.iter().filter(|d| exists(d)) {
        let vlan = vlans.get(dev).cloned().unwrap_or(VlanAllow::Ids(Vec::new()));
        let ingress = attach(dev, Hook::Ingress, CIL_FROM_NETDEV, vlan.clone());
        if settings.profile.has(Change::DetachSkbProgram) {
            // Ingress first; with devices required cilium_wg0's egress is left alone,
            // otherwise `detachSKBProgram` clears the egress hook (pin and filters).
            ops.push(ingress);
            if dev == WIREGUARD_DEVICE && settings.profile.has(Change::WireguardRemovesV118Ingress) {
                // v1.17.10 attachNetworkDevices L463-473: v1.18's cil_from_wireguard goes right
                // after cil_from_netdev is attached; on tc the flush takes cil_from_netdev too.
                ops.push(Op::DetachSkb {
                    device: dev.clone(),
                    hook: Hook::Ingress,
                    symbol: CIL_FROM_WIREGUARD.symbol,
                    pin_dir: device_links_dir(dev),
                });
            }
            if egress && dev != WIREGUARD_DEVICE {
                ops.push(attach(dev, Hook::Egress, CIL_TO_NETDEV, vlan));
            } else if !egress {
                ops.push(Op::DetachSkb {
                    device: dev.clone(),
                    hook: Hook::Egress,
                    symbol: CIL_TO_NETDEV.symbol,
                    pin_dir: device_links_dir(dev),
                });
            }
        } else if egress && dev != WIREGUARD_DEVICE {
            ops.push(ingress);
            ops.push(attach(dev, Hook::Egress, CIL_TO_NETDEV, vlan));
        } else {
            ops.push(Op::FlushTc { device: dev.clone(), hook: Hook::Egress });
            ops.push(ingress);
        }
    }
    if settings.profile.has(Change::RemoveObsoleteNetdevPrograms) {
        // removeObsoleteNetdevPrograms, last: links outside the device list without an excluded
        // prefix; v1.16 also removes their bpffs folder.
        for l in links {
            let excluded = crate::devices::EXCLUDED_PREFIXES.iter().any(|p| l.name.starts_with(p));
            if !excluded && !host_devices.contains(&l.name) {
                let device_dir = settings.profile.has(Change::RemoveObsoleteDeviceDir).then(|| device_dir(&l.name));
                ops.push(Op::RemoveObsoleteNetdev { device: l.name.clone(), device_dir });
            }
        }
    }
    Ok(Plan { defines, ops, device_state })
}

/// A pod endpoint's programs (`reloadDatapath` for a non-host endpoint): `cil_from_container` on
/// the lxc device's ingress always; `cil_to_container` on its egress only with endpoint routes
/// (`RequireEgressProg`), otherwise its egress filters are removed (v1.16: and its tcx pin).
/// Attached as the profile attaches ([`Op::AttachSkb`] from v1.15). The seclabel is left 0:
/// the endpoint's identity is the caller's to fill in.
pub fn endpoint_ops(settings: &Settings, lxc_device: &str) -> Vec<Op> {
    let pin_dir = endpoint_links_dir(lxc_device);
    let attach = |hook: Hook, program: ProgramRef| {
        skb_or_tc(settings, lxc_device, hook, program, VlanAllow::Ids(Vec::new()), 0, pin_dir.clone())
    };
    let egress_off = if settings.profile.has(Change::DetachSkbProgram) {
        Op::DetachSkb {
            device: lxc_device.to_string(),
            hook: Hook::Egress,
            symbol: CIL_TO_CONTAINER.symbol,
            pin_dir: pin_dir.clone(),
        }
    } else {
        Op::FlushTc { device: lxc_device.to_string(), hook: Hook::Egress }
    };
    if settings.enable_endpoint_routes {
        vec![attach(Hook::Ingress, CIL_FROM_CONTAINER), attach(Hook::Egress, CIL_TO_CONTAINER)]
    } else {
        vec![attach(Hook::Ingress, CIL_FROM_CONTAINER), egress_off]
    }
}

/// How the profile attaches a tc program: v1.14.4 a plain tc filter ([`Op::AttachTc`]); v1.15
/// a tc filter that also unpins a newer version's tcx link; v1.16 tcx when `enable-tcx`.
fn skb_or_tc(
    settings: &Settings,
    device: &str,
    hook: Hook,
    program: ProgramRef,
    vlan: VlanAllow,
    seclabel: u32,
    pin_dir: String,
) -> Op {
    let priority = settings.bpf_filter_priority;
    if !settings.profile.has(Change::SkbProgramHelper) {
        return Op::AttachTc { device: device.to_string(), hook, program, priority, vlan, seclabel };
    }
    Op::AttachSkb {
        device: device.to_string(),
        hook,
        program,
        priority,
        vlan,
        seclabel,
        pin_dir,
        tcx: settings.enable_tcx,
        remove_stale: settings.profile.has(Change::Tcx),
    }
}

/// `cilium cleanup` (cilium/cmd/cleanup.go): Cilium's filters and XDP program off every link.
pub fn cleanup_ops(links: &[LinkInfo]) -> Vec<Op> {
    links.iter().map(|l| Op::RemoveCiliumFilters { device: l.name.clone() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use crate::devices::tu::*;
    use crate::observed::RouteInfo;
    use crate::profile::Profile;
    use crate::startup::{start, Startup};

    #[test]
    fn objects_are_found_by_their_source() {
        for o in Object::ALL {
            assert_eq!(Object::from_source(o.source()), Some(o));
        }
        assert_eq!(Object::from_source("nope.c"), None);
    }

    fn startup(pairs: &[(&str, &str)], links: &[LinkInfo], routes: &[RouteInfo], ip: &str) -> Startup {
        let m = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cfg = AgentConfig::from_map(&m, Profile::V1_14_4).unwrap();
        start(&cfg, Profile::V1_14_4, links, routes, Some(ip.parse().unwrap())).unwrap()
    }

    /// (device, hook, symbol) of the tc attachments, in order.
    fn attached(plan: &Plan) -> Vec<(String, Hook, &'static str)> {
        plan.ops
            .iter()
            .filter_map(|o| match o {
                Op::AttachTc { device, hook, program, .. } => Some((device.clone(), *hook, program.symbol)),
                _ => None,
            })
            .collect()
    }

    fn flushed(plan: &Plan) -> Vec<(String, Hook)> {
        plan.ops
            .iter()
            .filter_map(|o| match o {
                Op::FlushTc { device, hook } => Some((device.clone(), *hook)),
                _ => None,
            })
            .collect()
    }

    fn t(d: &str, h: Hook, s: &'static str) -> (String, Hook, &'static str) {
        (d.to_string(), h, s)
    }

    fn with_host_devices(mut links: Vec<LinkInfo>) -> Vec<LinkInfo> {
        links.push(link(50, "cilium_net", "veth"));
        links.push(link(51, "cilium_host", "veth"));
        links
    }

    #[test]
    fn seed_plan_ingress_only() {
        let (links, routes) = seed();
        let links = with_host_devices(links);
        let st = startup(
            &[("kube-proxy-replacement", "partial"), ("enable-node-port", "false"), ("enable-host-firewall", "false")],
            &links,
            &routes,
            "10.212.0.10",
        );
        assert_eq!(st.selection.devices, names(&["bond0.212"]));
        let plan = super::plan(&st.settings, &st.selection, &links).unwrap();
        assert_eq!(plan.ops[0], Op::CreateHostDevices);
        assert_eq!(
            attached(&plan),
            vec![
                t("cilium_vxlan", Hook::Ingress, "cil_from_overlay"),
                t("cilium_vxlan", Hook::Egress, "cil_to_overlay"),
                t("cilium_host", Hook::Ingress, "cil_to_host"),
                t("cilium_host", Hook::Egress, "cil_from_host"),
                t("cilium_net", Hook::Ingress, "cil_to_host"),
                t("bond0.212", Hook::Ingress, "cil_from_netdev"),
            ]
        );
        assert_eq!(
            flushed(&plan),
            vec![("cilium_net".to_string(), Hook::Egress), ("bond0.212".to_string(), Hook::Egress)]
        );
        // init.sh cleans every other link (lo included), never the cilium ones.
        let obsolete: Vec<&str> = plan
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::RemoveObsoleteTc { device } => Some(device.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(obsolete, vec!["lo", "eth0", "eth1", "bond0"]);
        assert!(!plan.ops.iter().any(|o| matches!(o, Op::AttachXdp { .. })));
        for o in &plan.ops {
            if let Op::AttachTc { priority, seclabel, program, .. } = o {
                let identity = if program.object == Object::Overlay { IDENTITY_WORLD } else { IDENTITY_HOST };
                assert_eq!((*priority, *seclabel), (1, identity));
            }
        }
        assert!(!plan.defines.contains_key("ENABLE_NODEPORT"));
        assert_eq!(plan.defines.get("ENABLE_IPV4").map(String::as_str), Some("1"));
        assert_eq!(plan.defines.get("TUNNEL_MODE").map(String::as_str), Some("1"));
        // Tunnel mode without NodePort: init.sh writes no device.state.
        assert_eq!(plan.device_state, None);

        let st = startup(
            &[("kube-proxy-replacement", "partial"), ("enable-host-legacy-routing", "true")],
            &links,
            &routes,
            "10.212.0.10",
        );
        let plan = super::plan(&st.settings, &st.selection, &links).unwrap();
        assert_eq!(attached(&plan).len(), 5, "only cilium_vxlan, cilium_host and cilium_net");
    }

    #[test]
    fn required_devices_get_egress_and_priority() {
        let (links, routes) = seed();
        let links = with_host_devices(links);
        let st = startup(
            &[("kube-proxy-replacement", "true"), ("bpf-filter-priority", "7")],
            &links,
            &routes,
            "10.212.0.10",
        );
        let plan = super::plan(&st.settings, &st.selection, &links).unwrap();
        let a = attached(&plan);
        assert!(a.contains(&t("bond0.212", Hook::Ingress, "cil_from_netdev")));
        assert!(a.contains(&t("bond0.212", Hook::Egress, "cil_to_netdev")));
        assert!(plan.ops.iter().all(|o| !matches!(o, Op::AttachTc { priority, .. } if *priority != 7)));
        assert_eq!(plan.defines.get("ENABLE_NODEPORT").map(String::as_str), Some("1"));
        assert_eq!(plan.defines.get("DIRECT_ROUTING_DEV_IFINDEX").map(String::as_str), Some("5"));
        assert_eq!(plan.device_state.as_deref(), Some("bond0.212"));
    }

    #[test]
    fn each_feature_alone_attaches_egress() {
        let (links, routes) = seed();
        let mut links = with_host_devices(links);
        links.push(link(60, "cilium_wg0", "wireguard"));
        for (k, define) in [
            ("enable-node-port", "ENABLE_NODEPORT"),
            ("enable-host-firewall", "ENABLE_HOST_FIREWALL"),
            ("enable-bandwidth-manager", "ENABLE_BANDWIDTH_MANAGER"),
            ("enable-wireguard", "ENABLE_WIREGUARD"),
            ("enable-l2-announcements", "ENABLE_L2_ANNOUNCEMENTS"),
        ] {
            let st = startup(&[(k, "true")], &links, &routes, "10.212.0.10");
            let plan = super::plan(&st.settings, &st.selection, &links).unwrap();
            assert!(attached(&plan).contains(&t("bond0.212", Hook::Egress, "cil_to_netdev")), "{k}");
            assert!(plan.defines.contains_key(define), "{k}");
        }
    }

    #[test]
    fn wireguard_device_gets_ingress_only_and_no_xdp() {
        let links = with_host_devices(vec![
            lo(),
            link(2, "eth0", "dummy").addr("10.0.0.2/24"),
            link(3, "cilium_wg0", "wireguard"),
        ]);
        let mut routes = kernel_routes(&links);
        routes.push(default_via("10.0.0.1", 2));
        let st = startup(
            &[
                ("kube-proxy-replacement", "true"),
                ("enable-wireguard", "true"),
                ("encrypt-node", "true"),
                ("routing-mode", "native"),
                ("ipv4-native-routing-cidr", "10.0.0.0/8"),
                ("node-port-acceleration", "native"),
            ],
            &links,
            &routes,
            "10.0.0.2",
        );
        assert_eq!(st.selection.devices, names(&["eth0", "cilium_wg0"]));
        let plan = super::plan(&st.settings, &st.selection, &links).unwrap();
        let a = attached(&plan);
        assert!(a.contains(&t("cilium_wg0", Hook::Ingress, "cil_from_netdev")));
        assert!(!a.contains(&t("cilium_wg0", Hook::Egress, "cil_to_netdev")));
        assert!(flushed(&plan).contains(&("cilium_wg0".to_string(), Hook::Egress)));
        let xdp: Vec<&Op> = plan.ops.iter().filter(|o| matches!(o, Op::AttachXdp { .. })).collect();
        assert!(
            matches!(xdp[..], [Op::AttachXdp { device, mode: XdpMode::Native, .. }] if device == "eth0"),
            "{xdp:?}"
        );
    }

    #[test]
    fn xdp_plan() {
        let links = with_host_devices(vec![
            lo(),
            link(2, "eth0", "dummy").addr("10.0.0.2/24"),
            link(3, "eth1", "dummy").addr("10.1.0.2/24"),
            link(4, "veth9", "veth"),
        ]);
        let routes = kernel_routes(&links);
        let st = startup(
            &[
                ("kube-proxy-replacement", "true"),
                ("node-port-acceleration", "testing-only"),
                ("routing-mode", "native"),
                ("ipv4-native-routing-cidr", "10.0.0.0/8"),
            ],
            &links,
            &routes,
            "10.0.0.2",
        );
        let plan = super::plan(&st.settings, &st.selection, &links).unwrap();
        let detached: Vec<&str> = plan
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::DetachXdp { device, keep: None, .. } => Some(device.as_str()),
                _ => None,
            })
            .collect();
        // v1.14.4 tests IFLA_XDP_FLAGS, never in a link dump: nothing is kept, devices included.
        assert_eq!(detached, vec!["lo", "eth0", "eth1", "veth9"]);
        let plan15 = {
            let mut s15 = st.settings.clone();
            s15.profile = crate::profile::Profile::V1_15;
            super::plan(&s15, &st.selection, &links).unwrap()
        };
        let kept: Vec<(&str, Option<XdpMode>)> = plan15
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::DetachXdp { device, keep, .. } => Some((device.as_str(), *keep)),
                _ => None,
            })
            .collect();
        assert_eq!(
            kept,
            vec![("lo", None), ("eth0", Some(XdpMode::Generic)), ("eth1", Some(XdpMode::Generic)), ("veth9", None)]
        );
        let attached_xdp: Vec<(&str, XdpMode)> = plan
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::AttachXdp { device, mode, .. } => Some((device.as_str(), *mode)),
                _ => None,
            })
            .collect();
        assert_eq!(attached_xdp, vec![("eth0", XdpMode::Generic), ("eth1", XdpMode::Generic)]);
        assert!(plan.defines.contains_key("ENABLE_NODEPORT_ACCELERATION"));
        // Acceleration disabled: XDP is unloaded from every non-cilium link, devices included.
        let st = startup(&[("kube-proxy-replacement", "true")], &links, &routes, "10.0.0.2");
        let plan = super::plan(&st.settings, &st.selection, &links).unwrap();
        assert!(plan.ops.contains(&Op::DetachXdp { device: "eth0".into(), keep: None, link_dir: None }));
        assert!(!plan.ops.iter().any(|o| matches!(o, Op::AttachXdp { .. })));
    }

    fn vlan_node() -> Vec<LinkInfo> {
        let mut links = vec![lo(), link(2, "eth0", "veth").slave_of(4), link(4, "bond0", "bond").addr("10.0.0.2/24")];
        for (i, id) in [212u16, 300, 301, 302, 303, 304].iter().enumerate() {
            links.push(link(10 + i as u32, &format!("bond0.{id}"), "vlan").vlan(4, *id));
        }
        links
    }

    #[test]
    fn vlan_filter_semantics() {
        let links = vlan_node();
        let mut s = startup(&[], &links, &kernel_routes(&links), "10.0.0.2").settings;
        let f = vlan_filter(&s, &names(&["bond0", "bond0.212"]), &links).unwrap();
        assert_eq!(f["bond0"], VlanAllow::Ids(vec![212]));
        assert_eq!(f["bond0.212"], VlanAllow::Ids(vec![]));
        let f = vlan_filter(&s, &names(&["bond0"]), &links).unwrap();
        assert_eq!(f["bond0"], VlanAllow::Ids(vec![]), "#30593: unselected VLANs are dropped");
        s.vlan_bpf_bypass = vec![300, 999];
        let f = vlan_filter(&s, &names(&["bond0", "bond0.212"]), &links).unwrap();
        assert_eq!(f["bond0"], VlanAllow::Ids(vec![212, 300]));
        s.vlan_bpf_bypass = vec![300, 301, 302, 303, 304];
        let e = vlan_filter(&s, &names(&["bond0", "bond0.212"]), &links).unwrap_err();
        assert_eq!(e, PlanError::TooManyVlans { count: 6 });
        assert!(e.to_string().contains("allowed VLAN list is too big - 6 entries"));
        s.vlan_bpf_bypass = vec![0];
        let f = vlan_filter(&s, &names(&["bond0"]), &links).unwrap();
        assert_eq!(f["bond0"], VlanAllow::All);
        let e = vlan_filter(&s, &names(&["nosuch"]), &links).unwrap_err();
        assert_eq!(e, PlanError::LinkNotFound { device: "nosuch".into() });
    }

    #[test]
    fn vlan_allow_reaches_the_netdev_ops() {
        let links = with_host_devices(vlan_node());
        let st =
            startup(&[("devices", "bond0 bond0.212"), ("enable-host-legacy-routing", "true")], &links, &[], "10.0.0.2");
        let plan = super::plan(&st.settings, &st.selection, &links).unwrap();
        let bond = plan.ops.iter().find_map(|o| match o {
            Op::AttachTc { device, vlan, .. } if device == "bond0" => Some(vlan.clone()),
            _ => None,
        });
        assert_eq!(bond, Some(VlanAllow::Ids(vec![212])));
    }

    #[test]
    fn missing_explicit_device_fails_the_node_config() {
        let links = with_host_devices(vec![lo(), link(2, "eth0", "dummy").addr("10.0.0.2/24")]);
        let st = startup(&[("devices", "eth0 eth9"), ("enable-host-legacy-routing", "true")], &links, &[], "10.0.0.2");
        let e = plan(&st.settings, &st.selection, &links).unwrap_err();
        assert!(e.to_string().contains("eth9"), "{e}");
    }

    #[test]
    fn device_state_clsact_removal() {
        let links =
            with_host_devices(vec![lo(), link(2, "eth0", "dummy").addr("10.0.0.2/24"), link(3, "eth1", "dummy")]);
        let routes = kernel_routes(&links);
        // A previous NodePort run recorded eth0; now tunnel mode without NodePort.
        let st = startup(&[], &links, &routes, "10.0.0.2");
        // After the encapsulation device (init.sh's order): delete geneve, make vxlan.
        let p = plan_with_state(&st.settings, &st.selection, &links, Some("eth0")).unwrap();
        assert_eq!(p.ops[1], Op::DeleteLink { device: "cilium_geneve".into() });
        assert!(matches!(&p.ops[2], Op::EnsureEncapDevice { device, .. } if device == "cilium_vxlan"));
        assert_eq!(p.ops[3], Op::FlushTc { device: "eth0".into(), hook: Hook::Ingress });
        assert_eq!(p.ops[4], Op::FlushTc { device: "eth0".into(), hook: Hook::Egress });
        assert_eq!(p.device_state, None);
        // Several devices: the script splits on ',' but the file holds ';' — nothing matches.
        let p = plan_with_state(&st.settings, &st.selection, &links, Some("eth0;eth1")).unwrap();
        assert_eq!(p.ops[3], Op::RemoveObsoleteTc { device: "lo".into() });
    }

    #[test]
    fn endpoints_and_cleanup() {
        let links = vec![lo()];
        let s = startup(&[], &links, &[], "10.0.0.2");
        let ops = endpoint_ops(&s.settings, "lxc0123456789ab");
        assert_eq!(ops.len(), 2);
        assert!(matches!(&ops[0], Op::AttachTc { hook: Hook::Ingress, program, .. } if *program == CIL_FROM_CONTAINER));
        assert_eq!(ops[1], Op::FlushTc { device: "lxc0123456789ab".into(), hook: Hook::Egress });
        let mut settings = s.settings.clone();
        settings.enable_endpoint_routes = true;
        let ops = endpoint_ops(&settings, "lxc0123456789ab");
        assert!(matches!(&ops[1], Op::AttachTc { hook: Hook::Egress, program, .. } if *program == CIL_TO_CONTAINER));
        let links = vec![lo(), link(2, "eth0", "dummy")];
        assert_eq!(
            cleanup_ops(&links),
            vec![Op::RemoveCiliumFilters { device: "lo".into() }, Op::RemoveCiliumFilters { device: "eth0".into() }]
        );
    }
}

/// v1.15 and v1.16 on the same snapshots: what changed.
#[cfg(test)]
mod later_profiles {
    use super::*;
    use crate::config::{AgentConfig, ConfigError};
    use crate::devices::tu::*;
    use crate::observed::RouteInfo;
    use crate::profile::Profile;
    use crate::startup::{start, Startup};

    fn run(
        p: Profile,
        pairs: &[(&str, &str)],
        links: &[LinkInfo],
        routes: &[RouteInfo],
        ip: &str,
    ) -> Result<Startup, ConfigError> {
        let m = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cfg = AgentConfig::from_map(&m, p)?;
        start(&cfg, p, links, routes, Some(ip.parse().unwrap()))
    }

    fn netdev_hooks(plan: &Plan, dev: &str) -> Vec<(Hook, &'static str)> {
        plan.ops
            .iter()
            .filter_map(|o| match o {
                Op::AttachTc { device, hook, program, .. } | Op::AttachSkb { device, hook, program, .. }
                    if device == dev =>
                {
                    Some((*hook, program.symbol))
                }
                _ => None,
            })
            .collect()
    }

    fn seed_links() -> (Vec<LinkInfo>, Vec<RouteInfo>) {
        let (mut links, routes) = seed();
        links.push(link(50, "cilium_net", "veth"));
        links.push(link(51, "cilium_host", "veth"));
        (links, routes)
    }

    const PARTIAL: [(&str, &str); 2] = [("kube-proxy-replacement", "partial"), ("enable-node-port", "false")];

    #[test]
    fn seed_across_profiles() {
        let (links, routes) = seed_links();
        let ip = "10.212.0.10";
        let v14 = run(Profile::V1_14_4, &PARTIAL, &links, &routes, ip).unwrap();
        assert_eq!(v14.selection.devices, names(&["bond0.212"]));
        // v1.15: nothing requires devices and none are given, so none (b55ca78259).
        let v15 = run(Profile::V1_15, &PARTIAL, &links, &routes, ip).unwrap();
        assert!(v15.selection.devices.is_empty());
        let plan = super::plan(&v15.settings, &v15.selection, &links).unwrap();
        assert!(netdev_hooks(&plan, "bond0.212").is_empty());
        assert!(
            !plan.ops.contains(&Op::FlushTc { device: "cilium_net".into(), hook: Hook::Egress }),
            "init.sh is gone"
        );
        // v1.16: partial is refused; with "false" the devices table selects bond0.212 anyway.
        let e = run(Profile::V1_16, &PARTIAL, &links, &routes, ip).unwrap_err();
        assert!(e.to_string().contains("Invalid value for --kube-proxy-replacement: partial"), "{e}");
        let v16 = run(Profile::V1_16, &[("kube-proxy-replacement", "false")], &links, &routes, ip).unwrap();
        assert_eq!(v16.selection.devices, names(&["bond0.212"]));
        let plan = super::plan(&v16.settings, &v16.selection, &links).unwrap();
        assert_eq!(netdev_hooks(&plan, "bond0.212"), vec![(Hook::Ingress, "cil_from_netdev")]);
        assert!(plan.ops.contains(&Op::DetachSkb {
            device: "bond0.212".into(),
            hook: Hook::Egress,
            symbol: "cil_to_netdev",
            pin_dir: "cilium/devices/bond0-212/links".into()
        }));
        // tcx by default; the pins sit in the device's folder, "." as "-".
        assert!(plan
            .ops
            .iter()
            .any(|o| matches!(o, Op::AttachSkb { device, tcx: true, remove_stale: true, pin_dir, .. }
            if device == "cilium_host" && pin_dir == "cilium/devices/cilium_host/links")));
        let v16 =
            run(Profile::V1_16, &[("kube-proxy-replacement", "false"), ("enable-tcx", "false")], &links, &routes, ip)
                .unwrap();
        let plan = super::plan(&v16.settings, &v16.selection, &links).unwrap();
        assert!(plan.ops.iter().all(|o| !matches!(o, Op::AttachSkb { tcx: true, .. })));
        assert!(plan.ops.contains(&Op::RemoveObsoleteNetdev {
            device: "bond0".into(),
            device_dir: Some("cilium/devices/bond0".into())
        }));
        // With KPR true v1.15 attaches both directions.
        let v15 = run(Profile::V1_15, &[("kube-proxy-replacement", "true")], &links, &routes, ip).unwrap();
        let plan = super::plan(&v15.settings, &v15.selection, &links).unwrap();
        assert_eq!(
            netdev_hooks(&plan, "bond0.212"),
            vec![(Hook::Ingress, "cil_from_netdev"), (Hook::Egress, "cil_to_netdev")]
        );
        // The obsolete-program clean-up comes last and skips the excluded prefixes (lo); v1.15
        // attaches tc only (unpinning a v1.16 tcx link) and leaves bpffs folders alone.
        let last: Vec<&Op> = plan.ops.iter().rev().take(3).collect();
        assert!(last.iter().all(|o| matches!(o, Op::RemoveObsoleteNetdev { device_dir: None, .. })), "{last:?}");
        assert!(!plan.ops.iter().any(|o| matches!(o, Op::RemoveObsoleteNetdev { device, .. } if device == "lo")));
        assert!(plan.ops.iter().all(|o| !matches!(o, Op::AttachTc { .. } | Op::AttachSkb { tcx: true, .. })));
    }

    #[test]
    fn explicit_devices_need_addresses_from_v1_15() {
        let (links, routes) = seed_links();
        let pairs = [("kube-proxy-replacement", "true"), ("devices", "bond0 bond0.212 eth0")];
        let v14 = run(Profile::V1_14_4, &pairs, &links, &routes, "10.212.0.10").unwrap();
        assert_eq!(v14.selection.devices, names(&["bond0", "bond0.212", "eth0"]));
        let v15 = run(Profile::V1_15, &pairs, &links, &routes, "10.212.0.10").unwrap();
        assert_eq!(v15.selection.devices, names(&["bond0.212"]), "#35615: bond0 has no address");
        let e = run(
            Profile::V1_15,
            &[("kube-proxy-replacement", "true"), ("devices", "none+")],
            &links,
            &routes,
            "10.212.0.10",
        )
        .unwrap_err();
        assert!(e.to_string().contains("No device found matching"), "{e}");
    }

    #[test]
    fn bandwidth_manager_alone() {
        let (links, routes) = seed_links();
        let pairs = [("enable-bandwidth-manager", "true")];
        let v14 = run(Profile::V1_14_4, &pairs, &links, &routes, "10.212.0.10").unwrap();
        let plan14 = plan(&v14.settings, &v14.selection, &links).unwrap();
        assert!(netdev_hooks(&plan14, "bond0.212").contains(&(Hook::Egress, "cil_to_netdev")));
        let v15 = run(Profile::V1_15, &pairs, &links, &routes, "10.212.0.10").unwrap();
        assert!(v15.selection.devices.is_empty(), "v1.15 dropped BWM from AreDevicesRequired");
        let v16 = run(Profile::V1_16, &pairs, &links, &routes, "10.212.0.10").unwrap();
        let plan16 = plan(&v16.settings, &v16.selection, &links).unwrap();
        assert_eq!(netdev_hooks(&plan16, "bond0.212"), vec![(Hook::Ingress, "cil_from_netdev")]);
    }

    #[test]
    fn veth_default_route_must_be_in_main_from_v1_15() {
        let links =
            vec![lo(), link(2, "veth0", "veth").addr("192.168.4.1/24"), link(3, "eth0", "dummy").addr("10.0.0.2/24")];
        let mut routes = kernel_routes(&links);
        let mut r = default_via("192.168.4.254", 2);
        r.table = 11;
        routes.push(r);
        let np = [("kube-proxy-replacement", "true")];
        let v14 = run(Profile::V1_14_4, &np, &links, &routes, "10.0.0.2").unwrap();
        assert_eq!(v14.selection.devices, names(&["eth0", "veth0"]));
        let v15 = run(Profile::V1_15, &np, &links, &routes, "10.0.0.2").unwrap();
        assert_eq!(v15.selection.devices, names(&["eth0"]));
        // v1.16 --force-device-detection: listed devices on top of detected ones.
        let forced = [("kube-proxy-replacement", "true"), ("devices", "veth0"), ("force-device-detection", "true")];
        let v16 = run(Profile::V1_16, &forced, &links, &routes, "10.0.0.2").unwrap();
        assert_eq!(v16.selection.devices, names(&["eth0", "veth0"]));
        let v16 = run(Profile::V1_16, &forced[..2], &links, &routes, "10.0.0.2").unwrap();
        assert_eq!(v16.selection.devices, names(&["veth0"]));
    }

    #[test]
    fn wireguard_device_in_v1_16() {
        let links = vec![
            lo(),
            link(2, "eth0", "dummy").addr("10.0.0.2/24"),
            link(3, "cilium_wg0", "wireguard").addr("10.9.0.1/32"),
            link(50, "cilium_net", "veth"),
            link(51, "cilium_host", "veth"),
        ];
        let routes = kernel_routes(&links);
        let pairs = [
            ("kube-proxy-replacement", "true"),
            ("enable-wireguard", "true"),
            ("routing-mode", "native"),
            ("ipv4-native-routing-cidr", "10.0.0.0/8"),
        ];
        let v16 = run(Profile::V1_16, &pairs, &links, &routes, "10.0.0.2").unwrap();
        assert_eq!(v16.selection.devices, names(&["eth0"]), "cilium_ has an excluded prefix");
        let plan = super::plan(&v16.settings, &v16.selection, &links).unwrap();
        // reinitializeWireguard's cil_to_wireguard (L7 proxy on by default) comes before bpf_host.
        assert_eq!(
            netdev_hooks(&plan, "cilium_wg0"),
            vec![(Hook::Egress, "cil_to_wireguard"), (Hook::Ingress, "cil_from_netdev")]
        );
        assert!(!plan
            .ops
            .iter()
            .any(|o| matches!(o, Op::FlushTc { device, .. } | Op::DetachSkb { device, .. } if device == "cilium_wg0")));
        // v1.14.4 without encrypt-node: no bpf_host on cilium_wg0.
        let v14 = run(Profile::V1_14_4, &pairs, &links, &routes, "10.0.0.2").unwrap();
        let plan = super::plan(&v14.settings, &v14.selection, &links).unwrap();
        assert!(netdev_hooks(&plan, "cilium_wg0").is_empty());
    }
}

/// The encapsulation device and the overlay programs, per profile.
#[cfg(test)]
mod overlay {
    use super::*;
    use crate::config::AgentConfig;
    use crate::devices::tu::*;
    use crate::profile::Profile;
    use crate::startup::start;

    fn node(extra: &[&str]) -> Vec<LinkInfo> {
        let mut links = vec![
            lo(),
            link(2, "eth0", "veth").addr("10.0.0.2/24"),
            link(50, "cilium_net", "veth"),
            link(51, "cilium_host", "veth"),
        ];
        for (i, name) in extra.iter().enumerate() {
            links.push(link(60 + i as u32, name, name.trim_start_matches("cilium_")));
        }
        links
    }

    fn plan_for(p: Profile, pairs: &[(&str, &str)], links: &[LinkInfo]) -> Plan {
        let mut routes = kernel_routes(links);
        routes.push(default_via("10.0.0.1", 2));
        let m = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cfg = AgentConfig::from_map(&m, p).unwrap();
        let st = start(&cfg, p, links, &routes, Some("10.0.0.2".parse().unwrap())).unwrap();
        plan(&st.settings, &st.selection, links).unwrap()
    }

    fn encap(plan: &Plan) -> Vec<&Op> {
        plan.ops.iter().filter(|o| matches!(o, Op::EnsureEncapDevice { .. } | Op::DeleteLink { .. })).collect()
    }

    fn overlay(plan: &Plan) -> Vec<&Op> {
        plan.ops
            .iter()
            .filter(|o| matches!(o, Op::AttachTc { program, .. } | Op::AttachSkb { program, .. } if program.object == Object::Overlay))
            .collect()
    }

    fn ensure(device: &str, kind: EncapKind, port: u16) -> Op {
        Op::EnsureEncapDevice { device: device.into(), kind, port }
    }

    fn delete(device: &str) -> Op {
        Op::DeleteLink { device: device.into() }
    }

    const NATIVE: [(&str, &str); 2] = [("routing-mode", "native"), ("ipv4-native-routing-cidr", "10.0.0.0/8")];

    #[test]
    fn tunnel_vxlan_by_default() {
        let links = node(&[]);
        let p = plan_for(Profile::V1_14_4, &[], &links);
        // init.sh deletes the other protocol's device first; right after cilium_host/cilium_net.
        assert_eq!(&p.ops[1..3], &[delete("cilium_geneve"), ensure("cilium_vxlan", EncapKind::Vxlan, 8472)]);
        assert_eq!(
            overlay(&p),
            vec![
                &Op::AttachTc {
                    device: "cilium_vxlan".into(),
                    hook: Hook::Ingress,
                    program: CIL_FROM_OVERLAY,
                    priority: 1,
                    vlan: VlanAllow::Ids(vec![]),
                    seclabel: IDENTITY_WORLD
                },
                &Op::AttachTc {
                    device: "cilium_vxlan".into(),
                    hook: Hook::Egress,
                    program: CIL_TO_OVERLAY,
                    priority: 1,
                    vlan: VlanAllow::Ids(vec![]),
                    seclabel: IDENTITY_WORLD
                },
            ]
        );
        // The overlay is attached after XDP and before the host datapath.
        let pos = |f: &dyn Fn(&Op) -> bool| p.ops.iter().position(f).unwrap();
        let first_overlay = pos(&|o| matches!(o, Op::AttachTc { device, .. } if device == "cilium_vxlan"));
        assert!(first_overlay > pos(&|o| matches!(o, Op::DetachXdp { .. })));
        assert!(first_overlay < pos(&|o| matches!(o, Op::AttachTc { device, .. } if device == "cilium_host")));
        // v1.15 creates first, then deletes; attaches tc through attachTCProgram (no tcx).
        let p = plan_for(Profile::V1_15, &[], &links);
        assert_eq!(encap(&p), vec![&ensure("cilium_vxlan", EncapKind::Vxlan, 8472), &delete("cilium_geneve")]);
        let o = overlay(&p);
        assert_eq!(o.len(), 2);
        assert!(o.iter().all(|o| matches!(o, Op::AttachSkb { tcx: false, remove_stale: false, pin_dir, device, .. }
            if pin_dir == "cilium/devices/cilium_vxlan/links" && device == "cilium_vxlan")));
        // v1.16: tcx (tc where the kernel lacks it), or tc with enable-tcx off.
        let p = plan_for(Profile::V1_16, &[], &links);
        assert!(overlay(&p).iter().all(|o| matches!(o, Op::AttachSkb { tcx: true, remove_stale: true, .. })));
        assert!(
            matches!(overlay(&p)[0], Op::AttachSkb { hook: Hook::Ingress, program, seclabel: IDENTITY_WORLD, .. } if *program == CIL_FROM_OVERLAY)
        );
        assert!(
            matches!(overlay(&p)[1], Op::AttachSkb { hook: Hook::Egress, program, .. } if *program == CIL_TO_OVERLAY)
        );
        let p = plan_for(Profile::V1_16, &[("enable-tcx", "false")], &links);
        assert!(overlay(&p).iter().all(|o| matches!(o, Op::AttachSkb { tcx: false, .. })));
        // The encapsulation device is never an obsolete device (excluded prefix).
        let links = node(&["cilium_vxlan"]);
        let p = plan_for(Profile::V1_16, &[], &links);
        assert!(!p
            .ops
            .iter()
            .any(|o| matches!(o, Op::RemoveObsoleteNetdev { device, .. } if device == "cilium_vxlan")));
        let p = plan_for(Profile::V1_14_4, &[], &links);
        assert!(!p.ops.iter().any(
            |o| matches!(o, Op::RemoveObsoleteTc { device } | Op::DetachXdp { device, .. } if device == "cilium_vxlan")
        ));
    }

    #[test]
    fn tunnel_geneve_and_port() {
        let links = node(&[]);
        for p in [Profile::V1_14_4, Profile::V1_15, Profile::V1_16] {
            let plan = plan_for(p, &[("tunnel-protocol", "geneve")], &links);
            let mut e = encap(&plan);
            e.sort_by_key(|o| matches!(o, Op::DeleteLink { .. }));
            assert_eq!(e, vec![&ensure("cilium_geneve", EncapKind::Geneve, 6081), &delete("cilium_vxlan")], "{p:?}");
            let devs: Vec<&str> = overlay(&plan)
                .iter()
                .filter_map(|o| match o {
                    Op::AttachTc { device, .. } | Op::AttachSkb { device, .. } => Some(device.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(devs, vec!["cilium_geneve", "cilium_geneve"], "{p:?}");
            let plan = plan_for(p, &[("tunnel-port", "4789")], &links);
            assert!(encap(&plan).contains(&&ensure("cilium_vxlan", EncapKind::Vxlan, 4789)), "{p:?}");
        }
        // v1.14.4's deprecated key folds in.
        let plan = plan_for(Profile::V1_14_4, &[("tunnel", "geneve")], &links);
        assert!(encap(&plan).contains(&&ensure("cilium_geneve", EncapKind::Geneve, 6081)));
    }

    #[test]
    fn native_routing_deletes_both_devices() {
        // A node a tunnel-mode run left its device on: switching to native routing deletes it
        // (and so its attachments), and nothing is attached to it.
        let links = node(&["cilium_vxlan"]);
        for p in [Profile::V1_14_4, Profile::V1_15, Profile::V1_16] {
            let tunnel = plan_for(p, &[], &links);
            assert_eq!(overlay(&tunnel).len(), 2, "{p:?}");
            let native = plan_for(p, &NATIVE, &links);
            assert_eq!(encap(&native), vec![&delete("cilium_vxlan"), &delete("cilium_geneve")], "{p:?}");
            assert!(overlay(&native).is_empty(), "{p:?}");
            assert!(!native.defines.contains_key("TUNNEL_MODE"));
        }
    }

    #[test]
    fn encap_enablers_and_port_values() {
        use crate::config::{check_value, DsrDispatch, NodePortMode};
        let m = NATIVE.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let base = |p: Profile| Settings::derive(&AgentConfig::from_map(&m, p).unwrap(), p).unwrap();
        assert_eq!(base(Profile::V1_14_4).encap(), None);
        // DSR with Geneve dispatch in native routing: v1.14.4 forces geneve; v1.15+ keeps the
        // configured protocol (upstream's validator refuses anything but geneve).
        for p in [Profile::V1_14_4, Profile::V1_15] {
            let mut s = base(p);
            (s.enable_node_port, s.node_port_mode, s.dsr_dispatch) = (true, NodePortMode::Dsr, DsrDispatch::Geneve);
            s.tunnel_protocol = TunnelProtocol::Geneve;
            assert_eq!(s.encap(), Some((TunnelProtocol::Geneve, 6081)), "{p:?}");
        }
        let mut s = base(Profile::V1_16);
        s.enable_ipv4_egress_gateway = true;
        s.tunnel_port = 9000;
        assert_eq!(s.encap(), Some((TunnelProtocol::Vxlan, 9000)));
        assert!(check_value("tunnel-port", "8472").is_ok());
        assert!(check_value("tunnel-port", "0").is_ok());
        let e = check_value("tunnel-port", "70000").unwrap_err();
        assert!(e.contains("expected a port from 0 to 65535"), "{e}");
    }

    #[test]
    fn native_routing_features_that_need_a_tunnel() {
        let links = node(&[]);
        // High-scale ipcache (v1.14.4 encapProto; v1.15+ its tunnel enabler) keeps cilium_vxlan.
        let hs =
            [NATIVE[0], NATIVE[1], ("enable-high-scale-ipcache", "true"), ("enable-well-known-identities", "true")];
        for p in [Profile::V1_14_4, Profile::V1_15, Profile::V1_16] {
            let plan = plan_for(p, &hs, &links);
            assert_eq!(encap(&plan).iter().filter(|o| matches!(o, Op::EnsureEncapDevice { .. })).count(), 1, "{p:?}");
            assert_eq!(overlay(&plan).len(), 2, "{p:?}");
        }
    }
}

/// `bpf_wireguard.c` on cilium_wg0 (`reinitializeWireguard`): v1.16's `cil_to_wireguard`, v1.17's
/// detaches, v1.18's and v1.19's `cil_from_wireguard`.
#[cfg(test)]
mod wireguard_egress {
    use super::*;
    use crate::config::AgentConfig;
    use crate::devices::tu::*;
    use crate::profile::Profile;
    use crate::startup::{start, Startup};

    const ON: [(&str, &str); 5] = [
        ("enable-wireguard", "true"),
        ("kube-proxy-replacement", "true"),
        ("routing-mode", "native"),
        ("ipv4-native-routing-cidr", "10.0.0.0/8"),
        ("enable-l7-proxy", "true"),
    ];

    fn links() -> Vec<LinkInfo> {
        vec![lo(), link(2, "eth0", "veth").addr("10.0.0.2/24"), link(3, WIREGUARD_DEVICE, "wireguard")]
    }

    fn startup(p: Profile, pairs: &[(&str, &str)]) -> Startup {
        let links = links();
        let mut routes = kernel_routes(&links);
        routes.push(default_via("10.0.0.1", 2));
        let m = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cfg = AgentConfig::from_map(&m, p).unwrap();
        start(&cfg, p, &links, &routes, Some("10.0.0.2".parse().unwrap())).unwrap()
    }

    fn plan_for(p: Profile, pairs: &[(&str, &str)]) -> Plan {
        let st = startup(p, pairs);
        plan(&st.settings, &st.selection, &links()).unwrap()
    }

    /// Every op naming `cil_to_wireguard` (attach or detach).
    fn to_wireguard(plan: &Plan) -> Vec<&Op> {
        plan.ops
            .iter()
            .filter(|o| match o {
                Op::AttachTc { program, .. } | Op::AttachSkb { program, .. } => *program == CIL_TO_WIREGUARD,
                Op::DetachSkb { symbol, .. } => *symbol == CIL_TO_WIREGUARD.symbol,
                _ => false,
            })
            .collect()
    }

    fn with(key: &str, value: &str) -> Vec<(&'static str, String)> {
        ON.iter().map(|(k, v)| (*k, if *k == key { value.to_string() } else { v.to_string() })).collect()
    }

    fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        v.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn attached_on_egress_when_every_conjunct_holds() {
        let p = plan_for(Profile::V1_16, &ON);
        let pin_dir = "cilium/devices/cilium_wg0/links".to_string();
        assert_eq!(
            to_wireguard(&p),
            vec![&Op::AttachSkb {
                device: WIREGUARD_DEVICE.into(),
                hook: Hook::Egress,
                program: CIL_TO_WIREGUARD,
                priority: 1,
                vlan: VlanAllow::Ids(vec![]),
                seclabel: IDENTITY_WORLD,
                pin_dir,
                tcx: true,
                remove_stale: true,
            }]
        );
        // After XDP, before the host datapath; bpf_host leaves cilium_wg0's egress alone.
        let pos = |f: &dyn Fn(&Op) -> bool| p.ops.iter().position(f).unwrap();
        let wg = pos(&|o| *o == *to_wireguard(&p)[0]);
        assert!(wg < pos(&|o| matches!(o, Op::AttachSkb { device, .. } if device == HOST_DEVICE)));
        assert!(!p.ops.iter().any(|o| matches!(o, Op::DetachSkb { device, .. } | Op::AttachSkb { device, hook: Hook::Egress, program: CIL_TO_NETDEV, .. }
            if device == WIREGUARD_DEVICE)));
        // enable-l7-proxy defaults to true; enable-tcx off: tc.
        let p = plan_for(Profile::V1_16, &ON[..4]);
        assert_eq!(to_wireguard(&p).len(), 1);
        let p = plan_for(Profile::V1_16, &[&ON[..], &[("enable-tcx", "false")]].concat());
        assert!(matches!(to_wireguard(&p)[..], [Op::AttachSkb { tcx: false, .. }]));
    }

    #[test]
    fn nothing_when_a_conjunct_fails() {
        // Upstream v1.16 returns early: no attach, and no detach either.
        for (key, value) in [
            ("enable-wireguard", "false"),
            ("enable-l7-proxy", "false"),
            ("routing-mode", "tunnel"),
            ("kube-proxy-replacement", "false"),
        ] {
            let p = plan_for(Profile::V1_16, &pairs(&with(key, value)));
            assert!(to_wireguard(&p).is_empty(), "{key}={value}");
        }
        // NodePort off: kube-proxy-replacement=false without enable-node-port (true forces it).
        let mut s = startup(Profile::V1_16, &ON).settings;
        assert!(s.need_egress_on_wireguard_device());
        s.enable_node_port = false;
        assert!(!s.need_egress_on_wireguard_device());
    }

    #[test]
    fn only_v1_16() {
        // v1.14.4/v1.15 have no bpf_wireguard.c (and v1.14.4 no kube-proxy-replacement=true).
        let p = plan_for(Profile::V1_15, &ON);
        assert!(to_wireguard(&p).is_empty());
        let strict = with("kube-proxy-replacement", "strict");
        let p = plan_for(Profile::V1_14_4, &pairs(&strict));
        assert!(to_wireguard(&p).is_empty());
    }

    #[test]
    fn missing_device_is_an_error() {
        let st = startup(Profile::V1_16, &ON);
        let links = vec![lo(), link(2, "eth0", "veth").addr("10.0.0.2/24")];
        let e = plan(&st.settings, &st.selection, &links).unwrap_err();
        assert_eq!(e, PlanError::WireguardLinkNotFound);
        assert!(e.to_string().contains("failed to retrieve link for interface cilium_wg0"));
    }

    /// (hook, attached?, symbol) of every op on cilium_wg0, in order.
    fn wg_ops(plan: &Plan) -> Vec<(Hook, bool, &'static str)> {
        plan.ops
            .iter()
            .filter_map(|o| match o {
                Op::AttachSkb { device, hook, program, .. } if device == WIREGUARD_DEVICE => {
                    Some((*hook, true, program.symbol))
                }
                Op::DetachSkb { device, hook, symbol, .. } if device == WIREGUARD_DEVICE => {
                    Some((*hook, false, *symbol))
                }
                _ => None,
            })
            .collect()
    }

    const TUNNEL: [(&str, &str); 2] = [("enable-wireguard", "true"), ("kube-proxy-replacement", "true")];

    /// What each release does on cilium_wg0 in native routing (every condition holds) and in
    /// tunnel routing without NodePort && encrypt-node (none holds but v1.19's "always").
    #[test]
    fn cilium_wg0_per_release() {
        const TO: &str = "cil_to_wireguard";
        const FROM: &str = "cil_from_wireguard";
        const NETDEV: &str = "cil_from_netdev";
        let (e, i) = (Hook::Egress, Hook::Ingress);
        type Case<'a> = (Profile, &'a [(&'a str, &'a str)], Vec<(Hook, bool, &'a str)>);
        let cases: [Case; 7] = [
            // v1.17: bpf_host's attach is followed by the removal of v1.18's cil_from_wireguard.
            (Profile::V1_17, &ON, vec![(e, true, TO), (i, true, NETDEV), (i, false, FROM)]),
            (Profile::V1_17, &TUNNEL, vec![(e, false, TO), (i, false, NETDEV), (i, false, FROM)]),
            // v1.16 returns early.
            (Profile::V1_16, &TUNNEL, vec![]),
            (Profile::V1_18, &ON, vec![(e, true, TO), (i, true, FROM), (i, false, NETDEV)]),
            (Profile::V1_18, &TUNNEL, vec![(e, false, TO), (i, false, FROM), (i, false, NETDEV)]),
            (Profile::V1_19, &ON, vec![(e, true, TO), (i, true, FROM)]),
            (Profile::V1_19, &TUNNEL, vec![(e, false, TO), (i, true, FROM)]),
        ];
        for (p, pairs, want) in cases {
            assert_eq!(wg_ops(&plan_for(p, pairs)), want, "{p:?} {pairs:?}");
        }
        // v1.18: NodePort && encrypt-node brings the ingress program back in tunnel routing.
        let enc = [&TUNNEL[..], &[("encrypt-node", "true")]].concat();
        assert_eq!(wg_ops(&plan_for(Profile::V1_18, &enc))[1], (i, true, FROM));
    }

    #[test]
    fn from_v1_17_the_device_is_needed_whenever_wireguard_is_on() {
        let links = vec![lo(), link(2, "eth0", "veth").addr("10.0.0.2/24")];
        for p in [Profile::V1_17, Profile::V1_18, Profile::V1_19] {
            let st = startup(p, &TUNNEL);
            assert_eq!(plan(&st.settings, &st.selection, &links).unwrap_err(), PlanError::WireguardLinkNotFound);
        }
        let st = startup(Profile::V1_16, &TUNNEL);
        assert!(plan(&st.settings, &st.selection, &links).is_ok());
    }
}
