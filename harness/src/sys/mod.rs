//! The kernel layer: namespaces, netlink, tc/tcx/XDP, the bpf syscall, clang, the capability
//! probe, topology building, read-back, the leak ledger and VMs. It executes what the model
//! decides and reports what the kernel holds; it decides nothing about Cilium's behaviour.

pub mod attach;
pub mod bpf;
pub mod caps;
pub mod compile;
pub mod crosscheck;
pub mod ebpf_load;
pub mod inspect;
pub mod ledger;
pub mod netlink;
pub mod netns;
pub mod nlmsg;
pub mod policymap;
pub mod tc;
pub mod timing;
pub mod topology;
pub mod traffic;
pub mod vm;
