//! Exit statuses of the `hostdp` binary (the command line's contract).

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
/// `hostdp explain`: the agent would refuse to start with this configuration on this node.
pub const REFUSED: i32 = 5;
/// Interrupted by SIGINT/SIGTERM; everything created was removed.
pub const INTERRUPTED: i32 = 130;
