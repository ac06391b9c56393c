//! tc and XDP attachment through raw rtnetlink, the way Cilium v1.14.4's loader does it with
//! vishvananda/netlink: a clsact qdisc, cls_bpf filters named `<program>-<device>` with a given
//! priority and handle, and XDP programs set on a link with IFLA_XDP.
//!
//! aya's own netlink attach names filters after the program and picks its own flags, so the
//! netlink-packet-route messages are built here and sent on the namespace's [`Rtnl`] socket the
//! caller passes in.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;
use serde::Serialize;

use hostdp_model::observed::Hook;

use crate::sys::netlink::{RequestError, Rtnl};

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
    #[error("{op} on {device}: {source}")]
    Call {
        op: &'static str,
        device: String,
        #[source]
        source: RequestError,
    },
    /// The driver (or the kernel) would not run the program in native mode.
    #[error("{op} on {device}: native XDP refused: {source}")]
    NativeXdpRefused {
        op: &'static str,
        device: String,
        #[source]
        source: RequestError,
    },
    /// Another qdisc (a plain `ingress`) holds the slot clsact needs.
    #[error("{op} on {device}: an {kind} qdisc holds the clsact slot")]
    SlotTaken { op: &'static str, device: String, kind: String },
}

impl TcError {
    /// What the kernel said, without the operation and device (`native XDP refused: ...`).
    pub fn kernel_text(&self) -> String {
        match self {
            TcError::Call { source, .. } => source.to_string(),
            TcError::NativeXdpRefused { source, .. } => format!("native XDP refused: {source}"),
            TcError::NoLink { .. } => "link not found".into(),
            TcError::SlotTaken { kind, .. } => format!("an {kind} qdisc holds the clsact slot"),
        }
    }
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

fn call_err<'a>(op: &'static str, device: &'a str) -> impl Fn(RequestError) -> TcError + 'a {
    move |source| TcError::Call { op, device: device.to_string(), source }
}

/// The ifindex of `device` in the connection's namespace: one targeted RTM_GETLINK, not a
/// link dump (a dump per call made attaching to n links cost O(n²)).
pub fn ifindex(nl: &Rtnl, device: &str) -> Result<u32, TcError> {
    Ok(find_link(nl, device)?.index)
}

/// Every link of the calling thread's namespace with its MAC and XDP programs, by index.
pub fn list_links(nl: &Rtnl) -> Result<Vec<Link>, TcError> {
    let replies = nl
        .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)
        .map_err(call_err("list links", "*"))?;
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
pub fn find_link(nl: &Rtnl, device: &str) -> Result<Link, TcError> {
    let no_link = || TcError::NoLink { op: "look up link", device: device.to_string() };
    if device.is_empty() || device.len() >= 16 {
        return Err(no_link());
    }
    nl.link_named(device)
        .map_err(call_err("look up link", device))?
        .map(|l| link_from_message(&l))
        .filter(|l| l.name == device)
        .ok_or_else(no_link)
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
pub fn ensure_clsact(nl: &Rtnl, device: &str) -> Result<(), TcError> {
    let op = "add clsact qdisc";
    let index = ifindex(nl, device)?;
    // A targeted get of the clsact/ingress slot: a qdisc dump walks every link's qdiscs,
    // which made attaching to n links O(n²). ENOENT: the slot is empty.
    let mut get = TcMessage::with_index(index as i32);
    get.header.parent = TcHandle::CLSACT;
    let qdiscs = match nl.request(RouteNetlinkMessage::GetQueueDiscipline(get), NLM_F_ACK) {
        Ok(q) => q,
        Err(e) if e.errno() == Some(libc::ENOENT) => Vec::new(),
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
            other => {
                Err(TcError::SlotTaken { op, device: device.to_string(), kind: other.unwrap_or("unknown").to_string() })
            }
        };
    }
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle { major: 0xffff, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    match nl.request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL) {
        Ok(_) => Ok(()),
        // Someone added it between the dump and the add.
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
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
pub fn replace_filter(nl: &Rtnl, device: &str, spec: &FilterSpec<'_>, prog: BorrowedFd<'_>) -> Result<(), TcError> {
    ensure_clsact(nl, device)?;
    let index = ifindex(nl, device)?;
    let mut msg = filter_header(index, spec.direction, spec.priority, ETH_P_ALL, spec.handle);
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(spec.name.to_string())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    nl.request(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_ACK | NLM_F_CREATE)
        .map_err(call_err("replace tc filter", device))?;
    Ok(())
}

/// Every filter in one direction of `device`, in priority then handle order. A device without
/// a clsact qdisc has none.
pub fn list_filters(nl: &Rtnl, device: &str, direction: Direction) -> Result<Vec<TcFilter>, TcError> {
    let index = ifindex(nl, device)?;
    list_filters_by_index(nl, index, device, direction)
}

/// [`list_filters`] for a link already looked up.
pub fn list_filters_by_index(
    nl: &Rtnl,
    index: u32,
    device: &str,
    direction: Direction,
) -> Result<Vec<TcFilter>, TcError> {
    let msg = filter_header(index, direction, 0, 0, 0);
    let replies = nl
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
pub fn flush_filters(nl: &Rtnl, device: &str, direction: Direction) -> Result<usize, TcError> {
    let index = ifindex(nl, device)?;
    let n = list_filters_by_index(nl, index, device, direction)?.len();
    if n == 0 {
        return Ok(0);
    }
    // Priority 0 and protocol 0 address the whole chain: the kernel flushes it.
    let msg = filter_header(index, direction, 0, 0, 0);
    nl.request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK).map_err(call_err("delete tc filters", device))?;
    Ok(n)
}

/// Deletes the filter at `priority`/`handle` in that direction; `Ok(false)` if there was none.
pub fn delete_filter(
    nl: &Rtnl,
    device: &str,
    direction: Direction,
    priority: u16,
    handle: u32,
) -> Result<bool, TcError> {
    let index = ifindex(nl, device)?;
    let Some(f) = list_filters_by_index(nl, index, device, direction)?
        .into_iter()
        .find(|f| f.priority == priority && f.handle == handle)
    else {
        return Ok(false);
    };
    let mut msg = filter_header(index, direction, priority, f.protocol, handle);
    msg.attributes.push(TcAttribute::Kind(f.kind));
    nl.request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK).map_err(call_err("delete tc filter", device))?;
    Ok(true)
}

fn set_xdp(nl: &Rtnl, device: &str, op: &'static str, index: u32, fd: i32, flags: u32) -> Result<(), TcError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::Xdp(vec![LinkXdp::Fd(fd), LinkXdp::Flags(flags)]));
    nl.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK).map_err(call_err(op, device))?;
    Ok(())
}

/// `LinkSetXdpFdWithFlags`: sets `prog` as the XDP program of `device` in `mode` (native or
/// generic), replacing one already there in the same mode. The attachment belongs to the link,
/// not to a process or pin, so it outlives the caller.
pub fn attach_xdp(nl: &Rtnl, device: &str, prog: BorrowedFd<'_>, mode: XdpAttachMode) -> Result<(), TcError> {
    let index = ifindex(nl, device)?;
    set_xdp(nl, device, "attach xdp", index, prog.as_raw_fd(), mode.flag()).map_err(|e| match (e, mode) {
        (TcError::Call { op, device, source }, XdpAttachMode::Native) => {
            TcError::NativeXdpRefused { op, device, source }
        }
        (e, _) => e,
    })
}

/// Detaches every XDP program of `device` (each attached mode). Returns what was there.
pub fn detach_xdp(nl: &Rtnl, device: &str) -> Result<Vec<XdpProg>, TcError> {
    let link = find_link(nl, device)?;
    for p in &link.xdp {
        set_xdp(nl, device, "detach xdp", link.index, -1, p.mode.flag())?;
    }
    Ok(link.xdp)
}

/// `LinkSetXdpFdWithFlags(link, -1, …)` for the generic, then the driver mode, each refusal
/// ignored (a bpf_link the kernel will not let netlink replace, say), as upstream does.
pub fn detach_xdp_both_modes(nl: &Rtnl, device: &str) {
    let Ok(index) = ifindex(nl, device) else { return };
    for mode in [XdpAttachMode::Generic, XdpAttachMode::Native] {
        let _ = set_xdp(nl, device, "detach xdp", index, -1, mode.flag());
    }
}

/// The XDP programs of `device`.
pub fn xdp(nl: &Rtnl, device: &str) -> Result<Vec<XdpProg>, TcError> {
    Ok(find_link(nl, device)?.xdp)
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
}
