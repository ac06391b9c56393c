// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Stand-in for Cilium's bpf_xdp.c: cil_xdp_entry counts and passes every frame. */
#include "hostdp.h"
#include "node_config.h"

SEC("xdp")
int cil_xdp_entry(struct xdp_md *ctx)
{
	hostdp_count_xdp(ctx, SLOT_XDP_ENTRY);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
