//! hostdp: builds a node in network namespaces, runs a Rust port of Cilium's host-datapath
//! loader against it under a given agent configuration, and reads back through netlink and the
//! bpf syscall what is attached where. See ARCHITECTURE.md for the layers and the data flow.
//!
//! Three layers, imports only downwards: the pure model (the `hostdp-model` crate, re-exported
//! as [`model`]), the kernel layer ([`sys`]), and orchestration on top (the agent, the runner,
//! `explain`, `diff` and the command line).

pub use hostdp_model as model;

pub mod sys;

pub mod paths;

pub mod agent;
pub mod cli;
pub mod diff;
pub mod explain;
pub mod runner;
pub mod target;
pub mod testing;
pub mod traffic;
