//! hostdp: builds a node in network namespaces, runs a Rust port of Cilium's host-datapath
//! loader against it under a given agent configuration, and reads back through netlink and the
//! bpf syscall what is attached where. See ARCHITECTURE.md for the layers and the data flow.
//!
//! Three layers, imports only downwards: the pure model (the `hostdp-model` crate, re-exported
//! as [`model`]), the kernel layer ([`sys`]), and orchestration on top (the agent, the runner,
//! `explain`, `diff` and the command line).

pub use hostdp_model as model;

// `println!`, `print!`, `eprintln!` and `eprint!` that never panic: when the reader goes away
// (`hostdp check | head`), the rest of the output is dropped and the command goes on to clean
// up and exit with its own status. (Rust ignores SIGPIPE, so a write fails instead; restoring
// the default would kill a `run` before it removes its namespaces.)
macro_rules! outln { ($($t:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stdout(), $($t)*); }} }
macro_rules! out { ($($t:tt)*) => {{ use std::io::Write as _; let _ = write!(std::io::stdout(), $($t)*); }} }
macro_rules! err { ($($t:tt)*) => {{ use std::io::Write as _; let _ = write!(std::io::stderr(), $($t)*); }} }
macro_rules! errln { ($($t:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stderr(), $($t)*); }} }

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
