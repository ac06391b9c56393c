//! The per-file scenario test behind `cargo test` (`harness/tests/scenarios.rs`): runs a
//! scenario on this kernel or, batched once per kernel, in the VMs; and the view of a record
//! that the snapshots hold.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::model::needs::share_out;
use crate::model::record::{self, KernelRun, RunRecord, ScenarioRecord, Status};
use crate::model::scenario;
use crate::runner::{cache_dir, expand, project_root, run_scenario};
use crate::sys::topology::{self, RunId};
use crate::target::run_target_with;

/// The per-file test behind `cargo test` (harness/tests/scenarios.rs): runs the scenario on
/// this kernel; if this kernel cannot host it, inside one of the VM kernels of
/// `HOSTDP_TEST_KERNELS` (default `debian-6.1,debian-6.12`), the one [`share_out`] gives it
/// (the others in turn if that one skips it after all). VM runs are batched once per kernel
/// however the tests run (threads of one process, or a process per test under nextest), and the
/// kernels' batches run side by side: the first test that needs a kernel runs, in one VM, its
/// share of the selected scenarios (under nextest of every scenario of the folder) that this
/// kernel cannot host; the others read their record from that batch. Panics with the scenario
/// path, the failing step, expected beside observed, and how to re-run just that one.
pub fn test_scenario(path: &Path, exe: &Path) -> ScenarioRecord {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{}: scenario tests need root (network namespaces, bpf): run `sudo -E cargo test`",
        path.display()
    );
    let sc = scenario::load(path).unwrap_or_else(|e| panic!("{e}"));
    topology::install_signal_cleanup();
    crate::sys::crosscheck::enable();
    let rec = beside_vm_batches(|| run_scenario(&sc, &RunId::new()));
    let mut tried =
        vec![format!("{}: {}", rec.kernel.clone().unwrap_or_default(), rec.reason.clone().unwrap_or_default())];
    let rec = if rec.status == Status::Skipped {
        let dir = path.parent().unwrap_or(Path::new("."));
        let planned = vm_plan(dir).kernel_of(path);
        let mut found = None;
        if let Some(k) = &planned {
            let run = vm_batch(k, dir, exe).unwrap_or_else(|e| {
                panic!("{}: this kernel cannot host it ({}) and the {k} VM failed: {e}", path.display(), tried[0])
            });
            found = ran_in(&run, k, path, &mut tried);
        } else {
            tried.push("no VM kernel planned for it".into());
        }
        // A batch skipped it after all (the kernels' table in the model was wrong for it): the
        // other kernels, each in one batch of all such files once the planned batches have ended.
        for k in test_kernels().iter().filter(|k| Some(*k) != planned.as_ref()) {
            if found.is_some() {
                break;
            }
            match retry_batch(k, dir, exe) {
                Ok(run) => found = ran_in(&run, k, path, &mut tried),
                Err(e) => tried.push(format!("{k}: {e}")),
            }
        }
        found.unwrap_or_else(|| panic!("{}: skipped on every kernel tried: {}", path.display(), tried.join("; ")))
    } else {
        errln!("{}: ran on this kernel ({})", path.display(), rec.kernel.clone().unwrap_or_default());
        rec
    };
    let summary = record::Summary::of(std::iter::once(&rec));
    if summary.passed != 1 {
        let record = RunRecord::single(rec.kernel.clone().unwrap_or_default(), vec![rec.clone()]);
        panic!(
            "{} {}:\n{}\nre-run just this one: sudo -E cargo test --test scenarios -- {} --exact, or hostdp run {}",
            path.display(),
            rec.status.as_str(),
            record::table(&record),
            test_name(path),
            path.display()
        );
    }
    rec
}

/// The record of `path` in `run` (kernel `k`'s batch) if it ran there; otherwise why not, in
/// `tried`.
fn ran_in(run: &KernelRun, k: &str, path: &Path, tried: &mut Vec<String>) -> Option<ScenarioRecord> {
    match run.scenarios.iter().find(|r| Path::new(&r.file) == path) {
        None => tried.push(format!("{k}: not in the batch")),
        Some(r) if r.status == Status::Skipped => {
            tried.push(format!("{k} ({}): {}", run.kernel, r.reason.clone().unwrap_or_default()))
        }
        Some(r) => {
            errln!("{}: ran in the {k} VM (kernel {})", path.display(), run.kernel);
            return Some(r.clone());
        }
    }
    None
}

/// The observed state of a scenario record, per step, without what changes from run to run
/// (program ids and tags, timings, kernel, paths): what the insta snapshots hold.
pub fn snapshot_view(rec: &ScenarioRecord) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = rec
        .steps
        .iter()
        .map(|st| {
            let atts: Vec<serde_json::Value> = st
                .attachments
                .iter()
                .map(|a| {
                    let mut v = serde_json::to_value(a).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("prog_id");
                        o.remove("tag");
                    }
                    v
                })
                .collect();
            let maps: Vec<serde_json::Value> = st
                .policy_maps
                .iter()
                .map(|m| {
                    let entries: Vec<String> = m
                        .entries
                        .iter()
                        .map(|e| {
                            format!("{} {} {} {}/{} {}", e.direction, e.peer, e.identity, e.port, e.protocol, e.verdict)
                        })
                        .collect();
                    serde_json::json!({ "endpoint": m.endpoint, "name": m.name, "entries": entries })
                })
                .collect();
            // Paths in messages are made relative to the checkout, which moves between machines.
            let root = format!("{}/", project_root().display());
            let error = st.error.as_ref().map(|e| e.replace(&root, ""));
            let mut v = serde_json::json!({
                "action": st.action,
                "line": st.line,
                "status": st.status,
                "error": error,
                "devices": st.devices,
                "regenerated": st.regenerated,
                "attachments": atts,
            });
            if !maps.is_empty() {
                v["policy_maps"] = serde_json::Value::Array(maps);
            }
            // Only the programs that saw any of the step's packets: `device hook program seen/dropped`.
            if let Some(t) = &st.traffic {
                let programs: Vec<String> = t
                    .programs
                    .iter()
                    .filter(|p| p.seen > 0 || p.dropped > 0)
                    .map(|p| {
                        let dev = p.endpoint.clone().unwrap_or_else(|| p.device.clone());
                        format!("{dev} {} {} seen {} dropped {}", p.hook.as_str(), p.program, p.seen, p.dropped)
                    })
                    .collect();
                v["traffic"] = serde_json::json!({ "sent": t.sent, "delivered": t.delivered, "programs": programs });
            }
            v
        })
        .collect();
    serde_json::json!({ "name": rec.name, "profile": rec.profile, "status": rec.status, "steps": steps })
}

fn test_kernels() -> Vec<String> {
    crate::paths::get()
        .test_kernels
        .clone()
        .unwrap_or_else(|| "debian-6.1,debian-6.12".into())
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(String::from)
        .collect()
}

/// The scenario files of `dir` (`*.yaml`, `*.yml`), sorted: one test each.
pub fn scenario_files(dir: &Path) -> Vec<PathBuf> {
    expand(&[dir.to_path_buf()])
}

/// The test of a scenario file: `scenario::<file stem>`, stable when files are added.
pub fn test_name(path: &Path) -> String {
    format!("scenario::{}", path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default())
}

/// Whether this kernel cannot host the scenario (so its test runs in a VM batch).
pub fn needs_vm(path: &Path) -> bool {
    let caps = crate::sys::caps::probe(&cache_dir());
    scenario::load(path).map(|sc| !caps.missing_for(&sc).is_empty()).unwrap_or(false)
}

/// Creates `HOSTDP_TEST_LOCAL_DONE`'s file, when set: called once every selected scenario this
/// kernel hosts has run, so that what needs the machine to itself may start while the VM
/// batches go on (their guests touch none of this machine's namespaces, links or bpffs).
pub fn local_scenarios_done() {
    if let Some(p) = &crate::paths::get().test_local_done {
        if let Err(e) = std::fs::write(p, b"") {
            errln!("hostdp: create {}: {e}", p.display());
        }
    }
}

/// The VM batches of this process: the scenarios selected to run, when one process runs them
/// all (`cargo test`); `None` means every scenario of the folder, as under nextest, where each
/// test is a process of its own and all of them must agree on one batch.
static SELECTED: Mutex<Option<Vec<PathBuf>>> = Mutex::new(None);

/// Limits this process's VM batches to `files` (those of the selected tests). Ignored under
/// nextest (see [`SELECTED`]).
pub fn select(files: Vec<PathBuf>) {
    if crate::paths::get().nextest_run_id.is_none() {
        *SELECTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(files);
    }
}

/// Starts the VM batches of `dir` now, side by side, each on a thread of its own, so that they
/// overlap with the tests that run on this kernel; the tests that need them then wait for their
/// record.
pub fn prefetch_vm_batches(dir: PathBuf, exe: PathBuf) {
    for (k, share) in vm_plan(&dir).shares {
        if share.is_empty() {
            continue;
        }
        PREFETCHING.fetch_add(1, Ordering::SeqCst);
        let (dir, exe) = (dir.clone(), exe.clone());
        std::thread::spawn(move || {
            let _ = vm_batch(&k, &dir, &exe);
            PREFETCHING.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// How many of [`prefetch_vm_batches`]'s VM batches are running.
static PREFETCHING: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` (a scenario on this kernel) on this thread at nice 10 while this process's VM
/// batches run: they are the longest chain of the run (all 160 scenario tests, back to back,
/// when the batches ran one after the other: 124 s so, 127-138 s without). The VMs' qemu is
/// started from the prefetching threads, whose priority is left alone (a thread's nice value is
/// its own on Linux, and children inherit their thread's).
fn beside_vm_batches<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(libc::id_t, libc::c_int);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: setpriority on this thread's id; no memory is involved.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, self.0, self.1) };
        }
    }
    if PREFETCHING.load(Ordering::SeqCst) == 0 {
        return f();
    }
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: as above; getpriority returns the nice value (-1 is a valid one, never an error
    // for the calling thread).
    let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    // SAFETY: as above.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, before.max(10)) };
    let _restore = Restore(tid, before);
    f()
}

/// The test kernels' shares of the VM scenarios of one folder, and the vCPUs of each batch.
#[derive(Debug, Clone)]
struct Plan {
    /// Each test kernel, in order, with its files.
    shares: Vec<(String, Vec<PathBuf>)>,
    /// Each batch's vCPUs: `sys::vm::cpus_each` of the batches that have files.
    cpus: u32,
}

impl Plan {
    fn kernel_of(&self, path: &Path) -> Option<String> {
        self.shares.iter().find(|(_, files)| files.iter().any(|f| f == path)).map(|(k, _)| k.clone())
    }
}

/// The plan for folder `dir`'s selected scenarios that this kernel cannot host (every such
/// scenario of the folder under nextest, so that all its processes agree): [`share_out`] over
/// the test kernels. Made once per process and folder.
fn vm_plan(dir: &Path) -> Plan {
    static PLANS: Mutex<Vec<(PathBuf, Plan)>> = Mutex::new(Vec::new());
    let mut plans = PLANS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = plans.iter().find(|(d, _)| d == dir) {
        return p.clone();
    }
    let selected = SELECTED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let caps = crate::sys::caps::probe(&cache_dir());
    // Those this kernel cannot host (as `needs_vm` says), each read once.
    let loaded: Vec<(PathBuf, scenario::Scenario)> = selected
        .unwrap_or_else(|| scenario_files(dir))
        .into_iter()
        .filter(|f| f.parent() == Some(dir))
        .filter_map(|f| scenario::load(&f).ok().map(|sc| (f, sc)))
        .filter(|(_, sc)| !caps.missing_for(sc).is_empty())
        .collect();
    let kernels = test_kernels();
    let names: Vec<&str> = kernels.iter().map(String::as_str).collect();
    let refs: Vec<&scenario::Scenario> = loaded.iter().map(|(_, sc)| sc).collect();
    let mut shares: Vec<(String, Vec<PathBuf>)> = kernels.iter().map(|k| (k.clone(), Vec::new())).collect();
    if !names.is_empty() {
        for ((f, _), k) in loaded.iter().zip(share_out(&refs, &names)) {
            shares[k].1.push(f.clone());
        }
    }
    let busy = shares.iter().filter(|(_, f)| !f.is_empty()).count() as u32;
    let plan = Plan { shares, cpus: crate::sys::vm::cpus_each(busy) };
    plans.push((dir.to_path_buf(), plan.clone()));
    plan
}

/// A batch's result, made once by whichever test asks first; the others wait for it.
type BatchCell = Arc<OnceLock<Result<KernelRun, String>>>;

/// The cell of one batch: kernel, folder, and whether it is the retry.
fn batch_cell(kernel: &str, dir: &Path, retry: bool) -> BatchCell {
    static CELLS: Mutex<Vec<(String, PathBuf, bool, BatchCell)>> = Mutex::new(Vec::new());
    let mut cells = CELLS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((.., c)) = cells.iter().find(|(k, d, r, _)| k == kernel && d == dir && *r == retry) {
        return c.clone();
    }
    let c = BatchCell::default();
    cells.push((kernel.to_string(), dir.to_path_buf(), retry, c.clone()));
    c
}

/// One VM run of `kernel` for its share of the scenarios of folder `dir` (see [`vm_plan`]).
/// Shared by the threads of this process through memory and by the processes of one nextest
/// run through [`shared_batch`]; the kernels' batches run at the same time.
fn vm_batch(kernel: &str, dir: &Path, exe: &Path) -> Result<KernelRun, String> {
    batch_cell(kernel, dir, false)
        .get_or_init(|| {
            let plan = vm_plan(dir);
            let files = plan.shares.iter().find(|(k, _)| k == kernel).map(|(_, f)| f.clone()).unwrap_or_default();
            if files.is_empty() {
                return Err(format!("no scenario of {} is planned for the {kernel} VM", dir.display()));
            }
            shared_batch(kernel, &files, exe, Some(plan.cpus))
        })
        .clone()
}

/// One VM run of `kernel` for the scenarios of `dir` that the batches of other kernels, planned
/// for them, skipped; once those batches have ended.
fn retry_batch(kernel: &str, dir: &Path, exe: &Path) -> Result<KernelRun, String> {
    batch_cell(kernel, dir, true)
        .get_or_init(|| {
            let mut files = Vec::new();
            for (k, share) in vm_plan(dir).shares.iter().filter(|(k, f)| k != kernel && !f.is_empty()) {
                let Ok(run) = vm_batch(k, dir, exe) else { continue };
                files.extend(
                    share
                        .iter()
                        .filter(|f| {
                            run.scenarios.iter().any(|r| Path::new(&r.file) == *f && r.status == Status::Skipped)
                        })
                        .cloned(),
                );
            }
            if files.is_empty() {
                return Err("no other kernel's batch skipped a scenario".into());
            }
            shared_batch(kernel, &files, exe, None)
        })
        .clone()
}

/// Runs `files` in one `kernel` VM, or reads the record of the process of this test run that
/// did: the first takes a file lock in the cache, runs the batch and writes its record; the
/// others wait on the lock, then read it. Keyed by the run (nextest's run id, else this
/// process), the kernel, the scenario files and their contents, and the `hostdp` binary.
fn shared_batch(kernel: &str, files: &[PathBuf], exe: &Path, cpus: Option<u32>) -> Result<KernelRun, String> {
    use nix::fcntl::{Flock, FlockArg};
    let dir = cache_dir().join("test-batches");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let key = batch_key(kernel, files, exe);
    let (lock_path, record) = (dir.join(format!("{key}.lock")), dir.join(format!("{key}.json")));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((file, _)) => {
            progress(&format!("waiting for the {kernel} VM batch that another test process runs"));
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| format!("lock {}: {e}", lock_path.display()))?
        }
    };
    if let Some(r) = std::fs::read_to_string(&record).ok().and_then(|t| serde_json::from_str(&t).ok()) {
        return r;
    }
    remove_old_batches(&dir);
    let dirs: std::collections::BTreeSet<String> =
        files.iter().map(|f| f.parent().unwrap_or(Path::new(".")).display().to_string()).collect();
    let vcpus = cpus.map(|n| format!(" ({n} vCPU)")).unwrap_or_default();
    progress(&format!(
        "running {} scenario(s) of {} in one {kernel} VM{vcpus}",
        files.len(),
        dirs.into_iter().collect::<Vec<_>>().join(", ")
    ));
    let res = with_exe(exe, || run_target_with(kernel, files, 2, None, cpus)).map_err(|e| e.to_string());
    if let Ok(text) = serde_json::to_string(&res) {
        let _ = crate::sys::compile::write_atomic(&record, text.as_bytes());
    }
    drop(file);
    res
}

/// A progress line on standard error, unless `HOSTDP_QUIET` is set.
fn progress(line: &str) {
    if !crate::runner::quiet() {
        errln!("hostdp: {line}");
    }
}

/// Hex sha256 naming a batch: the run, the kernel, every file with its contents, and the
/// binary that runs in the guest (path, size, modification time).
fn batch_key(kernel: &str, files: &[PathBuf], exe: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let run = match &crate::paths::get().nextest_run_id {
        Some(id) => format!("nextest {id}"),
        None => format!("process {}", std::process::id()),
    };
    field(run.as_bytes());
    field(kernel.as_bytes());
    for f in files {
        field(f.display().to_string().as_bytes());
        field(&std::fs::read(f).unwrap_or_default());
    }
    let meta = std::fs::metadata(exe).ok();
    let mtime =
        meta.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    field(format!("{} {:?} {:?}", exe.display(), meta.map(|m| m.len()), mtime).as_bytes());
    hex::encode(h.finalize())
}

/// Records of earlier test runs (older than a day) go; they are never read again.
fn remove_old_batches(dir: &Path) {
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a > day);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `run_target` uses `current_exe()` as the binary to run in the guest; from a test binary that
/// is the test itself, so the test passes the real `hostdp` binary through this.
fn with_exe<R>(exe: &Path, f: impl FnOnce() -> R) -> R {
    crate::target::VM_EXE.with(|c| *c.borrow_mut() = Some(exe.to_path_buf()));
    let r = f();
    crate::target::VM_EXE.with(|c| *c.borrow_mut() = None);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_are_the_file_stems() {
        assert_eq!(
            test_name(Path::new("/x/scenarios/seed-kpr-partial_bond.v1.yaml")),
            "scenario::seed-kpr-partial_bond.v1"
        );
    }

    #[test]
    fn a_batch_key_changes_with_the_kernel_the_files_and_their_contents() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.yaml"), d.path().join("b.yaml"));
        std::fs::write(&a, "name: a\n").unwrap();
        std::fs::write(&b, "name: b\n").unwrap();
        let exe = Path::new("/nonexistent/hostdp");
        let k = batch_key("debian-6.1", std::slice::from_ref(&a), exe);
        assert_eq!(k, batch_key("debian-6.1", std::slice::from_ref(&a), exe));
        assert_ne!(k, batch_key("debian-6.12", std::slice::from_ref(&a), exe));
        assert_ne!(k, batch_key("debian-6.1", &[a.clone(), b], exe));
        std::fs::write(&a, "name: a2\n").unwrap();
        assert_ne!(k, batch_key("debian-6.1", &[a], exe));
    }
}
