//! The datapath plan: what `reloadHostDatapath` (and init.sh, and XDP setup) do to the node's
//! links, as a list of operations computed purely from the settings, the selected devices and
//! the node's links. [`crate::loader::attach`] executes the plan against the kernel.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::inspect::Hook;

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
}

impl Object {
    pub fn source(self) -> &'static str {
        match self {
            Object::Host => "bpf_host.c",
            Object::Xdp => "bpf_xdp.c",
            Object::Lxc => "bpf_lxc.c",
            Object::Foreign => "foreign.c",
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum XdpMode {
    /// `xdpdrv`: XDP_FLAGS_DRV_MODE.
    Native,
    /// `xdpgeneric`: XDP_FLAGS_SKB_MODE.
    Generic,
}

/// One thing the agent does to a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Create the `cilium_host` / `cilium_net` veth pair if missing, up.
    CreateHostDevices,
    /// clsact qdisc + cls_bpf filter `<symbol>-<device>`, handle 1, protocol all, direct-action.
    AttachTc { device: String, hook: Hook, program: ProgramRef, priority: u16, vlan: VlanAllow, seclabel: u32 },
    /// `RemoveTCFilters`: delete every filter in that direction, Cilium's or not.
    FlushTc { device: String, hook: Hook },
    /// init.sh's clean-up for a link no longer in the device list: per direction, if a filter
    /// named like Cilium's (`bpf_host`, `cil_from_netdev`, `cil_to_netdev`) is there, delete all
    /// filters of that direction.
    RemoveObsoleteTc { device: String },
    /// `cil_xdp_entry` attached through netlink in the given mode.
    AttachXdp { device: String, program: ProgramRef, mode: XdpMode },
    /// Detach any XDP program (`maybeUnloadObsoleteXDPPrograms`).
    DetachXdp { device: String },
}

/// The full plan of one (re)initialisation of the host datapath.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Node-config defines for the compile step (`ENABLE_NODEPORT` → `1`, ...).
    pub defines: BTreeMap<String, String>,
    pub ops: Vec<Op>,
}
