//! The integration tests, one binary with a module per topic (one link step instead of nine).
//! `reliability.rs` stays a binary of its own: it compares ledgers of the whole machine, which
//! tests running beside it in the same process would disturb.
//!
//! Most need root (network namespaces, bpf) and say "skipping: needs root" without it. The
//! scenario tests are a binary of their own: `sudo -E cargo test --test scenarios`.

mod support;

mod attach;
mod failures;
mod fuzz;
mod invalid_corpus;
mod policy_examples;
mod policy_maps;
mod profiles;
mod reports;
mod topology;
mod vm;
