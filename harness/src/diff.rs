//! `hostdp diff`: one scenario under several upstream profiles, and where the attachments
//! differ, step by step and device by device. The scenario's own expectations are not checked
//! (they were written for one profile); only what each profile's loader left on the links.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::runner;
use crate::sys::topology::RunId;
use hostdp_model::datapath::full_program_name;
use hostdp_model::observed::{Attachment, Hook, Mechanism};
use hostdp_model::profile::Profile;
use hostdp_model::record::{ScenarioRecord, Status};
use hostdp_model::scenario::{self, Scenario};

/// Errors of the diff's set-up (running is the runner's business).
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("diff: unknown profile {0:?} (give profiles such as v1.14.4,v1.15,v1.16)")]
    Profile(String),
    #[error("diff: give at least two profiles, got {0}")]
    TooFew(usize),
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error("diff: write a copy of {path} for profile {profile}: {message}")]
    Copy { path: String, profile: String, message: String },
    #[error("diff: run on {target}: {message}")]
    Run { target: String, message: String },
}

/// Options of `hostdp diff`.
#[derive(Debug, Clone)]
pub struct DiffArgs {
    pub profiles: Vec<String>,
    /// Compare the mechanism (tc, tcx, xdp) as well as the program.
    pub mechanism: bool,
    /// `None`: this kernel; else a VM kernel as for `hostdp run --kernel`.
    pub kernel: Option<String>,
    pub json: bool,
    pub paths: Vec<PathBuf>,
}

/// One hook of one device whose programs differ between profiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookDiff {
    /// Device name, or `pod:NAMESPACE/NAME` for a pod's lxc device.
    pub device: String,
    pub hook: Hook,
    /// Profile → programs in hook order (`program/mechanism` with `--mechanism`).
    pub by_profile: BTreeMap<String, Vec<String>>,
}

/// The differences after one step: only what differs between the profiles and is new or
/// changed since the step before (a difference that carries over is not repeated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepDiff {
    /// 1-based step number.
    pub step: usize,
    pub action: String,
    /// Profile → the step's error, when the profiles disagree; a refusal at `start` or
    /// `restart` is in the scenario's `refusals` instead.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, Option<String>>,
    /// Profile → the loader's device list, when the profiles disagree.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub devices: BTreeMap<String, Option<Vec<String>>>,
    pub hooks: Vec<HookDiff>,
    /// Profiles left out of this step's comparison: their agent refused to start (at this
    /// step or an earlier one, without a start since), or their run failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

impl StepDiff {
    /// Whether the step shows anything.
    pub fn shows(&self) -> bool {
        !self.hooks.is_empty() || !self.errors.is_empty() || !self.devices.is_empty()
    }
}

/// A profile's agent refusing to start, shown once (not again at every step after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub profile: String,
    pub step: usize,
    pub action: String,
    pub error: String,
}

/// One scenario across the profiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioDiff {
    pub file: String,
    pub name: String,
    pub profiles: Vec<String>,
    /// Profile → why its run did not get through its steps (skipped, harness error).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub problems: BTreeMap<String, String>,
    /// Each time a profile's agent refused to start where another profile's did not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
    pub steps: Vec<StepDiff>,
}

impl ScenarioDiff {
    pub fn differs(&self) -> bool {
        !self.refusals.is_empty() || self.steps.iter().any(StepDiff::shows)
    }
}

/// Parses `v1.14.4,v1.15,v1.16`.
pub fn parse_profiles(list: &[String]) -> Result<Vec<Profile>, DiffError> {
    let mut out = Vec::new();
    for p in list.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        let prof = Profile::parse(p).ok_or_else(|| DiffError::Profile(p.to_string()))?;
        if !out.contains(&prof) {
            out.push(prof);
        }
    }
    if out.len() < 2 {
        return Err(DiffError::TooFew(out.len()));
    }
    Ok(out)
}

/// The key a hook's programs are compared by.
fn entry(a: &Attachment, mechanism: bool) -> String {
    if mechanism {
        let m = match a.mechanism {
            Mechanism::Tc => "tc",
            Mechanism::Tcx => "tcx",
            Mechanism::Xdp => a.mode.as_deref().unwrap_or("xdp"),
        };
        format!("{}/{m}", full_program_name(&a.program))
    } else {
        full_program_name(&a.program).to_string()
    }
}

type HookMap = BTreeMap<(String, Hook), Vec<String>>;

fn hooks_of(atts: &[Attachment], mechanism: bool) -> HookMap {
    let mut m: HookMap = BTreeMap::new();
    for a in atts {
        let dev = a.endpoint.clone().unwrap_or_else(|| a.device.clone());
        m.entry((dev, a.hook)).or_default().push(entry(a, mechanism));
    }
    m
}

/// Compares the records of one scenario run under each profile (same order as `profiles`).
/// A profile whose agent refused to start is named once and left out of the comparison until
/// it starts again; a row (device and hook) is shown at the step where it first differs or
/// its difference changes.
pub fn compare(
    file: &str,
    name: &str,
    profiles: &[Profile],
    records: &[ScenarioRecord],
    mechanism: bool,
) -> ScenarioDiff {
    let names: Vec<String> = profiles.iter().map(|p| p.as_str().to_string()).collect();
    let mut problems = BTreeMap::new();
    for (p, r) in names.iter().zip(records) {
        if matches!(r.status, Status::Skipped | Status::Error) {
            problems.insert(p.clone(), r.reason.clone().unwrap_or_else(|| format!("{:?}", r.status).to_lowercase()));
        }
    }
    let steps = records.iter().map(|r| r.steps.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    let mut refusals = Vec::new();
    // Profile → its refusal while its agent stays down after it.
    let mut down: BTreeMap<&str, String> = BTreeMap::new();
    let mut shown_rows: BTreeMap<(String, Hook), BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut shown_devices: BTreeMap<String, Option<Vec<String>>> = BTreeMap::new();
    for i in 0..steps {
        let step_of = |r: &'_ ScenarioRecord| r.steps.get(i).cloned();
        let action = records.iter().find_map(|r| step_of(r).map(|s| s.action)).unwrap_or_default();
        let starts = action == "start" || action == "restart";
        let errors_now: Vec<Option<String>> = records.iter().map(|r| step_of(r).and_then(|s| s.error)).collect();
        let unanimous = all_equal(errors_now.iter());
        let mut errors = BTreeMap::new();
        for (p, e) in names.iter().zip(&errors_now) {
            if starts {
                match e {
                    Some(e) => {
                        if !unanimous && down.get(p.as_str()) != Some(e) {
                            refusals.push(Refusal {
                                profile: p.clone(),
                                step: i + 1,
                                action: action.clone(),
                                error: e.clone(),
                            });
                        }
                        down.insert(p.as_str(), e.clone());
                    }
                    None => {
                        down.remove(p.as_str());
                    }
                }
            } else if !unanimous {
                errors.insert(p.clone(), e.clone());
            }
        }
        let left_out: Vec<String> =
            names.iter().filter(|p| down.contains_key(p.as_str()) || problems.contains_key(*p)).cloned().collect();
        let compared: Vec<(&String, &ScenarioRecord)> =
            names.iter().zip(records).filter(|(p, _)| !left_out.contains(p)).collect();
        let devices: BTreeMap<String, Option<Vec<String>>> =
            compared.iter().map(|(p, r)| ((*p).clone(), step_of(r).and_then(|s| s.devices))).collect();
        let differ = !all_equal(devices.values());
        let show = differ && devices != shown_devices;
        shown_devices = if differ { devices.clone() } else { BTreeMap::new() };
        let devices = if show { devices } else { BTreeMap::new() };
        let maps: Vec<HookMap> = compared
            .iter()
            .map(|(_, r)| step_of(r).map(|s| hooks_of(&s.attachments, mechanism)).unwrap_or_default())
            .collect();
        let keys: BTreeSet<&(String, Hook)> = maps.iter().flat_map(|m| m.keys()).collect();
        let mut hooks = Vec::new();
        let mut rows = BTreeMap::new();
        for k in keys {
            let vals: Vec<Vec<String>> = maps.iter().map(|m| m.get(k).cloned().unwrap_or_default()).collect();
            if vals.windows(2).any(|w| w[0] != w[1]) {
                let by_profile: BTreeMap<String, Vec<String>> =
                    compared.iter().map(|(p, _)| (*p).clone()).zip(vals).collect();
                if shown_rows.get(k) != Some(&by_profile) {
                    hooks.push(HookDiff { device: k.0.clone(), hook: k.1, by_profile: by_profile.clone() });
                }
                rows.insert(k.clone(), by_profile);
            }
        }
        shown_rows = rows;
        out.push(StepDiff { step: i + 1, action, errors, devices, hooks, left_out });
    }
    ScenarioDiff { file: file.to_string(), name: name.to_string(), profiles: names, problems, refusals, steps: out }
}

fn all_equal<'a, T: PartialEq + 'a>(mut it: impl Iterator<Item = &'a T>) -> bool {
    match it.next() {
        None => true,
        Some(first) => it.all(|x| x == first),
    }
}

/// Runs every scenario under every profile, on this kernel or in a VM.
pub fn run(args: &DiffArgs) -> Result<Vec<ScenarioDiff>, DiffError> {
    let profiles = parse_profiles(&args.profiles)?;
    let files = runner::expand(&args.paths);
    let mut scenarios = Vec::new();
    for f in &files {
        scenarios.push(scenario::load(f)?);
    }
    let mut out = Vec::new();
    match &args.kernel {
        None => {
            let run = RunId::new();
            for sc in &scenarios {
                let recs: Vec<ScenarioRecord> =
                    profiles.iter().map(|p| runner::run_scenario(&sc.with_profile(*p), &run)).collect();
                out.push(compare(&sc.path.display().to_string(), &sc.name, &profiles, &recs, args.mechanism));
            }
        }
        Some(target) => {
            // The guest runs files: one copy per profile beside the original, so that relative
            // fixture paths still resolve; the guard removes them whatever happens.
            let copies = Copies::write(&scenarios, &profiles)?;
            let run = crate::target::run_target(target, &copies.paths, 1)
                .map_err(|e| DiffError::Run { target: target.clone(), message: e.to_string() })?;
            for (i, sc) in scenarios.iter().enumerate() {
                let recs: Vec<ScenarioRecord> = (0..profiles.len())
                    .map(|j| {
                        let want = copies.paths[i * profiles.len() + j].display().to_string();
                        run.scenarios.iter().find(|r| r.file == want).cloned().unwrap_or_else(|| missing(&want))
                    })
                    .collect();
                out.push(compare(&sc.path.display().to_string(), &sc.name, &profiles, &recs, args.mechanism));
            }
        }
    }
    Ok(out)
}

fn missing(file: &str) -> ScenarioRecord {
    not_in_record(file, "the run produced no record for it")
}

/// The stand-in for a scenario a profile's run has no record of (an error, with `why`).
pub fn not_in_record(file: &str, why: &str) -> ScenarioRecord {
    ScenarioRecord {
        phases: None,
        file: file.to_string(),
        name: String::new(),
        profile: String::new(),
        status: Status::Error,
        reason: Some(why.into()),
        kernel: None,
        millis: 0,
        steps: Vec::new(),
    }
}

/// Per-profile copies of scenario files, removed on drop.
struct Copies {
    paths: Vec<PathBuf>,
}

impl Copies {
    fn write(scenarios: &[Scenario], profiles: &[Profile]) -> Result<Copies, DiffError> {
        let mut c = Copies { paths: Vec::new() };
        for sc in scenarios {
            for p in profiles {
                let err = |message: String| DiffError::Copy {
                    path: sc.path.display().to_string(),
                    profile: p.as_str().to_string(),
                    message,
                };
                let text = std::fs::read_to_string(&sc.path).map_err(|e| err(e.to_string()))?;
                let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
                let map = doc.as_mapping_mut().ok_or_else(|| err("not a mapping".into()))?;
                map.insert("profile".into(), p.as_str().into());
                // Names must be unique within a run.
                map.insert("name".into(), format!("{}-as-{}", sc.name, p.as_str()).into());
                let stem = sc.path.file_stem().and_then(|s| s.to_str()).unwrap_or("scenario");
                let dir = sc.path.parent().unwrap_or(Path::new("."));
                let path = dir.join(format!(".hostdp-diff-{}-{stem}-{}.yaml", std::process::id(), p.as_str()));
                let body = serde_yaml::to_string(&doc).map_err(|e| err(e.to_string()))?;
                std::fs::write(&path, body).map_err(|e| err(e.to_string()))?;
                c.paths.push(path);
            }
        }
        Ok(c)
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The table: per scenario, each refusal once, then per step the rows (device and hook) that
/// differ and are new or changed since the step before, one column per profile compared.
pub fn table(diffs: &[ScenarioDiff]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut differing = 0;
    for d in diffs {
        let _ = writeln!(out, "{} ({})", d.name, d.file);
        for (p, why) in &d.problems {
            let _ = writeln!(out, "  {p}: {why}");
        }
        for r in &d.refusals {
            let _ = writeln!(out, "  {} refuses to start at step {} {}: {}", r.profile, r.step, r.action, r.error);
        }
        if !d.differs() {
            let _ = writeln!(out, "  same attachments under {}", d.profiles.join(", "));
            continue;
        }
        differing += 1;
        let show = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(",") };
        for s in d.steps.iter().filter(|s| s.shows()) {
            let out_of = if s.left_out.is_empty() {
                String::new()
            } else {
                format!(" (without {}: not running)", s.left_out.join(", "))
            };
            let _ = writeln!(out, "  step {} {}{out_of}", s.step, s.action);
            for (p, e) in &s.errors {
                let _ = writeln!(out, "    error    {p:<8} {}", e.as_deref().unwrap_or("none"));
            }
            for (p, dv) in &s.devices {
                let _ = writeln!(
                    out,
                    "    devices  {p:<8} {}",
                    dv.as_ref().map_or("(agent not running)".into(), |v| format!("[{}]", v.join(", ")))
                );
            }
            for h in &s.hooks {
                let cols: Vec<String> = h.by_profile.iter().map(|(p, v)| format!("{p}: {}", show(v))).collect();
                let _ = writeln!(out, "    {:<24} {:<8} {}", h.device, h.hook.as_str(), cols.join("   "));
            }
        }
    }
    let _ = writeln!(out, "{differing} of {} scenario(s) differ between profiles", diffs.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostdp_model::record::StepRecord;

    fn att(device: &str, hook: Hook, program: &str, mechanism: Mechanism) -> Attachment {
        Attachment {
            device: device.into(),
            hook,
            mechanism,
            program: program.into(),
            filter: None,
            priority: None,
            handle: None,
            direct_action: None,
            prog_id: 1,
            tag: None,
            mode: None,
            endpoint: None,
        }
    }

    fn rec(profile: &str, atts: Vec<Attachment>, error: Option<&str>) -> ScenarioRecord {
        ScenarioRecord {
            phases: None,
            file: "f.yaml".into(),
            name: "f".into(),
            profile: profile.into(),
            status: Status::Pass,
            reason: None,
            kernel: None,
            millis: 0,
            steps: vec![StepRecord {
                action: "start".into(),
                line: 1,
                status: Status::Pass,
                error: error.map(str::to_string),
                devices: Some(vec!["eth0".into()]),
                regenerated: vec![],
                attachments: atts,
                mismatches: vec![],
                policy_maps: vec![],
                traffic: None,
            }],
        }
    }

    #[test]
    fn copies_are_valid_scenarios_and_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.yaml");
        std::fs::write(
            &f,
            "name: s\nprofile: v1.14.4\ntopology:\n  links:\n    - {name: eth0, kind: veth}\nsteps:\n  - start: {}\n",
        )
        .unwrap();
        let sc = scenario::load(&f).unwrap();
        let paths = {
            let c = Copies::write(&[sc], &[Profile::V1_14_4, Profile::V1_16]).unwrap();
            let (ok, errors) = scenario::check(&c.paths);
            assert!(errors.is_empty() && ok == 2, "{errors:?}");
            assert_eq!(scenario::load(&c.paths[1]).unwrap().profile, "v1.16");
            c.paths.clone()
        };
        assert!(paths.iter().all(|p| !p.exists()));
    }

    #[test]
    fn profiles_parse_and_need_two() {
        assert_eq!(parse_profiles(&["v1.14.4,v1.16".into()]).unwrap(), vec![Profile::V1_14_4, Profile::V1_16]);
        assert!(matches!(parse_profiles(&["v1.16".into()]), Err(DiffError::TooFew(1))));
        assert!(matches!(parse_profiles(&["v1.13".into(), "v1.16".into()]), Err(DiffError::Profile(_))));
    }

    #[test]
    fn mechanism_is_ignored_unless_asked() {
        let ps = [Profile::V1_14_4, Profile::V1_16];
        let a = rec("v1.14.4", vec![att("eth0", Hook::Ingress, "cil_from_netdev", Mechanism::Tc)], None);
        let b = rec("v1.16", vec![att("eth0", Hook::Ingress, "cil_from_netdev", Mechanism::Tcx)], None);
        let d = compare("f.yaml", "f", &ps, &[a.clone(), b.clone()], false);
        assert!(!d.differs(), "{d:?}");
        let d = compare("f.yaml", "f", &ps, &[a, b], true);
        assert_eq!(d.steps[0].hooks.len(), 1);
        assert_eq!(d.steps[0].hooks[0].by_profile["v1.16"], vec!["cil_from_netdev/tcx".to_string()]);
    }

    #[test]
    fn missing_programs_and_errors_are_differences() {
        let ps = [Profile::V1_14_4, Profile::V1_15, Profile::V1_16];
        let a = rec("v1.14.4", vec![att("bond0.212", Hook::Ingress, "cil_from_netdev", Mechanism::Tc)], None);
        let b = rec("v1.15", vec![], None);
        let c = rec("v1.16", vec![], Some("Invalid value for --kube-proxy-replacement: partial"));
        let d = compare("f.yaml", "f", &ps, &[a, b, c], false);
        let s = &d.steps[0];
        assert_eq!(s.hooks[0].device, "bond0.212");
        assert_eq!(s.hooks[0].by_profile["v1.15"], Vec::<String>::new());
        assert!(!s.hooks[0].by_profile.contains_key("v1.16"), "a refused profile is left out: {s:?}");
        assert!(s.errors.is_empty());
        assert_eq!(d.refusals.len(), 1);
        assert_eq!(d.refusals[0].profile, "v1.16");
        assert!(s.devices.is_empty());
        let t = table(&[d]);
        assert!(t.contains("v1.15: -"), "{t}");
        assert!(t.contains("v1.16 refuses to start at step 1 start: Invalid value"), "{t}");
        assert!(t.contains("1 of 1 scenario(s) differ"), "{t}");
    }

    #[test]
    fn full_names_refusals_once_and_no_repeated_rows() {
        let ps = [Profile::V1_14_4, Profile::V1_15, Profile::V1_16];
        let overlay = |p| att("cilium_vxlan", Hook::Ingress, "cil_from_overla", p);
        let netdev = att("eth0", Hook::Ingress, "cil_from_netdev", Mechanism::Tc);
        let steps = |atts: Vec<Attachment>, error: Option<&str>, actions: &[&str]| {
            let mut r = rec("x", atts, error);
            let first = r.steps[0].clone();
            r.steps = actions
                .iter()
                .map(|a| StepRecord {
                    action: a.to_string(),
                    error: if *a == "start" { first.error.clone() } else { None },
                    ..first.clone()
                })
                .collect();
            if error.is_some() {
                for st in r.steps.iter_mut().skip(1) {
                    st.attachments.clear();
                }
            }
            r
        };
        let actions = ["start", "apply", "stop"];
        let a = steps(vec![overlay(Mechanism::Tc), netdev.clone()], None, &actions);
        let b = steps(vec![overlay(Mechanism::Tc)], None, &actions);
        let c = steps(vec![], Some("refused"), &actions);
        let d = compare("f.yaml", "f", &ps, &[a, b, c], false);
        assert_eq!(d.refusals.len(), 1, "{d:?}");
        assert!(d.steps[0].hooks.iter().all(|h| h.device == "eth0"), "{d:?}");
        assert!(d.steps[1..].iter().all(|s| !s.shows()), "carried-over rows are not repeated: {d:?}");
        let t = table(&[d]);
        assert_eq!(t.matches("refuses to start").count(), 1, "{t}");
        assert!(!t.contains("step 2"), "{t}");
        let e = compare(
            "f.yaml",
            "f",
            &ps[..2],
            &[rec("a", vec![overlay(Mechanism::Tc)], None), rec("b", vec![], None)],
            false,
        );
        assert_eq!(e.steps[0].hooks[0].by_profile["v1.14.4"], vec!["cil_from_overlay".to_string()]);
    }
}
