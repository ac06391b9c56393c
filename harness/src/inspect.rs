//! Read-back: every tc filter, tcx link and XDP program on every link of a namespace, through
//! netlink and the bpf syscall. Read-only: nothing here changes kernel state.

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

/// Errors of the read-back.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("inspect {object}: {message}")]
    Call { object: String, message: String },
    #[error("inspect: namespace {0} does not exist")]
    NoNamespace(String),
}
