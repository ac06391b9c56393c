//! The loader: a Rust port of what Cilium's agent does to the host's links.
//! configuration → derived settings → device selection → datapath plan → compile → attach.

pub mod agent;
pub mod attach;
pub mod compile;
pub mod config;
pub mod datapath;
pub mod devices;
pub mod profile;
