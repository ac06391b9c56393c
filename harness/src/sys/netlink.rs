//! Thin layer over rtnetlink: list links, addresses and routes of the current namespace, and
//! create or change them. Everything here runs on a thread that is inside the target namespace
//! (see [`crate::sys::netns`]); nothing here knows about scenarios.
//!
//! This is the harness's one netlink path. [`Rtnl`] is one rtnetlink socket opened in one
//! namespace; callers open one per namespace and batch of work and pass it down. Every request
//! is a netlink-packet-route message sent with [`Rtnl::request`] and answered on the calling
//! thread: links, addresses, routes and neighbours here, tc qdiscs and cls_bpf filters and
//! IFLA_XDP in [`crate::sys::tc`]. The messages are the ones iproute2 sends, built and read by
//! [`crate::sys::nlmsg`].

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use hostdp_model::observed::{feature_of_kind, EncapKind, LinkInfo, RouteInfo};
use ipnet::IpNet;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use serde::Serialize;

use crate::sys::nlmsg::{self as m, Body};

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

/// iproute2's bond mode names (and numbers): the IFLA_BOND_MODE value.
pub fn parse_bond_mode(s: &str) -> Option<u8> {
    Some(match s {
        "balance-rr" | "0" => 0,
        "active-backup" | "1" => 1,
        "balance-xor" | "2" => 2,
        "broadcast" | "3" => 3,
        "802.3ad" | "4" => 4,
        "balance-tlb" | "5" => 5,
        "balance-alb" | "6" => 6,
        _ => return None,
    })
}

/// The IFLA_MACVLAN_MODE value of an iproute2 mode name.
pub fn parse_macvlan_mode(s: &str) -> Option<u32> {
    Some(match s {
        "private" => 1,
        "vepa" => 2,
        "bridge" => 4,
        "passthru" => 8,
        "source" => 16,
        _ => return None,
    })
}

/// `802.1Q` / `802.1ad`, case-insensitively: the ethertype.
pub fn parse_vlan_protocol(s: &str) -> Option<u16> {
    match s.to_ascii_lowercase().as_str() {
        "802.1q" => Some(0x8100),
        "802.1ad" => Some(0x88a8),
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
const CREATE_EXCL: u16 = m::NLM_F_ACK | m::NLM_F_CREATE | m::NLM_F_EXCL;

/// A reply: message type and body (past the netlink header).
pub type Reply = (u16, Vec<u8>);

/// Adds attributes to a message being built.
type Fill<'a> = &'a dyn Fn(&mut Body);

/// A link message as `ip link` builds one: the header, the attributes `attrs` adds, then
/// `IFLA_LINKINFO` with the kind and the data `data` adds, if any.
fn link_message(index: u32, attrs: impl FnOnce(&mut Body), kind: Option<(&str, Option<Fill<'_>>)>) -> Body {
    let mut b = Body::new(&m::ifinfo(index, 0, 0));
    attrs(&mut b);
    if let Some((kind, data)) = kind {
        b.nest(m::IFLA_LINKINFO, |b| {
            b.str(m::IFLA_INFO_KIND, kind);
            if let Some(data) = data {
                b.nest(m::IFLA_INFO_DATA, data);
            }
        });
    }
    b
}

/// An address message as `ip address add` builds one: local and address the same, and the
/// IPv4 broadcast address for prefixes shorter than /31.
fn address_message(index: u32, addr: &IpNet) -> Body {
    let family = if addr.addr().is_ipv4() { m::AF_INET } else { m::AF_INET6 };
    let mut h = [0u8; m::IFADDR_LEN];
    h[0] = family;
    h[1] = addr.prefix_len();
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    let mut b = Body::new(&h);
    let ip = m::ip_bytes(&addr.addr());
    b.attr(m::IFA_ADDRESS, &ip).attr(m::IFA_LOCAL, &ip);
    if let IpNet::V4(v4) = addr {
        if v4.prefix_len() < 31 {
            b.attr(m::IFA_BROADCAST, &v4.broadcast().octets());
        }
    }
    b
}

/// A permanent neighbour entry (`ip neigh replace IP lladdr MAC dev DEV`).
fn neighbour_message(index: u32, ip: &IpAddr, mac: &[u8; 6]) -> Body {
    let mut h = [0u8; 12];
    h[0] = if ip.is_ipv4() { m::AF_INET } else { m::AF_INET6 };
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..10].copy_from_slice(&m::NUD_PERMANENT.to_ne_bytes());
    let mut b = Body::new(&h);
    b.attr(m::NDA_DST, &m::ip_bytes(ip)).attr(m::NDA_LLADDR, mac);
    b
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

    /// Sends one request (message type, body) and collects the replies until the ACK (or the
    /// end of a dump, or the one reply of a plain get). A NACK is [`RequestError::Kernel`] with
    /// the kernel's extended-ack text ("Exclusivity flag on, cannot modify").
    pub fn request(&self, kind: u16, body: &Body, flags: u16) -> std::result::Result<Vec<Reply>, RequestError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::with_capacity(16 + body.0.len());
        buf.extend_from_slice(&((16 + body.0.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(m::NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&body.0);
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        sock.send_to(&buf, &SocketAddr::new(0, 0), 0).map_err(RequestError::Io)?;
        let expecting_ack = flags & m::NLM_F_ACK != 0;
        let mut out = Vec::new();
        loop {
            let (data, _) = sock.recv_from_full().map_err(RequestError::Io)?;
            let mut off = 0;
            while off + 16 <= data.len() {
                let len = m::u32_of(&data[off..]).unwrap_or(0) as usize;
                if len < 16 || off + len > data.len() {
                    // A truncated datagram: nothing after it can be found either.
                    break;
                }
                let frame = &data[off..off + len];
                off += (len + 3) & !3;
                let kind = m::u16_of(&frame[4..]).unwrap_or(0);
                let hflags = m::u16_of(&frame[6..]).unwrap_or(0);
                if m::u32_of(&frame[8..]) != Some(seq) {
                    continue;
                }
                let payload = &frame[16..];
                match kind {
                    m::NLMSG_ERROR => {
                        let code = m::u32_of(payload).unwrap_or(0) as i32;
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(RequestError::Kernel {
                            errno: std::io::Error::from_raw_os_error(-code),
                            ext: extack_message(payload.get(4..).unwrap_or_default(), hflags),
                        });
                    }
                    m::NLMSG_DONE | m::NLMSG_OVERRUN => return Ok(out),
                    _ => {
                        out.push((kind, payload.to_vec()));
                        if hflags & m::NLM_F_MULTI == 0 && !expecting_ack {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// [`Rtnl::request`] for a call of `op` on `object`.
    fn call(&self, kind: u16, body: &Body, flags: u16, op: &'static str, object: &str) -> Result<Vec<Reply>> {
        self.request(kind, body, flags).map_err(|e| NetlinkError::Call {
            op,
            object: object.to_string(),
            source: call_error(e, None),
        })
    }

    /// Every link with its addresses: one link dump and one address dump.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        let msgs = self.call(m::RTM_GETLINK, &Body::new(&m::ifinfo(0, 0, 0)), m::NLM_F_DUMP, "list", "links")?;
        let addrs =
            self.call(m::RTM_GETADDR, &Body::new(&[0u8; m::IFADDR_LEN]), m::NLM_F_DUMP, "list addresses of", "links")?;
        let mut by_index: HashMap<u32, Vec<IpNet>> = HashMap::new();
        for (kind, a) in &addrs {
            if *kind == m::RTM_NEWADDR {
                if let Some((index, net)) = address_of(a) {
                    by_index.entry(index).or_default().push(net);
                }
            }
        }
        let mut out: Vec<LinkInfo> = msgs
            .iter()
            .filter(|(kind, _)| *kind == m::RTM_NEWLINK)
            .filter_map(|(_, body)| link_of(body))
            .map(|mut l| {
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
        for family in [m::AF_INET, m::AF_INET6] {
            let mut h = [0u8; m::RTMSG_LEN];
            h[0] = family;
            let msgs = self.call(m::RTM_GETROUTE, &Body::new(&h), m::NLM_F_DUMP, "list", "routes")?;
            out.extend(msgs.iter().filter(|(kind, _)| *kind == m::RTM_NEWROUTE).filter_map(|(_, r)| route_of(r)));
        }
        Ok(out)
    }

    /// The link named `name` (the body of its RTM_NEWLINK), by a targeted RTM_GETLINK (its
    /// cost does not grow with the link count); `None` if there is none.
    pub fn link_named(&self, name: &str) -> std::result::Result<Option<Vec<u8>>, RequestError> {
        let get = link_message(
            0,
            |b| {
                b.str(m::IFLA_IFNAME, name);
            },
            None,
        );
        match self.request(m::RTM_GETLINK, &get, 0) {
            Ok(replies) => Ok(replies.into_iter().find(|(kind, _)| *kind == m::RTM_NEWLINK).map(|(_, body)| body)),
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
            Ok(Some(body)) => m::link_index_flags(&body).map(|(index, _)| index).ok_or_else(missing),
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
        let Some(body) = m else { return Ok(None) };
        let Some(link) = link_of(&body) else { return Ok(None) };
        let mut port = None;
        for (kind, v) in m::body_attrs(&body, m::IFINFO_LEN) {
            if kind != m::IFLA_LINKINFO {
                continue;
            }
            for (ik, iv) in m::attrs(v) {
                if ik != m::IFLA_INFO_DATA {
                    continue;
                }
                let wanted = match link.kind.as_str() {
                    "vxlan" => m::IFLA_VXLAN_PORT,
                    "geneve" => m::IFLA_GENEVE_PORT,
                    _ => continue,
                };
                port = m::attrs(iv).find(|(k, _)| *k == wanted).and_then(|(_, p)| m::be16_of(p));
            }
        }
        Ok(Some((link.kind, port, link.index)))
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
            // `external` in iproute2 also turns learning off.
            let vxlan = |b: &mut Body| {
                b.u8(m::IFLA_VXLAN_COLLECT_METADATA, 1).u8(m::IFLA_VXLAN_LEARNING, 0).be16(m::IFLA_VXLAN_PORT, port);
            };
            let geneve = |b: &mut Body| {
                b.attr(m::IFLA_GENEVE_COLLECT_METADATA, &[]).be16(m::IFLA_GENEVE_PORT, port);
            };
            let data: Fill<'_> = match kind {
                EncapKind::Vxlan => &vxlan,
                EncapKind::Geneve => &geneve,
            };
            let named = |b: &mut Body| {
                b.str(m::IFLA_IFNAME, name);
            };
            let msg = link_message(0, named, Some((kind.as_str(), Some(data))));
            self.call(m::RTM_NEWLINK, &msg, CREATE_EXCL, "create link", name)?;
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
        let send = |kind: u16, msg: Body, flags: u16| {
            self.request(kind, &msg, flags).map(drop).map_err(|e| fail(call_error(e, Some(change))))
        };
        let set = |index: u32, attrs: &dyn Fn(&mut Body)| {
            send(m::RTM_SETLINK, link_message(index, |b| attrs(b), None), CREATE_EXCL)
        };
        match change {
            Change::AddLink { name, link: spec } => {
                // Kept open until the request is answered: the kernel reads the fd then.
                let mut _peer_ns: Option<File> = None;
                let msg = self.new_link_message(name, spec, &mut _peer_ns).map_err(|e| match e {
                    NetlinkError::Call { source, .. } => fail(source),
                    other => other,
                })?;
                send(m::RTM_NEWLINK, msg, CREATE_EXCL)
            }
            Change::SetMaster { name, master } => {
                let idx = self.index_of(name)?;
                let controller = match master {
                    Some(c) => self.index_of(c)?,
                    None => 0,
                };
                set(idx, &|b| {
                    b.u32(m::IFLA_MASTER, controller);
                })
            }
            Change::SetUp { name, up } => {
                let flags = if *up { m::IFF_UP } else { 0 };
                send(m::RTM_SETLINK, Body::new(&m::ifinfo(self.index_of(name)?, flags, m::IFF_UP)), CREATE_EXCL)
            }
            Change::SetMtu { name, mtu } => set(self.index_of(name)?, &|b| {
                b.u32(m::IFLA_MTU, *mtu);
            }),
            Change::SetMac { name, mac } => set(self.index_of(name)?, &|b| {
                b.attr(m::IFLA_ADDRESS, mac);
            }),
            Change::AddAddress { name, addr } => {
                send(m::RTM_NEWADDR, address_message(self.index_of(name)?, addr), CREATE_EXCL)
            }
            Change::AddRoute { dst, via, dev, table } => {
                let oif = self.index_of(dev)?;
                let msg = route_message(dst, via.as_ref(), oif, *table).map_err(|e| fail(CallError::Invalid(e)))?;
                send(m::RTM_NEWROUTE, msg, CREATE_EXCL)
            }
            Change::DeleteRoute { dst, via, dev, table } => {
                let oif = self.index_of(dev)?;
                let msg = route_message(dst, via.as_ref(), oif, *table).map_err(|e| fail(CallError::Invalid(e)))?;
                send(m::RTM_DELROUTE, msg, m::NLM_F_ACK)
            }
            Change::DeleteLink { name } => {
                send(m::RTM_DELLINK, Body::new(&m::ifinfo(self.index_of(name)?, 0, 0)), m::NLM_F_ACK)
            }
            Change::SetNeighbour { name, ip, mac } => {
                let msg = neighbour_message(self.index_of(name)?, ip, mac);
                send(m::RTM_NEWNEIGH, msg, m::NLM_F_ACK | m::NLM_F_CREATE | m::NLM_F_REPLACE)
            }
        }
    }

    fn new_link_message(&self, name: &str, spec: &NewLink, peer_ns: &mut Option<File>) -> Result<Body> {
        let bad = |message: String| NetlinkError::Call {
            op: "create link",
            object: name.into(),
            source: CallError::Invalid(message),
        };
        let named = |b: &mut Body| {
            b.str(m::IFLA_IFNAME, name);
        };
        let kinded = |kind: &str, data: Option<Fill<'_>>| link_message(0, named, Some((kind, data)));
        let msg = match spec {
            NewLink::Veth { peer, peer_netns } => {
                // VETH_INFO_PEER holds a whole link message: header, then attributes.
                let mut peer_msg = link_message(
                    0,
                    |b| {
                        b.str(m::IFLA_IFNAME, peer);
                    },
                    None,
                );
                if let Some(path) = peer_netns {
                    let f = File::open(path).map_err(|source| NetlinkError::Call {
                        op: "create link",
                        object: name.into(),
                        source: CallError::Namespace { path: path.clone(), source },
                    })?;
                    peer_msg.u32(m::IFLA_NET_NS_FD, f.as_raw_fd() as u32);
                    *peer_ns = Some(f);
                }
                kinded(
                    "veth",
                    Some(&|b: &mut Body| {
                        b.attr(m::VETH_INFO_PEER, &peer_msg.0);
                    }),
                )
            }
            NewLink::Bond { mode, miimon } => {
                let mode = match mode {
                    Some(s) => Some(parse_bond_mode(s).ok_or_else(|| bad(format!("unknown bond mode {s:?}")))?),
                    None => None,
                };
                let data = |b: &mut Body| {
                    if let Some(v) = mode {
                        b.u8(m::IFLA_BOND_MODE, v);
                    }
                    if let Some(ms) = miimon {
                        b.u32(m::IFLA_BOND_MIIMON, *ms);
                    }
                };
                kinded("bond", (mode.is_some() || miimon.is_some()).then_some(&data as Fill<'_>))
            }
            NewLink::Vlan { parent, id, protocol } => {
                let protocol = match protocol {
                    Some(p) => Some(parse_vlan_protocol(p).ok_or_else(|| bad(format!("unknown vlan protocol {p:?}")))?),
                    None => None,
                };
                let parent = self.index_of(parent)?;
                let data = |b: &mut Body| {
                    b.u16(m::IFLA_VLAN_ID, *id);
                    if let Some(p) = protocol {
                        b.be16(m::IFLA_VLAN_PROTOCOL, p);
                    }
                };
                link_message(
                    0,
                    |b| {
                        b.str(m::IFLA_IFNAME, name).u32(m::IFLA_LINK, parent);
                    },
                    Some(("vlan", Some(&data))),
                )
            }
            NewLink::Bridge => kinded("bridge", None),
            NewLink::Dummy => kinded("dummy", None),
            NewLink::Ifb => kinded("ifb", None),
            NewLink::Wireguard => kinded("wireguard", None),
            NewLink::Macvlan { parent, mode } => {
                let s = mode.as_deref().unwrap_or("bridge");
                let mode = parse_macvlan_mode(s).ok_or_else(|| bad(format!("unknown macvlan mode {s:?}")))?;
                let parent = self.index_of(parent)?;
                link_message(
                    0,
                    |b| {
                        b.str(m::IFLA_IFNAME, name).u32(m::IFLA_LINK, parent);
                    },
                    Some((
                        "macvlan",
                        Some(&|b: &mut Body| {
                            b.u32(m::IFLA_MACVLAN_MODE, mode);
                        }),
                    )),
                )
            }
            NewLink::Vxlan { vni, port, parent } => {
                let parent = match parent {
                    Some(p) => Some(self.index_of(p)?),
                    None => None,
                };
                let data = |b: &mut Body| {
                    b.u32(m::IFLA_VXLAN_ID, *vni).be16(m::IFLA_VXLAN_PORT, port.unwrap_or(4789));
                    if let Some(p) = parent {
                        b.u32(m::IFLA_VXLAN_LINK, p);
                    }
                };
                kinded("vxlan", Some(&data))
            }
            NewLink::Vrf { table } => kinded(
                "vrf",
                Some(&|b: &mut Body| {
                    b.u32(m::IFLA_VRF_TABLE, *table);
                }),
            ),
        };
        Ok(msg)
    }
}

/// Builds a unicast route message (`scope link` without a gateway, as `ip route` does).
fn route_message(dst: &IpNet, via: Option<&IpAddr>, oif: u32, table: u32) -> std::result::Result<Body, String> {
    let v4 = matches!(dst, IpNet::V4(_));
    if let Some(g) = via {
        if g.is_ipv4() != v4 {
            return Err(format!("gateway {g} is not of the destination's address family"));
        }
    }
    let mut h = [0u8; m::RTMSG_LEN];
    h[0] = if v4 { m::AF_INET } else { m::AF_INET6 };
    h[1] = dst.prefix_len();
    // Tables from 256 on only fit RTA_TABLE: the header says RT_TABLE_UNSPEC then.
    h[4] = if table < 256 { table as u8 } else { 0 };
    h[5] = m::RTPROT_STATIC;
    h[6] = if via.is_some() { m::RT_SCOPE_UNIVERSE } else { m::RT_SCOPE_LINK };
    h[7] = m::RTN_UNICAST;
    let mut b = Body::new(&h);
    if dst.prefix_len() > 0 {
        b.attr(m::RTA_DST, &m::ip_bytes(&dst.network()));
    }
    if let Some(g) = via {
        b.attr(m::RTA_GATEWAY, &m::ip_bytes(g));
    }
    b.u32(m::RTA_OIF, oif).u32(m::RTA_TABLE, table);
    Ok(b)
}

/// A link reply's body as a [`LinkInfo`] (addresses left empty).
pub(crate) fn link_of(body: &[u8]) -> Option<LinkInfo> {
    let (index, flags) = m::link_index_flags(body)?;
    let mut l = LinkInfo {
        index,
        name: String::new(),
        kind: String::new(),
        up: flags & m::IFF_UP != 0,
        slave: flags & m::IFF_SLAVE != 0,
        loopback: flags & m::IFF_LOOPBACK != 0,
        multicast: flags & m::IFF_MULTICAST != 0,
        master_index: None,
        parent_index: None,
        vlan_id: None,
        mac: None,
        mtu: 0,
        addresses: Vec::new(),
    };
    let mut vlan_id = None;
    for (kind, v) in m::body_attrs(body, m::IFINFO_LEN) {
        match kind {
            m::IFLA_IFNAME => l.name = m::str_of(v),
            m::IFLA_MTU => l.mtu = m::u32_of(v).unwrap_or(0),
            m::IFLA_MASTER => l.master_index = m::u32_of(v).filter(|i| *i != 0),
            // A veth's IFLA_LINK names its peer (maybe in another namespace), not a parent;
            // only stacked devices report a lower device here.
            m::IFLA_LINK => l.parent_index = m::u32_of(v).filter(|i| *i != 0 && *i != index),
            m::IFLA_ADDRESS if v.len() == 6 && v.iter().any(|x| *x != 0) => {
                l.mac = Some([v[0], v[1], v[2], v[3], v[4], v[5]]);
            }
            m::IFLA_LINKINFO => {
                for (ik, iv) in m::attrs(v) {
                    match ik {
                        m::IFLA_INFO_KIND => l.kind = m::str_of(iv),
                        m::IFLA_INFO_DATA => {
                            vlan_id = m::attrs(iv).find(|(k, _)| *k == m::IFLA_VLAN_ID).and_then(|(_, x)| m::u16_of(x))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // IFLA_INFO_DATA's attribute numbers are the kind's own: only a VLAN's first is its id.
    if l.kind == "vlan" {
        l.vlan_id = vlan_id;
    }
    if l.kind == "veth" {
        l.parent_index = None;
    }
    Some(l)
}

/// The link index and address of an address reply: `IFA_LOCAL` for IPv4 (IFA_ADDRESS is the
/// peer on point-to-point links), `IFA_ADDRESS` otherwise.
fn address_of(body: &[u8]) -> Option<(u32, IpNet)> {
    let prefix = *body.get(1)?;
    let index = m::u32_of(body.get(4..8)?)?;
    let mut local = None;
    let mut address = None;
    for (kind, v) in m::body_attrs(body, m::IFADDR_LEN) {
        match kind {
            m::IFA_LOCAL => local = m::ip_of(v),
            m::IFA_ADDRESS => address = m::ip_of(v),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Some((index, IpNet::new(ip, prefix).ok()?))
}

fn route_of(body: &[u8]) -> Option<RouteInfo> {
    let v4 = match *body.first()? {
        m::AF_INET => true,
        m::AF_INET6 => false,
        _ => return None,
    };
    let prefix = *body.get(1)?;
    let mut table = u32::from(*body.get(4)?);
    let mut dst: Option<IpAddr> = None;
    let mut gateway = None;
    let mut oif = None;
    for (kind, v) in m::body_attrs(body, m::RTMSG_LEN) {
        match kind {
            m::RTA_DST => dst = m::ip_of(v),
            m::RTA_GATEWAY => gateway = m::ip_of(v),
            m::RTA_TABLE => table = m::u32_of(v).unwrap_or(table),
            m::RTA_OIF => oif = m::u32_of(v),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) });
    let dst = IpNet::new(dst, prefix).ok()?;
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
        assert_eq!(parse_bond_mode("802.3ad"), Some(4));
        assert_eq!(parse_bond_mode("active-backup"), Some(1));
        assert!(parse_bond_mode("lacp").is_none());
        assert_eq!(parse_macvlan_mode("passthru"), Some(8));
        assert_eq!(parse_vlan_protocol("802.1ad"), Some(0x88a8));
        assert_eq!(parse_vlan_protocol("802.1Q"), Some(0x8100));
        assert!(parse_vlan_protocol("qinq").is_none());
    }

    #[test]
    fn route_messages() {
        let b = route_message(&"0.0.0.0/0".parse().unwrap(), Some(&"10.0.0.1".parse().unwrap()), 3, 100).unwrap();
        let r = route_of(&b.0).unwrap();
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
        let b = route_message(&"fd00::/64".parse().unwrap(), None, 2, 1000).unwrap();
        assert_eq!(b.0[4], 0);
        assert_eq!(route_of(&b.0).unwrap().table, 1000);
    }
}
