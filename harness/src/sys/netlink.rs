//! Thin layer over rtnetlink: list links, addresses and routes of the current namespace, and
//! create or change them. Everything here runs on a thread that is inside the target namespace
//! (see [`crate::sys::netns`]); nothing here knows about scenarios.
//!
//! This is the harness's one netlink path. [`Rtnl`] is one rtnetlink socket opened in one
//! namespace; callers open one per namespace and batch of work and pass it down. Every request
//! is a netlink-packet-route message sent with [`Rtnl::request`] and answered on the calling
//! thread: links, addresses, routes and neighbours here, tc qdiscs and cls_bpf filters and
//! IFLA_XDP in [`crate::sys::tc`]. The messages are the ones iproute2 sends.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use hostdp_model::observed::{feature_of_kind, EncapKind, LinkInfo, RouteInfo};
use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_MULTIPART, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BondMode, InfoBond, InfoData, InfoGeneve, InfoKind, InfoMacVlan, InfoVeth, InfoVlan, InfoVrf, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, MacVlanMode, VlanProtocol,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
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
    Transport(Box<RequestError>),
}

/// A netlink-packet-route request the kernel refused, or that could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The kernel's errno, and its extended-ack text when it gave one.
    #[error("{errno}{}", ext.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Kernel { errno: std::io::Error, ext: Option<String> },
    /// Sending the request or receiving its replies failed.
    #[error("netlink socket: {0}")]
    Io(#[source] std::io::Error),
}

impl RequestError {
    /// The kernel's errno, when the kernel answered.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RequestError::Kernel { errno, .. } => errno.raw_os_error(),
            RequestError::Io(_) => None,
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

/// A failed request as a [`CallError`], with a hint where the cause is usually a missing
/// kernel feature.
fn call_error(err: RequestError, change: Option<&Change>) -> CallError {
    let Some(errno) = err.errno() else {
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

/// Flags of a request that creates something and must not replace it (`ip link add`).
const CREATE_EXCL: u16 = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;

/// A link message as `ip link` builds one: the attributes in order, then `IFLA_LINKINFO`
/// with the kind and its data.
fn link_message(index: u32, attributes: Vec<LinkAttribute>, kind: Option<(InfoKind, Option<InfoData>)>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes = attributes;
    if let Some((kind, data)) = kind {
        let mut info = vec![NlLinkInfo::Kind(kind)];
        info.extend(data.map(NlLinkInfo::Data));
        m.attributes.push(LinkAttribute::LinkInfo(info));
    }
    m
}

/// An address message as `ip address add` builds one: local and address the same, and the
/// IPv4 broadcast address for prefixes shorter than /31.
fn address_message(index: u32, addr: &IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = addr.prefix_len();
    m.header.family = if addr.addr().is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    m.attributes.push(AddressAttribute::Local(addr.addr()));
    if let IpNet::V4(v4) = addr {
        if v4.prefix_len() < 31 {
            m.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    m
}

/// A permanent neighbour entry (`ip neigh replace IP lladdr MAC dev DEV`).
fn neighbour_message(index: u32, ip: &IpAddr, mac: &[u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.attributes.push(NeighbourAttribute::Destination(match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(*v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(*v6),
    }));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// One rtnetlink socket in the namespace of the thread that opened it: the handle callers pass
/// down for every link, address, route, qdisc, filter and XDP request of one namespace. The
/// socket stays in that namespace whichever thread uses it afterwards.
///
/// Requests are plain blocking send and receive on the calling thread, one at a time: no
/// runtime, no background task. In a TCG guest the async machinery of a runtime cost more than
/// the kernel's work for these small requests.
pub struct Rtnl {
    sock: Mutex<Socket>,
    seq: AtomicU32,
}

impl Rtnl {
    /// Opens a socket in the calling thread's namespace (run it inside
    /// [`crate::sys::netns::Netns::run`] for another namespace).
    pub fn open() -> Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        // Kernel error strings ("Exclusivity flag on, cannot modify") make errors readable.
        let _ = sock.set_ext_ack(true);
        Ok(Rtnl { sock: Mutex::new(sock), seq: AtomicU32::new(1) })
    }

    /// Sends one netlink-packet-route message and collects the replies until the ACK (or the
    /// end of a dump, or the one reply of a plain get). A NACK is [`RequestError::Kernel`] with
    /// the kernel's extended-ack text ("Exclusivity flag on, cannot modify").
    pub fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, RequestError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        sock.send_to(&buf, &SocketAddr::new(0, 0), 0).map_err(RequestError::Io)?;
        let expecting_ack = flags & NLM_F_ACK != 0;
        let mut out = Vec::new();
        loop {
            let (data, _) = sock.recv_from_full().map_err(RequestError::Io)?;
            let mut off = 0;
            while off < data.len() {
                let Ok(frame) = NetlinkBuffer::new_checked(&data[off..]) else {
                    // A truncated datagram: nothing after it can be found either.
                    break;
                };
                let (len, hflags, hseq) = (frame.length() as usize, frame.flags(), frame.sequence_number());
                let bytes = &data[off..off + len];
                off += (len + 3) & !3;
                if hseq != seq {
                    continue;
                }
                let multi = hflags & NLM_F_MULTIPART != 0;
                // A reply this crate cannot decode is skipped, as rtnetlink's codec does.
                let Ok(reply) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
                    if !multi && !expecting_ack {
                        return Ok(out);
                    }
                    continue;
                };
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !multi && !expecting_ack {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                        return Err(RequestError::Kernel {
                            errno: std::io::Error::from_raw_os_error(-e.raw_code()),
                            ext: extack_message(&e.header, hflags),
                        });
                    }
                    // The ACK, the end of a dump, an overrun.
                    _ => return Ok(out),
                }
            }
        }
    }

    /// [`Rtnl::request`] for a call of `op` on `object`.
    fn call(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        object: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(msg, flags).map_err(|e| NetlinkError::Call {
            op,
            object: object.to_string(),
            source: call_error(e, None),
        })
    }

    /// Every link with its addresses: one link dump and one address dump.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        let msgs = self.call(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP, "list", "links")?;
        let addrs = self.call(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            "list addresses of",
            "links",
        )?;
        let mut by_index: HashMap<u32, Vec<IpNet>> = HashMap::new();
        for a in &addrs {
            if let RouteNetlinkMessage::NewAddress(a) = a {
                if let Some(net) = address_of(a) {
                    by_index.entry(a.header.index).or_default().push(net);
                }
            }
        }
        let mut out: Vec<LinkInfo> = msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(m) => Some(m),
                _ => None,
            })
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
    pub fn routes(&self) -> Result<Vec<RouteInfo>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let msgs = self.call(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP, "list", "routes")?;
            out.extend(msgs.iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_of(r),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// The link named `name`, by a targeted RTM_GETLINK (its cost does not grow with the link
    /// count); `None` if there is none.
    pub fn link_named(&self, name: &str) -> std::result::Result<Option<LinkMessage>, RequestError> {
        let get = link_message(0, vec![LinkAttribute::IfName(name.to_string())], None);
        match self.request(RouteNetlinkMessage::GetLink(get), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The index of the link named `name`.
    pub fn index_of(&self, name: &str) -> Result<u32> {
        let missing = || NetlinkError::Call {
            op: "find link",
            object: name.to_string(),
            source: CallError::NoSuchLink(name.to_string()),
        };
        match self.link_named(name) {
            Ok(Some(m)) => Ok(m.header.index),
            Ok(None) => Err(missing()),
            Err(e) => {
                Err(NetlinkError::Call { op: "find link", object: name.to_string(), source: call_error(e, None) })
            }
        }
    }

    /// Kind, UDP destination port (vxlan and geneve links) and index of the link named
    /// `name`; `None` if there is no such link.
    fn encap_of(&self, name: &str) -> Result<Option<(String, Option<u16>, u32)>> {
        let m = self.link_named(name).map_err(|e| NetlinkError::Call {
            op: "find link",
            object: name.into(),
            source: call_error(e, None),
        })?;
        let Some(m) = m else { return Ok(None) };
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
        Ok(Some((link_of(&m).kind, port, m.header.index)))
    }

    /// Makes `name` a collect-metadata `kind` device on UDP port `port`, up: kept if it is
    /// one already, else created (or deleted and created again), as init.sh's
    /// `create_encap_dev` (v1.14.4) and `setupVxlanDevice`/`setupGeneveDevice` (v1.15+) do.
    pub fn ensure_encap_device(&self, name: &str, kind: EncapKind, port: u16) -> Result<EncapAction> {
        let action = match self.encap_of(name)? {
            Some((k, p, _)) if k == kind.as_str() && p == Some(port) => EncapAction::Kept,
            Some(_) => {
                self.apply_one(&Change::DeleteLink { name: name.to_string() })?;
                EncapAction::Recreated
            }
            None => EncapAction::Created,
        };
        if action != EncapAction::Kept {
            let (info_kind, data) = match kind {
                // `external` in iproute2 also turns learning off.
                EncapKind::Vxlan => (
                    InfoKind::Vxlan,
                    InfoData::Vxlan(vec![
                        InfoVxlan::CollectMetadata(true),
                        InfoVxlan::Learning(false),
                        InfoVxlan::Port(port),
                    ]),
                ),
                EncapKind::Geneve => {
                    (InfoKind::Geneve, InfoData::Geneve(vec![InfoGeneve::CollectMetadata, InfoGeneve::Port(port)]))
                }
            };
            let msg = link_message(0, vec![LinkAttribute::IfName(name.to_string())], Some((info_kind, Some(data))));
            self.call(RouteNetlinkMessage::NewLink(msg), CREATE_EXCL, "create link", name)?;
        }
        self.apply_one(&Change::SetUp { name: name.to_string(), up: true })?;
        Ok(action)
    }

    /// Deletes the link named `name` if there is one; whether there was.
    pub fn delete_link_if_present(&self, name: &str) -> Result<bool> {
        if self.encap_of(name)?.is_none() {
            return Ok(false);
        }
        self.apply_one(&Change::DeleteLink { name: name.to_string() })?;
        Ok(true)
    }

    /// Applies `changes` in order; stops at the first failure.
    pub fn apply(&self, changes: &[Change]) -> Result<()> {
        for c in changes {
            self.apply_one(c)?;
        }
        Ok(())
    }

    /// Reports a failed name lookup as a failure of the change (`delete link eth3: no such
    /// link eth3`).
    fn apply_one(&self, change: &Change) -> Result<()> {
        self.apply_inner(change).map_err(|e| match e {
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

    fn apply_inner(&self, change: &Change) -> Result<()> {
        let (op, object) = change.describe();
        let fail = |source: CallError| NetlinkError::Call { op, object: object.clone(), source };
        let send = |msg: RouteNetlinkMessage, flags: u16| {
            self.request(msg, flags).map(drop).map_err(|e| fail(call_error(e, Some(change))))
        };
        let set = |index: u32, attributes: Vec<LinkAttribute>| {
            send(RouteNetlinkMessage::SetLink(link_message(index, attributes, None)), CREATE_EXCL)
        };
        match change {
            Change::AddLink { name, link: spec } => {
                // Kept open until the request is answered: the kernel reads the fd then.
                let mut _peer_ns: Option<File> = None;
                let msg = self.new_link_message(name, spec, &mut _peer_ns).map_err(|e| match e {
                    NetlinkError::Call { source, .. } => fail(source),
                    other => other,
                })?;
                send(RouteNetlinkMessage::NewLink(msg), CREATE_EXCL)
            }
            Change::SetMaster { name, master } => {
                let idx = self.index_of(name)?;
                let controller = match master {
                    Some(m) => self.index_of(m)?,
                    None => 0,
                };
                set(idx, vec![LinkAttribute::Controller(controller)])
            }
            Change::SetUp { name, up } => {
                let mut msg = link_message(self.index_of(name)?, Vec::new(), None);
                msg.header.change_mask |= LinkFlags::Up;
                if *up {
                    msg.header.flags |= LinkFlags::Up;
                }
                send(RouteNetlinkMessage::SetLink(msg), CREATE_EXCL)
            }
            Change::SetMtu { name, mtu } => set(self.index_of(name)?, vec![LinkAttribute::Mtu(*mtu)]),
            Change::SetMac { name, mac } => set(self.index_of(name)?, vec![LinkAttribute::Address(mac.to_vec())]),
            Change::AddAddress { name, addr } => {
                let msg = address_message(self.index_of(name)?, addr);
                send(RouteNetlinkMessage::NewAddress(msg), CREATE_EXCL)
            }
            Change::AddRoute { dst, via, dev, table } => {
                let oif = self.index_of(dev)?;
                let msg = route_message(dst, via.as_ref(), oif, *table).map_err(|m| fail(CallError::Invalid(m)))?;
                send(RouteNetlinkMessage::NewRoute(msg), CREATE_EXCL)
            }
            Change::DeleteRoute { dst, via, dev, table } => {
                let oif = self.index_of(dev)?;
                let msg = route_message(dst, via.as_ref(), oif, *table).map_err(|m| fail(CallError::Invalid(m)))?;
                send(RouteNetlinkMessage::DelRoute(msg), NLM_F_ACK)
            }
            Change::DeleteLink { name } => {
                let msg = link_message(self.index_of(name)?, Vec::new(), None);
                send(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)
            }
            Change::SetNeighbour { name, ip, mac } => {
                let msg = neighbour_message(self.index_of(name)?, ip, mac);
                send(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
            }
        }
    }

    fn new_link_message(&self, name: &str, spec: &NewLink, peer_ns: &mut Option<File>) -> Result<LinkMessage> {
        let bad = |message: String| NetlinkError::Call {
            op: "create link",
            object: name.into(),
            source: CallError::Invalid(message),
        };
        let named = || vec![LinkAttribute::IfName(name.to_string())];
        let kinded = |kind: InfoKind, data: Option<InfoData>| link_message(0, named(), Some((kind, data)));
        let msg = match spec {
            NewLink::Veth { peer, peer_netns } => {
                let mut peer_attrs = vec![LinkAttribute::IfName(peer.clone())];
                if let Some(path) = peer_netns {
                    let f = File::open(path).map_err(|source| NetlinkError::Call {
                        op: "create link",
                        object: name.into(),
                        source: CallError::Namespace { path: path.clone(), source },
                    })?;
                    peer_attrs.push(LinkAttribute::NetNsFd(f.as_raw_fd()));
                    *peer_ns = Some(f);
                }
                let peer = link_message(0, peer_attrs, None);
                kinded(InfoKind::Veth, Some(InfoData::Veth(InfoVeth::Peer(peer))))
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
                kinded(InfoKind::Bond, (!info.is_empty()).then_some(InfoData::Bond(info)))
            }
            NewLink::Vlan { parent, id, protocol } => {
                let mut info = vec![InfoVlan::Id(*id)];
                if let Some(p) = protocol {
                    info.push(InfoVlan::Protocol(
                        parse_vlan_protocol(p).ok_or_else(|| bad(format!("unknown vlan protocol {p:?}")))?,
                    ));
                }
                let mut attrs = named();
                attrs.push(LinkAttribute::Link(self.index_of(parent)?));
                link_message(0, attrs, Some((InfoKind::Vlan, Some(InfoData::Vlan(info)))))
            }
            NewLink::Bridge => kinded(InfoKind::Bridge, None),
            NewLink::Dummy => kinded(InfoKind::Dummy, None),
            NewLink::Ifb => kinded(InfoKind::Ifb, None),
            NewLink::Wireguard => kinded(InfoKind::Wireguard, None),
            NewLink::Macvlan { parent, mode } => {
                let m = mode.as_deref().unwrap_or("bridge");
                let m = parse_macvlan_mode(m).ok_or_else(|| bad(format!("unknown macvlan mode {m:?}")))?;
                let mut attrs = named();
                attrs.push(LinkAttribute::Link(self.index_of(parent)?));
                link_message(0, attrs, Some((InfoKind::MacVlan, Some(InfoData::MacVlan(vec![InfoMacVlan::Mode(m)])))))
            }
            NewLink::Vxlan { vni, port, parent } => {
                let mut info = vec![InfoVxlan::Id(*vni), InfoVxlan::Port(port.unwrap_or(4789))];
                if let Some(p) = parent {
                    info.push(InfoVxlan::Link(self.index_of(p)?));
                }
                kinded(InfoKind::Vxlan, Some(InfoData::Vxlan(info)))
            }
            NewLink::Vrf { table } => kinded(InfoKind::Vrf, Some(InfoData::Vrf(vec![InfoVrf::TableId(*table)]))),
        };
        Ok(msg)
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
