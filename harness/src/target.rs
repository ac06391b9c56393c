//! Where a batch of scenarios runs: this kernel, or a VM booted with another one (the same
//! binary runs in the guest and hands its record back through a shared folder).

use std::path::PathBuf;
use std::time::Instant;

use crate::model::profile::Profile;
use crate::model::record::{self, KernelRun, RunRecord};
use crate::runner::{cache_dir, crd_files, project_root, run_local_as};
use crate::sys::vm;

thread_local! {
    /// The binary a VM runs, when it is not this process's own (the scenario tests run from
    /// the test binary and hand the `hostdp` binary here).
    pub(crate) static VM_EXE: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// How long a VM batch may take per scenario, beyond [`vm::DEFAULT_TIMEOUT`] for the call.
const PER_SCENARIO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Why a run on a target could not produce records.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parse the guest's record: {0}")]
    Record(#[source] serde_json::Error),
    #[error("the guest wrote no result record (exit status {status}); its last output:\n{tail}")]
    NoResult { status: i32, tail: String },
}

fn io(what: String, source: std::io::Error) -> TargetError {
    TargetError::Io { what, source }
}

impl TargetError {
    /// A missing tool or kernel (exit status 4), as opposed to a failed run.
    pub fn is_environment(&self) -> bool {
        matches!(
            self,
            TargetError::Vm(
                vm::VmError::QemuMissing
                    | vm::VmError::VngMissing { .. }
                    | vm::VmError::KernelNotFetched { .. }
                    | vm::VmError::UnknownKernel(_)
                    | vm::VmError::KernelImage { .. }
            )
        )
    }
}

/// Runs files on one target: `host` (this kernel) or a VM kernel.
pub fn run_target(target: &str, files: &[PathBuf], jobs: usize) -> Result<KernelRun, TargetError> {
    run_target_with(target, files, jobs, None, None)
}

/// Whether a target names this machine's kernel (`host`, `local`) rather than a VM kernel.
pub fn is_host(target: &str) -> bool {
    target == "host" || target == "local"
}

/// [`run_target`], every file under `profile` when one is given, and the guest's vCPUs given
/// (`None`: [`vm::VmOptions`]'s default) for batches that run side by side and share this
/// machine's CPUs.
pub fn run_target_with(
    target: &str,
    files: &[PathBuf],
    jobs: usize,
    profile: Option<Profile>,
    cpus: Option<u32>,
) -> Result<KernelRun, TargetError> {
    let t0 = Instant::now();
    if is_host(target) {
        let scenarios = run_local_as(files, jobs, profile);
        let kernel = crate::sys::caps::probe(&cache_dir()).kernel.clone();
        let summary = record::Summary::of(&scenarios);
        return Ok(KernelRun {
            target: target.into(),
            kernel,
            scenarios,
            summary,
            millis: t0.elapsed().as_millis() as u64,
        });
    }
    let kernel = vm::KernelRef::resolve(target)?;
    let results = tempfile::Builder::new()
        .prefix(&vm::scratch_prefix())
        .tempdir_in(vm_scratch_dir())
        .map_err(|e| io("make a scratch folder for the guest".into(), e))?;
    let _scratch = vm::Scratch::track(results.path());
    let out_file = results.path().join("record.json");
    let built = match VM_EXE.with(|c| c.borrow().clone()) {
        Some(e) => e,
        None => std::env::current_exe().map_err(|e| io("find this executable".into(), e))?,
    };
    // The guest runs a copy: a rebuild of the binary while the VM boots must not pull it away.
    let exe = results.path().join("hostdp");
    vm::copy_program_for_guest(&built, &exe).map_err(|e| io(format!("copy {} for the guest", built.display()), e))?;
    let mut cmd: Vec<String> = vec![
        exe.display().to_string(),
        "run".into(),
        "--format".into(),
        "json".into(),
        "--allow-skips".into(),
        "--output".into(),
        out_file.display().to_string(),
    ];
    if let Some(p) = profile {
        cmd.push("--profile".into());
        cmd.push(p.as_str().into());
    }
    // `--crd` files reach the guest through the folder it shares read-write (the host's /tmp,
    // say, is not the guest's).
    for (i, crd) in crd_files().iter().enumerate() {
        let name = crd.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let copy = results.path().join(format!("crd-{i}-{name}"));
        std::fs::copy(crd, &copy).map_err(|e| io(format!("copy {} for the guest", crd.display()), e))?;
        cmd.push("--crd".into());
        cmd.push(copy.display().to_string());
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| project_root());
    for f in files {
        let abs = if f.is_absolute() { f.clone() } else { cwd.join(f) };
        cmd.push(abs.display().to_string());
    }
    let cache = cache_dir();
    let _ = std::fs::create_dir_all(&cache);
    let mut opts = vm::VmOptions { exe_in_tmpfs: true, ..vm::VmOptions::default() };
    if let Some(n) = cpus {
        opts.cpus = n;
    }
    // A batch's limit grows with it: on a loaded machine a TCG guest takes minutes per scenario
    // (HOSTDP_VM_TIMEOUT, when set, is the limit as given).
    if crate::paths::get().vm_timeout_secs.is_none() {
        opts.timeout = opts.timeout.max(PER_SCENARIO_TIMEOUT * files.len() as u32);
    }
    opts.env.push(("HOSTDP_CACHE_DIR".into(), cache.display().to_string()));
    // The guest's progress lines reach the host's terminal through its standard error.
    if crate::runner::quiet() {
        opts.env.push(("HOSTDP_QUIET".into(), "1".into()));
    } else {
        opts.progress = true;
    }
    // A throwaway guest may load modules on demand (the capability probe then finds them).
    opts.env.push(("HOSTDP_ALLOW_MODPROBE".into(), "1".into()));
    if crate::sys::crosscheck::enabled() {
        opts.env.push(("HOSTDP_CROSSCHECK".into(), "1".into()));
        // The cross-check starts tc and bpftool at every step: from a tmpfs they start faster.
        opts.tools = vm::tool_closure(crate::sys::crosscheck::TOOLS);
        if !opts.tools.is_empty() {
            opts.env.push(("HOSTDP_TOOL_DIR".into(), vm::GUEST_TOOLS.into()));
        }
    }
    // The guest's templates are compiled here, at native speed, into the shared cache.
    let requests = results.path().join("compile");
    std::fs::create_dir_all(&requests).map_err(|e| io(format!("create {}", requests.display()), e))?;
    opts.env.push(("HOSTDP_COMPILE_HOST".into(), requests.display().to_string()));
    let host_compiles = crate::sys::compile::HostCompiles::start(crate::runner::compiler(), requests, target);
    let out = vm::run_in_vm_with(&kernel, &cmd, &[results.path().to_path_buf(), cache], &cwd, &opts);
    drop(host_compiles);
    let out = out?;
    let text = std::fs::read_to_string(&out_file).map_err(|_| TargetError::NoResult {
        status: out.status,
        tail: tail(&format!("{}\n{}\n{}", out.stdout, out.stderr, out.console), 30),
    })?;
    let rec: RunRecord = serde_json::from_str(&text).map_err(TargetError::Record)?;
    let mut scenarios = rec.scenarios;
    for s in &mut scenarios {
        // Paths as the user gave them, not the absolute ones passed into the guest.
        if let Some(orig) =
            files.iter().find(|f| cwd.join(f).display().to_string() == s.file || f.display().to_string() == s.file)
        {
            s.file = orig.display().to_string();
        }
        s.kernel = Some(rec.kernel.clone());
    }
    let summary = record::Summary::of(&scenarios);
    Ok(KernelRun {
        target: target.into(),
        kernel: rec.kernel,
        scenarios,
        summary,
        millis: t0.elapsed().as_millis() as u64,
    })
}

/// A writable scratch folder the guest can also write (shared read-write into the VM).
fn vm_scratch_dir() -> PathBuf {
    let d = cache_dir().join("vm");
    let _ = std::fs::create_dir_all(&d);
    d
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
