// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stand-in for Cilium's bpf_wireguard.c (new in v1.16): cil_to_wireguard, which the loader
 * attaches to cilium_wg0's egress for NodePort rev-DNAT of replies leaving through the tunnel,
 * and (from v1.18) cil_from_wireguard, which replaces bpf_host's cil_from_netdev on
 * cilium_wg0's ingress to mark and deliver decrypted traffic. Both count packets and let
 * everything pass.
 */
#include "hostdp.h"
/* Generated per agent configuration by the harness's compile step. */
#include "node_config.h"

SEC("classifier")
int cil_to_wireguard(struct __sk_buff *skb)
{
	hostdp_count_skb(skb, SLOT_TO_WIREGUARD);
	return TC_ACT_OK;
}

SEC("classifier")
int cil_from_wireguard(struct __sk_buff *skb)
{
	hostdp_count(SLOT_FROM_WIREGUARD);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
