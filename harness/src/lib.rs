//! hostdp: builds a node in network namespaces, runs a Rust port of Cilium's host-datapath
//! loader against it under a given agent configuration, and reads back through netlink and the
//! bpf syscall what is attached where. See ARCHITECTURE.md for the data flow.

pub mod caps;
pub mod crosscheck;
pub mod diff;
pub mod inspect;
pub mod ledger;
pub mod loader;
pub mod netlink;
pub mod netns;
pub mod paths;
pub mod policy;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod tc;
pub mod timing;
pub mod topology;
pub mod vm;

/// Exit statuses of the `hostdp` binary (the contract's command line table).
pub mod exit {
    /// Everything passed.
    pub const OK: i32 = 0;
    /// A scenario failed or errored.
    pub const FAILED: i32 = 1;
    /// Invalid input: a scenario file, a fixture, a command-line argument.
    pub const INVALID: i32 = 2;
    /// Nothing failed but something was skipped and `--allow-skips` was not given.
    pub const SKIPPED: i32 = 3;
    /// The environment is missing a tool (clang, qemu, virtme-ng, a kernel image).
    pub const ENVIRONMENT: i32 = 4;
    /// Interrupted by SIGINT/SIGTERM; everything created was removed.
    pub const INTERRUPTED: i32 = 130;
}
