//! tc and XDP attachment through raw rtnetlink, the way Cilium v1.14.4's loader does it with
//! vishvananda/netlink: a clsact qdisc, cls_bpf filters named `<program>-<device>` with a given
//! priority and handle, and XDP programs set on a link with IFLA_XDP.
//!
//! aya's own netlink attach names filters after the program and picks its own flags, so the
//! messages are built here ([`crate::sys::nlmsg`]) and sent on the namespace's [`Rtnl`] socket
//! the caller passes in.

use std::os::fd::{AsRawFd, BorrowedFd};

use serde::Serialize;

use hostdp_model::observed::Hook;

use crate::sys::netlink::{RequestError, Rtnl};
use crate::sys::nlmsg::{self as m, Body};

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
    fn parent(self) -> u32 {
        let minor = match self {
            Direction::Ingress => m::TC_H_MIN_INGRESS,
            Direction::Egress => m::TC_H_MIN_EGRESS,
        };
        (m::TC_H_CLSACT & 0xffff_0000) | minor
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
        .request(m::RTM_GETLINK, &Body::new(&m::ifinfo(0, 0, 0)), m::NLM_F_DUMP)
        .map_err(call_err("list links", "*"))?;
    let mut links: Vec<Link> = replies
        .iter()
        .filter(|(kind, _)| *kind == m::RTM_NEWLINK)
        .filter_map(|(_, body)| link_from_message(body))
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
        .and_then(|body| link_from_message(&body))
        .filter(|l| l.name == device)
        .ok_or_else(no_link)
}

/// A link reply's body (read by [`crate::sys::netlink`]'s parser) with its XDP programs.
fn link_from_message(body: &[u8]) -> Option<Link> {
    let l = crate::sys::netlink::link_of(body)?;
    let xdp = m::body_attrs(body, m::IFINFO_LEN).find(|(k, _)| *k == m::IFLA_XDP).map(|(_, v)| xdp_progs(v));
    Some(Link { index: l.index, name: l.name, mac: l.mac, xdp: xdp.unwrap_or_default() })
}

/// IFLA_XDP read back (its nested attributes): the attached mode and program id(s).
fn xdp_progs(nested: &[u8]) -> Vec<XdpProg> {
    const NONE: u8 = 0;
    const DRV: u8 = 1;
    const SKB: u8 = 2;
    const HW: u8 = 3;
    const MULTI: u8 = 4;
    let mut attached = NONE;
    let (mut prog, mut drv, mut skb, mut hw) = (None, None, None, None);
    for (kind, v) in m::attrs(nested) {
        match kind {
            m::IFLA_XDP_ATTACHED => attached = v.first().copied().unwrap_or(NONE),
            m::IFLA_XDP_PROG_ID => prog = m::u32_of(v),
            m::IFLA_XDP_DRV_PROG_ID => drv = m::u32_of(v),
            m::IFLA_XDP_SKB_PROG_ID => skb = m::u32_of(v),
            m::IFLA_XDP_HW_PROG_ID => hw = m::u32_of(v),
            _ => {}
        }
    }
    let one = |mode, id: Option<u32>| id.map(|prog_id| XdpProg { prog_id, mode }).into_iter().collect();
    match attached {
        DRV => one(XdpAttachMode::Native, prog.or(drv)),
        SKB => one(XdpAttachMode::Generic, prog.or(skb)),
        HW => one(XdpAttachMode::Offload, prog.or(hw)),
        MULTI => [(XdpAttachMode::Native, drv), (XdpAttachMode::Generic, skb), (XdpAttachMode::Offload, hw)]
            .into_iter()
            .filter_map(|(mode, id)| id.map(|prog_id| XdpProg { prog_id, mode }))
            .collect(),
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
    let get = Body::new(&m::tcmsg(index, 0, m::TC_H_CLSACT, 0));
    let qdiscs = match nl.request(m::RTM_GETQDISC, &get, m::NLM_F_ACK) {
        Ok(q) => q,
        Err(e) if e.errno() == Some(libc::ENOENT) => Vec::new(),
        Err(e) => return Err(call_err(op, device)(e)),
    };
    for (kind, q) in qdiscs {
        if kind != m::RTM_NEWQDISC || q.len() < m::TCMSG_LEN {
            continue;
        }
        let (q_index, q_parent) = (m::u32_of(&q[4..8]), m::u32_of(&q[12..16]));
        if q_index != Some(index) || q_parent != Some(m::TC_H_CLSACT) {
            continue;
        }
        let kind = m::body_attrs(&q, m::TCMSG_LEN).find(|(k, _)| *k == m::TCA_KIND).map(|(_, v)| m::str_of(v));
        return match kind.as_deref() {
            Some("clsact") => Ok(()),
            // An ingress queue whose qdisc was deleted holds the placeholder: the slot is free.
            Some("noop") => break,
            other => {
                Err(TcError::SlotTaken { op, device: device.to_string(), kind: other.unwrap_or("unknown").to_string() })
            }
        };
    }
    let mut msg = Body::new(&m::tcmsg(index, 0xffff_0000, m::TC_H_CLSACT, 0));
    msg.str(m::TCA_KIND, "clsact");
    match nl.request(m::RTM_NEWQDISC, &msg, m::NLM_F_ACK | m::NLM_F_CREATE | m::NLM_F_EXCL) {
        Ok(_) => Ok(()),
        // Someone added it between the dump and the add.
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(call_err(op, device)(e)),
    }
}

fn filter_header(index: u32, direction: Direction, priority: u16, protocol: u16, handle: u32) -> Body {
    // tcm_info = TC_H_MAKE(prio << 16, htons(protocol)).
    let info = ((priority as u32) << 16) | protocol.to_be() as u32;
    Body::new(&m::tcmsg(index, handle, direction.parent(), info))
}

/// Adds or replaces (`tc filter replace`) a direct-action cls_bpf filter running `prog` on
/// `device`, protocol all; makes sure the clsact qdisc exists first. The filter holds its own
/// reference to the program, so the caller may close `prog` afterwards.
pub fn replace_filter(nl: &Rtnl, device: &str, spec: &FilterSpec<'_>, prog: BorrowedFd<'_>) -> Result<(), TcError> {
    ensure_clsact(nl, device)?;
    let index = ifindex(nl, device)?;
    let mut msg = filter_header(index, spec.direction, spec.priority, ETH_P_ALL, spec.handle);
    msg.str(m::TCA_KIND, "bpf").nest(m::TCA_OPTIONS, |b| {
        b.u32(m::TCA_BPF_FD, prog.as_raw_fd() as u32)
            .str(m::TCA_BPF_NAME, spec.name)
            .u32(m::TCA_BPF_FLAGS, m::TCA_BPF_FLAG_ACT_DIRECT);
    });
    nl.request(m::RTM_NEWTFILTER, &msg, m::NLM_F_ACK | m::NLM_F_CREATE)
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
    let replies = nl.request(m::RTM_GETTFILTER, &msg, m::NLM_F_DUMP).map_err(call_err("list tc filters", device))?;
    let mut filters: Vec<TcFilter> = replies
        .iter()
        .filter(|(kind, _)| *kind == m::RTM_NEWTFILTER)
        .filter_map(|(_, body)| filter_from_message(body, direction))
        .collect();
    filters.sort_by_key(|f| (f.chain, f.priority, f.handle));
    Ok(filters)
}

/// A filter reply's body (`tcmsg`, then attributes).
fn filter_from_message(body: &[u8], direction: Direction) -> Option<TcFilter> {
    let handle = m::u32_of(body.get(8..12)?)?;
    let info = m::u32_of(body.get(16..20)?)?;
    // The dump lists each classifier instance (handle 0) before its filters; tc prints it as the
    // bare `filter protocol all pref 1 bpf chain 0` line. Only real filters are kept.
    if handle == 0 {
        return None;
    }
    let mut f = TcFilter {
        direction,
        kind: String::new(),
        priority: (info >> 16) as u16,
        handle,
        protocol: u16::from_be((info & 0xffff) as u16),
        chain: None,
        name: None,
        prog_id: None,
        tag: None,
        direct_action: false,
    };
    for (kind, v) in m::body_attrs(body, m::TCMSG_LEN) {
        match kind {
            m::TCA_KIND => f.kind = m::str_of(v),
            m::TCA_CHAIN => f.chain = m::u32_of(v),
            // The option numbers are cls_bpf's: other classifiers' options are not read.
            m::TCA_OPTIONS if f.kind == "bpf" => {
                for (ok, ov) in m::attrs(v) {
                    match ok {
                        m::TCA_BPF_NAME => f.name = Some(m::str_of(ov)),
                        m::TCA_BPF_ID => f.prog_id = m::u32_of(ov),
                        m::TCA_BPF_TAG => f.tag = Some(hex::encode(ov)),
                        m::TCA_BPF_FLAGS => {
                            f.direct_action = m::u32_of(ov).is_some_and(|x| x & m::TCA_BPF_FLAG_ACT_DIRECT != 0)
                        }
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
    nl.request(m::RTM_DELTFILTER, &msg, m::NLM_F_ACK).map_err(call_err("delete tc filters", device))?;
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
    msg.str(m::TCA_KIND, &f.kind);
    nl.request(m::RTM_DELTFILTER, &msg, m::NLM_F_ACK).map_err(call_err("delete tc filter", device))?;
    Ok(true)
}

fn set_xdp(nl: &Rtnl, device: &str, op: &'static str, index: u32, fd: i32, flags: u32) -> Result<(), TcError> {
    let mut msg = Body::new(&m::ifinfo(index, 0, 0));
    msg.nest(m::IFLA_XDP, |b| {
        b.u32(m::IFLA_XDP_FD, fd as u32).u32(m::IFLA_XDP_FLAGS, flags);
    });
    nl.request(m::RTM_SETLINK, &msg, m::NLM_F_ACK).map_err(call_err(op, device))?;
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

    fn tcmsg_of(b: &Body) -> (u32, u32, u32) {
        (m::u32_of(&b.0[8..]).unwrap(), m::u32_of(&b.0[12..]).unwrap(), m::u32_of(&b.0[16..]).unwrap())
    }

    #[test]
    fn parents_and_info_match_iproute2() {
        let (_, parent, info) = tcmsg_of(&filter_header(7, Direction::Ingress, 1, ETH_P_ALL, 1));
        assert_eq!(parent, 0xffff_fff2);
        assert_eq!(info, 0x0001_0300);
        let (_, parent, info) = tcmsg_of(&filter_header(7, Direction::Egress, 100, ETH_P_ALL, 1));
        assert_eq!(parent, 0xffff_fff3);
        assert_eq!(info >> 16, 100);
    }

    #[test]
    fn filter_parse_skips_the_classifier_head() {
        let mut b = filter_header(3, Direction::Egress, 5, ETH_P_ALL, 0);
        b.str(m::TCA_KIND, "bpf");
        assert_eq!(filter_from_message(&b.0, Direction::Egress), None);
        let mut b = filter_header(3, Direction::Egress, 5, ETH_P_ALL, 1);
        b.str(m::TCA_KIND, "bpf").nest(m::TCA_OPTIONS, |b| {
            b.str(m::TCA_BPF_NAME, "cil_to_netdev-eth0")
                .u32(m::TCA_BPF_ID, 42)
                .attr(m::TCA_BPF_TAG, &[1, 2, 3, 4, 5, 6, 7, 0xab])
                .u32(m::TCA_BPF_FLAGS, m::TCA_BPF_FLAG_ACT_DIRECT);
        });
        let f = filter_from_message(&b.0, Direction::Egress).unwrap();
        assert_eq!(f.name.as_deref(), Some("cil_to_netdev-eth0"));
        assert_eq!((f.priority, f.handle, f.protocol, f.prog_id), (5, 1, ETH_P_ALL, Some(42)));
        assert_eq!(f.tag.as_deref(), Some("01020304050607ab"));
        assert!(f.direct_action);
    }

    #[test]
    fn xdp_modes_from_link_attributes() {
        let xdp = |f: &dyn Fn(&mut Body)| {
            let mut b = Body::default();
            f(&mut b);
            xdp_progs(&b.0)
        };
        let v = xdp(&|b| {
            b.u8(m::IFLA_XDP_ATTACHED, 2).u32(m::IFLA_XDP_PROG_ID, 9);
        });
        assert_eq!(v, vec![XdpProg { prog_id: 9, mode: XdpAttachMode::Generic }]);
        let v = xdp(&|b| {
            b.u8(m::IFLA_XDP_ATTACHED, 4).u32(m::IFLA_XDP_DRV_PROG_ID, 1).u32(m::IFLA_XDP_SKB_PROG_ID, 2);
        });
        assert_eq!(v.len(), 2);
        assert!(xdp(&|b| {
            b.u8(m::IFLA_XDP_ATTACHED, 0);
        })
        .is_empty());
    }
}
