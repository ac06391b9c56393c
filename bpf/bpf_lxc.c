// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stand-in for Cilium's bpf_lxc.c: the programs on a pod's lxc device. The kernel truncates
 * their names to 15 bytes (cil_from_contai, cil_to_containe), as it does Cilium's.
 */
#include "hostdp.h"
#include "node_config.h"
#include "policy.h"

SEC("classifier")
int cil_from_container(struct __sk_buff *skb)
{
	hostdp_count_skb(skb, SLOT_FROM_CONTAINER);
	/* From the pod: its egress policy. */
	hostdp_policy_count(skb, 1);
	return TC_ACT_OK;
}

SEC("classifier")
int cil_to_container(struct __sk_buff *skb)
{
	hostdp_count_skb(skb, SLOT_TO_CONTAINER);
	/* To the pod: its ingress policy. */
	hostdp_policy_count(skb, 0);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
