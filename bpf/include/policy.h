/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * hostdp: the per-endpoint policy map, keyed like Cilium v1.14's policy map (struct policy_key /
 * struct policy_entry in bpf/lib/maps.h). The harness writes the entries the applied policies
 * give an endpoint (harness/src/loader/policymap.rs) and pins the map per endpoint in the node's
 * bpffs (tc/globals/cilium_policy_<endpoint>). The programs only look the map up and count the
 * verdict on the entry they hit; they enforce nothing. Keep in step with `PolicyKey` /
 * `PolicyValue` in policymap.rs.
 */
#ifndef HOSTDP_POLICY_H
#define HOSTDP_POLICY_H

#include <linux/ip.h>
#include <linux/in.h>

struct hostdp_policy_key {
	__u32 sec_label;	/* peer identity; 0 = any peer */
	__u16 dport;		/* network byte order; 0 = any port */
	__u8 protocol;		/* IP protocol; 0 = any */
	__u8 egress;		/* 1 egress, 0 ingress */
};

struct hostdp_policy_entry {
	__u16 proxy_port;	/* network byte order; 0 = no proxy */
	__u8 deny;		/* 1 deny, 0 allow */
	__u8 auth_type;
	__u32 pad;
	__u64 packets;		/* packets whose lookup hit this entry */
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct hostdp_policy_key);
	__type(value, struct hostdp_policy_entry);
} hostdp_policy SEC(".maps");

/*
 * Looks up the packet's (any peer, dport or ICMP type, protocol, direction) entry, then the
 * (any peer, any port, any protocol) one, and counts the packet on the first hit. The peer identity would come
 * from the ipcache, which the harness does not model. IPv4 only.
 */
static __always_inline void hostdp_policy_count(struct __sk_buff *skb, __u8 egress)
{
	struct hostdp_policy_key key = { .egress = egress };
	struct hostdp_policy_entry *e;
	struct iphdr ip;
	__u16 ports[2];

	if (skb->protocol == bpf_htons(ETH_P_IP) &&
	    bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) == 0 && ip.ihl >= 5 &&
	    (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP || ip.protocol == IPPROTO_ICMP) &&
	    bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4, ports, sizeof(ports)) == 0) {
		key.protocol = ip.protocol;
		/* ICMP: the type sits in the port field, as in Cilium's policy keys. */
		if (ip.protocol == IPPROTO_ICMP)
			key.dport = bpf_htons(((__u8 *)ports)[0]);
		else
			key.dport = ports[1];
		e = bpf_map_lookup_elem(&hostdp_policy, &key);
		if (e)
			goto hit;
		key.protocol = 0;
		key.dport = 0;
	}
	e = bpf_map_lookup_elem(&hostdp_policy, &key);
	if (!e)
		return;
hit:
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, skb->len);
}

#endif /* HOSTDP_POLICY_H */
