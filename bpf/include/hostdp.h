/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * hostdp: what every test program shares.
 *
 * The programs stand in for Cilium's: they carry the same ELF function names, so the kernel
 * program names match what Cilium attaches, but otherwise only count packets and, where
 * Cilium does, apply the VLAN filter. Per-device settings are `volatile const` globals the
 * loader overrides at load time (aya `EbpfLoader::override_global`), like Cilium's ELF
 * substitution of NODE_MAC / SECLABEL / NATIVE_DEV_IFINDEX.
 */
#ifndef HOSTDP_H
#define HOSTDP_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/*
 * Slots of the counter map, one per program. Keep in step with `inspect::counter_slot`.
 * Slot N counts every packet the program saw; slot HOSTDP_DROP_BASE + N counts the packets it
 * dropped (only the VLAN filter drops). The same two again from HOSTDP_MARKED_BASE count only
 * the packets of a `traffic` step (see hostdp_marked), so ARP, neighbour discovery and any
 * other traffic do not move them.
 */
#define SLOT_FROM_NETDEV	0
#define SLOT_TO_NETDEV		1
#define SLOT_FROM_HOST		2
#define SLOT_TO_HOST		3
#define SLOT_XDP_ENTRY		4
#define SLOT_FROM_CONTAINER	5
#define SLOT_TO_CONTAINER	6
#define SLOT_FOREIGN_TC		7
#define SLOT_FOREIGN_XDP	8
#define SLOT_FROM_OVERLAY	9
#define SLOT_TO_OVERLAY		10
#define SLOT_TO_WIREGUARD	11
#define SLOT_FROM_WIREGUARD	12
#define HOSTDP_DROP_BASE	16
#define HOSTDP_MARKED_BASE	32
#define HOSTDP_SLOTS		64

/*
 * A `traffic` step's packets carry this IPv4 TOS / IPv6 traffic class (DSCP 37, unassigned,
 * ECN bits clear). Of TCP, only the connection's SYN counts, so that one attempt is one packet.
 * Keep in step with `sys::traffic::MARK_TOS`.
 */
#define HOSTDP_MARK_TOS		0x94

/* At most this many VLAN ids are allowed per device (v1.14.4 refuses more). */
#define HOSTDP_MAX_VLANS	5

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HOSTDP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} hostdp_counters SEC(".maps");

/* Per-device configuration, overridden by the loader. Zero means "not set". */
volatile const __u32 hostdp_ifindex = 0;
volatile const __u8 hostdp_mac[ETH_ALEN] = {0};
volatile const __u32 hostdp_seclabel = 0;
/* Non-zero: every VLAN id passes (`--vlan-bpf-bypass=0`). */
volatile const __u32 hostdp_vlan_allow_all = 0;
/* Allowed VLAN ids on hostdp_ifindex; 0 marks an unused entry. */
volatile const __u16 hostdp_vlan_ids[HOSTDP_MAX_VLANS] = {0};

static __always_inline void hostdp_count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&hostdp_counters, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

#define HOSTDP_IPPROTO_TCP	6
#define HOSTDP_TCP_SYN		0x02
#define HOSTDP_TCP_ACK		0x10

/*
 * Whether the IP packet whose first bytes are `ip` (at least 48 of them; `l3` is its
 * EtherType) belongs to a `traffic` step: the mark in TOS / traffic class, and for TCP a SYN
 * without ACK. IPv4 options move the TCP header: the IHL is honoured up to 20 + 20 bytes.
 */
static __always_inline int hostdp_marked_ip(__u16 l3, const __u8 *ip)
{
	if (l3 == bpf_htons(ETH_P_IP)) {
		__u32 ihl = (ip[0] & 0x0f) * 4;

		if ((ip[0] >> 4) != 4 || (ip[1] & 0xfc) != HOSTDP_MARK_TOS)
			return 0;
		if (ip[9] != HOSTDP_IPPROTO_TCP)
			return 1;
		if (ihl < 20 || ihl > 40)
			return 0;
		/* Flags are byte 13 of the TCP header. */
		return (ip[ihl + 13] & (HOSTDP_TCP_SYN | HOSTDP_TCP_ACK)) == HOSTDP_TCP_SYN;
	}
	if (l3 == bpf_htons(ETH_P_IPV6)) {
		__u8 tclass = ((ip[0] & 0x0f) << 4) | (ip[1] >> 4);

		if ((ip[0] >> 4) != 6 || (tclass & 0xfc) != HOSTDP_MARK_TOS)
			return 0;
		if (ip[6] != HOSTDP_IPPROTO_TCP)
			return 1;
		return (ip[40 + 13] & (HOSTDP_TCP_SYN | HOSTDP_TCP_ACK)) == HOSTDP_TCP_SYN;
	}
	return 0;
}

#define HOSTDP_PEEK		64

/*
 * Whether an skb is a `traffic` step's packet. The network header follows the Ethernet header
 * (an offloaded VLAN tag is not in the data), or an in-band 802.1Q / 802.1ad tag. On devices
 * without an Ethernet header (cilium_wg0, tun) nothing counts as marked.
 */
static __always_inline int hostdp_marked(struct __sk_buff *skb)
{
	__u8 buf[HOSTDP_PEEK] = {0};
	__u16 l3;
	__u32 off = ETH_HLEN;

	if (bpf_skb_load_bytes(skb, 2 * ETH_ALEN, &l3, sizeof(l3)) < 0)
		return 0;
	if (l3 == bpf_htons(ETH_P_8021Q) || l3 == bpf_htons(ETH_P_8021AD)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 2, &l3, sizeof(l3)) < 0)
			return 0;
		off += 4;
	}
	/* Short packets (a UDP datagram with a few bytes) load what is there. */
	if (bpf_skb_load_bytes(skb, off, buf, HOSTDP_PEEK) < 0 &&
	    bpf_skb_load_bytes(skb, off, buf, 40) < 0 &&
	    bpf_skb_load_bytes(skb, off, buf, 20) < 0)
		return 0;
	return hostdp_marked_ip(l3, buf);
}

/* Counts an skb: every packet in `slot`, a marked one in the marked slot too. */
static __always_inline void hostdp_count_skb(struct __sk_buff *skb, __u32 slot)
{
	hostdp_count(slot);
	if (hostdp_marked(skb))
		hostdp_count(HOSTDP_MARKED_BASE + slot);
}

/* The same for an XDP frame (no offloaded tags there: a tag is in-band). */
static __always_inline void hostdp_count_xdp(struct xdp_md *ctx, __u32 slot)
{
	__u8 buf[HOSTDP_PEEK] = {0};
	__u32 off = ETH_HLEN;
	__u16 l3;

	hostdp_count(slot);
	if (bpf_xdp_load_bytes(ctx, 2 * ETH_ALEN, &l3, sizeof(l3)) < 0)
		return;
	if (l3 == bpf_htons(ETH_P_8021Q) || l3 == bpf_htons(ETH_P_8021AD)) {
		if (bpf_xdp_load_bytes(ctx, ETH_HLEN + 2, &l3, sizeof(l3)) < 0)
			return;
		off += 4;
	}
	if (bpf_xdp_load_bytes(ctx, off, buf, HOSTDP_PEEK) < 0 &&
	    bpf_xdp_load_bytes(ctx, off, buf, 40) < 0 &&
	    bpf_xdp_load_bytes(ctx, off, buf, 20) < 0)
		return;
	if (hostdp_marked_ip(l3, buf))
		hostdp_count(HOSTDP_MARKED_BASE + slot);
}

/* v1.14.4 `allow_vlan(ifindex, vlan_id)`, backed by the per-device globals. */
static __always_inline int hostdp_allow_vlan(__u32 ifindex, __u32 vlan_id)
{
	int i;

	if (hostdp_vlan_allow_all)
		return 1;
	if (ifindex != hostdp_ifindex)
		return 0;
#pragma unroll
	for (i = 0; i < HOSTDP_MAX_VLANS; i++) {
		__u16 id = hostdp_vlan_ids[i];

		if (id != 0 && id == vlan_id)
			return 1;
	}
	return 0;
}

/*
 * The VLAN id of a tagged frame as upstream reads it: the skb's offloaded tag only
 * (`ctx->vlan_present`, `ctx->vlan_tci & 0xfff`; v1.14.4 bpf/bpf_host.c cil_from_netdev lines
 * 1319-1332 and cil_to_netdev lines 1395-1406, unchanged up to v1.19.4). On ingress the stack
 * has moved an in-band tag there before tc runs; on egress a VLAN device's tag is offloaded to
 * a parent that offers tag insertion (veth, bond). 0 for untagged or priority-tagged frames.
 */
static __always_inline __u32 hostdp_vlan_id(struct __sk_buff *skb)
{
	if (skb->vlan_present)
		return skb->vlan_tci & 0x0fff;
	return 0;
}

/*
 * The start of cil_from_netdev and cil_to_netdev (v1.14.4): a frame tagged with a non-zero
 * VLAN id goes to the stack untouched if the id is allowed here and is dropped otherwise
 * (DROP_VLAN_FILTERED). Returns -1 for untagged frames, which continue through the program.
 */
static __always_inline int hostdp_vlan_filter(struct __sk_buff *skb, __u32 slot)
{
	__u32 vlan_id = hostdp_vlan_id(skb);

	if (vlan_id == 0)
		return -1;
	if (hostdp_allow_vlan(skb->ifindex, vlan_id))
		return TC_ACT_OK;
	hostdp_count(HOSTDP_DROP_BASE + slot);
	if (hostdp_marked(skb))
		hostdp_count(HOSTDP_MARKED_BASE + HOSTDP_DROP_BASE + slot);
	return TC_ACT_SHOT;
}

#endif /* HOSTDP_H */
