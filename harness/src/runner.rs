//! Runs scenarios: builds the node, drives the agent step by step, reads back after each step
//! and checks the expectations; on this kernel or inside a VM. Also the command-line entry
//! points and the per-file test entry used by `cargo test`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::agent::{Agent, AgentError};
use crate::sys::compile::Compiler;
use crate::sys::inspect::{self};
use crate::sys::policymap;
use crate::sys::timing::{self, Phase};
use crate::sys::topology::{self, Node, RunId};
use crate::sys::vm;
use hostdp_model::exit;
use hostdp_model::observed::Attachment;
use hostdp_model::profile::Profile;
use hostdp_model::record::{self, KernelRun, Observed, RunRecord, ScenarioRecord, Status, StepRecord};
use hostdp_model::scenario::{self, Action, PodSpec, Scenario};

/// Arguments of `hostdp run`.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub json: bool,
    pub kernels: Vec<String>,
    pub allow_skips: bool,
    pub keep: bool,
    pub jobs: Option<usize>,
    pub output: Option<PathBuf>,
    /// Run every file under this profile instead of its own (observation runs for the
    /// behaviour table; expectations written for another profile may then fail).
    pub profile: Option<String>,
    pub paths: Vec<PathBuf>,
}

/// The project's root: where `bpf/` and `scenarios/` are. Known at build time; overridable
/// with `HOSTDP_ROOT` for an installed binary.
pub fn project_root() -> PathBuf {
    if let Ok(r) = std::env::var("HOSTDP_ROOT") {
        return PathBuf::from(r);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Where compiled templates are cached across runs (must be writable; inside a VM the harness
/// passes a writable folder).
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("HOSTDP_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| project_root().join("target"));
    target.join("hostdp-cache")
}

fn compiler() -> std::sync::Arc<Compiler> {
    static C: std::sync::OnceLock<std::sync::Arc<Compiler>> = std::sync::OnceLock::new();
    C.get_or_init(|| std::sync::Arc::new(Compiler::new(crate::sys::compile::default_bpf_dir(), cache_dir()))).clone()
}

/// Expands files and folders into scenario files (`*.yaml`, `*.yml`), sorted; an unreadable
/// folder is left out here and reported by validation.
pub fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    scenario::expand(paths, &mut Vec::new())
}

/// The common start of `run` and `diff`: the files of `paths`, all valid, and root. On a
/// problem, it is printed and the exit status returned.
pub fn valid_files_as_root(cmd: &str, paths: &[PathBuf]) -> Result<Vec<PathBuf>, i32> {
    let files = expand(paths);
    if files.is_empty() {
        let given: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!("hostdp {cmd}: no scenario files in {}", given.join(", "));
        return Err(exit::INVALID);
    }
    // Invalid input is exit 2 before anything runs.
    let (_, errors) = scenario::check(&files);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        return Err(exit::INVALID);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("hostdp {cmd}: needs root (network namespaces, bpf); run it with sudo");
        return Err(exit::ENVIRONMENT);
    }
    Ok(files)
}

/// Runs one parsed scenario on this kernel.
pub fn run_scenario(sc: &Scenario, run: &RunId) -> ScenarioRecord {
    let t0 = Instant::now();
    let caps = crate::sys::caps::probe(&cache_dir());
    let mut rec = ScenarioRecord {
        file: sc.path.display().to_string(),
        name: sc.name.clone(),
        profile: sc.profile.clone(),
        status: Status::Pass,
        reason: None,
        kernel: Some(caps.kernel.clone()),
        millis: 0,
        phases: None,
        steps: Vec::new(),
    };
    let clock = timing::Clock::new();
    let _clock = timing::enter(Some(clock.clone()));
    let missing = caps.missing_for(sc);
    if !missing.is_empty() {
        rec.status = Status::Skipped;
        rec.reason = Some(missing.join(", "));
        return rec;
    }
    let mut node = match timing::time(Phase::NamespacesAndLinks, || Node::build(sc, run)) {
        Ok(n) => n,
        Err(e) => {
            rec.status = Status::Error;
            rec.reason = Some(format!("build node: {e}"));
            rec.millis = t0.elapsed().as_millis() as u64;
            return rec;
        }
    };
    // Validated when the file was loaded: the fallback is never taken.
    let profile = Profile::parse(&sc.profile).unwrap_or(Profile::ALL[0]);
    let node_ip = sc.node.ip.as_deref().and_then(|s| s.parse().ok());
    let mut agent = Agent::new(
        profile,
        sc.agent.clone(),
        node_ip,
        sc.node.labels.clone(),
        compiler(),
        Some(node.bpffs().to_path_buf()),
        caps.has("tcx"),
    );
    let mut pods: Vec<PodSpec> = sc.pods.clone();
    let mut previous: Option<Vec<Attachment>> = None;
    for (i, step) in sc.steps.iter().enumerate() {
        let result = timing::time(Phase::Agent, || run_step(&mut agent, &mut node, &mut pods, &step.action));
        inject_fault(i + 1);
        let (regenerated, error, harness) = match result {
            Ok(o) => (o.regenerated, None, None),
            Err(AgentError::Refused(m)) => (Vec::new(), Some(m), None),
            Err(AgentError::Harness(m)) => (Vec::new(), None, Some(m)),
        };
        let mut aliases = BTreeMap::new();
        for p in &pods {
            aliases.insert(format!("pod:{}", p.key()), node.lxc_name(&p.key()));
        }
        let observed = timing::time(Phase::Readback, || inspect::inspect_netns(node.netns()))
            .map_err(|e| e.to_string())
            .and_then(|v| {
                let maps = policymap::read_policy_maps(&v).map_err(|e| e.to_string())?;
                Ok((v, maps))
            });
        let (attachments, policy_maps) = match observed {
            Ok((mut v, mut maps)) => {
                for a in &mut v {
                    a.endpoint = aliases.iter().find(|(_, d)| **d == a.device).map(|(k, _)| k.clone());
                }
                for m in &mut maps {
                    if let Some((k, _)) = aliases.iter().find(|(_, d)| **d == m.endpoint) {
                        m.endpoint = k.clone();
                    }
                }
                (v, maps)
            }
            Err(e) => {
                rec.steps.push(step_record(
                    step,
                    Status::Error,
                    Some(format!("read back: {e}")),
                    &agent,
                    regenerated,
                    vec![],
                    vec![],
                ));
                rec.status = Status::Error;
                rec.reason = Some(format!("step {} `{}`: read back failed: {e}", rec.steps.len(), step.action.key()));
                break;
            }
        };
        if let Some(h) = harness {
            rec.steps.push(step_record(step, Status::Error, Some(h.clone()), &agent, regenerated, attachments, vec![]));
            rec.status = Status::Error;
            rec.reason = Some(format!("step {} `{}` (line {}): {h}", rec.steps.len(), step.action.key(), step.line));
            break;
        }
        let devices = agent.devices().map(|d| d.to_vec());
        let mut mismatches = record::check(
            &step.expect,
            &Observed {
                devices: devices.as_deref(),
                attachments: &attachments,
                previous: previous.as_deref(),
                regenerated: &regenerated,
                error: error.as_deref(),
                aliases: &aliases,
            },
        );
        if crate::sys::crosscheck::enabled() {
            let names: Vec<String> = node.links().map(|l| l.into_iter().map(|l| l.name).collect()).unwrap_or_default();
            for d in crate::sys::crosscheck::compare(node.netns(), &names, &attachments) {
                mismatches.push(record::Mismatch {
                    key: "crosscheck".into(),
                    expected: "inspect agrees with tc and bpftool".into(),
                    observed: d,
                });
            }
        }
        let status = if mismatches.is_empty() { Status::Pass } else { Status::Fail };
        if status == Status::Fail && rec.status == Status::Pass {
            rec.status = Status::Fail;
        }
        previous = Some(attachments.clone());
        rec.steps.push(step_record(step, status, error, &agent, regenerated, attachments, mismatches));
        if let Some(s) = rec.steps.last_mut() {
            s.policy_maps = policy_maps;
        }
    }
    timing::time(Phase::Teardown, || drop(node));
    rec.millis = t0.elapsed().as_millis() as u64;
    rec.phases = Some(clock.phases());
    rec
}

/// Test-only fault injection: `HOSTDP_FAULT=panic-after-step:N` panics right after step N
/// acted (before its read-back), to prove a panic mid-scenario still tears the node down.
fn inject_fault(step: usize) {
    if let Ok(f) = std::env::var("HOSTDP_FAULT") {
        if f.strip_prefix("panic-after-step:").and_then(|n| n.parse::<usize>().ok()) == Some(step) {
            panic!("HOSTDP_FAULT: injected panic after step {step}");
        }
        // Slows a run down so that a test can interrupt it mid-scenario, however fast it is.
        if let Some(ms) = f.strip_prefix("sleep-after-each-step:").and_then(|n| n.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

fn step_record(
    step: &scenario::Step,
    status: Status,
    error: Option<String>,
    agent: &Agent,
    regenerated: Vec<String>,
    attachments: Vec<Attachment>,
    mismatches: Vec<record::Mismatch>,
) -> StepRecord {
    StepRecord {
        action: step.action.key().to_string(),
        line: step.line,
        status,
        error,
        devices: agent.devices().map(|d| d.to_vec()),
        regenerated,
        attachments,
        mismatches,
        policy_maps: Vec::new(),
    }
}

fn run_step(
    agent: &mut Agent,
    node: &mut Node,
    pods: &mut Vec<PodSpec>,
    action: &Action,
) -> Result<crate::agent::StepOutcome, AgentError> {
    use crate::agent::StepOutcome;
    let h = |e: topology::TopologyError| AgentError::Harness(e.to_string());
    // Topology changes inside a step count as topology work, not as the agent's.
    let topo = |f: &mut dyn FnMut() -> Result<(), topology::TopologyError>| timing::time(Phase::StepTopology, f);
    match action {
        Action::Start => agent.start(node, pods),
        Action::Restart { agent: changes, profile } => agent.restart(node, pods, changes, profile.as_deref()),
        Action::Stop => Ok(agent.stop()),
        Action::Cleanup => agent.cleanup(node),
        Action::Apply(p) => agent.apply(node, pods, p),
        Action::Delete(p) => agent.delete(node, pods, p),
        Action::AddPod(p) => {
            topo(&mut || node.add_pod(p).map(|_| ())).map_err(h)?;
            pods.push(p.clone());
            agent.pod_added(node, p)
        }
        Action::DeletePod(name) => {
            let Some(i) = pods.iter().position(|p| &p.name == name || &p.key() == name) else {
                return Err(AgentError::Harness(format!("delete-pod: no pod {name}")));
            };
            let p = pods.remove(i);
            topo(&mut || node.delete_pod(&p.key())).map_err(h)?;
            agent.pod_deleted(node, &p)
        }
        Action::LinkAdd(l) => {
            topo(&mut || node.add_link(l)).map_err(h)?;
            agent.link_changed(node)
        }
        Action::LinkDelete(n) => {
            topo(&mut || node.delete_link(n)).map_err(h)?;
            agent.link_changed(node)
        }
        Action::LinkSet { name, up } => {
            topo(&mut || node.set_link_up(name, *up)).map_err(h)?;
            agent.link_changed(node)
        }
        Action::RouteAdd(r) | Action::RouteDelete(r) => {
            let add = matches!(action, Action::RouteAdd(_));
            topo(&mut || node.change_route(r, add)).map_err(h)?;
            agent.link_changed(node)
        }
        Action::Foreign { device, direction, program, mode } => {
            let ctx = crate::sys::attach::AttachContext {
                compiler: compiler(),
                defines: BTreeMap::new(),
                bpffs: None,
                kernel_tcx: false,
            };
            // (foreign programs are tc filters or XDP: tcx is never asked for)
            let hook = match direction {
                scenario::ForeignDirection::Ingress => hostdp_model::observed::Hook::Ingress,
                scenario::ForeignDirection::Egress => hostdp_model::observed::Hook::Egress,
                scenario::ForeignDirection::Xdp => hostdp_model::observed::Hook::Xdp,
            };
            let dev = if let Some(key) = device.strip_prefix("pod:") { node.lxc_name(key) } else { device.clone() };
            let mode = mode.map(|m| match m {
                scenario::ForeignXdpMode::Native => hostdp_model::datapath::XdpMode::Native,
                scenario::ForeignXdpMode::Generic => hostdp_model::datapath::XdpMode::Generic,
            });
            timing::time(Phase::Execute, || crate::sys::attach::foreign(node.netns(), &ctx, &dev, hook, program, mode))
                .map_err(|e| AgentError::Harness(e.to_string()))?;
            Ok(StepOutcome::default())
        }
    }
}

/// Runs files on this kernel, `jobs` at a time. Invalid files become `error` records.
pub fn run_local(files: &[PathBuf], jobs: usize) -> Vec<ScenarioRecord> {
    run_local_as(files, jobs, None)
}

/// [`run_local`], every file under `profile` when one is given.
pub fn run_local_as(files: &[PathBuf], jobs: usize, profile: Option<Profile>) -> Vec<ScenarioRecord> {
    let run = RunId::new();
    let queue = Mutex::new(files.iter().enumerate().collect::<Vec<_>>().into_iter());
    let results: Mutex<Vec<(usize, ScenarioRecord)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap().next();
                let Some((i, f)) = next else { break };
                if !quiet() {
                    eprintln!("hostdp: running {}", f.display());
                }
                let rec = match scenario::load(f) {
                    Ok(sc) => match profile {
                        Some(p) => run_scenario(&sc.with_profile(p), &run),
                        None => run_scenario(&sc, &run),
                    },
                    Err(e) => invalid_record(f, &e.to_string()),
                };
                if !quiet() {
                    eprintln!("hostdp: {} {} ({} ms)", rec.status.as_str(), f.display(), rec.millis);
                }
                results.lock().unwrap().push((i, rec));
            });
        }
    });
    let mut v = results.into_inner().unwrap();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

fn quiet() -> bool {
    std::env::var_os("HOSTDP_QUIET").is_some()
}

fn invalid_record(f: &Path, msg: &str) -> ScenarioRecord {
    ScenarioRecord {
        file: f.display().to_string(),
        name: f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        profile: String::new(),
        status: Status::Error,
        reason: Some(msg.to_string()),
        kernel: None,
        millis: 0,
        phases: None,
        steps: Vec::new(),
    }
}

/// Why a run on a target could not produce records.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("{0}")]
    Io(String),
    #[error("the guest wrote no result record (exit status {status}); its last output:\n{tail}")]
    NoResult { status: i32, tail: String },
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
    run_target_as(target, files, jobs, None)
}

/// [`run_target`], every file under `profile` when one is given.
pub fn run_target_as(
    target: &str,
    files: &[PathBuf],
    jobs: usize,
    profile: Option<Profile>,
) -> Result<KernelRun, TargetError> {
    let t0 = Instant::now();
    if target == "host" || target == "local" {
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
        .prefix("hostdp-vm-")
        .tempdir_in(vm_scratch_dir())
        .map_err(|e| TargetError::Io(e.to_string()))?;
    let out_file = results.path().join("record.json");
    let built = match VM_EXE.with(|c| c.borrow().clone()) {
        Some(e) => e,
        None => std::env::current_exe().map_err(|e| TargetError::Io(e.to_string()))?,
    };
    // The guest runs a copy: a rebuild of the binary while the VM boots must not pull it away.
    let exe = results.path().join("hostdp");
    std::fs::copy(&built, &exe).map_err(|e| TargetError::Io(format!("copy {} for the guest: {e}", built.display())))?;
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
    let cwd = std::env::current_dir().unwrap_or_else(|_| project_root());
    for f in files {
        let abs = if f.is_absolute() { f.clone() } else { cwd.join(f) };
        cmd.push(abs.display().to_string());
    }
    let cache = cache_dir();
    let _ = std::fs::create_dir_all(&cache);
    let mut opts = vm::VmOptions::default();
    opts.env.push(("HOSTDP_CACHE_DIR".into(), cache.display().to_string()));
    opts.env.push(("HOSTDP_QUIET".into(), "1".into()));
    // A throwaway guest may load modules on demand (the capability probe then finds them).
    opts.env.push(("HOSTDP_ALLOW_MODPROBE".into(), "1".into()));
    if crate::sys::crosscheck::enabled() {
        opts.env.push(("HOSTDP_CROSSCHECK".into(), "1".into()));
    }
    if let Ok(d) = hostdp_model::policy::crd_dir() {
        // The guest does not inherit the environment: name the shared folder explicitly.
        if let Some(shared) = d.parent().and_then(Path::parent) {
            opts.env.push(("HOSTDP_SHARED_DIR".into(), shared.display().to_string()));
        }
    }
    let out = vm::run_in_vm_with(&kernel, &cmd, &[results.path().to_path_buf(), cache], &cwd, &opts)?;
    let text = std::fs::read_to_string(&out_file).map_err(|_| TargetError::NoResult {
        status: out.status,
        tail: tail(&format!("{}\n{}\n{}", out.stdout, out.stderr, out.console), 30),
    })?;
    let rec: RunRecord =
        serde_json::from_str(&text).map_err(|e| TargetError::Io(format!("parse the guest's record: {e}")))?;
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

fn jobs(args: &RunArgs) -> usize {
    args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// `hostdp check`.
pub fn cli_check(paths: &[PathBuf]) -> i32 {
    // Files that are policy fixtures are validated as such (against the CRD schema); the rest
    // are scenario files, which also get the fixtures they name validated.
    let mut expand_errors = Vec::new();
    let files = scenario::expand(paths, &mut expand_errors);
    let (policies, scenarios): (Vec<PathBuf>, Vec<PathBuf>) = files.into_iter().partition(|f| is_policy_fixture(f));
    let mut bad = expand_errors.len();
    for e in &expand_errors {
        eprintln!("{e}");
    }
    let (scenarios_ok, errors) = if scenarios.is_empty() { (0, Vec::new()) } else { scenario::check(&scenarios) };
    let mut policies_ok = 0;
    for e in &errors {
        eprintln!("{e}");
    }
    bad += errors.len();
    for f in &policies {
        match hostdp_model::policy::load_fixture(f) {
            Ok(docs) => {
                policies_ok += 1;
                for d in &docs {
                    if let hostdp_model::policy::PolicyDoc::NotAPolicy { kind, line, .. } = d {
                        eprintln!("{}:{line}: note: a {kind}, not a policy; ignored", f.display());
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
            }
        }
    }
    if bad == 0 {
        println!("{scenarios_ok} scenario file(s) and {policies_ok} policy fixture(s) valid");
        exit::OK
    } else {
        eprintln!("{bad} invalid file(s) of {} checked", scenarios_ok + policies_ok + bad);
        exit::INVALID
    }
}

/// A YAML file whose documents are Cilium policies (a top-level `apiVersion: cilium.io/...`).
fn is_policy_fixture(f: &Path) -> bool {
    std::fs::read_to_string(f)
        .map(|t| t.lines().any(|l| l.starts_with("apiVersion:") && l.contains("cilium.io/")))
        .unwrap_or(false)
}

/// `hostdp run`.
pub fn cli_run(args: &RunArgs) -> i32 {
    let files = match valid_files_as_root("run", &args.paths) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let profile = match args.profile.as_deref().map(|p| (p, Profile::parse(p))) {
        None => None,
        Some((_, Some(p))) => Some(p),
        Some((p, None)) => {
            eprintln!("hostdp run: unknown profile {p:?}: give v1.14.4, v1.15 or v1.16");
            return exit::INVALID;
        }
    };
    topology::install_signal_cleanup();
    let _ = topology::cleanup_stale();
    let rec = if args.kernels.is_empty() {
        RunRecord::single(
            crate::sys::caps::probe(&cache_dir()).kernel.clone(),
            run_local_as(&files, jobs(args), profile),
        )
    } else {
        let mut runs = Vec::new();
        for k in &args.kernels {
            if !quiet() {
                eprintln!("hostdp: kernel {k}: {} scenario(s)", files.len());
            }
            match run_target_as(k, &files, jobs(args), profile) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    eprintln!("hostdp run --kernel {k}: {e}");
                    return if e.is_environment() { exit::ENVIRONMENT } else { exit::FAILED };
                }
            }
        }
        if runs.len() == 1 {
            let r = runs.pop().unwrap();
            let mut rec = RunRecord::single(r.kernel, r.scenarios);
            rec.runs = Vec::new();
            rec
        } else {
            RunRecord::combine(runs)
        }
    };
    let json = serde_json::to_string_pretty(&rec).expect("serialise the record");
    if let Some(o) = &args.output {
        if let Err(e) = std::fs::write(o, &json) {
            eprintln!("hostdp run: cannot write {}: {e}", o.display());
        }
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", record::table(&rec));
    }
    if args.keep || rec.summary.failed + rec.summary.errors > 0 {
        // Objects and generated headers are never deleted: they are the template cache.
        eprintln!("hostdp: compiled objects and node_config.h headers are in {}", cache_dir().display());
    }
    let s = rec.summary;
    if s.failed + s.errors > 0 {
        exit::FAILED
    } else if s.skipped > 0 && !args.allow_skips {
        exit::SKIPPED
    } else {
        exit::OK
    }
}

/// `hostdp inspect`.
pub fn cli_inspect(netns: Option<&str>, json: bool) -> i32 {
    let ns = match netns {
        Some(n) => match crate::sys::netns::Netns::open(n) {
            Ok(ns) => Some(ns),
            Err(e) => {
                eprintln!("hostdp inspect: {e}");
                return exit::INVALID;
            }
        },
        None => None,
    };
    let res = match &ns {
        Some(ns) => inspect::inspect_netns(ns),
        None => inspect::inspect_current(),
    };
    match res {
        Ok(atts) => {
            if json {
                println!("{}", serde_json::json!({ "attachments": atts }));
            } else if atts.is_empty() {
                println!("no attachments");
            } else {
                for a in &atts {
                    println!("{:<16} {:<8} {}  id {}", a.device, a.hook.as_str(), record::fmt_att(a), a.prog_id);
                }
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("hostdp inspect: {e}");
            exit::FAILED
        }
    }
}

/// `hostdp inspect --maps`: the attachments and the policy maps their programs reference.
pub fn cli_inspect_maps(netns: Option<&str>, json: bool) -> i32 {
    let res = match netns {
        Some(n) => match crate::sys::netns::Netns::open(n) {
            Ok(ns) => inspect::inspect_netns(&ns),
            Err(e) => {
                eprintln!("hostdp inspect: {e}");
                return exit::INVALID;
            }
        },
        None => inspect::inspect_current(),
    };
    let atts = match res {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hostdp inspect: {e}");
            return exit::FAILED;
        }
    };
    match policymap::read_policy_maps(&atts) {
        Ok(maps) if json => println!("{}", serde_json::json!({ "attachments": atts, "maps": maps })),
        Ok(maps) => print!("{}", policymap::render_table(&maps)),
        Err(e) => {
            eprintln!("hostdp inspect: {e}");
            return exit::FAILED;
        }
    }
    exit::OK
}

/// `hostdp explain`.
pub fn cli_explain(config: &Path, profile: &str, netns: Option<&str>) -> i32 {
    match crate::explain::explain(config, profile, netns) {
        Ok(text) => {
            print!("{text}");
            exit::OK
        }
        Err(e) => {
            eprintln!("hostdp explain: {e}");
            exit::INVALID
        }
    }
}

/// `hostdp table`: one record gives a column per device; several (one per profile) give a
/// column per record.
pub fn cli_table(records: &[PathBuf], devices: &str) -> i32 {
    let mut recs = Vec::new();
    for record in records {
        let text = match std::fs::read_to_string(record) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("hostdp table: cannot read {}: {e}", record.display());
                return exit::INVALID;
            }
        };
        match serde_json::from_str::<RunRecord>(&text) {
            Ok(r) => recs.push(r),
            Err(e) => {
                eprintln!("{}:{}:{}: not a hostdp result record: {e}", record.display(), e.line(), e.column());
                return exit::INVALID;
            }
        }
    }
    let devs: Vec<&str> = devices.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if recs.len() == 1 {
        print!("{}", record::behaviour_table(&recs[0], &devs));
    } else {
        print!("{}", record::profile_table(&recs, &devs));
    }
    exit::OK
}

/// `hostdp gc`.
pub fn cli_gc() -> i32 {
    let removed = topology::cleanup_stale();
    for r in &removed {
        println!("removed {r}");
    }
    println!("{} stale item(s) removed", removed.len());
    exit::OK
}

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
            v
        })
        .collect();
    serde_json::json!({ "name": rec.name, "profile": rec.profile, "status": rec.status, "steps": steps })
}

fn test_kernels() -> Vec<String> {
    std::env::var("HOSTDP_TEST_KERNELS")
        .unwrap_or_else(|_| "debian-6.1,debian-6.12".into())
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
    VM_EXE.with(|c| *c.borrow_mut() = Some(exe.to_path_buf()));
    let r = f();
    VM_EXE.with(|c| *c.borrow_mut() = None);
    r
}

thread_local! {
    static VM_EXE: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}
