// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Programs of "another tool", not Cilium: scenarios attach them to see whether the agent
 * removes or keeps them. Both let everything pass.
 */
#include "hostdp.h"

SEC("classifier")
int foreign_tc(struct __sk_buff *skb)
{
	hostdp_count_skb(skb, SLOT_FOREIGN_TC);
	return TC_ACT_OK;
}

SEC("xdp")
int foreign_xdp(struct xdp_md *ctx)
{
	hostdp_count_xdp(ctx, SLOT_FOREIGN_XDP);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
