//! A `traffic` step's packets: the wire side made ready (a VLAN sub-interface on a veth peer,
//! addresses, a permanent neighbour entry so that no ARP or neighbour discovery is needed to
//! send), a listener at the destination, and the marked packets themselves.
//!
//! Every packet carries the IPv4 TOS / IPv6 traffic class [`MARK_TOS`], which the stand-in
//! programs look for (`bpf/include/hostdp.h` `hostdp_marked`), so that only these packets move
//! their "marked" counters. Sockets are created on a thread inside the namespace they belong
//! to ([`Netns::run`]) and used from any thread afterwards: a socket keeps its namespace.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::sys::netlink::{self, Change, NetlinkError, NewLink};
use crate::sys::netns::{Netns, NetnsError};
use hostdp_model::scenario::TrafficProto;

/// The mark: DSCP 37 (unassigned), ECN clear. Keep in step with `HOSTDP_MARK_TOS`.
pub const MARK_TOS: u32 = 0x94;

/// How long to wait for the last packet to arrive after the last one was sent. Generous: the
/// VMs run under emulation. The wait ends sooner once every packet is accounted for: arrived,
/// or dropped by an attached program (see [`send`]).
const SETTLE: Duration = Duration::from_millis(1500);

/// How often a wait for packets asks whether the missing ones were dropped.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{op} {object}: {source}")]
    Io {
        op: &'static str,
        object: String,
        #[source]
        source: std::io::Error,
    },
    #[error("traffic: {0}")]
    Setup(String),
}

fn io(op: &'static str, object: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrafficError {
    let object = object.into();
    move |source| TrafficError::Io { op, object, source }
}

/// Writes a sysctl of the calling thread's network namespace (`net/ipv4/conf/all/rp_filter`).
pub fn sysctl(key: &str, value: &str) -> Result<(), TrafficError> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(io("write sysctl", path))
}

/// The name of `peer`'s VLAN sub-interface `id` in the wire namespace: `<peer>.<id>`, or a
/// shorter `v<id>-<peer>` cut to 15 bytes when that does not fit.
pub fn vlan_name(peer: &str, id: u16) -> String {
    let name = format!("{peer}.{id}");
    if name.len() <= 15 {
        return name;
    }
    let mut short = format!("v{id}-{peer}");
    short.truncate(15);
    short
}

/// Makes the wire side of a step ready, inside the wire namespace: `dev` (the peer, or its VLAN
/// sub-interface `vlan` which is created if missing) up, without reverse-path filtering,
/// holding `addrs`, and, when given, `neighbour` as a permanent entry on it. Repeatable: what
/// exists already is kept. Returns the device the wire sends and listens on.
pub fn prepare_wire(
    wire: &Netns,
    peer: &str,
    vlan: Option<u16>,
    addrs: &[IpNet],
    neighbour: Option<(IpAddr, [u8; 6])>,
) -> Result<String, TrafficError> {
    let peer = peer.to_string();
    let addrs = addrs.to_vec();
    wire.run(move || {
        for key in ["all", "default"] {
            sysctl(&format!("net/ipv4/conf/{key}/rp_filter"), "0")?;
        }
        let nl = netlink::Rtnl::open()?;
        let links = nl.links()?;
        let dev = match vlan {
            None => peer.clone(),
            Some(id) => vlan_name(&peer, id),
        };
        let existing = links.iter().find(|l| l.name == dev);
        let mut changes = Vec::new();
        if existing.is_none() {
            if vlan.is_none() {
                return Err(TrafficError::Setup(format!("no device {dev} in the wire namespace")));
            }
            changes.push(Change::AddLink {
                name: dev.clone(),
                link: NewLink::Vlan { parent: peer.clone(), id: vlan.unwrap_or(0), protocol: None },
            });
        }
        changes.push(Change::SetUp { name: dev.clone(), up: true });
        for a in &addrs {
            if !existing.is_some_and(|l| l.addresses.iter().any(|x| x.addr() == a.addr())) {
                changes.push(Change::AddAddress { name: dev.clone(), addr: *a });
            }
        }
        if let Some((ip, mac)) = neighbour {
            changes.push(Change::SetNeighbour { name: dev.clone(), ip, mac });
        }
        nl.apply(&changes)?;
        sysctl(&format!("net/ipv4/conf/{dev}/rp_filter"), "0")?;
        // IPv6 duplicate address detection would hold a new address back for a second.
        let _ = sysctl(&format!("net/ipv6/conf/{dev}/accept_dad"), "0");
        Ok(dev)
    })?
}

/// One step's packets.
#[derive(Debug, Clone)]
pub struct Flow {
    pub proto: TrafficProto,
    pub to: IpAddr,
    pub port: u16,
    pub count: u32,
    /// The sender's device (`SO_BINDTODEVICE`): the packets leave there whatever the routes say.
    pub via: Option<String>,
}

/// What a step's packets did at the ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub sent: u64,
    pub delivered: u64,
}

/// The payload: a fixed text and a per-step number, so that a late packet of an earlier step
/// is not counted as delivered.
fn payload(nonce: u64) -> Vec<u8> {
    let mut p = b"hostdp traffic step ".to_vec();
    p.extend_from_slice(&nonce.to_be_bytes());
    p.resize(48, b'.');
    p
}

fn nonce() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

fn domain(ip: &IpAddr) -> Domain {
    if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// A socket of `sender`'s namespace, marked, bound to `flow.via` when given.
fn marked_socket(flow: &Flow, ty: Type, proto: Protocol) -> Result<Socket, TrafficError> {
    let s = Socket::new(domain(&flow.to), ty, Some(proto)).map_err(io("open socket", flow.proto.as_str()))?;
    if flow.to.is_ipv4() {
        s.set_tos_v4(MARK_TOS).map_err(io("set IP_TOS", "sender"))?;
    } else {
        s.set_tclass_v6(MARK_TOS).map_err(io("set IPV6_TCLASS", "sender"))?;
    }
    if let Some(dev) = &flow.via {
        s.bind_device(Some(dev.as_bytes())).map_err(io("bind to device", dev.clone()))?;
    }
    Ok(s)
}

/// Sends `flow` from namespace `from` to a listener in namespace `to_ns` (for ICMP the replies
/// come back to the sender and `to_ns` is not used) and counts what arrived. `dropped` says how
/// many of the step's packets the attached programs have dropped so far: a dropped packet never
/// arrives, so the wait for the missing ones ends as soon as arrivals and drops cover them all
/// (a step whose packets a program drops takes milliseconds, not [`SETTLE`]).
pub fn send(from: &Netns, to_ns: &Netns, flow: &Flow, dropped: &dyn Fn() -> u64) -> Result<Outcome, TrafficError> {
    let data = payload(nonce());
    let dst = SockAddr::from(SocketAddr::new(flow.to, flow.port));
    match flow.proto {
        TrafficProto::Udp => {
            let listener = to_ns.run(|| -> Result<Socket, TrafficError> {
                let l = Socket::new(domain(&flow.to), Type::DGRAM, Some(Protocol::UDP))
                    .map_err(io("open socket", "udp listener"))?;
                l.bind(&dst).map_err(io("bind udp listener", dst_text(flow)))?;
                Ok(l)
            })??;
            let sender = from.run(|| marked_socket(flow, Type::DGRAM, Protocol::UDP))??;
            let mut sent = 0;
            for _ in 0..flow.count {
                // A send refused (no route, no neighbour) counts as not sent.
                if sender.send_to(&data, &dst).is_ok() {
                    sent += 1;
                }
            }
            let delivered = receive(&listener, flow.count, |b| b.ends_with(&data) || b == data.as_slice(), dropped)?;
            Ok(Outcome { sent, delivered })
        }
        TrafficProto::Tcp => {
            let listener = to_ns.run(|| -> Result<Socket, TrafficError> {
                let l = Socket::new(domain(&flow.to), Type::STREAM, Some(Protocol::TCP))
                    .map_err(io("open socket", "tcp listener"))?;
                l.set_reuse_address(true).map_err(io("set SO_REUSEADDR", "tcp listener"))?;
                l.bind(&dst).map_err(io("bind tcp listener", dst_text(flow)))?;
                l.listen(1024).map_err(io("listen", dst_text(flow)))?;
                l.set_nonblocking(true).map_err(io("set non-blocking", "tcp listener"))?;
                Ok(l)
            })??;
            // Each attempt is one SYN; the sockets are closed before the first retransmission
            // (one second), so a dropped SYN is counted once.
            let mut clients = Vec::new();
            let mut sent = 0;
            for _ in 0..flow.count {
                let c = from.run(|| marked_socket(flow, Type::STREAM, Protocol::TCP))??;
                c.set_nonblocking(true).map_err(io("set non-blocking", "tcp client"))?;
                match c.connect(&dst) {
                    Ok(()) => sent += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => sent += 1,
                    Err(_) => {}
                }
                clients.push(c);
            }
            let deadline = Instant::now() + Duration::from_millis(800);
            let mut accepted = Vec::new();
            while (accepted.len() as u32) < flow.count && Instant::now() < deadline {
                if accepted.len() as u64 + dropped() >= u64::from(flow.count) {
                    break;
                }
                match listener.accept() {
                    Ok((s, _)) => accepted.push(s),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => return Err(io("accept", dst_text(flow))(e)),
                }
            }
            for c in &clients {
                // An abortive close: a reset, never a retransmitted SYN.
                let _ = c.set_linger(Some(Duration::ZERO));
            }
            Ok(Outcome { sent, delivered: accepted.len() as u64 })
        }
        TrafficProto::Icmp => {
            let (proto, request, reply) =
                if flow.to.is_ipv4() { (Protocol::ICMPV4, 8u8, 0u8) } else { (Protocol::ICMPV6, 128u8, 129u8) };
            let sock = from.run(|| marked_socket(flow, Type::RAW, proto))??;
            let id = (nonce() & 0xffff) as u16;
            let mut sent = 0;
            let dst = SockAddr::from(SocketAddr::new(flow.to, 0));
            for seq in 0..flow.count {
                let mut pkt = vec![request, 0, 0, 0];
                pkt.extend_from_slice(&id.to_be_bytes());
                pkt.extend_from_slice(&(seq as u16).to_be_bytes());
                pkt.extend_from_slice(&data);
                if flow.to.is_ipv4() {
                    let c = checksum(&pkt);
                    pkt[2..4].copy_from_slice(&c.to_be_bytes());
                }
                if sock.send_to(&pkt, &dst).is_ok() {
                    sent += 1;
                }
            }
            let v4 = flow.to.is_ipv4();
            let delivered = receive(
                &sock,
                flow.count,
                |b| {
                    // IPv4 raw sockets deliver the IP header too; ICMPv6 ones do not.
                    let icmp = if v4 { b.get(usize::from(b.first().map_or(0, |x| x & 0x0f)) * 4..) } else { Some(b) };
                    icmp.is_some_and(|m| m.len() >= 8 && m[0] == reply && m[4..6] == id.to_be_bytes())
                },
                dropped,
            )?;
            Ok(Outcome { sent, delivered })
        }
    }
}

fn dst_text(flow: &Flow) -> String {
    SocketAddr::new(flow.to, flow.port).to_string()
}

/// Reads from `s` until `want` packets matched, or the ones missing were `dropped`, or nothing
/// more came for [`SETTLE`].
fn receive(
    s: &Socket,
    want: u32,
    matches: impl Fn(&[u8]) -> bool,
    dropped: &dyn Fn() -> u64,
) -> Result<u64, TrafficError> {
    let mut got = 0u64;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    let mut deadline = Instant::now() + SETTLE;
    while got < u64::from(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || got + dropped() >= u64::from(want) {
            break;
        }
        s.set_read_timeout(Some(left.min(POLL))).map_err(io("set SO_RCVTIMEO", "listener"))?;
        match s.recv_from(&mut buf) {
            Ok((n, _)) => {
                // SAFETY: recv_from initialised the first `n` bytes.
                let b: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                if matches(b) {
                    got += 1;
                    deadline = Instant::now() + SETTLE;
                }
            }
            // A poll interval passed: ask `dropped` again, until the deadline.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("receive", "listener")(e)),
        }
    }
    Ok(got)
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_names_fit() {
        assert_eq!(vlan_name("eth0-p", 212), "eth0-p.212");
        assert_eq!(vlan_name("averylongpeer12", 4094), "v4094-averylong");
    }

    #[test]
    fn checksum_of_an_echo_request() {
        // type 8, code 0, id 1, seq 1: 0xf7fd.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), 0xf7fd);
    }
}
