//! One test per scenario file: `sudo -E cargo test --test scenarios`. A scenario this kernel
//! cannot host runs inside a VM (see `hostdp::runner::test_scenario`).

use std::path::{Path, PathBuf};

use rstest::rstest;

#[rstest]
fn scenario(#[files("../scenarios/*.yaml")] path: PathBuf) {
    hostdp::runner::test_scenario(&path, Path::new(env!("CARGO_BIN_EXE_hostdp")));
}
