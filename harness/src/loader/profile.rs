//! Upstream behaviour profiles: which release's rules the loader follows. A profile is a value
//! the rules consult; rules that did not change between releases are written once.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Profile {
    /// Cilium v1.14.4.
    V1_14_4,
    /// Cilium v1.15.x (v1.15.7 rules).
    V1_15,
    /// Cilium v1.16.x.
    V1_16,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::V1_14_4, Profile::V1_15, Profile::V1_16];

    /// Parses a profile name as written in scenario files.
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "v1.14.4" => Some(Profile::V1_14_4),
            "v1.15" => Some(Profile::V1_15),
            "v1.16" => Some(Profile::V1_16),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::V1_14_4 => "v1.14.4",
            Profile::V1_15 => "v1.15",
            Profile::V1_16 => "v1.16",
        }
    }

    /// Profiles the loader implements today (scenario validation rejects the others).
    /// v1.15 and v1.16 share the v1.14.4 code paths where upstream did not change. From v1.15
    /// the plan attaches with `Op::AttachSkb` (v1.15: tc, unpinning a newer tcx link; v1.16:
    /// tcx when `enable-tcx`, tc where the kernel has none); v1.16 also attaches
    /// `bpf_wireguard.c`'s `cil_to_wireguard` (`reinitializeWireguard`). Not modelled: the
    /// bpf_link XDP attachment of v1.15+ (XDP stays a netlink attachment).
    pub fn implemented() -> &'static [Profile] {
        &[Profile::V1_14_4, Profile::V1_15, Profile::V1_16]
    }
}
