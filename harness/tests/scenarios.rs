//! One test per scenario file, named after it (`scenario::<file stem>`): the files of
//! `scenarios/` are listed when this binary runs (a custom test harness, `harness = false`), so a
//! new file is a new test on the next `cargo test` without touching any code, and names do not
//! shift when files are added. Works under `cargo test` and `cargo nextest run` alike:
//! `sudo -E cargo test --test scenarios -- seed_kpr_partial` runs the files whose name has that.
//!
//! A scenario this kernel cannot host runs inside a VM, batched once per kernel (see
//! `hostdp::testing::test_scenario`). The observed state after every step is kept as an insta
//! snapshot (`harness/tests/snapshots/<file stem>.snap`), reviewed like code: `cargo insta
//! review` after an intended change.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let dir = dir.canonicalize().unwrap_or(dir);
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_hostdp"));
    // The files this kernel hosts first: a VM test waits for its kernel's batch on a test
    // thread, and the batch runs meanwhile anyway (started below), so waiting last keeps the
    // threads for the local tests.
    let mut files: Vec<(PathBuf, bool)> =
        hostdp::testing::scenario_files(&dir).into_iter().map(|f| (f.clone(), hostdp::testing::needs_vm(&f))).collect();
    files.sort_by_key(|(_, vm)| *vm);
    let selected: Vec<PathBuf> = files
        .iter()
        .filter(|(f, _)| {
            let t = Trial::test(hostdp::testing::test_name(f), || Ok(()));
            !args.is_filtered_out(&t) && !args.is_ignored(&t)
        })
        .map(|(f, _)| f.clone())
        .collect();
    // The selected files this kernel hosts: once the last of them has run, the runner is told
    // (HOSTDP_TEST_LOCAL_DONE) while the VM batches go on.
    let local = |f: &PathBuf, vm: bool| !vm && !args.list && selected.contains(f);
    let local_left = Arc::new(AtomicUsize::new(files.iter().filter(|(f, vm)| local(f, *vm)).count()));
    if !args.list && local_left.load(Ordering::SeqCst) == 0 {
        hostdp::testing::local_scenarios_done();
    }
    let trials: Vec<Trial> = files
        .iter()
        .map(|(f, vm)| {
            // Only the tests that run count down (a filtered-out one is dropped unrun).
            let left = local(f, *vm).then(|| LocalLeft(local_left.clone()));
            let (f, exe) = (f.clone(), exe.clone());
            Trial::test(hostdp::testing::test_name(&f), move || {
                let _left = left;
                check(&f, &exe)
            })
        })
        .collect();
    // The VM batches start at once, beside the tests that run on this kernel.
    let prefetch =
        !args.list && nix::unistd::geteuid().is_root() && files.iter().any(|(f, vm)| *vm && selected.contains(f));
    hostdp::testing::select(selected);
    if prefetch {
        hostdp::testing::prefetch_vm_batches(dir, exe);
    }
    libtest_mimic::run(&args, trials).exit();
}

/// Counts down the selected files this kernel hosts as their tests end (pass, fail or panic).
struct LocalLeft(Arc<AtomicUsize>);

impl Drop for LocalLeft {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            hostdp::testing::local_scenarios_done();
        }
    }
}

/// Runs one scenario file and compares what it observed with its snapshot.
fn check(path: &Path, exe: &Path) -> Result<(), Failed> {
    let rec = hostdp::testing::test_scenario(path, exe);
    let name = path.file_stem().expect("a file name").to_string_lossy().into_owned();
    let snap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.snap"));
    let existed = snap.exists();
    let compared = std::panic::catch_unwind(|| {
        insta::with_settings!({ prepend_module_to_snapshot => false, omit_expression => true, snapshot_path => "snapshots" }, {
            insta::assert_yaml_snapshot!(name.as_str(), hostdp::testing::snapshot_view(&rec));
        });
    });
    match compared {
        Ok(()) => Ok(()),
        Err(_) if !existed => Err(format!(
            "{}: no snapshot {} yet. Create it with `INSTA_UPDATE=always cargo test --test scenarios -- {} --exact` \
             (or, outside CI, accept the .snap.new a run writes with `cargo insta accept`), then read it: it is \
             what the scenario must observe from now on (see scenarios/README.md)",
            path.display(),
            snap.display(),
            hostdp::testing::test_name(path)
        )
        .into()),
        Err(_) => Err(format!(
            "{}: the observed state differs from {} (the diff is above): `cargo insta review` if the change is intended",
            path.display(),
            snap.display()
        )
        .into()),
    }
}
