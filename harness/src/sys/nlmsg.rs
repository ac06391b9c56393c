//! rtnetlink messages as bytes: the constants, the family headers and the attributes that
//! `sys::netlink` and `sys::tc` send and read, built and parsed by hand (the layouts are those
//! of `linux/rtnetlink.h`, `if_link.h`, `pkt_cls.h`; all native byte order unless said). A
//! message crate for the handful used here cost the build more than all of the project's own
//! netlink code.

// Message types.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_SETLINK: u16 = 19;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_NEWQDISC: u16 = 36;
pub const RTM_GETQDISC: u16 = 38;
pub const RTM_NEWTFILTER: u16 = 44;
pub const RTM_DELTFILTER: u16 = 45;
pub const RTM_GETTFILTER: u16 = 46;

// Header flags.
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

pub const AF_INET: u8 = libc::AF_INET as u8;
pub const AF_INET6: u8 = libc::AF_INET6 as u8;

// Links (`ifinfomsg`, 16 bytes).
pub const IFINFO_LEN: usize = 16;
pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_XDP: u16 = 43;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const VETH_INFO_PEER: u16 = 1;
pub const IFLA_BOND_MODE: u16 = 1;
pub const IFLA_BOND_MIIMON: u16 = 3;
pub const IFLA_VLAN_ID: u16 = 1;
pub const IFLA_VLAN_PROTOCOL: u16 = 5;
pub const IFLA_MACVLAN_MODE: u16 = 1;
pub const IFLA_VXLAN_ID: u16 = 1;
pub const IFLA_VXLAN_LINK: u16 = 3;
pub const IFLA_VXLAN_LEARNING: u16 = 7;
pub const IFLA_VXLAN_PORT: u16 = 15;
pub const IFLA_VXLAN_COLLECT_METADATA: u16 = 25;
pub const IFLA_GENEVE_PORT: u16 = 5;
pub const IFLA_GENEVE_COLLECT_METADATA: u16 = 6;
pub const IFLA_VRF_TABLE: u16 = 1;
pub const IFLA_XDP_FD: u16 = 1;
pub const IFLA_XDP_ATTACHED: u16 = 2;
pub const IFLA_XDP_FLAGS: u16 = 3;
pub const IFLA_XDP_PROG_ID: u16 = 4;
pub const IFLA_XDP_DRV_PROG_ID: u16 = 5;
pub const IFLA_XDP_SKB_PROG_ID: u16 = 6;
pub const IFLA_XDP_HW_PROG_ID: u16 = 7;
pub const IFF_UP: u32 = 0x1;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_SLAVE: u32 = 0x800;
pub const IFF_MULTICAST: u32 = 0x1000;

// Addresses (`ifaddrmsg`, 8 bytes).
pub const IFADDR_LEN: usize = 8;
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_BROADCAST: u16 = 4;

// Routes (`rtmsg`, 12 bytes).
pub const RTMSG_LEN: usize = 12;
pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_TABLE: u16 = 15;
pub const RTPROT_STATIC: u8 = 4;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RTN_UNICAST: u8 = 1;

// Neighbours (`ndmsg`, 12 bytes).
pub const NDA_DST: u16 = 1;
pub const NDA_LLADDR: u16 = 2;
pub const NUD_PERMANENT: u16 = 0x80;

// tc (`tcmsg`, 20 bytes).
pub const TCMSG_LEN: usize = 20;
pub const TCA_KIND: u16 = 1;
pub const TCA_OPTIONS: u16 = 2;
pub const TCA_CHAIN: u16 = 11;
pub const TCA_BPF_FD: u16 = 6;
pub const TCA_BPF_NAME: u16 = 7;
pub const TCA_BPF_FLAGS: u16 = 8;
pub const TCA_BPF_TAG: u16 = 10;
pub const TCA_BPF_ID: u16 = 11;
pub const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `TC_H_CLSACT`, the clsact qdisc's parent (`TC_H_INGRESS` has the same value).
pub const TC_H_CLSACT: u32 = 0xffff_fff1;
pub const TC_H_MIN_INGRESS: u32 = 0xfff2;
pub const TC_H_MIN_EGRESS: u32 = 0xfff3;

/// One request's body: the family header, then attributes, each padded to four bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body(pub Vec<u8>);

impl Body {
    /// A body that starts with `header` (a family header's bytes).
    pub fn new(header: &[u8]) -> Body {
        Body(header.to_vec())
    }

    pub fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Body {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn u8(&mut self, kind: u16, v: u8) -> &mut Body {
        self.attr(kind, &[v])
    }

    pub fn u16(&mut self, kind: u16, v: u16) -> &mut Body {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A 16-bit value in network byte order (UDP ports, VLAN protocols).
    pub fn be16(&mut self, kind: u16, v: u16) -> &mut Body {
        self.attr(kind, &v.to_be_bytes())
    }

    pub fn u32(&mut self, kind: u16, v: u32) -> &mut Body {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, kind: u16, s: &str) -> &mut Body {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(kind, &b)
    }

    /// An attribute holding the attributes `f` adds (its length is fixed afterwards).
    pub fn nest(&mut self, kind: u16, f: impl FnOnce(&mut Body)) -> &mut Body {
        let start = self.0.len();
        self.attr(kind, &[]);
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }
}

/// An `ifinfomsg`: family unspecified, `index`, `flags` with `change` the flags that count.
pub fn ifinfo(index: u32, flags: u32, change: u32) -> [u8; IFINFO_LEN] {
    let mut h = [0u8; IFINFO_LEN];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// A `tcmsg`.
pub fn tcmsg(index: u32, handle: u32, parent: u32, info: u32) -> [u8; TCMSG_LEN] {
    let mut h = [0u8; TCMSG_LEN];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&handle.to_ne_bytes());
    h[12..16].copy_from_slice(&parent.to_ne_bytes());
    h[16..20].copy_from_slice(&info.to_ne_bytes());
    h
}

/// The attributes of `buf` (a body past its family header, or a nested attribute's value):
/// kind (without the nested and byte-order flags) and value. Stops at a malformed one.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let head = buf.get(off..off + 4)?;
        let len = u16::from_ne_bytes([head[0], head[1]]) as usize;
        let kind = u16::from_ne_bytes([head[2], head[3]]) & 0x3fff;
        if len < 4 {
            return None;
        }
        let value = buf.get(off + 4..off + len)?;
        off += (len + 3) & !3;
        Some((kind, value))
    })
}

/// The attributes after a body's family header of `header_len` bytes (none if it is short).
pub fn body_attrs(body: &[u8], header_len: usize) -> impl Iterator<Item = (u16, &[u8])> {
    attrs(body.get(header_len..).unwrap_or_default())
}

pub fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

pub fn u16_of(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

pub fn be16_of(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

/// A NUL-terminated string attribute.
pub fn str_of(v: &[u8]) -> String {
    let s = v.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(s).into_owned()
}

/// An address attribute of a family: 4 bytes IPv4, 16 bytes IPv6.
pub fn ip_of(v: &[u8]) -> Option<std::net::IpAddr> {
    match v.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
        _ => None,
    }
}

/// An address's bytes as the kernel has them.
pub fn ip_bytes(ip: &std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A link reply: `ifinfomsg` index and flags.
pub fn link_index_flags(body: &[u8]) -> Option<(u32, u32)> {
    Some((u32_of(body.get(4..8)?)?, u32_of(body.get(8..12)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let mut b = Body::new(&ifinfo(7, IFF_UP, IFF_UP));
        b.str(IFLA_IFNAME, "eth0").nest(IFLA_LINKINFO, |b| {
            b.str(IFLA_INFO_KIND, "vxlan").nest(IFLA_INFO_DATA, |b| {
                b.u32(IFLA_VXLAN_ID, 2).be16(IFLA_VXLAN_PORT, 8472).u8(IFLA_VXLAN_LEARNING, 0);
            });
        });
        assert_eq!(b.0.len() % 4, 0);
        assert_eq!(link_index_flags(&b.0), Some((7, IFF_UP)));
        let top: Vec<(u16, &[u8])> = body_attrs(&b.0, IFINFO_LEN).collect();
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].0, str_of(top[0].1).as_str()), (IFLA_IFNAME, "eth0"));
        let info: Vec<(u16, &[u8])> = attrs(top[1].1).collect();
        assert_eq!(str_of(info[0].1), "vxlan");
        let data: Vec<(u16, &[u8])> = attrs(info[1].1).collect();
        assert_eq!(data.len(), 3);
        assert_eq!(u32_of(data[0].1), Some(2));
        assert_eq!(be16_of(data[1].1), Some(8472));
        assert_eq!(data[1].1, &[0x21, 0x18]);
        assert_eq!(data[2].1, &[0]);
    }

    #[test]
    fn malformed_attributes_end_the_walk() {
        assert_eq!(attrs(&[8, 0, 1, 0, 1, 2]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[]).count(), 0);
        assert_eq!(body_attrs(&[0; 4], IFINFO_LEN).count(), 0);
    }
}
