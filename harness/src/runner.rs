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
use hostdp_model::exit;
use hostdp_model::observed::Attachment;
use hostdp_model::profile::Profile;
use hostdp_model::record::{self, Observed, ScenarioRecord, Status, StepRecord};
use hostdp_model::scenario::{self, Action, PodSpec, Scenario};

/// The project's checkout: the one this process runs from ([`crate::paths`]), else the one the
/// binary was built from (which may not exist: nothing at run time needs it).
pub fn project_root() -> PathBuf {
    crate::paths::get().checkout.clone().unwrap_or_else(crate::paths::build_checkout)
}

/// Where compiled templates are cached across runs (must be writable; inside a VM the harness
/// passes a writable folder). See [`crate::paths`].
pub fn cache_dir() -> PathBuf {
    crate::paths::get().cache.clone()
}

static CRD_FILES: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// `--crd`: validates policies against these CRD manifests (exported from a cluster) instead of
/// the embedded v1.14.4 schemas, here and in the VMs this process starts. Invalid input is
/// printed (naming the file) and gives exit status 2.
pub fn use_crds(files: &[PathBuf]) -> Result<(), i32> {
    if files.is_empty() {
        return Ok(());
    }
    match hostdp_model::policy::SchemaSet::with_crds(files) {
        Ok(set) => {
            hostdp_model::policy::use_schemas(set);
            let _ = CRD_FILES.set(files.to_vec());
            Ok(())
        }
        Err(e) => {
            errln!("hostdp: --crd: {e}");
            Err(exit::INVALID)
        }
    }
}

pub(crate) fn crd_files() -> &'static [PathBuf] {
    CRD_FILES.get().map(Vec::as_slice).unwrap_or(&[])
}

pub(crate) fn compiler() -> std::sync::Arc<Compiler> {
    static C: std::sync::OnceLock<std::sync::Arc<Compiler>> = std::sync::OnceLock::new();
    C.get_or_init(|| std::sync::Arc::new(Compiler::new(crate::sys::compile::default_bpf_dir(), cache_dir()))).clone()
}

/// Expands files and folders into scenario files (`*.yaml`, `*.yml`), sorted; an unreadable
/// folder is left out here and reported by validation.
pub fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    scenario::expand(paths, &mut Vec::new())
}

/// The common start of `run` and `diff`: the files of `paths`, all valid and parsed, and root.
/// On a problem, it is printed and the exit status returned.
pub fn valid_files_as_root(cmd: &str, paths: &[PathBuf]) -> Result<Vec<Scenario>, i32> {
    let files = valid_files(cmd, paths)?;
    if !nix::unistd::geteuid().is_root() {
        errln!("hostdp {cmd}: needs root (network namespaces, bpf); run it with sudo");
        return Err(exit::ENVIRONMENT);
    }
    Ok(files)
}

/// The files of `paths`, all valid (warnings are printed and allowed), parsed once here for
/// all that follows; no privileges needed.
pub fn valid_files(cmd: &str, paths: &[PathBuf]) -> Result<Vec<Scenario>, i32> {
    let files = expand(paths);
    if files.is_empty() {
        let given: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        errln!("hostdp {cmd}: no scenario files in {}", given.join(", "));
        return Err(exit::INVALID);
    }
    // Invalid input is exit 2 before anything runs; warnings are said and the run goes on.
    let checked = scenario::check_all(&files);
    for w in &checked.warnings {
        errln!("{w}");
    }
    if !checked.errors.is_empty() {
        for e in &checked.errors {
            errln!("{e}");
        }
        return Err(exit::INVALID);
    }
    Ok(checked.valid)
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
        rec.reason = Some(format!("{}{}", missing.join(", "), where_it_runs(sc)));
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
        // `pod:NS/NAME` → its lxc device, for the pods there are at that moment.
        let pod_aliases = |pods: &[PodSpec], node: &Node| -> BTreeMap<String, String> {
            pods.iter().map(|p| (format!("pod:{}", p.key()), node.lxc_name(&p.key()))).collect()
        };
        let aliases = pod_aliases(&pods, &node);
        let mut traffic = None;
        let mut traffic_disagreements = Vec::new();
        let result = match &step.action {
            // Packets, not the agent: allowed in any state of it, before `start` or after `cleanup`.
            Action::Traffic(spec) => crate::traffic::run(sc, &node, spec, &aliases)
                .map(|(t, d)| {
                    traffic = Some(t);
                    traffic_disagreements = d;
                    crate::agent::StepOutcome::default()
                })
                .map_err(|e| AgentError::Step(format!("traffic: {e}"))),
            action => timing::time(Phase::Agent, || run_step(&mut agent, &mut node, &mut pods, action)),
        };
        inject_fault(i + 1);
        let (regenerated, error, harness) = match result {
            Ok(o) => (o.regenerated, None, None),
            Err(AgentError::Refused(m)) => (Vec::new(), Some(m), None),
            Err(e @ (AgentError::Harness(_) | AgentError::Step(_))) => (Vec::new(), None, Some(e.to_string())),
        };
        // The step may have added or deleted pods.
        let aliases = pod_aliases(&pods, &node);
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
                reasoning: agent.reasoning(),
                traffic: traffic.as_ref(),
            },
        );
        // A traffic step sends packets and changes no attachment: its figures are cross-checked
        // against bpftool's run counts instead (below), and the attachments were cross-checked
        // after the step that made them (a `tc` and a `bpftool` each: slow in a TCG guest).
        if crate::sys::crosscheck::enabled() && !matches!(step.action, Action::Traffic(_)) {
            let names: Vec<String> = node.links().map(|l| l.into_iter().map(|l| l.name).collect()).unwrap_or_default();
            for d in crate::sys::crosscheck::compare(node.netns(), &names, &attachments) {
                mismatches.push(record::Mismatch {
                    key: "crosscheck".into(),
                    expected: "inspect agrees with tc and bpftool".into(),
                    observed: d,
                    why: Vec::new(),
                });
            }
        }
        for d in traffic_disagreements {
            mismatches.push(record::Mismatch {
                key: "crosscheck".into(),
                expected: "the traffic figures agree with bpftool's run counts".into(),
                observed: d,
                why: vec![],
            });
        }
        let status = if mismatches.is_empty() { Status::Pass } else { Status::Fail };
        if status == Status::Fail && rec.status == Status::Pass {
            rec.status = Status::Fail;
        }
        previous = Some(attachments.clone());
        rec.steps.push(step_record(step, status, error, &agent, regenerated, attachments, mismatches));
        if let Some(s) = rec.steps.last_mut() {
            s.policy_maps = policy_maps;
            s.traffic = traffic;
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
    if let Some(f) = &crate::paths::get().fault {
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
        traffic: None,
    }
}

fn run_step(
    agent: &mut Agent,
    node: &mut Node,
    pods: &mut Vec<PodSpec>,
    action: &Action,
) -> Result<crate::agent::StepOutcome, AgentError> {
    use crate::agent::StepOutcome;
    let h = |e: topology::TopologyError| AgentError::harness(e);
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
                return Err(AgentError::Step(format!("delete-pod: no pod {name}")));
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
        Action::Traffic(_) => Err(AgentError::Step("traffic steps are run by the runner".into())),
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
                .map_err(AgentError::harness)?;
            Ok(StepOutcome::default())
        }
    }
}

/// What a skip adds: the VM kernels that can host the scenario (`; run it with --kernel
/// debian-6.12`), or the command that fetches one when none is here.
fn where_it_runs(sc: &Scenario) -> String {
    let kernels = hostdp_model::needs::hosting_kernels(sc);
    let fetched: Vec<&str> = kernels.iter().copied().filter(|k| kernel_fetched(k)).collect();
    let run = |ks: &[&str]| ks.iter().map(|k| format!("--kernel {k}")).collect::<Vec<_>>().join(" or ");
    match (fetched.is_empty(), kernels.first()) {
        (false, _) => format!("; run it with {}", run(&fetched)),
        (true, Some(k)) => format!("; fetch a kernel that has it with `ci/kernels {k}`, then run it with --kernel {k}"),
        (true, None) => String::new(),
    }
}

/// Whether a kernel is fetched here, looked up once per process: a batch in a guest skips
/// several files, and each look-up there is a dozen reads of the shared folder.
fn kernel_fetched(name: &'static str) -> bool {
    static FETCHED: Mutex<BTreeMap<&'static str, bool>> = Mutex::new(BTreeMap::new());
    let mut known = FETCHED.lock().unwrap_or_else(|e| e.into_inner());
    *known.entry(name).or_insert_with(|| crate::sys::vm::KernelRef::resolve(name).is_ok())
}

/// Runs files on this kernel, `jobs` at a time. Invalid files become `error` records.
pub fn run_local(files: &[PathBuf], jobs: usize) -> Vec<ScenarioRecord> {
    run_local_as(files, jobs, None)
}

/// [`run_local`], every file under `profile` when one is given.
pub fn run_local_as(files: &[PathBuf], jobs: usize, profile: Option<Profile>) -> Vec<ScenarioRecord> {
    let loaded = files.iter().map(|f| (f.clone(), scenario::load(f).map_err(|e| e.to_string()))).collect();
    run_parsed(loaded, jobs, profile)
}

/// [`run_local_as`] with the files already read and parsed (a load error becomes the file's
/// `error` record).
pub fn run_parsed(
    loaded: Vec<(PathBuf, Result<Scenario, String>)>,
    jobs: usize,
    profile: Option<Profile>,
) -> Vec<ScenarioRecord> {
    let run = RunId::new();
    // The longest start first, so that no long file starts last while the other jobs have
    // finished: the number of steps is a fair guess of a file's time (about a second a step in
    // a TCG guest). The records keep the order of `loaded`.
    let mut order: Vec<(usize, PathBuf, Result<Scenario, String>)> = loaded
        .into_iter()
        .enumerate()
        .map(|(i, (f, sc))| {
            (
                i,
                f,
                sc.map(|sc| match profile {
                    Some(p) => sc.with_profile(p),
                    None => sc,
                }),
            )
        })
        .collect();
    if jobs > 1 {
        order.sort_by_key(|(_, _, sc)| std::cmp::Reverse(sc.as_ref().map_or(0, |sc| sc.steps.len())));
    }
    let queue = Mutex::new(order.into_iter());
    let results: Mutex<Vec<(usize, ScenarioRecord)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap().next();
                let Some((i, f, sc)) = next else { break };
                if !quiet() {
                    errln!("hostdp: running {}", f.display());
                }
                let rec = match sc {
                    Ok(sc) => run_scenario(&sc, &run),
                    Err(e) => invalid_record(&f, &e),
                };
                if !quiet() {
                    errln!("hostdp: {} {} ({} ms)", rec.status.as_str(), f.display(), rec.millis);
                }
                results.lock().unwrap().push((i, rec));
            });
        }
    });
    let mut v = results.into_inner().unwrap();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

pub(crate) fn quiet() -> bool {
    crate::paths::get().quiet
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
