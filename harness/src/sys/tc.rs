//! tc and XDP attachment through raw rtnetlink, the way Cilium v1.14.4's loader does it with
//! vishvananda/netlink: a clsact qdisc, cls_bpf filters named `<program>-<device>` with a given
//! priority and handle, and XDP programs set on a link with IFLA_XDP.
//!
//! aya's own netlink attach names filters after the program and picks its own flags, so the
//! messages are built here. Every function talks to the namespace of the calling thread: run
//! them inside [`crate::sys::netns::Netns::run`].

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use serde::Serialize;

use hostdp_model::observed::Hook;

/// `ETH_P_ALL`: the filter sees every protocol (`tc ... protocol all`).
pub const ETH_P_ALL: u16 = 0x0003;
/// The filter handle Cilium uses for its cls_bpf filters.
pub const CILIUM_HANDLE: u32 = 1;

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("{op} on {device}: link not found")]
    NoLink { op: &'static str, device: String },
    #[error("{op} on {device}: {message}")]
    Call { op: &'static str, device: String, message: String },
    #[error("netlink: {0}")]
    Socket(String),
}

/// A clsact direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        self.hook().as_str()
    }

    pub fn hook(self) -> Hook {
        match self {
            Direction::Ingress => Hook::Ingress,
            Direction::Egress => Hook::Egress,
        }
    }

    /// The direction of a tc hook; `None` for XDP.
    pub fn from_hook(hook: Hook) -> Option<Direction> {
        match hook {
            Hook::Ingress => Some(Direction::Ingress),
            Hook::Egress => Some(Direction::Egress),
            Hook::Xdp => None,
        }
    }

    /// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS|EGRESS)`.
    fn parent(self) -> TcHandle {
        let minor = match self {
            Direction::Ingress => TcHandle::MIN_INGRESS,
            Direction::Egress => TcHandle::MIN_EGRESS,
        };
        TcHandle { major: TcHandle::CLSACT.major, minor }
    }
}

/// XDP attach mode, as netlink reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// `xdpdrv`: the driver runs it (XDP_FLAGS_DRV_MODE).
    Native,
    /// `xdpgeneric`: the stack runs it (XDP_FLAGS_SKB_MODE).
    Generic,
    /// Offloaded to the NIC.
    Offload,
}

impl XdpAttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpAttachMode::Native => "native",
            XdpAttachMode::Generic => "generic",
            XdpAttachMode::Offload => "offload",
        }
    }

    fn flag(self) -> u32 {
        match self {
            XdpAttachMode::Native => XDP_FLAGS_DRV_MODE,
            XdpAttachMode::Generic => XDP_FLAGS_SKB_MODE,
            XdpAttachMode::Offload => 1 << 3,
        }
    }
}

/// A cls_bpf filter to add or replace.
#[derive(Debug, Clone, Copy)]
pub struct FilterSpec<'a> {
    pub direction: Direction,
    pub priority: u16,
    pub handle: u32,
    /// TCA_BPF_NAME, e.g. `cil_from_netdev-eth0`.
    pub name: &'a str,
}

/// One filter read back from a filter dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcFilter {
    pub direction: Direction,
    /// TCA_KIND: `bpf` for cls_bpf; other classifiers are listed too.
    pub kind: String,
    pub priority: u16,
    pub handle: u32,
    /// Host byte order (`ETH_P_ALL` = 3).
    pub protocol: u16,
    pub chain: Option<u32>,
    /// TCA_BPF_NAME.
    pub name: Option<String>,
    pub prog_id: Option<u32>,
    /// TCA_BPF_TAG as hex.
    pub tag: Option<String>,
    pub direct_action: bool,
}

/// An XDP program on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct XdpProg {
    pub prog_id: u32,
    pub mode: XdpAttachMode,
}

/// What the tc/XDP code needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// XDP programs (two when native and generic are both set).
    pub xdp: Vec<XdpProg>,
}

/// A blocking rtnetlink socket of the calling thread's namespace.
struct Rtnl {
    sock: Socket,
    seq: u32,
    /// Set when a request failed in transport (not a kernel NACK): the socket is not reused.
    broken: bool,
}

thread_local! {
    /// The calling thread's idle socket and the namespace (inode) it was opened in. Threads
    /// that enter a namespace live for one batch of work, so this is one socket per namespace
    /// and batch; the socket holds its namespace, so the inode cannot be reused meanwhile.
    static IDLE: std::cell::RefCell<Option<(u64, Rtnl)>> = const { std::cell::RefCell::new(None) };
}

/// The namespace the calling thread is in, by inode.
fn current_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| m.ino())
}

/// A socket lent by [`Rtnl::shared`]; given back to the thread when dropped.
struct Lent {
    ns: Option<u64>,
    nl: Option<Rtnl>,
}

impl std::ops::Deref for Lent {
    type Target = Rtnl;
    fn deref(&self) -> &Rtnl {
        self.nl.as_ref().expect("a lent socket is present until dropped")
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Rtnl {
        self.nl.as_mut().expect("a lent socket is present until dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let (Some(ns), Some(nl)) = (self.ns, self.nl.take()) {
            if !nl.broken {
                let _ = IDLE.try_with(|idle| *idle.borrow_mut() = Some((ns, nl)));
            }
        }
    }
}

impl Rtnl {
    /// The calling thread's socket for its current namespace, opened on first use: requests
    /// of one batch share it instead of opening one each.
    fn shared() -> Result<Lent, TcError> {
        let ns = current_netns();
        let idle = IDLE.try_with(|idle| idle.borrow_mut().take()).ok().flatten();
        let nl = match idle {
            Some((at, nl)) if Some(at) == ns => nl,
            _ => Rtnl::open()?,
        };
        Ok(Lent { ns, nl: Some(nl) })
    }

    fn open() -> Result<Rtnl, TcError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| TcError::Socket(format!("open socket: {e}")))?;
        sock.bind_auto().map_err(|e| TcError::Socket(format!("bind: {e}")))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(|e| TcError::Socket(format!("connect: {e}")))?;
        // Kernel error strings ("Exclusivity flag on, cannot modify") make errors readable.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Rtnl { sock, seq: 0, broken: false })
    }

    /// Sends one request and collects the replies until the ACK (or the end of a dump).
    /// A NACK becomes `Err((errno, kernel message))`.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, (i32, String)> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        if let Err(e) = self.sock.send(&buf, 0) {
            self.broken = true;
            return Err((e.raw_os_error().unwrap_or(0), format!("send: {e}")));
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = match self.sock.recv_from_full() {
                Ok(r) => r,
                Err(e) => {
                    self.broken = true;
                    return Err((e.raw_os_error().unwrap_or(0), format!("receive: {e}")));
                }
            };
            let mut offset = 0;
            while offset < data.len() {
                let rest = &data[offset..];
                let reply = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) {
                    Ok(r) => r,
                    Err(e) => {
                        self.broken = true;
                        return Err((0, format!("decode reply: {e}")));
                    }
                };
                let len = reply.header.length as usize;
                let reply_flags = reply.header.flags;
                if reply.header.sequence_number != self.seq {
                    offset += len.max(16);
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        let code = e.raw_code();
                        if code == 0 {
                            if !dump {
                                return Ok(out);
                            }
                        } else {
                            let ext = extack_message(&e.header, reply_flags).unwrap_or_default();
                            let mut msg = std::io::Error::from_raw_os_error(-code).to_string();
                            if !ext.is_empty() {
                                msg = format!("{msg} ({ext})");
                            }
                            return Err((-code, msg));
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
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

fn call_err<'a>(op: &'static str, device: &'a str) -> impl Fn((i32, String)) -> TcError + 'a {
    move |(_, message)| TcError::Call { op, device: device.to_string(), message }
}

/// The ifindex of `device` in the calling thread's namespace: one ioctl, not a link dump
/// (a dump per call made attaching to n links cost O(n²)).
pub fn ifindex(device: &str) -> Result<u32, TcError> {
    match nix::net::if_::if_nametoindex(device) {
        Ok(i) => Ok(i),
        Err(nix::errno::Errno::ENODEV) => Err(TcError::NoLink { op: "look up link", device: device.to_string() }),
        // Names the ioctl cannot take (too long, a NUL): the dump decides.
        Err(_) => Ok(find_link(device)?.index),
    }
}

/// Every link of the calling thread's namespace with its MAC and XDP programs, by index.
pub fn list_links() -> Result<Vec<Link>, TcError> {
    let mut nl = Rtnl::shared()?;
    let replies = nl
        .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)
        .map_err(|(_, m)| TcError::Call { op: "list links", device: "*".into(), message: m })?;
    let mut links: Vec<Link> = replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_from_message(&l)),
            _ => None,
        })
        .collect();
    links.sort_by_key(|l| l.index);
    Ok(links)
}

/// One link by name: a targeted RTM_GETLINK, so its cost does not grow with the link count.
pub fn find_link(device: &str) -> Result<Link, TcError> {
    let no_link = || TcError::NoLink { op: "look up link", device: device.to_string() };
    if device.is_empty() || device.len() >= 16 {
        return Err(no_link());
    }
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(device.to_string()));
    match Rtnl::shared()?.request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
        Ok(replies) => replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_message(&l)),
                _ => None,
            })
            .filter(|l| l.name == device)
            .ok_or_else(no_link),
        Err((libc::ENODEV, _)) => Err(no_link()),
        Err((_, message)) => Err(TcError::Call { op: "look up link", device: device.to_string(), message }),
    }
}

fn link_from_message(l: &LinkMessage) -> Link {
    let mut link = Link { index: l.header.index, name: String::new(), mac: None, xdp: Vec::new() };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 && a.iter().any(|b| *b != 0) => {
                link.mac = a.as_slice().try_into().ok();
            }
            LinkAttribute::Xdp(x) => link.xdp = xdp_progs(x),
            _ => {}
        }
    }
    link
}

/// IFLA_XDP read back: the attached mode and program id(s).
fn xdp_progs(attrs: &[LinkXdp]) -> Vec<XdpProg> {
    let mut attached = XdpAttached::None;
    let (mut prog, mut drv, mut skb, mut hw) = (None, None, None, None);
    for a in attrs {
        match a {
            LinkXdp::Attached(m) => attached = *m,
            LinkXdp::ProgId(id) => prog = Some(*id),
            LinkXdp::DrvProgId(id) => drv = Some(*id),
            LinkXdp::SkbProgId(id) => skb = Some(*id),
            LinkXdp::HwProgId(id) => hw = Some(*id),
            _ => {}
        }
    }
    let one = |mode, id: Option<u32>| id.map(|prog_id| XdpProg { prog_id, mode }).into_iter().collect();
    match attached {
        XdpAttached::Driver => one(XdpAttachMode::Native, prog.or(drv)),
        XdpAttached::SocketBuffer => one(XdpAttachMode::Generic, prog.or(skb)),
        XdpAttached::Hardware => one(XdpAttachMode::Offload, prog.or(hw)),
        XdpAttached::Multiple => {
            [(XdpAttachMode::Native, drv), (XdpAttachMode::Generic, skb), (XdpAttachMode::Offload, hw)]
                .into_iter()
                .filter_map(|(mode, id)| id.map(|prog_id| XdpProg { prog_id, mode }))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Adds a clsact qdisc to `device` unless it has one. Another qdisc at the ingress/clsact slot
/// (a plain `ingress` qdisc) is an error: Cilium v1.14.4 removes those first.
pub fn ensure_clsact(device: &str) -> Result<(), TcError> {
    let op = "add clsact qdisc";
    let index = ifindex(device)?;
    let mut nl = Rtnl::shared()?;
    // A targeted get of the clsact/ingress slot: a qdisc dump walks every link's qdiscs,
    // which made attaching to n links O(n²). ENOENT: the slot is empty.
    let mut get = TcMessage::with_index(index as i32);
    get.header.parent = TcHandle::CLSACT;
    let qdiscs = match nl.request(RouteNetlinkMessage::GetQueueDiscipline(get), NLM_F_ACK) {
        Ok(q) => q,
        Err((libc::ENOENT, _)) => Vec::new(),
        Err(e) => return Err(call_err(op, device)(e)),
    };
    for q in qdiscs {
        let RouteNetlinkMessage::NewQueueDiscipline(q) = q else { continue };
        if q.header.index != index as i32 || q.header.parent != TcHandle::CLSACT {
            continue;
        }
        let kind = q.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        });
        return match kind.as_deref() {
            Some("clsact") => Ok(()),
            // An ingress queue whose qdisc was deleted holds the placeholder: the slot is free.
            Some("noop") => break,
            other => Err(TcError::Call {
                op,
                device: device.to_string(),
                message: format!("an {} qdisc holds the clsact slot", other.unwrap_or("unknown")),
            }),
        };
    }
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle { major: 0xffff, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    match nl.request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL) {
        Ok(_) => Ok(()),
        // Someone added it between the dump and the add.
        Err((libc::EEXIST, _)) => Ok(()),
        Err(e) => Err(call_err(op, device)(e)),
    }
}

fn filter_header(index: u32, direction: Direction, priority: u16, protocol: u16, handle: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = direction.parent();
    msg.header.handle = TcHandle::from(handle);
    // tcm_info = TC_H_MAKE(prio << 16, htons(protocol)).
    msg.header.info = ((priority as u32) << 16) | protocol.to_be() as u32;
    msg
}

/// Adds or replaces (`tc filter replace`) a direct-action cls_bpf filter running `prog` on
/// `device`, protocol all; makes sure the clsact qdisc exists first. The filter holds its own
/// reference to the program, so the caller may close `prog` afterwards.
pub fn replace_filter(device: &str, spec: &FilterSpec<'_>, prog: BorrowedFd<'_>) -> Result<(), TcError> {
    ensure_clsact(device)?;
    let index = ifindex(device)?;
    let mut msg = filter_header(index, spec.direction, spec.priority, ETH_P_ALL, spec.handle);
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(spec.name.to_string())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    Rtnl::shared()?
        .request(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_ACK | NLM_F_CREATE)
        .map_err(call_err("replace tc filter", device))?;
    Ok(())
}

/// Every filter in one direction of `device`, in priority then handle order. A device without
/// a clsact qdisc has none.
pub fn list_filters(device: &str, direction: Direction) -> Result<Vec<TcFilter>, TcError> {
    let index = ifindex(device)?;
    list_filters_by_index(index, device, direction)
}

/// [`list_filters`] for a link already looked up.
pub fn list_filters_by_index(index: u32, device: &str, direction: Direction) -> Result<Vec<TcFilter>, TcError> {
    let msg = filter_header(index, direction, 0, 0, 0);
    let replies = Rtnl::shared()?
        .request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP)
        .map_err(call_err("list tc filters", device))?;
    let mut filters: Vec<TcFilter> = replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => filter_from_message(&f, direction),
            _ => None,
        })
        .collect();
    filters.sort_by_key(|f| (f.chain, f.priority, f.handle));
    Ok(filters)
}

fn filter_from_message(m: &TcMessage, direction: Direction) -> Option<TcFilter> {
    let handle: u32 = m.header.handle.into();
    // The dump lists each classifier instance (handle 0) before its filters; tc prints it as the
    // bare `filter protocol all pref 1 bpf chain 0` line. Only real filters are kept.
    if handle == 0 {
        return None;
    }
    let mut f = TcFilter {
        direction,
        kind: String::new(),
        priority: (m.header.info >> 16) as u16,
        handle,
        protocol: u16::from_be((m.header.info & 0xffff) as u16),
        chain: None,
        name: None,
        prog_id: None,
        tag: None,
        direct_action: false,
    };
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => f.kind = k.clone(),
            TcAttribute::Chain(c) => f.chain = Some(*c),
            TcAttribute::Options(opts) => {
                for o in opts {
                    let TcOption::Bpf(b) = o else { continue };
                    match b {
                        TcFilterBpfOption::ProgName(n) => f.name = Some(n.clone()),
                        TcFilterBpfOption::ProgId(id) => f.prog_id = Some(*id),
                        TcFilterBpfOption::ProgTag(t) => f.tag = Some(hex::encode(t)),
                        TcFilterBpfOption::Flags(fl) => f.direct_action = fl.contains(TcBpfFlags::DirectAction),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(f)
}

/// `RemoveTCFilters`: deletes every filter in that direction of `device`, whoever added it.
/// Returns how many there were.
pub fn flush_filters(device: &str, direction: Direction) -> Result<usize, TcError> {
    let index = ifindex(device)?;
    let n = list_filters_by_index(index, device, direction)?.len();
    if n == 0 {
        return Ok(0);
    }
    // Priority 0 and protocol 0 address the whole chain: the kernel flushes it.
    let msg = filter_header(index, direction, 0, 0, 0);
    Rtnl::shared()?
        .request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK)
        .map_err(call_err("delete tc filters", device))?;
    Ok(n)
}

/// Deletes the filter at `priority`/`handle` in that direction; `Ok(false)` if there was none.
pub fn delete_filter(device: &str, direction: Direction, priority: u16, handle: u32) -> Result<bool, TcError> {
    let index = ifindex(device)?;
    let Some(f) = list_filters_by_index(index, device, direction)?
        .into_iter()
        .find(|f| f.priority == priority && f.handle == handle)
    else {
        return Ok(false);
    };
    let mut msg = filter_header(index, direction, priority, f.protocol, handle);
    msg.attributes.push(TcAttribute::Kind(f.kind));
    Rtnl::shared()?
        .request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK)
        .map_err(call_err("delete tc filter", device))?;
    Ok(true)
}

fn set_xdp(device: &str, op: &'static str, index: u32, fd: i32, flags: u32) -> Result<(), TcError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::Xdp(vec![LinkXdp::Fd(fd), LinkXdp::Flags(flags)]));
    Rtnl::shared()?.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK).map_err(call_err(op, device))?;
    Ok(())
}

/// `LinkSetXdpFdWithFlags`: sets `prog` as the XDP program of `device` in `mode` (native or
/// generic), replacing one already there in the same mode. The attachment belongs to the link,
/// not to a process or pin, so it outlives the caller.
pub fn attach_xdp(device: &str, prog: BorrowedFd<'_>, mode: XdpAttachMode) -> Result<(), TcError> {
    let index = ifindex(device)?;
    set_xdp(device, "attach xdp", index, prog.as_raw_fd(), mode.flag()).map_err(|e| match (e, mode) {
        (TcError::Call { op, device, message }, XdpAttachMode::Native) => {
            TcError::Call { op, device, message: format!("native XDP refused: {message}") }
        }
        (e, _) => e,
    })
}

/// Detaches every XDP program of `device` (each attached mode). Returns what was there.
pub fn detach_xdp(device: &str) -> Result<Vec<XdpProg>, TcError> {
    let link = find_link(device)?;
    for p in &link.xdp {
        set_xdp(device, "detach xdp", link.index, -1, p.mode.flag())?;
    }
    Ok(link.xdp)
}

/// `LinkSetXdpFdWithFlags(link, -1, …)` for the generic, then the driver mode, each refusal
/// ignored (a bpf_link the kernel will not let netlink replace, say), as upstream does.
pub fn detach_xdp_both_modes(device: &str) {
    let Ok(index) = ifindex(device) else { return };
    for mode in [XdpAttachMode::Generic, XdpAttachMode::Native] {
        let _ = set_xdp(device, "detach xdp", index, -1, mode.flag());
    }
}

/// The XDP programs of `device`.
pub fn xdp(device: &str) -> Result<Vec<XdpProg>, TcError> {
    Ok(find_link(device)?.xdp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_info_match_iproute2() {
        let m = filter_header(7, Direction::Ingress, 1, ETH_P_ALL, 1);
        assert_eq!(u32::from(m.header.parent), 0xffff_fff2);
        assert_eq!(m.header.info, 0x0001_0300);
        let m = filter_header(7, Direction::Egress, 100, ETH_P_ALL, 1);
        assert_eq!(u32::from(m.header.parent), 0xffff_fff3);
        assert_eq!(m.header.info >> 16, 100);
    }

    #[test]
    fn filter_parse_skips_the_classifier_head() {
        let mut m = filter_header(3, Direction::Egress, 5, ETH_P_ALL, 0);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        assert_eq!(filter_from_message(&m, Direction::Egress), None);
        let mut m = filter_header(3, Direction::Egress, 5, ETH_P_ALL, 1);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgName("cil_to_netdev-eth0".into())),
            TcOption::Bpf(TcFilterBpfOption::ProgId(42)),
            TcOption::Bpf(TcFilterBpfOption::ProgTag([1, 2, 3, 4, 5, 6, 7, 0xab])),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        let f = filter_from_message(&m, Direction::Egress).unwrap();
        assert_eq!(f.name.as_deref(), Some("cil_to_netdev-eth0"));
        assert_eq!((f.priority, f.handle, f.protocol, f.prog_id), (5, 1, ETH_P_ALL, Some(42)));
        assert_eq!(f.tag.as_deref(), Some("01020304050607ab"));
        assert!(f.direct_action);
    }

    #[test]
    fn xdp_modes_from_link_attributes() {
        let v = xdp_progs(&[LinkXdp::Attached(XdpAttached::SocketBuffer), LinkXdp::ProgId(9)]);
        assert_eq!(v, vec![XdpProg { prog_id: 9, mode: XdpAttachMode::Generic }]);
        let v = xdp_progs(&[LinkXdp::Attached(XdpAttached::Multiple), LinkXdp::DrvProgId(1), LinkXdp::SkbProgId(2)]);
        assert_eq!(v.len(), 2);
        assert!(xdp_progs(&[LinkXdp::Attached(XdpAttached::None)]).is_empty());
    }

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
}
