// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stand-in for Cilium's bpf_overlay.c: the two programs the loader attaches to the
 * encapsulation device (cilium_vxlan or cilium_geneve), cil_from_overlay on ingress and
 * cil_to_overlay on egress. They count packets and let everything pass.
 */
#include "hostdp.h"
/* Generated per agent configuration by the harness's compile step (TUNNEL_MODE, ...). */
#include "node_config.h"

SEC("classifier")
int cil_from_overlay(struct __sk_buff *skb)
{
	hostdp_count_skb(skb, SLOT_FROM_OVERLAY);
	return TC_ACT_OK;
}

SEC("classifier")
int cil_to_overlay(struct __sk_buff *skb)
{
	hostdp_count_skb(skb, SLOT_TO_OVERLAY);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
