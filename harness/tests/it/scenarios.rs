//! One test per scenario file: `sudo -E cargo test --test it -- scenarios::`. A scenario this kernel
//! cannot host runs inside a VM (see `hostdp::testing::test_scenario`). The observed state after
//! every step is kept as an insta snapshot (`harness/tests/snapshots/`), reviewed like code:
//! `cargo insta review` after an intended change.

use std::path::{Path, PathBuf};

use rstest::rstest;

#[rstest]
fn scenario(#[files("../scenarios/*.yaml")] path: PathBuf) {
    let rec = hostdp::testing::test_scenario(&path, Path::new(env!("CARGO_BIN_EXE_hostdp")));
    let name = path.file_stem().expect("a file name").to_string_lossy().into_owned();
    insta::with_settings!({ prepend_module_to_snapshot => false, omit_expression => true, snapshot_path => "../snapshots" }, {
        insta::assert_yaml_snapshot!(name, hostdp::testing::snapshot_view(&rec));
    });
}
