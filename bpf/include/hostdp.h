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
 * dropped (only the VLAN filter drops).
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
#define HOSTDP_SLOTS		32

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
 * The VLAN id of a tagged frame: from the skb's offloaded tag, or from an in-band 802.1Q /
 * 802.1ad header right after the MAC addresses. 0 for untagged (or priority-tagged) frames.
 */
static __always_inline __u32 hostdp_vlan_id(struct __sk_buff *skb)
{
	__u16 hdr[2];

	if (skb->vlan_present)
		return skb->vlan_tci & 0x0fff;
	if (bpf_skb_load_bytes(skb, 2 * ETH_ALEN, hdr, sizeof(hdr)) < 0)
		return 0;
	if (hdr[0] != bpf_htons(ETH_P_8021Q) && hdr[0] != bpf_htons(ETH_P_8021AD))
		return 0;
	return bpf_ntohs(hdr[1]) & 0x0fff;
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
	return TC_ACT_SHOT;
}

#endif /* HOSTDP_H */
