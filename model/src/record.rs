//! The result record (JSON, as the contract shapes it), the table view, and the pure check of a
//! step's expectations against what was observed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::observed::{Attachment, Hook};
use crate::scenario::{DeviceExpect, Expect, ProgramExpect, TrafficExpect, XdpExpect};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Error,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }
}

/// One expectation that did not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// What was compared: `devices`, `attachments.bond0.ingress`, `unchanged`, ...
    pub key: String,
    pub expected: String,
    pub observed: String,
    /// Why, from the loader's reasoning: per device the selection rule that took it or left
    /// it out; per hook the plan ops that acted on it, or that none did (extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub action: String,
    /// 1-based line of the step in the scenario file.
    #[serde(default)]
    pub line: usize,
    pub status: Status,
    pub error: Option<String>,
    /// The loader's native device list after the step (null when the agent is not running).
    pub devices: Option<Vec<String>>,
    pub regenerated: Vec<String>,
    pub attachments: Vec<Attachment>,
    pub mismatches: Vec<Mismatch>,
    /// The policy maps the attached programs reference after the step (pods named
    /// `pod:NAMESPACE/NAME`); left out of the JSON when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_maps: Vec<crate::observed::PolicyMapView>,
    /// A `traffic` step's packets: sent, delivered, and per attached program how many of them
    /// it saw and dropped; absent for other steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficRecord>,
}

/// What a `traffic` step's packets did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficRecord {
    /// Packets sent (TCP: connection attempts, each one SYN).
    pub sent: u64,
    /// Packets that arrived at the destination (UDP datagrams read by the listener, TCP
    /// connections it accepted, ICMP echo replies back at the sender).
    pub delivered: u64,
    /// Every program attached in the node namespace during the step, in attachment order.
    pub programs: Vec<ProgramTraffic>,
}

/// One attached program's share of a `traffic` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramTraffic {
    pub device: String,
    pub hook: Hook,
    pub program: String,
    pub prog_id: u32,
    /// Packets of the step the program ran on.
    pub seen: u64,
    /// Of those, the ones it dropped.
    pub dropped: u64,
    /// `pod:NAMESPACE/NAME` when the device is a pod's lxc device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRecord {
    pub file: String,
    pub name: String,
    pub profile: String,
    pub status: Status,
    pub reason: Option<String>,
    /// The kernel it ran (or was skipped) on; set when a run covers several kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Wall time of the scenario in milliseconds.
    #[serde(default)]
    pub millis: u64,
    /// Where the time went (milliseconds per phase); absent where nothing was timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub skipped: usize,
}

impl Summary {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a ScenarioRecord>) -> Summary {
        let mut s = Summary::default();
        for r in records {
            match r.status {
                Status::Pass => s.passed += 1,
                Status::Fail => s.failed += 1,
                Status::Error => s.errors += 1,
                Status::Skipped => s.skipped += 1,
            }
        }
        s
    }

    /// The closing line of the table view: `N passed, N failed` (errors count as failed there),
    /// then `, N skipped` when something was skipped.
    pub fn line(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed + self.errors);
        if self.skipped > 0 {
            let _ = write!(s, ", {} skipped", self.skipped);
        }
        s
    }
}

/// The whole record printed by `hostdp run --format json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Kernel release the scenarios ran on; with several kernels, the first one.
    pub kernel: String,
    pub scenarios: Vec<ScenarioRecord>,
    pub summary: Summary,
    /// Per-kernel records when the run covered several kernels (`--kernel` given more than once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<KernelRun>,
}

/// The scenarios of one kernel, inside a multi-kernel record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRun {
    /// What was asked for (`host`, `debian-6.1`, a path).
    pub target: String,
    pub kernel: String,
    pub scenarios: Vec<ScenarioRecord>,
    pub summary: Summary,
    /// Wall time of this kernel's part, VM boot included, in milliseconds.
    #[serde(default)]
    pub millis: u64,
}

impl RunRecord {
    pub fn single(kernel: String, scenarios: Vec<ScenarioRecord>) -> RunRecord {
        let summary = Summary::of(&scenarios);
        RunRecord { kernel, scenarios, summary, runs: Vec::new() }
    }

    /// The per-kernel runs of this record: `runs`, or the record itself as one kernel's run
    /// (named by its kernel release, the only name a single-kernel record keeps).
    pub fn kernel_runs(&self) -> Vec<KernelRun> {
        if !self.runs.is_empty() {
            return self.runs.clone();
        }
        vec![KernelRun {
            target: self.kernel.clone(),
            kernel: self.kernel.clone(),
            scenarios: self.scenarios.clone(),
            summary: self.summary,
            millis: self.scenarios.iter().map(|s| s.millis).sum(),
        }]
    }

    /// Combines per-kernel runs: a scenario passes when it passed on at least one kernel and
    /// failed or errored on none; it is skipped only when skipped on every kernel.
    pub fn combine(runs: Vec<KernelRun>) -> RunRecord {
        let mut order: Vec<String> = Vec::new();
        let mut by_file: BTreeMap<String, Vec<&ScenarioRecord>> = BTreeMap::new();
        for run in &runs {
            for s in &run.scenarios {
                if !by_file.contains_key(&s.file) {
                    order.push(s.file.clone());
                }
                by_file.entry(s.file.clone()).or_default().push(s);
            }
        }
        let mut scenarios = Vec::new();
        for file in order {
            let recs = &by_file[&file];
            let worst = recs
                .iter()
                .filter(|r| matches!(r.status, Status::Fail | Status::Error))
                .max_by_key(|r| r.status)
                .copied();
            let chosen = worst.or_else(|| recs.iter().find(|r| r.status == Status::Pass).copied()).unwrap_or(recs[0]);
            let mut rec = chosen.clone();
            if rec.status == Status::Skipped {
                let reasons: BTreeSet<String> = recs
                    .iter()
                    .map(|r| {
                        format!("{}: {}", r.kernel.clone().unwrap_or_default(), r.reason.clone().unwrap_or_default())
                    })
                    .collect();
                rec.reason = Some(format!(
                    "skipped on every kernel tried ({})",
                    reasons.into_iter().collect::<Vec<_>>().join("; ")
                ));
            }
            scenarios.push(rec);
        }
        let kernel = runs.first().map(|r| r.kernel.clone()).unwrap_or_default();
        let summary = Summary::of(&scenarios);
        RunRecord { kernel, scenarios, summary, runs }
    }
}

/// The records of several runs grouped into one record per run: shards of one run
/// (`hostdp run --partition K/N`, or one kernel each) are merged, the rest kept apart. Two
/// records are shards of the same run when no (file, kernel) pair is in both and they do not
/// run under two different single profiles (as `run --profile` runs do). A merged record has
/// one kernel run per kernel release (scenarios sorted by file, times added up) and, with
/// several kernels, the combined scenarios of [`RunRecord::combine`].
pub fn merge_shards(recs: Vec<RunRecord>) -> Vec<RunRecord> {
    let mut groups: Vec<Vec<KernelRun>> = Vec::new();
    for rec in recs {
        let runs = rec.kernel_runs();
        let cells: BTreeSet<(String, String)> = cells_of(&runs);
        let profile = single_profile(&runs);
        let home = groups.iter_mut().find(|g| {
            let other = single_profile(g);
            cells_of(g).is_disjoint(&cells) && (profile.is_none() || other.is_none() || profile == other)
        });
        match home {
            Some(g) => g.extend(runs),
            None => groups.push(runs),
        }
    }
    groups.into_iter().map(merge_runs).collect()
}

fn cells_of(runs: &[KernelRun]) -> BTreeSet<(String, String)> {
    runs.iter().flat_map(|r| r.scenarios.iter().map(|s| (s.file.clone(), r.kernel.clone()))).collect()
}

/// The one profile every scenario of `runs` ran under, if there is one.
fn single_profile(runs: &[KernelRun]) -> Option<String> {
    let p: BTreeSet<&str> = runs.iter().flat_map(|r| r.scenarios.iter().map(|s| s.profile.as_str())).collect();
    if p.len() == 1 {
        p.into_iter().next().map(str::to_string)
    } else {
        None
    }
}

fn merge_runs(runs: Vec<KernelRun>) -> RunRecord {
    let mut by_kernel: Vec<KernelRun> = Vec::new();
    for r in runs {
        match by_kernel.iter_mut().find(|k| k.kernel == r.kernel) {
            Some(k) => {
                // A single-kernel record names its run by the release; keep a real target.
                if k.target == k.kernel {
                    k.target = r.target;
                }
                k.scenarios.extend(r.scenarios);
                k.millis += r.millis;
            }
            None => by_kernel.push(r),
        }
    }
    for k in &mut by_kernel {
        k.scenarios.sort_by(|a, b| a.file.cmp(&b.file));
        k.summary = Summary::of(&k.scenarios);
    }
    if by_kernel.len() == 1 {
        let k = by_kernel.remove(0);
        RunRecord::single(k.kernel, k.scenarios)
    } else {
        RunRecord::combine(by_kernel)
    }
}

/// What a step observed, for [`check`].
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub devices: Option<&'a [String]>,
    pub attachments: &'a [Attachment],
    /// The attachments after the previous step, for `unchanged`.
    pub previous: Option<&'a [Attachment]>,
    pub regenerated: &'a [String],
    /// The step's error (an agent refusal), if it failed.
    pub error: Option<&'a str>,
    /// `pod:NAMESPACE/NAME` → lxc device name.
    pub aliases: &'a BTreeMap<String, String>,
    /// What the agent decided at its last start, to say why a mismatch came out as it did.
    pub reasoning: Option<&'a crate::why::Reasoning>,
    /// A `traffic` step's figures.
    pub traffic: Option<&'a TrafficRecord>,
}

static NO_ALIASES: BTreeMap<String, String> = BTreeMap::new();

impl Default for Observed<'_> {
    fn default() -> Self {
        Observed {
            devices: None,
            attachments: &[],
            previous: None,
            regenerated: &[],
            error: None,
            aliases: &NO_ALIASES,
            reasoning: None,
            traffic: None,
        }
    }
}

/// Compares a step's expectations with what was observed. Every key given is checked; links
/// not listed under `attachments` must have nothing attached.
pub fn check(expect: &Expect, obs: &Observed<'_>) -> Vec<Mismatch> {
    let mut out = Vec::new();
    match (&expect.error, obs.error) {
        (Some(want), Some(got)) if !got.contains(want.as_str()) => {
            out.push(mm("error", format!("an error containing {want:?}"), got.to_string()))
        }
        (Some(want), None) => {
            out.push(mm("error", format!("an error containing {want:?}"), "the step succeeded".into()))
        }
        (None, Some(got)) => out.push(mm("error", "no error".into(), got.to_string())),
        _ => {}
    }
    if let Some(want) = &expect.devices {
        let mut want = want.clone();
        want.sort();
        let got: Vec<String> = obs.devices.map(|d| d.to_vec()).unwrap_or_default();
        if want != got {
            let mut m =
                mm("devices", fmt_list(&want), obs.devices.map(fmt_list).unwrap_or_else(|| "no agent running".into()));
            m.why = match (obs.reasoning, obs.devices) {
                (Some(r), Some(got)) => r.devices(&want, got),
                _ => vec!["the agent is not running: no device list".into()],
            };
            out.push(m);
        }
    }
    if let Some(want) = &expect.attachments {
        check_attachments(want, obs, &mut out);
    }
    if expect.unchanged == Some(true) {
        match obs.previous {
            None => out.push(mm("unchanged", "the attachments of the previous step".into(), "no previous step".into())),
            Some(prev) => {
                let a: BTreeSet<_> = prev.iter().map(Attachment::identity).collect();
                let b: BTreeSet<_> = obs.attachments.iter().map(Attachment::identity).collect();
                if a != b {
                    let gone: Vec<String> = a.difference(&b).map(fmt_identity).collect();
                    let new: Vec<String> = b.difference(&a).map(fmt_identity).collect();
                    let mut m = mm(
                        "unchanged",
                        "the same attachments as after the previous step".into(),
                        format!("removed [{}], added [{}]", gone.join(", "), new.join(", ")),
                    );
                    if let Some(r) = obs.reasoning {
                        let hooks: BTreeSet<(&String, Hook)> =
                            a.symmetric_difference(&b).map(|i| (&i.0, i.1)).collect();
                        for (dev, hook) in hooks {
                            for w in r.attachment(dev, Some(hook)) {
                                if !m.why.contains(&w) {
                                    m.why.push(w);
                                }
                            }
                        }
                    }
                    out.push(m);
                }
            }
        }
    }
    if let Some(want) = &expect.regenerated {
        let w: BTreeSet<&String> = want.iter().collect();
        let g: BTreeSet<&String> = obs.regenerated.iter().collect();
        if w != g {
            out.push(mm("regenerated", fmt_list(want), fmt_list(obs.regenerated)));
        }
    }
    if let Some(want) = &expect.traffic {
        check_traffic(want, obs, &mut out);
    }
    out
}

/// `expect.traffic`: `delivered`, and per listed link and hook the exact set of programs that
/// saw (`programs`) or dropped (`drops`) any of the step's packets, with their counts.
fn check_traffic(want: &TrafficExpect, obs: &Observed<'_>, out: &mut Vec<Mismatch>) {
    let Some(got) = obs.traffic else {
        out.push(mm("traffic", "a traffic step's figures".into(), "no traffic was sent".into()));
        return;
    };
    if let Some(d) = want.delivered {
        if d != got.delivered {
            out.push(mm("traffic.delivered", d.to_string(), format!("{} (of {} sent)", got.delivered, got.sent)));
        }
    }
    let resolve = |name: &str| -> String { obs.aliases.get(name).cloned().unwrap_or_else(|| name.to_string()) };
    for (what, map) in [("programs", &want.programs), ("drops", &want.drops)] {
        for (key, hooks) in map.iter().flatten() {
            let dev = resolve(key);
            for (hook, expected) in
                [(Hook::Ingress, &hooks.ingress), (Hook::Egress, &hooks.egress), (Hook::Xdp, &hooks.xdp)]
            {
                let Some(expected) = expected else { continue };
                let on_hook: Vec<(&str, u64)> = got
                    .programs
                    .iter()
                    .filter(|p| p.device == dev && p.hook == hook)
                    .map(|p| (p.program.as_str(), if what == "drops" { p.dropped } else { p.seen }))
                    .collect();
                let ok =
                    expected.iter().all(|(name, n)| {
                        let sum: u64 = on_hook.iter().filter(|(g, _)| same_program(name, g)).map(|(_, c)| c).sum();
                        sum == *n && (*n == 0 || on_hook.iter().any(|(g, _)| same_program(name, g)))
                    }) && on_hook.iter().all(|(g, c)| *c == 0 || expected.keys().any(|name| same_program(name, g)));
                if !ok {
                    let label = if key == &dev { dev.clone() } else { format!("{key} ({dev})") };
                    let fmt = |v: Vec<String>| format!("{{{}}}", v.join(", "));
                    let observed: Vec<String> =
                        on_hook.iter().filter(|(_, c)| *c > 0).map(|(g, c)| format!("{g}: {c}")).collect();
                    let observed = if on_hook.is_empty() { "no program attached".to_string() } else { fmt(observed) };
                    out.push(mm(
                        &format!("traffic.{what}.{label}.{}", hook.as_str()),
                        fmt(expected.iter().map(|(p, n)| format!("{p}: {n}")).collect()),
                        observed,
                    ));
                }
            }
        }
    }
}

fn check_attachments(want: &BTreeMap<String, DeviceExpect>, obs: &Observed<'_>, out: &mut Vec<Mismatch>) {
    let mut found = Vec::new();
    compare_attachments(want, obs, &mut found);
    for (mut m, device, hook) in found {
        if let Some(r) = obs.reasoning {
            m.why = r.attachment(&device, hook);
        }
        out.push(m);
    }
}

/// A mismatch with the device (kernel name) and hook it is about (`None`: the whole device).
type Targeted = (Mismatch, String, Option<Hook>);

fn compare_attachments(want: &BTreeMap<String, DeviceExpect>, obs: &Observed<'_>, out: &mut Vec<Targeted>) {
    let resolve = |name: &str| -> String { obs.aliases.get(name).cloned().unwrap_or_else(|| name.to_string()) };
    let listed: BTreeSet<String> = want.keys().map(|k| resolve(k)).collect();
    for (key, dev_expect) in want {
        let dev = resolve(key);
        let on_dev: Vec<&Attachment> = obs.attachments.iter().filter(|a| a.device == dev).collect();
        let label = if key == &dev { dev.clone() } else { format!("{key} ({dev})") };
        match dev_expect {
            DeviceExpect::Nothing => {
                if !on_dev.is_empty() {
                    out.push((
                        mm(&format!("attachments.{label}"), "nothing attached".into(), fmt_atts(&on_dev)),
                        dev.clone(),
                        None,
                    ));
                }
            }
            DeviceExpect::Hooks(h) => {
                for (hook, list) in [(Hook::Ingress, &h.ingress), (Hook::Egress, &h.egress)] {
                    let Some(list) = list else { continue };
                    let got: Vec<&Attachment> = on_dev.iter().copied().filter(|a| a.hook == hook).collect();
                    let ok = got.len() == list.len() && list.iter().zip(&got).all(|(w, g)| program_matches(w, g));
                    if !ok {
                        out.push((
                            mm(&format!("attachments.{label}.{}", hook.as_str()), fmt_expects(list), fmt_atts(&got)),
                            dev.clone(),
                            Some(hook),
                        ));
                    }
                }
                if let Some(x) = &h.xdp {
                    let got: Vec<&Attachment> = on_dev.iter().copied().filter(|a| a.hook == Hook::Xdp).collect();
                    let ok = match x {
                        XdpExpect::Nothing => got.is_empty(),
                        XdpExpect::Program(p) => got.len() == 1 && program_matches(p, got[0]),
                    };
                    if !ok {
                        let want = match x {
                            XdpExpect::Nothing => "nothing".to_string(),
                            XdpExpect::Program(p) => fmt_expect(p),
                        };
                        out.push((
                            mm(&format!("attachments.{label}.xdp"), want, fmt_atts(&got)),
                            dev.clone(),
                            Some(Hook::Xdp),
                        ));
                    }
                }
            }
        }
    }
    // Every link that is not listed must be bare (catches programs on bond slaves).
    let mut unlisted: BTreeMap<&str, Vec<&Attachment>> = BTreeMap::new();
    for a in obs.attachments {
        if !listed.contains(&a.device) {
            unlisted.entry(a.device.as_str()).or_default().push(a);
        }
    }
    for (dev, atts) in unlisted {
        let label = match &atts[0].endpoint {
            Some(e) => format!("{e} ({dev})"),
            None => dev.to_string(),
        };
        out.push((
            mm(&format!("attachments.{label}"), "nothing attached (link not listed)".into(), fmt_atts(&atts)),
            dev.to_string(),
            None,
        ));
    }
}

/// A program entry matches when the name matches and every long-form key given matches.
pub fn program_matches(w: &ProgramExpect, g: &Attachment) -> bool {
    same_program(&w.program, &g.program)
        && w.mechanism.as_deref().is_none_or(|m| {
            let got = match g.mechanism {
                crate::observed::Mechanism::Tc => "tc",
                crate::observed::Mechanism::Tcx => "tcx",
                crate::observed::Mechanism::Xdp => "xdp",
            };
            m == got
        })
        && w.filter.as_ref().is_none_or(|f| g.filter.as_ref() == Some(f))
        && w.priority.is_none_or(|p| g.priority == Some(p))
        && w.handle.is_none_or(|h| g.handle == Some(h))
        && w.mode.as_ref().is_none_or(|m| g.mode.as_ref() == Some(m))
}

/// The kernel keeps at most 15 bytes of a program name (BPF_OBJ_NAME_LEN - 1), so
/// `cil_from_container` is loaded as `cil_from_contai`: a name matches its kernel truncation.
pub fn same_program(expected: &str, kernel: &str) -> bool {
    const MAX: usize = 15;
    expected == kernel
        || (kernel.len() == MAX && expected.len() > MAX && expected.as_bytes()[..MAX] == *kernel.as_bytes())
}

fn mm(key: &str, expected: String, observed: String) -> Mismatch {
    Mismatch { key: key.to_string(), expected, observed, why: Vec::new() }
}

fn fmt_list(v: &[String]) -> String {
    format!("[{}]", v.join(", "))
}

fn fmt_identity(i: &(String, Hook, String, crate::observed::Mechanism)) -> String {
    format!("{} {} {} ({:?})", i.0, i.1.as_str(), i.2, i.3).to_lowercase()
}

/// `cil_from_netdev (tc cil_from_netdev-bond0 pref 1 handle 0x1)`.
pub fn fmt_att(a: &Attachment) -> String {
    match a.mechanism {
        crate::observed::Mechanism::Tc => format!(
            "{} (tc {} pref {} handle {:#x}{})",
            a.program,
            a.filter.as_deref().unwrap_or("?"),
            a.priority.unwrap_or(0),
            a.handle.unwrap_or(0),
            if a.direct_action == Some(true) { " da" } else { "" }
        ),
        crate::observed::Mechanism::Tcx => format!("{} (tcx)", a.program),
        crate::observed::Mechanism::Xdp => format!("{} (xdp {})", a.program, a.mode.as_deref().unwrap_or("?")),
    }
}

fn fmt_atts(v: &[&Attachment]) -> String {
    if v.is_empty() {
        return "nothing".into();
    }
    let hooks: Vec<String> = v
        .iter()
        .map(|a| {
            if v.iter().all(|b| b.hook == a.hook) {
                fmt_att(a)
            } else {
                format!("{}: {}", a.hook.as_str(), fmt_att(a))
            }
        })
        .collect();
    format!("[{}]", hooks.join(", "))
}

fn fmt_expect(p: &ProgramExpect) -> String {
    let mut s = p.program.clone();
    let mut extra = Vec::new();
    if let Some(m) = &p.mechanism {
        extra.push(m.clone());
    }
    if let Some(f) = &p.filter {
        extra.push(f.clone());
    }
    if let Some(x) = p.priority {
        extra.push(format!("pref {x}"));
    }
    if let Some(x) = p.handle {
        extra.push(format!("handle {x:#x}"));
    }
    if let Some(m) = &p.mode {
        extra.push(m.clone());
    }
    if !extra.is_empty() {
        let _ = write!(s, " ({})", extra.join(" "));
    }
    s
}

fn fmt_expects(v: &[ProgramExpect]) -> String {
    if v.is_empty() {
        return "nothing".into();
    }
    format!("[{}]", v.iter().map(fmt_expect).collect::<Vec<_>>().join(", "))
}

/// The table view of a run: one block per scenario, mismatches expected beside observed, a
/// re-run hint for failures, and the closing `N passed, N failed` line.
pub fn table(rec: &RunRecord) -> String {
    let mut s = String::new();
    if rec.runs.len() > 1 {
        let _ = writeln!(s, "kernels:");
        for r in &rec.runs {
            let _ = writeln!(
                s,
                "  {:<12} {:<28} {}  ({:.1} s)",
                r.target,
                r.kernel,
                r.summary.line(),
                r.millis as f64 / 1000.0
            );
        }
        for r in &rec.runs {
            let _ = writeln!(s, "\n== {} ({})", r.target, r.kernel);
            scenario_lines(&mut s, &r.scenarios);
        }
        let _ = writeln!(s, "\n== combined");
    } else {
        let _ = writeln!(s, "kernel {}", rec.kernel);
    }
    scenario_lines(&mut s, &rec.scenarios);
    let _ = writeln!(s, "{}", rec.summary.line());
    s
}

fn scenario_lines(s: &mut String, scenarios: &[ScenarioRecord]) {
    for sc in scenarios {
        let tag = match sc.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Error => "ERROR",
            Status::Skipped => "SKIP",
        };
        let _ = writeln!(s, "{tag:<5} {} [{}] ({} ms)", sc.file, sc.profile, sc.millis);
        if let Some(r) = &sc.reason {
            let _ = writeln!(s, "      {r}");
        }
        for st in &sc.steps {
            if st.status == Status::Pass {
                continue;
            }
            let _ = writeln!(
                s,
                "      step {} `{}` (line {}): {}",
                st_index(sc, st),
                st.action,
                st.line,
                st.status.as_str()
            );
            if let Some(e) = &st.error {
                let _ = writeln!(s, "        error: {e}");
            }
            for m in &st.mismatches {
                let _ = writeln!(
                    s,
                    "        {}:\n          expected: {}\n          observed: {}",
                    m.key, m.expected, m.observed
                );
                for w in &m.why {
                    let _ = writeln!(s, "          why: {w}");
                }
            }
        }
        if matches!(sc.status, Status::Fail | Status::Error) {
            let _ = writeln!(s, "      re-run just this one: hostdp run {}", sc.file);
        }
    }
}

fn st_index(sc: &ScenarioRecord, st: &StepRecord) -> usize {
    sc.steps.iter().position(|x| std::ptr::eq(x, st)).map(|i| i + 1).unwrap_or(0)
}

/// The README's behaviour table: for each scenario of a record, what its first `start` step
/// left on the given devices (`-` for nothing), one row per scenario. Produced from runs, never
/// written by hand (`ci/behaviour-table`).
pub fn behaviour_table(rec: &RunRecord, devices: &[&str]) -> String {
    let mut s = String::new();
    let _ = write!(s, "| scenario | kernel | status | selected devices |");
    for d in devices {
        let _ = write!(s, " {d} |");
    }
    s.push('\n');
    s.push_str(&"|---".repeat(4 + devices.len()));
    s.push_str("|\n");
    for sc in &rec.scenarios {
        let start = sc.steps.iter().find(|st| st.action == "start");
        let devs =
            start
                .and_then(|st| st.devices.clone())
                .map(|d| if d.is_empty() { "none".to_string() } else { d.join(", ") });
        let _ = write!(
            s,
            "| `{}` | {} | {} | {} |",
            sc.name,
            sc.kernel.as_deref().unwrap_or(&rec.kernel),
            sc.status.as_str(),
            devs.unwrap_or_else(|| "-".into())
        );
        for d in devices {
            let cell = match start {
                None => "-".to_string(),
                Some(st) => {
                    let on: Vec<String> = st
                        .attachments
                        .iter()
                        .filter(|a| a.device == *d)
                        .map(|a| format!("{}: {}", a.hook.as_str(), a.program))
                        .collect();
                    if on.is_empty() {
                        "-".into()
                    } else {
                        on.join("<br>")
                    }
                }
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s
}

/// The README's cross-profile table: one row per scenario, one column per record (each record a
/// run of the same files under one profile, `hostdp run --profile P`), each cell what the first
/// `start` step left on the given devices, or the agent's refusal.
pub fn profile_table(recs: &[RunRecord], devices: &[&str]) -> String {
    // One kernel for every record (the usual case): said once, so six columns stay narrow.
    let one_kernel = recs.first().map(|r| &r.kernel).filter(|k| recs.iter().all(|r| &r.kernel == *k));
    let mut s = match one_kernel {
        Some(k) => format!("| configuration (kernel {k}) |"),
        None => String::from("| configuration |"),
    };
    for r in recs {
        let p = r.scenarios.first().map(|x| x.profile.as_str()).unwrap_or("?");
        if one_kernel.is_some() {
            let _ = write!(s, " {p} |");
        } else {
            let _ = write!(s, " {p} ({}) |", r.kernel);
        }
    }
    s.push('\n');
    s.push_str(&"|---".repeat(1 + recs.len()));
    s.push_str("|\n");
    let Some(first) = recs.first() else { return s };
    for sc in &first.scenarios {
        let _ = write!(s, "| `{}` |", sc.name);
        for r in recs {
            let cell = match r.scenarios.iter().find(|x| x.file == sc.file) {
                None => "-".to_string(),
                Some(x) if x.status == Status::Skipped || x.status == Status::Error => {
                    format!("{}: {}", x.status.as_str(), x.reason.as_deref().unwrap_or(""))
                }
                Some(x) => match x.steps.iter().find(|st| st.action == "start") {
                    None => "-".into(),
                    Some(st) => start_cell(st, devices),
                },
            };
            let _ = write!(s, " {} |", cell.replace('|', "/"));
        }
        s.push('\n');
    }
    s
}

fn start_cell(st: &StepRecord, devices: &[&str]) -> String {
    if let Some(e) = &st.error {
        let mut e = e.clone();
        if e.len() > 70 {
            e.truncate(70);
            e.push('…');
        }
        return format!("refused: {e}");
    }
    let mut parts = Vec::new();
    for d in devices {
        let on: Vec<String> = st
            .attachments
            .iter()
            .filter(|a| a.device == *d)
            .map(|a| {
                let m = match a.mechanism {
                    crate::observed::Mechanism::Tc => "",
                    crate::observed::Mechanism::Tcx => " (tcx)",
                    crate::observed::Mechanism::Xdp => " (xdp)",
                };
                format!("{} {}{m}", a.hook.as_str(), a.program)
            })
            .collect();
        if !on.is_empty() {
            parts.push(format!("**{d}**: {}", on.join(", ")));
        }
    }
    if parts.is_empty() {
        "nothing on the NICs".into()
    } else {
        parts.join("<br>")
    }
}

/// Milliseconds per phase of one scenario (the record's `phases`), plus the clang runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub namespaces_and_links: f64,
    /// Configuration, device detection and planning: an agent step minus compile and attach.
    pub config_and_devices: f64,
    pub compile: f64,
    pub load_and_attach: f64,
    pub readback: f64,
    pub teardown: f64,
    /// Templates built by clang for this scenario (compile cache misses).
    #[serde(default)]
    pub clang_invocations: u64,
}

impl Phases {
    /// The phases' sum (what the harness accounts for out of the scenario's wall time).
    pub fn total(&self) -> f64 {
        self.namespaces_and_links
            + self.config_and_devices
            + self.compile
            + self.load_and_attach
            + self.readback
            + self.teardown
    }

    /// Element-wise sum, for totals over scenarios.
    pub fn add(&mut self, o: &Phases) {
        self.namespaces_and_links += o.namespaces_and_links;
        self.config_and_devices += o.config_and_devices;
        self.compile += o.compile;
        self.load_and_attach += o.load_and_attach;
        self.readback += o.readback;
        self.teardown += o.teardown;
        self.clang_invocations += o.clang_invocations;
    }

    /// `(name, ms)` in pipeline order.
    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("namespaces_and_links", self.namespaces_and_links),
            ("config_and_devices", self.config_and_devices),
            ("compile", self.compile),
            ("load_and_attach", self.load_and_attach),
            ("readback", self.readback),
            ("teardown", self.teardown),
        ]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::observed::Mechanism;
    use crate::scenario::HookExpect;

    /// A tc attachment as the read-back gives one (also used by other modules' tests).
    pub(crate) fn att(dev: &str, hook: Hook, prog: &str) -> Attachment {
        Attachment {
            device: dev.into(),
            hook,
            mechanism: Mechanism::Tc,
            program: prog.into(),
            filter: Some(format!("{prog}-{dev}")),
            priority: Some(1),
            handle: Some(1),
            direct_action: Some(true),
            prog_id: 7,
            tag: None,
            mode: None,
            endpoint: None,
        }
    }

    fn names(v: &[&str]) -> Vec<ProgramExpect> {
        v.iter().map(|p| ProgramExpect { program: p.to_string(), ..Default::default() }).collect()
    }

    #[test]
    fn unlisted_link_with_a_program_is_a_mismatch() {
        let atts =
            vec![att("bond0.212", Hook::Ingress, "cil_from_netdev"), att("eth0", Hook::Ingress, "cil_from_netdev")];
        let mut want = BTreeMap::new();
        want.insert(
            "bond0.212".to_string(),
            DeviceExpect::Hooks(HookExpect {
                ingress: Some(names(&["cil_from_netdev"])),
                egress: Some(vec![]),
                xdp: None,
            }),
        );
        let aliases = BTreeMap::new();
        let exp = Expect { attachments: Some(want), ..Default::default() };
        let m = check(&exp, &Observed { attachments: &atts, aliases: &aliases, ..Default::default() });
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].key, "attachments.eth0");
    }

    #[test]
    fn truncated_kernel_names_match() {
        assert!(same_program("cil_from_container", "cil_from_contai"));
        assert!(same_program("cil_from_netdev", "cil_from_netdev"));
        assert!(!same_program("cil_from_container", "cil_from_conta"));
        assert!(!same_program("cil_to_container", "cil_from_contai"));
    }

    #[test]
    fn long_form_compares_given_keys() {
        let a = att("bond0", Hook::Ingress, "cil_from_netdev");
        let mut w = ProgramExpect { program: "cil_from_netdev".into(), priority: Some(1), ..Default::default() };
        assert!(program_matches(&w, &a));
        w.filter = Some("cil_from_netdev-eth0".into());
        assert!(!program_matches(&w, &a));
        w.filter = None;
        w.mechanism = Some("tcx".into());
        assert!(!program_matches(&w, &a));
    }

    #[test]
    fn unchanged_and_error_and_devices() {
        let prev = vec![att("bond0.212", Hook::Ingress, "cil_from_netdev")];
        let now =
            vec![att("bond0.212", Hook::Ingress, "cil_from_netdev"), att("bond0", Hook::Ingress, "cil_from_netdev")];
        let aliases = BTreeMap::new();
        let exp = Expect { unchanged: Some(true), devices: Some(vec!["bond0.212".into()]), ..Default::default() };
        let devs = vec!["bond0".to_string(), "bond0.212".to_string()];
        let m = check(
            &exp,
            &Observed {
                devices: Some(&devs),
                attachments: &now,
                previous: Some(&prev),
                aliases: &aliases,
                ..Default::default()
            },
        );
        let keys: Vec<&str> = m.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, vec!["devices", "unchanged"]);
        let exp = Expect { error: Some("requires".into()), ..Default::default() };
        assert_eq!(check(&exp, &Observed { aliases: &aliases, ..Default::default() }).len(), 1);
        assert!(check(
            &exp,
            &Observed { aliases: &aliases, error: Some("BPF masquerade requires NodePort"), ..Default::default() }
        )
        .is_empty());
    }

    /// One record per profile on one kernel: the kernel is said once, the columns name profiles.
    #[test]
    fn profile_table_names_the_shared_kernel_once() {
        let rec = |profile: &str, kernel: &str| {
            let sc = ScenarioRecord {
                file: "a.yaml".into(),
                name: "a".into(),
                profile: profile.into(),
                status: Status::Pass,
                reason: None,
                kernel: None,
                millis: 0,
                phases: None,
                steps: vec![],
            };
            RunRecord::single(kernel.into(), vec![sc])
        };
        let six: Vec<RunRecord> = crate::profile::Profile::ALL.iter().map(|p| rec(p.as_str(), "6.12.1")).collect();
        let t = profile_table(&six, &["eth0"]);
        let head = t.lines().next().unwrap();
        assert_eq!(head, "| configuration (kernel 6.12.1) | v1.14.4 | v1.15 | v1.16 | v1.17 | v1.18 | v1.19 |");
        assert_eq!(t.lines().nth(1).unwrap(), "|---|---|---|---|---|---|---|");
        let mixed = profile_table(&[rec("v1.14.4", "6.1"), rec("v1.16", "6.12")], &["eth0"]);
        assert!(mixed.starts_with("| configuration | v1.14.4 (6.1) | v1.16 (6.12) |"), "{mixed}");
    }

    #[test]
    fn shards_merge_and_profile_runs_stay_apart() {
        let rec = |files: &[&str], profile: &str, kernel: &str| {
            let scenarios = files
                .iter()
                .map(|f| ScenarioRecord {
                    file: f.to_string(),
                    name: f.to_string(),
                    profile: profile.into(),
                    status: Status::Pass,
                    reason: None,
                    kernel: Some(kernel.into()),
                    millis: 10,
                    phases: None,
                    steps: vec![],
                })
                .collect();
            RunRecord::single(kernel.into(), scenarios)
        };
        // Three shards of one run on one kernel: one record, sorted by file.
        let m = merge_shards(vec![
            rec(&["c", "a"], "v1.16", "6.1"),
            rec(&["b"], "v1.16", "6.1"),
            rec(&["d"], "v1.16", "6.1"),
        ]);
        assert_eq!(m.len(), 1);
        let files: Vec<&str> = m[0].scenarios.iter().map(|s| s.file.as_str()).collect();
        assert_eq!(files, ["a", "b", "c", "d"]);
        assert_eq!(m[0].summary.passed, 4);
        assert!(m[0].runs.is_empty());
        // The same files on two kernels: one record with a run per kernel.
        let m = merge_shards(vec![rec(&["a"], "v1.16", "6.1"), rec(&["a"], "v1.16", "6.12")]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].runs.len(), 2);
        assert_eq!(m[0].scenarios.len(), 1);
        // Runs of the same files under two profiles (`run --profile`): a record each.
        let m = merge_shards(vec![rec(&["a", "b"], "v1.14.4", "6.1"), rec(&["a", "b"], "v1.16", "6.1")]);
        assert_eq!(m.len(), 2);
        // Disjoint files but two different `--profile`s: apart too.
        let m = merge_shards(vec![rec(&["a"], "v1.14.4", "6.1"), rec(&["b"], "v1.16", "6.1")]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn combine_prefers_failures_and_reports_skips() {
        let rec = |status, kernel: &str| ScenarioRecord {
            file: "a.yaml".into(),
            name: "a".into(),
            profile: "v1.14.4".into(),
            status,
            reason: if status == Status::Skipped { Some("kernel lacks bonding".into()) } else { None },
            kernel: Some(kernel.into()),
            millis: 0,
            phases: None,
            steps: vec![],
        };
        let run = |s, k: &str| KernelRun {
            target: k.into(),
            kernel: k.into(),
            scenarios: vec![rec(s, k)],
            summary: Summary::default(),
            millis: 0,
        };
        let r = RunRecord::combine(vec![run(Status::Skipped, "6.18"), run(Status::Pass, "6.1")]);
        assert_eq!(r.summary.passed, 1);
        let r = RunRecord::combine(vec![run(Status::Skipped, "6.18"), run(Status::Skipped, "6.1")]);
        assert_eq!(r.summary.skipped, 1);
        assert!(r.scenarios[0].reason.as_ref().unwrap().contains("every kernel"));
        let r = RunRecord::combine(vec![run(Status::Pass, "6.18"), run(Status::Fail, "6.1")]);
        assert_eq!(r.summary.failed, 1);
        assert_eq!(r.summary.line(), "0 passed, 1 failed");
    }

    #[test]
    fn traffic_counts_per_link_and_hook() {
        let prog = |dev: &str, hook, program: &str, seen, dropped| ProgramTraffic {
            device: dev.into(),
            hook,
            program: program.into(),
            prog_id: 1,
            seen,
            dropped,
            endpoint: None,
        };
        let got = TrafficRecord {
            sent: 3,
            delivered: 0,
            programs: vec![
                prog("bond0", Hook::Ingress, "cil_from_netdev", 3, 3),
                prog("bond0", Hook::Egress, "cil_to_netdev", 0, 0),
                prog("lxc1", Hook::Ingress, "cil_from_contai", 0, 0),
            ],
        };
        let aliases = BTreeMap::from([("pod:default/web".to_string(), "lxc1".to_string())]);
        let obs = Observed { traffic: Some(&got), aliases: &aliases, ..Default::default() };
        let want: Expect = serde_yaml::from_str(
            "traffic: {delivered: 0, programs: {bond0: {ingress: {cil_from_netdev: 3}, egress: {}}, eth0: {ingress: {}}, pod:default/web: {ingress: {cil_from_container: 0}}}, drops: {bond0: {ingress: {cil_from_netdev: 3}}}}",
        )
        .unwrap();
        assert_eq!(check(&want, &obs), vec![]);
        let want: Expect = serde_yaml::from_str(
            "traffic: {delivered: 3, programs: {bond0: {ingress: {}}, eth0: {ingress: {cil_from_netdev: 3}}}}",
        )
        .unwrap();
        let keys: Vec<(String, String, String)> =
            check(&want, &obs).into_iter().map(|m| (m.key, m.expected, m.observed)).collect();
        assert_eq!(
            keys,
            vec![
                ("traffic.delivered".into(), "3".into(), "0 (of 3 sent)".into()),
                ("traffic.programs.bond0.ingress".into(), "{}".into(), "{cil_from_netdev: 3}".into()),
                ("traffic.programs.eth0.ingress".into(), "{cil_from_netdev: 3}".into(), "no program attached".into()),
            ]
        );
        // Expecting traffic figures after a step that sent none is a mismatch, not a pass.
        let none = Observed::default();
        assert_eq!(check(&want, &none)[0].key, "traffic");
    }
}
