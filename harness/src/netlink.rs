//! Thin layer over rtnetlink: list links, addresses and routes of the current namespace, and
//! create or change them. Everything here runs on a thread that is inside the target namespace
//! (see [`crate::netns`]); nothing here knows about scenarios.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

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

/// Errors of kernel calls on links, addresses and routes.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{op} {object}: {message}")]
    Call { op: &'static str, object: String, message: String },
    #[error("netlink: cannot open a socket: {0}")]
    Socket(std::io::Error),
}
