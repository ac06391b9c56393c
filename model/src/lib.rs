//! hostdp's pure model: everything that decides, and nothing that touches a kernel.
//!
//! The scenario format and its validation ([`scenario`]), policy fixtures and selection
//! ([`policy`]), the agent configuration and start-up rules ([`config`], [`devices`]), the
//! datapath plan ([`datapath`]), the upstream profiles as a table of named changes
//! ([`profile`]), the vocabulary of what is observed on a node ([`observed`]), what a scenario
//! needs of the kernel ([`needs`]), the result record and expectation check ([`record`]) and its
//! reports for CI systems ([`report`]), the split of the run matrix over CI runners
//! ([`partition`]) and the exit statuses ([`exit`]).
//! The `hostdp` crate executes plans and reads the kernel back; this crate has none of aya,
//! tokio, netlink, nix or libc among its dependencies.

pub mod config;
pub mod datapath;
pub mod devices;
pub mod exit;
pub mod needs;
pub mod observed;
pub mod partition;
pub mod policy;
pub mod profile;
pub mod record;
pub mod report;
pub mod scenario;
pub mod startup;
pub mod suggest;
pub mod verdict;
pub mod why;
