//! Thin layer over rtnetlink: list links, addresses and routes of the current namespace, and
//! create or change them. Everything here runs on a thread that is inside the target namespace
//! (see [`crate::sys::netns`]); nothing here knows about scenarios.
//!
//! This is the harness's one netlink path. [`Rtnl`] is one rtnetlink connection opened in one
//! namespace, with the current-thread runtime that drives it; callers open one per namespace
//! and batch of work and pass it down. Links, addresses and routes go through rtnetlink's
//! requests ([`Conn`], the async half); what rtnetlink has no request for (tc qdiscs and
//! cls_bpf filters, IFLA_XDP; see [`crate::sys::tc`]) is a netlink-packet-route message sent
//! on the same connection with [`Rtnl::request`]. Never use an [`Rtnl`] from within another
//! tokio runtime.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use hostdp_model::observed::{feature_of_kind, EncapKind, LinkInfo, RouteInfo};
use ipnet::IpNet;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BondMode, InfoBond, InfoData, InfoGeneve, InfoKind, InfoMacVlan, InfoVeth, InfoVlan, InfoVrf, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, MacVlanMode, VlanProtocol,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::AsyncSocket;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};
use serde::Serialize;

/// Errors of kernel calls on links, addresses and routes.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{op} {object}: {source}")]
    Call {
        op: &'static str,
        object: String,
        #[source]
        source: CallError,
    },
    #[error("netlink: cannot open a socket: {0}")]
    Socket(#[source] std::io::Error),
}

/// Why one call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The kernel refused: strerror's text, and a hint where the cause is usually a missing
    /// kernel feature (`Operation not supported (kernel lacks bonding?)`).
    #[error("{}{}", errno_text(*errno), hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Kernel { errno: i32, hint: Option<String> },
    /// A name the call needed is not a link of the namespace.
    #[error("no such link {0}")]
    NoSuchLink(String),
    /// Looking up a link the call needed failed otherwise.
    #[error("find link {name}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: Box<CallError>,
    },
    /// The request could not be built (an unparsable value).
    #[error("{0}")]
    Invalid(String),
    /// The namespace file a veth peer goes into cannot be opened.
    #[error("open namespace {}: {source}", path.display())]
    Namespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket failed, not the kernel's answer.
    #[error(transparent)]
    Transport(Box<rtnetlink::Error>),
}

/// A netlink-packet-route request the kernel refused, or that could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The kernel's errno, and its extended-ack text when it gave one.
    #[error("{errno}{}", ext.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Kernel { errno: std::io::Error, ext: Option<String> },
    #[error(transparent)]
    Transport(Box<rtnetlink::Error>),
}

impl RequestError {
    /// The kernel's errno, when the kernel answered.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RequestError::Kernel { errno, .. } => errno.raw_os_error(),
            RequestError::Transport(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// Main routing table id.
pub const TABLE_MAIN: u32 = 254;

/// A link to create, kind by kind as the scenario format has them. Links are named, not
/// indexed: names are resolved on the socket when the request is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewLink {
    /// A veth pair; the peer is created directly inside `peer_netns` (a namespace file such as
    /// `/run/netns/NAME`) when given, else next to the link.
    Veth {
        peer: String,
        peer_netns: Option<PathBuf>,
    },
    /// `mode` is the iproute2 name (`802.3ad`, `active-backup`, ... or a number).
    Bond {
        mode: Option<String>,
        miimon: Option<u32>,
    },
    /// `protocol`: `802.1Q` (default) or `802.1ad`.
    Vlan {
        parent: String,
        id: u16,
        protocol: Option<String>,
    },
    Bridge,
    Dummy,
    Ifb,
    Wireguard,
    /// `mode`: bridge (default), private, vepa, passthru, source.
    Macvlan {
        parent: String,
        mode: Option<String>,
    },
    /// `port` defaults to 4789 (IANA), not the kernel's historical 8472.
    Vxlan {
        vni: u32,
        port: Option<u16>,
        parent: Option<String>,
    },
    Vrf {
        table: u32,
    },
}

impl NewLink {
    /// The `IFLA_INFO_KIND` string.
    pub fn kind(&self) -> &'static str {
        match self {
            NewLink::Veth { .. } => "veth",
            NewLink::Bond { .. } => "bond",
            NewLink::Vlan { .. } => "vlan",
            NewLink::Bridge => "bridge",
            NewLink::Dummy => "dummy",
            NewLink::Ifb => "ifb",
            NewLink::Wireguard => "wireguard",
            NewLink::Macvlan { .. } => "macvlan",
            NewLink::Vxlan { .. } => "vxlan",
            NewLink::Vrf { .. } => "vrf",
        }
    }

    /// Links this one must be created after.
    pub fn depends_on(&self) -> Option<&str> {
        match self {
            NewLink::Vlan { parent, .. } | NewLink::Macvlan { parent, .. } => Some(parent),
            NewLink::Vxlan { parent, .. } => parent.as_deref(),
            _ => None,
        }
    }
}

/// What [`ensure_encap_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncapAction {
    /// A device of that kind and port was there already.
    Kept,
    Created,
    /// A device of that name had another kind or port: deleted, then created again (a UDP
    /// port cannot be changed in place).
    Recreated,
}

/// One change of the namespace's links, addresses or routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddLink {
        name: String,
        link: NewLink,
    },
    /// Enslaves `name` to `master`, or releases it with `None`.
    SetMaster {
        name: String,
        master: Option<String>,
    },
    SetUp {
        name: String,
        up: bool,
    },
    SetMtu {
        name: String,
        mtu: u32,
    },
    SetMac {
        name: String,
        mac: [u8; 6],
    },
    AddAddress {
        name: String,
        addr: IpNet,
    },
    /// A unicast route; `dst` `0.0.0.0/0` or `::/0` is a default route.
    AddRoute {
        dst: IpNet,
        via: Option<IpAddr>,
        dev: String,
        table: u32,
    },
    /// The route `AddRoute` with the same keys made.
    DeleteRoute {
        dst: IpNet,
        via: Option<IpAddr>,
        dev: String,
        table: u32,
    },
    DeleteLink {
        name: String,
    },
    /// A permanent neighbour entry: `ip` is at `mac` on `name` (created or replaced).
    SetNeighbour {
        name: String,
        ip: IpAddr,
        mac: [u8; 6],
    },
}

impl Change {
    /// `(operation, object)` for error messages, e.g. `("create link", "bond0")`.
    fn describe(&self) -> (&'static str, String) {
        match self {
            Change::AddLink { name, .. } => ("create link", name.clone()),
            Change::SetMaster { name, master: Some(m) } => ("enslave link", format!("{name} to {m}")),
            Change::SetMaster { name, master: None } => ("release link", name.clone()),
            Change::SetUp { name, up: true } => ("set link up", name.clone()),
            Change::SetUp { name, up: false } => ("set link down", name.clone()),
            Change::SetMtu { name, mtu } => ("set mtu", format!("{name} to {mtu}")),
            Change::SetMac { name, mac } => ("set mac", format!("{name} to {}", format_mac(mac))),
            Change::AddAddress { name, addr } => ("add address", format!("{addr} on {name}")),
            Change::AddRoute { dst, via, dev, table } => {
                let via = via.map(|v| format!(" via {v}")).unwrap_or_default();
                ("add route", format!("{dst}{via} dev {dev} table {table}"))
            }
            Change::DeleteRoute { dst, via, dev, table } => {
                let via = via.map(|v| format!(" via {v}")).unwrap_or_default();
                ("delete route", format!("{dst}{via} dev {dev} table {table}"))
            }
            Change::DeleteLink { name } => ("delete link", name.clone()),
            Change::SetNeighbour { name, ip, mac } => {
                ("set neighbour", format!("{ip} lladdr {} dev {name}", format_mac(mac)))
            }
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// iproute2's bond mode names (and numbers).
pub fn parse_bond_mode(s: &str) -> Option<BondMode> {
    Some(match s {
        "balance-rr" | "0" => BondMode::BalanceRr,
        "active-backup" | "1" => BondMode::ActiveBackup,
        "balance-xor" | "2" => BondMode::BalanceXor,
        "broadcast" | "3" => BondMode::Broadcast,
        "802.3ad" | "4" => BondMode::Ieee8023Ad,
        "balance-tlb" | "5" => BondMode::BalanceTlb,
        "balance-alb" | "6" => BondMode::BalanceAlb,
        _ => return None,
    })
}

pub fn parse_macvlan_mode(s: &str) -> Option<MacVlanMode> {
    Some(match s {
        "bridge" => MacVlanMode::Bridge,
        "private" => MacVlanMode::Private,
        "vepa" => MacVlanMode::Vepa,
        "passthru" => MacVlanMode::Passthrough,
        "source" => MacVlanMode::Source,
        _ => return None,
    })
}

/// `802.1Q` / `802.1ad`, case-insensitively.
pub fn parse_vlan_protocol(s: &str) -> Option<VlanProtocol> {
    match s.to_ascii_lowercase().as_str() {
        "802.1q" => Some(VlanProtocol::Ieee8021Q),
        "802.1ad" => Some(VlanProtocol::Ieee8021Ad),
        _ => None,
    }
}

/// A failed rtnetlink call as a [`CallError`], with a hint where the cause is usually a
/// missing kernel feature.
fn call_error(err: rtnetlink::Error, change: Option<&Change>) -> CallError {
    let Some(errno) = errno_of(&err) else {
        return CallError::Transport(Box::new(err));
    };
    let hint = match change {
        Some(Change::AddLink { link, .. }) if errno == libc::EOPNOTSUPP || errno == libc::EAFNOSUPPORT => {
            Some(format!("kernel lacks {}?", feature_of_kind(link.kind())))
        }
        _ => None,
    };
    CallError::Kernel { errno, hint }
}

/// strerror's text for an errno (`Operation not supported`), without Rust's `(os error N)`.
pub fn errno_text(code: i32) -> String {
    let s = std::io::Error::from_raw_os_error(code).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The errno of a failed call, if the kernel answered with one.
pub fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(e) if e.raw_code() != 0 => Some(-e.raw_code()),
        _ => None,
    }
}

/// The async half of [`Rtnl`]: one rtnetlink socket driven by the runtime it was opened in.
#[derive(Clone)]
struct Conn {
    handle: Handle,
}

impl Conn {
    /// Opens a socket in the calling thread's namespace. Must run inside a tokio runtime
    /// (e.g. [`block_on`]), whose executor drives the socket.
    pub fn open() -> Result<Conn> {
        let (mut conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        // Kernel error strings ("Exclusivity flag on, cannot modify") make errors readable.
        let _ = conn.socket_mut().socket_mut().set_ext_ack(true);
        tokio::spawn(conn);
        Ok(Conn { handle })
    }

    /// Every link with its addresses: one link dump and one address dump.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let call = |op: &'static str| {
            move |e: rtnetlink::Error| NetlinkError::Call { op, object: "links".into(), source: call_error(e, None) }
        };
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await.map_err(call("list"))?;
        let addrs: Vec<AddressMessage> =
            self.handle.address().get().execute().try_collect().await.map_err(call("list addresses of"))?;
        let mut by_index: HashMap<u32, Vec<IpNet>> = HashMap::new();
        for a in &addrs {
            if let Some(net) = address_of(a) {
                by_index.entry(a.header.index).or_default().push(net);
            }
        }
        let mut out: Vec<LinkInfo> = msgs
            .iter()
            .map(|m| {
                let mut l = link_of(m);
                l.addresses = by_index.remove(&l.index).unwrap_or_default();
                l
            })
            .collect();
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    /// Every route of every table, IPv4 then IPv6.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let msgs: Vec<RouteMessage> =
                self.handle.route().get(msg).execute().try_collect().await.map_err(|e| NetlinkError::Call {
                    op: "list",
                    object: "routes".into(),
                    source: call_error(e, None),
                })?;
            out.extend(msgs.iter().filter_map(route_of));
        }
        Ok(out)
    }

    /// The index of the link named `name`.
    pub async fn index_of(&self, name: &str) -> Result<u32> {
        let found: Vec<LinkMessage> =
            self.handle.link().get().match_name(name.to_string()).execute().try_collect().await.map_err(|e| {
                NetlinkError::Call {
                    op: "find link",
                    object: name.to_string(),
                    source: if errno_of(&e) == Some(libc::ENODEV) {
                        CallError::NoSuchLink(name.to_string())
                    } else {
                        call_error(e, None)
                    },
                }
            })?;
        found.first().map(|m| m.header.index).ok_or_else(|| NetlinkError::Call {
            op: "find link",
            object: name.into(),
            source: CallError::NoSuchLink(name.to_string()),
        })
    }

    /// Kind, UDP destination port (vxlan and geneve links) and index of the link named
    /// `name`; `None` if there is no such link.
    async fn encap_of(&self, name: &str) -> Result<Option<(String, Option<u16>, u32)>> {
        let found: std::result::Result<Vec<LinkMessage>, rtnetlink::Error> =
            self.handle.link().get().match_name(name.to_string()).execute().try_collect().await;
        let msgs = match found {
            Ok(m) => m,
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => return Ok(None),
            Err(e) => {
                return Err(NetlinkError::Call { op: "find link", object: name.into(), source: call_error(e, None) })
            }
        };
        let Some(m) = msgs.first() else { return Ok(None) };
        let mut port = None;
        for a in &m.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    match i {
                        NlLinkInfo::Data(InfoData::Vxlan(v)) => {
                            port = v.iter().find_map(|x| if let InfoVxlan::Port(p) = x { Some(*p) } else { None });
                        }
                        NlLinkInfo::Data(InfoData::Geneve(v)) => {
                            port = v.iter().find_map(|x| if let InfoGeneve::Port(p) = x { Some(*p) } else { None });
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Some((link_of(m).kind, port, m.header.index)))
    }

    /// Makes `name` a collect-metadata `kind` device on UDP port `port`, up: kept if it is
    /// one already, else created (or deleted and created again), as init.sh's
    /// `create_encap_dev` (v1.14.4) and `setupVxlanDevice`/`setupGeneveDevice` (v1.15+) do.
    pub async fn ensure_encap_device(&self, name: &str, kind: EncapKind, port: u16) -> Result<EncapAction> {
        let action = match self.encap_of(name).await? {
            Some((k, p, _)) if k == kind.as_str() && p == Some(port) => EncapAction::Kept,
            Some(_) => {
                self.apply_one(&Change::DeleteLink { name: name.to_string() }).await?;
                EncapAction::Recreated
            }
            None => EncapAction::Created,
        };
        if action != EncapAction::Kept {
            let b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(match kind {
                EncapKind::Vxlan => InfoKind::Vxlan,
                EncapKind::Geneve => InfoKind::Geneve,
            })
            .name(name);
            let data = match kind {
                // `external` in iproute2 also turns learning off.
                EncapKind::Vxlan => InfoData::Vxlan(vec![
                    InfoVxlan::CollectMetadata(true),
                    InfoVxlan::Learning(false),
                    InfoVxlan::Port(port),
                ]),
                EncapKind::Geneve => InfoData::Geneve(vec![InfoGeneve::CollectMetadata, InfoGeneve::Port(port)]),
            };
            self.handle.link().add(b.set_info_data(data).build()).execute().await.map_err(|e| NetlinkError::Call {
                op: "create link",
                object: name.to_string(),
                source: call_error(e, None),
            })?;
        }
        self.apply_one(&Change::SetUp { name: name.to_string(), up: true }).await?;
        Ok(action)
    }

    /// Deletes the link named `name` if there is one; whether there was.
    pub async fn delete_link_if_present(&self, name: &str) -> Result<bool> {
        if self.encap_of(name).await?.is_none() {
            return Ok(false);
        }
        self.apply_one(&Change::DeleteLink { name: name.to_string() }).await?;
        Ok(true)
    }

    /// Issues `changes` in order on this socket; stops at the first failure.
    pub async fn apply(&self, changes: &[Change]) -> Result<()> {
        for c in changes {
            self.apply_one(c).await?;
        }
        Ok(())
    }

    /// Reports a failed name lookup as a failure of the change (`delete link eth3: no such
    /// link eth3`).
    async fn apply_one(&self, change: &Change) -> Result<()> {
        self.apply_inner(change).await.map_err(|e| match e {
            NetlinkError::Call { op: "find link", object: missing, source } => {
                let (op, object) = change.describe();
                let source = match source {
                    CallError::NoSuchLink(name) => CallError::NoSuchLink(name),
                    other => CallError::Lookup { name: missing, source: Box::new(other) },
                };
                NetlinkError::Call { op, object, source }
            }
            other => other,
        })
    }

    async fn apply_inner(&self, change: &Change) -> Result<()> {
        let (op, object) = change.describe();
        let fail = |source: CallError| NetlinkError::Call { op, object: object.clone(), source };
        let kernel = |e: rtnetlink::Error| fail(call_error(e, Some(change)));
        let link = self.handle.link();
        match change {
            Change::AddLink { name, link: spec } => {
                // Kept open until the request is answered: the kernel reads the fd then.
                let mut _peer_ns: Option<File> = None;
                let msg = self.new_link_message(name, spec, &mut _peer_ns).await.map_err(|e| match e {
                    NetlinkError::Call { source, .. } => fail(source),
                    other => other,
                })?;
                link.add(msg).execute().await.map_err(kernel)
            }
            Change::SetMaster { name, master } => {
                let idx = self.index_of(name).await?;
                let b = LinkUnspec::new_with_index(idx);
                let b = match master {
                    Some(m) => b.controller(self.index_of(m).await?),
                    None => b.nocontroller(),
                };
                link.set(b.build()).execute().await.map_err(kernel)
            }
            Change::SetUp { name, up } => {
                let b = LinkUnspec::new_with_index(self.index_of(name).await?);
                let b = if *up { b.up() } else { b.down() };
                link.set(b.build()).execute().await.map_err(kernel)
            }
            Change::SetMtu { name, mtu } => {
                let b = LinkUnspec::new_with_index(self.index_of(name).await?).mtu(*mtu);
                link.set(b.build()).execute().await.map_err(kernel)
            }
            Change::SetMac { name, mac } => {
                let b = LinkUnspec::new_with_index(self.index_of(name).await?).address(mac.to_vec());
                link.set(b.build()).execute().await.map_err(kernel)
            }
            Change::AddAddress { name, addr } => {
                let idx = self.index_of(name).await?;
                self.handle.address().add(idx, addr.addr(), addr.prefix_len()).execute().await.map_err(kernel)
            }
            Change::AddRoute { dst, via, dev, table } => {
                let oif = self.index_of(dev).await?;
                let msg = route_message(dst, via.as_ref(), oif, *table).map_err(|m| fail(CallError::Invalid(m)))?;
                self.handle.route().add(msg).execute().await.map_err(kernel)
            }
            Change::DeleteRoute { dst, via, dev, table } => {
                let oif = self.index_of(dev).await?;
                let msg = route_message(dst, via.as_ref(), oif, *table).map_err(|m| fail(CallError::Invalid(m)))?;
                self.handle.route().del(msg).execute().await.map_err(kernel)
            }
            Change::DeleteLink { name } => {
                let idx = self.index_of(name).await?;
                link.del(idx).execute().await.map_err(kernel)
            }
            Change::SetNeighbour { name, ip, mac } => {
                let idx = self.index_of(name).await?;
                self.handle.neighbours().add(idx, *ip).link_layer_address(mac).replace().execute().await.map_err(kernel)
            }
        }
    }

    async fn new_link_message(&self, name: &str, spec: &NewLink, peer_ns: &mut Option<File>) -> Result<LinkMessage> {
        let bad = |message: String| NetlinkError::Call {
            op: "create link",
            object: name.into(),
            source: CallError::Invalid(message),
        };
        let kinded = |kind: InfoKind| LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(kind).name(name);
        let msg = match spec {
            NewLink::Veth { peer, peer_netns } => {
                let mut peer_b = LinkUnspec::new_with_name(peer);
                if let Some(path) = peer_netns {
                    let f = File::open(path).map_err(|source| NetlinkError::Call {
                        op: "create link",
                        object: name.into(),
                        source: CallError::Namespace { path: path.clone(), source },
                    })?;
                    peer_b = peer_b.setns_by_fd(f.as_raw_fd());
                    *peer_ns = Some(f);
                }
                kinded(InfoKind::Veth).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_b.build())))
            }
            NewLink::Bond { mode, miimon } => {
                let mut info = Vec::new();
                if let Some(m) = mode {
                    info.push(InfoBond::Mode(
                        parse_bond_mode(m).ok_or_else(|| bad(format!("unknown bond mode {m:?}")))?,
                    ));
                }
                if let Some(ms) = miimon {
                    info.push(InfoBond::MiiMon(*ms));
                }
                let b = kinded(InfoKind::Bond);
                if info.is_empty() {
                    b
                } else {
                    b.set_info_data(InfoData::Bond(info))
                }
            }
            NewLink::Vlan { parent, id, protocol } => {
                let mut info = vec![InfoVlan::Id(*id)];
                if let Some(p) = protocol {
                    info.push(InfoVlan::Protocol(
                        parse_vlan_protocol(p).ok_or_else(|| bad(format!("unknown vlan protocol {p:?}")))?,
                    ));
                }
                kinded(InfoKind::Vlan).link(self.index_of(parent).await?).set_info_data(InfoData::Vlan(info))
            }
            NewLink::Bridge => kinded(InfoKind::Bridge),
            NewLink::Dummy => kinded(InfoKind::Dummy),
            NewLink::Ifb => kinded(InfoKind::Ifb),
            NewLink::Wireguard => kinded(InfoKind::Wireguard),
            NewLink::Macvlan { parent, mode } => {
                let m = mode.as_deref().unwrap_or("bridge");
                let m = parse_macvlan_mode(m).ok_or_else(|| bad(format!("unknown macvlan mode {m:?}")))?;
                kinded(InfoKind::MacVlan)
                    .link(self.index_of(parent).await?)
                    .set_info_data(InfoData::MacVlan(vec![InfoMacVlan::Mode(m)]))
            }
            NewLink::Vxlan { vni, port, parent } => {
                let mut info = vec![InfoVxlan::Id(*vni), InfoVxlan::Port(port.unwrap_or(4789))];
                if let Some(p) = parent {
                    info.push(InfoVxlan::Link(self.index_of(p).await?));
                }
                kinded(InfoKind::Vxlan).set_info_data(InfoData::Vxlan(info))
            }
            NewLink::Vrf { table } => {
                kinded(InfoKind::Vrf).set_info_data(InfoData::Vrf(vec![InfoVrf::TableId(*table)]))
            }
        };
        Ok(msg.build())
    }
}

/// Builds a unicast route message (`scope link` without a gateway, as `ip route` does).
fn route_message(dst: &IpNet, via: Option<&IpAddr>, oif: u32, table: u32) -> std::result::Result<RouteMessage, String> {
    let (family, v4) = match dst {
        IpNet::V4(_) => (AddressFamily::Inet, true),
        IpNet::V6(_) => (AddressFamily::Inet6, false),
    };
    if let Some(g) = via {
        if g.is_ipv4() != v4 {
            return Err(format!("gateway {g} is not of the destination's address family"));
        }
    }
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = if table < 256 { table as u8 } else { RouteHeader::RT_TABLE_UNSPEC };
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = if via.is_some() { RouteScope::Universe } else { RouteScope::Link };
    msg.header.kind = RouteType::Unicast;
    if dst.prefix_len() > 0 {
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst.network())));
    }
    if let Some(g) = via {
        msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(*g)));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg.attributes.push(RouteAttribute::Table(table));
    Ok(msg)
}

/// A link message as a [`LinkInfo`] (addresses left empty).
fn link_of(m: &LinkMessage) -> LinkInfo {
    let flags = m.header.flags;
    let mut l = LinkInfo {
        index: m.header.index,
        name: String::new(),
        kind: String::new(),
        up: flags.contains(LinkFlags::Up),
        slave: flags.contains(LinkFlags::Port),
        loopback: flags.contains(LinkFlags::Loopback),
        multicast: flags.contains(LinkFlags::Multicast),
        master_index: None,
        parent_index: None,
        vlan_id: None,
        mac: None,
        mtu: 0,
        addresses: Vec::new(),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(i) if *i != 0 => l.master_index = Some(*i),
            // A veth's IFLA_LINK names its peer (maybe in another namespace), not a parent;
            // only stacked devices report a lower device here.
            LinkAttribute::Link(i) if *i != 0 && *i != m.header.index => l.parent_index = Some(*i),
            LinkAttribute::Address(b) if b.len() == 6 && b.iter().any(|x| *x != 0) => {
                l.mac = Some([b[0], b[1], b[2], b[3], b[4], b[5]]);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(k) => l.kind = k.to_string(),
                        NlLinkInfo::Data(InfoData::Vlan(v)) => {
                            for x in v {
                                if let InfoVlan::Id(id) = x {
                                    l.vlan_id = Some(*id);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if l.kind == "veth" {
        l.parent_index = None;
    }
    l
}

/// The address of an address message: `IFA_LOCAL` for IPv4 (IFA_ADDRESS is the peer on
/// point-to-point links), `IFA_ADDRESS` otherwise.
fn address_of(a: &AddressMessage) -> Option<IpNet> {
    let mut local = None;
    let mut address = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    IpNet::new(ip, a.header.prefix_len).ok()
}

fn route_of(m: &RouteMessage) -> Option<RouteInfo> {
    let v4 = match m.header.address_family {
        AddressFamily::Inet => true,
        AddressFamily::Inet6 => false,
        _ => return None,
    };
    let mut dst: Option<IpAddr> = None;
    let mut gateway = None;
    let mut table = u32::from(m.header.table);
    let mut oif = None;
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(x) => Some(IpAddr::V4(*x)),
        RouteAddress::Inet6(x) => Some(IpAddr::V6(*x)),
        _ => None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip(d),
            RouteAttribute::Gateway(g) => gateway = ip(g),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) });
    let dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
    Some(RouteInfo { dst, gateway, table, oif })
}

/// One rtnetlink connection in the namespace of the thread that opened it, with the
/// current-thread runtime that drives it: the handle callers pass down for every link, address,
/// route, qdisc, filter and XDP request of one namespace. The socket stays in that namespace
/// whichever thread uses it afterwards.
pub struct Rtnl {
    rt: tokio::runtime::Runtime,
    conn: Conn,
}

impl Rtnl {
    /// Opens a connection in the calling thread's namespace (run it inside
    /// [`crate::sys::netns::Netns::run`] for another namespace).
    pub fn open() -> Result<Rtnl> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetlinkError::Socket)?;
        let conn = rt.block_on(async { Conn::open() })?;
        Ok(Rtnl { rt, conn })
    }

    /// Every link with its addresses: one link dump and one address dump.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        self.rt.block_on(self.conn.links())
    }

    /// Every route of every table, IPv4 then IPv6.
    pub fn routes(&self) -> Result<Vec<RouteInfo>> {
        self.rt.block_on(self.conn.routes())
    }

    /// The index of the link named `name`.
    pub fn index_of(&self, name: &str) -> Result<u32> {
        self.rt.block_on(self.conn.index_of(name))
    }

    /// Applies `changes` in order; stops at the first failure.
    pub fn apply(&self, changes: &[Change]) -> Result<()> {
        self.rt.block_on(self.conn.apply(changes))
    }

    /// See [`Conn::ensure_encap_device`].
    pub fn ensure_encap_device(&self, name: &str, kind: EncapKind, port: u16) -> Result<EncapAction> {
        self.rt.block_on(self.conn.ensure_encap_device(name, kind, port))
    }

    /// Deletes the link named `name` if there is one; whether there was.
    pub fn delete_link_if_present(&self, name: &str) -> Result<bool> {
        self.rt.block_on(self.conn.delete_link_if_present(name))
    }

    /// Sends a netlink-packet-route message rtnetlink has no request for and collects the
    /// replies until the ACK (or the end of a dump). A NACK is [`RequestError::Kernel`] with the
    /// kernel's extended-ack text ("Exclusivity flag on, cannot modify").
    pub fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, RequestError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut handle = self.conn.handle.clone();
        self.rt.block_on(async move {
            let mut replies = handle.request(nl).map_err(|e| RequestError::Transport(Box::new(e)))?;
            let mut out = Vec::new();
            while let Some(reply) = replies.next().await {
                let flags = reply.header.flags;
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                        return Err(RequestError::Kernel {
                            errno: std::io::Error::from_raw_os_error(-e.raw_code()),
                            ext: extack_message(&e.header, flags),
                        });
                    }
                    _ => {}
                }
            }
            Ok(out)
        })
    }
}

/// The kernel's NLMSGERR_ATTR_MSG from an error message's payload (original header, possibly
/// the whole original request, then TLVs).
fn extack_message(payload: &[u8], flags: u16) -> Option<String> {
    const NLM_F_CAPPED: u16 = 0x100;
    const NLM_F_ACK_TLVS: u16 = 0x200;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let orig_len =
        if flags & NLM_F_CAPPED != 0 { 16 } else { u32::from_ne_bytes(payload[0..4].try_into().ok()?) as usize };
    let mut off = (orig_len + 3) & !3;
    while off + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[off], payload[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[off + 2], payload[off + 3]]) & 0x3fff;
        if len < 4 || off + len > payload.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let s = &payload[off + 4..off + len];
            let s = s.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        off += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_message_is_found_after_a_capped_header() {
        let mut p = vec![0u8; 16];
        let text = b"Exclusivity flag on\0";
        let len = (4 + text.len()) as u16;
        p.extend_from_slice(&len.to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(text);
        assert_eq!(extack_message(&p, 0x300).as_deref(), Some("Exclusivity flag on"));
        assert_eq!(extack_message(&p, 0), None);
    }

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:00:0a:ff:00:01").unwrap();
        assert_eq!(m, [2, 0, 10, 255, 0, 1]);
        assert_eq!(format_mac(&m), "02:00:0a:ff:00:01");
        assert!(parse_mac("02:00:0a:ff:00").is_none());
        assert!(parse_mac("02:00:0a:ff:00:01:02").is_none());
        assert!(parse_mac("zz:00:0a:ff:00:01").is_none());
        assert!(parse_mac("002:00:0a:ff:00:01").is_none());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_bond_mode("802.3ad"), Some(BondMode::Ieee8023Ad));
        assert_eq!(parse_bond_mode("active-backup"), Some(BondMode::ActiveBackup));
        assert!(parse_bond_mode("lacp").is_none());
        assert_eq!(parse_macvlan_mode("passthru"), Some(MacVlanMode::Passthrough));
        assert_eq!(parse_vlan_protocol("802.1ad"), Some(VlanProtocol::Ieee8021Ad));
        assert_eq!(parse_vlan_protocol("802.1Q"), Some(VlanProtocol::Ieee8021Q));
        assert!(parse_vlan_protocol("qinq").is_none());
    }

    #[test]
    fn route_messages() {
        let m = route_message(&"0.0.0.0/0".parse().unwrap(), Some(&"10.0.0.1".parse().unwrap()), 3, 100).unwrap();
        let r = route_of(&m).unwrap();
        assert_eq!(
            r,
            RouteInfo {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
                table: 100,
                oif: Some(3)
            }
        );
        assert!(route_message(&"::/0".parse().unwrap(), Some(&"10.0.0.1".parse().unwrap()), 3, 254).is_err());
        let m = route_message(&"fd00::/64".parse().unwrap(), None, 2, 1000).unwrap();
        assert_eq!(m.header.table, 0);
        assert_eq!(route_of(&m).unwrap().table, 1000);
    }
}
