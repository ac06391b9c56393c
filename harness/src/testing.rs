//! The per-file scenario test behind `cargo test` (`harness/tests/it/scenarios.rs`): runs a
//! scenario on this kernel or, batched once per kernel, in the VMs; and the view of a record
//! that the snapshots hold.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::model::record::{self, KernelRun, RunRecord, ScenarioRecord, Status};
use crate::model::scenario;
use crate::runner::{cache_dir, expand, project_root, run_scenario};
use crate::sys::topology::{self, RunId};
use crate::target::run_target;

/// The per-file test behind `cargo test` (harness/tests/scenarios.rs): runs the scenario on
/// this kernel; if this kernel cannot host it, inside the VM kernels of `HOSTDP_TEST_KERNELS`
/// (default `debian-6.1,debian-6.12`) in turn until one can. VM runs are batched: the first test
/// that needs a kernel runs, in one VM, every scenario of the folder that this kernel cannot
/// host; the other tests read their record from that batch. Panics with the scenario path, the
/// failing step, expected beside observed, and how to re-run just that one.
pub fn test_scenario(path: &Path, exe: &Path) -> ScenarioRecord {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{}: scenario tests need root (network namespaces, bpf): run `sudo -E cargo test`",
        path.display()
    );
    let sc = scenario::load(path).unwrap_or_else(|e| panic!("{e}"));
    topology::install_signal_cleanup();
    crate::sys::crosscheck::enable();
    let rec = run_scenario(&sc, &RunId::new());
    let mut tried =
        vec![format!("{}: {}", rec.kernel.clone().unwrap_or_default(), rec.reason.clone().unwrap_or_default())];
    let rec = if rec.status == Status::Skipped {
        let mut found = None;
        for k in test_kernels() {
            let batch = vm_batch(&k, path, exe);
            let run = match batch {
                Ok(run) => run,
                Err(e) => {
                    panic!("{}: this kernel cannot host it ({}) and the {k} VM failed: {e}", path.display(), tried[0])
                }
            };
            let Some(r) = run.scenarios.iter().find(|r| Path::new(&r.file) == path) else {
                tried.push(format!("{k}: not in the batch"));
                continue;
            };
            if r.status == Status::Skipped {
                tried.push(format!("{k} ({}): {}", run.kernel, r.reason.clone().unwrap_or_default()));
                continue;
            }
            eprintln!("{}: ran in the {k} VM (kernel {})", path.display(), run.kernel);
            found = Some(r.clone());
            break;
        }
        found.unwrap_or_else(|| panic!("{}: skipped on every kernel tried: {}", path.display(), tried.join("; ")))
    } else {
        eprintln!("{}: ran on this kernel ({})", path.display(), rec.kernel.clone().unwrap_or_default());
        rec
    };
    let summary = record::Summary::of(std::iter::once(&rec));
    let record = RunRecord::single(rec.kernel.clone().unwrap_or_default(), vec![rec.clone()]);
    eprintln!("{}", record::table(&record));
    if summary.passed != 1 {
        panic!(
            "{} {}: see above (expected beside observed); re-run just this one: sudo -E cargo test --test scenarios -- {} , or hostdp run {}",
            path.display(),
            rec.status.as_str(),
            test_name(path),
            path.display()
        );
    }
    rec
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

/// A VM batch already run: kernel, scenario folder, and its result.
type Batch = (String, PathBuf, Result<KernelRun, String>);

/// One VM run per kernel for all the scenarios of `path`'s folder that need it: those this
/// kernel cannot host and (for a later kernel) that every earlier kernel skipped.
fn vm_batch(kernel: &str, path: &Path, exe: &Path) -> Result<KernelRun, String> {
    static BATCHES: Mutex<Vec<Batch>> = Mutex::new(Vec::new());
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut batches = BATCHES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, r)) = batches.iter().find(|(k, d, _)| k == kernel && *d == dir) {
        return r.clone();
    }
    let caps = crate::sys::caps::probe(&cache_dir());
    let mut files: Vec<PathBuf> = expand(std::slice::from_ref(&dir))
        .into_iter()
        .filter(|f| scenario::load(f).map(|sc| !caps.missing_for(&sc).is_empty()).unwrap_or(false))
        .collect();
    for k in test_kernels().iter().take_while(|k| k.as_str() != kernel) {
        if let Some((_, _, Ok(run))) = batches.iter().find(|(bk, d, _)| bk == k && *d == dir) {
            files.retain(|f| run.scenarios.iter().any(|r| Path::new(&r.file) == f && r.status == Status::Skipped));
        }
    }
    eprintln!("hostdp: running {} scenario(s) of {} in one {kernel} VM", files.len(), dir.display());
    let res = with_exe(exe, || run_target(kernel, &files, 2)).map_err(|e| e.to_string());
    batches.push((kernel.to_string(), dir, res.clone()));
    res
}
/// A filter that selects this file's test (rstest names it `scenario::path_NN__UP_scenarios_<stem>_yaml`).
fn test_name(path: &Path) -> String {
    format!("_{}_yaml", path.file_stem().map(|s| s.to_string_lossy().replace(['-', '.'], "_")).unwrap_or_default())
}

/// `run_target` uses `current_exe()` as the binary to run in the guest; from a test binary that
/// is the test itself, so the test passes the real `hostdp` binary through this.
fn with_exe<R>(exe: &Path, f: impl FnOnce() -> R) -> R {
    crate::target::VM_EXE.with(|c| *c.borrow_mut() = Some(exe.to_path_buf()));
    let r = f();
    crate::target::VM_EXE.with(|c| *c.borrow_mut() = None);
    r
}
