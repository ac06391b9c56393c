// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stand-in for Cilium's bpf_host.c: the four programs the host datapath attaches to native
 * devices (cil_from_netdev, cil_to_netdev) and to cilium_host / cilium_net (cil_to_host,
 * cil_from_host). They count packets and, on native devices, apply the VLAN filter.
 */
#include "hostdp.h"
/* Generated per agent configuration by the harness's compile step (ENABLE_NODEPORT, ...). */
#include "node_config.h"
/*
 * With the host firewall on, the host endpoint has a policy map, as Cilium's bpf_host then
 * references its POLICY_MAP; without it the object carries no policy map at all.
 */
#ifdef ENABLE_HOST_FIREWALL
#include "policy.h"
#define HOSTDP_HOST_POLICY(skb, egress) hostdp_policy_count(skb, egress)
#else
#define HOSTDP_HOST_POLICY(skb, egress) do { } while (0)
#endif

/*
 * Which features the object was built with, so a read-back of .rodata can tell builds apart.
 * Bit order follows the list below.
 */
volatile const __u32 hostdp_features = 0
#ifdef ENABLE_NODEPORT
	| (1 << 0)
#endif
#ifdef ENABLE_HOST_FIREWALL
	| (1 << 1)
#endif
#ifdef ENABLE_BANDWIDTH_MANAGER
	| (1 << 2)
#endif
#ifdef ENABLE_WIREGUARD
	| (1 << 3)
#endif
#ifdef ENABLE_L2_ANNOUNCEMENTS
	| (1 << 4)
#endif
	;

/* Both native-device programs: count, then the VLAN filter, then the host policy, then pass. */
static __always_inline int hostdp_netdev(struct __sk_buff *skb, __u32 slot, __u8 egress)
{
	int ret;

	hostdp_count_skb(skb, slot);
	ret = hostdp_vlan_filter(skb, slot);
	if (ret >= 0)
		return ret;
	HOSTDP_HOST_POLICY(skb, egress);
	return TC_ACT_OK;
}

SEC("classifier")
int cil_from_netdev(struct __sk_buff *skb)
{
	return hostdp_netdev(skb, SLOT_FROM_NETDEV, 0);
}

SEC("classifier")
int cil_to_netdev(struct __sk_buff *skb)
{
	return hostdp_netdev(skb, SLOT_TO_NETDEV, 1);
}

SEC("classifier")
int cil_from_host(struct __sk_buff *skb)
{
	hostdp_count_skb(skb, SLOT_FROM_HOST);
	HOSTDP_HOST_POLICY(skb, 1);
	return TC_ACT_OK;
}

SEC("classifier")
int cil_to_host(struct __sk_buff *skb)
{
	hostdp_count_skb(skb, SLOT_TO_HOST);
	HOSTDP_HOST_POLICY(skb, 0);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
