//! `hostdp explain`: a live node's verdict. Which devices a profile's loader would select on a
//! namespace's real links (and why, or why not), what its start would do, and whether what is
//! attached now is what the agent would leave: each difference named (missing, unexpected,
//! another tool's program it would remove or overwrite) with the plan op responsible.
//! Read-only: it reads links, routes and attachments, and changes nothing.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use hostdp_model::config::AgentConfig;
use hostdp_model::observed::Attachment;
use hostdp_model::profile::Profile;
use hostdp_model::verdict::{self, Difference};
use hostdp_model::{datapath, devices, exit};

/// Errors of `hostdp explain`; [`ExplainError::status`] says which exit status each gives.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Config(#[from] hostdp_model::scenario::ScenarioError),
    #[error("read the ConfigMap from standard input: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("unknown profile {0:?}: give v1.14.4, v1.15, v1.16, v1.17, v1.18 or v1.19")]
    Profile(String),
    #[error("--version: {0}")]
    Version(String),
    #[error("--profile {profile} and --version {version} disagree: that version is profile {implied}")]
    Disagree { profile: String, version: String, implied: String },
    #[error("--netns {name}: {source}")]
    Netns {
        name: String,
        #[source]
        source: crate::sys::netns::NetnsError,
    },
    #[error("read links and routes: {0}")]
    Netlink(#[from] crate::sys::netlink::NetlinkError),
    #[error(transparent)]
    Inspect(#[from] crate::sys::inspect::InspectError),
}

impl ExplainError {
    /// 2 for invalid input (a file, an argument, a namespace that does not exist), 4 when the
    /// kernel could not be read.
    pub fn status(&self) -> i32 {
        match self {
            ExplainError::Netlink(_) | ExplainError::Inspect(_) => exit::ENVIRONMENT,
            _ => exit::INVALID,
        }
    }
}

/// What `hostdp explain` is asked.
#[derive(Debug, Clone)]
pub struct ExplainArgs {
    /// A `cilium-config` ConfigMap manifest; `-` reads it from standard input.
    pub config: PathBuf,
    pub profile: Option<String>,
    /// A Cilium release or image tag (`1.16.8`), standing for its profile.
    pub version: Option<String>,
    pub netns: Option<String>,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// What is attached is what the agent's start would leave.
    Match,
    /// Something differs (see the differences).
    Differs,
    /// The agent would refuse to start (its message is the report's `refusal`).
    Refused,
}

impl Verdict {
    /// The exit status: 0 match, 1 differs, 5 refused.
    pub fn status(self) -> i32 {
        match self {
            Verdict::Match => exit::OK,
            Verdict::Differs => exit::FAILED,
            Verdict::Refused => exit::REFUSED,
        }
    }
}

/// One link and why the loader selects it or not.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceWhy {
    pub name: String,
    pub selected: bool,
    pub why: String,
}

/// Everything `explain` found; `--format json` prints it as it is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub profile: String,
    /// The release given with `--version`, if any.
    pub version: Option<String>,
    /// Notes on the reading: a release the profile was not read at, the node IP assumption.
    pub notes: Vec<String>,
    /// The namespace read (`null`: the root namespace, that of the calling process).
    pub netns: Option<String>,
    pub node_ip: Option<String>,
    /// Whether the kernel has tcx (6.6 and later), which decides tcx or tc where the profile
    /// attaches with tcx.
    pub kernel_tcx: bool,
    /// ConfigMap keys no profile models (ignored).
    pub ignored_keys: Vec<String>,
    pub verdict: Verdict,
    /// The agent's start-up error, when it would refuse to start.
    pub refusal: Option<String>,
    /// Start-up warnings the agent would log.
    pub warnings: Vec<String>,
    pub devices_required: Option<bool>,
    /// The selected devices, as the agent reports them.
    pub selected: Vec<String>,
    pub devices: Vec<DeviceWhy>,
    /// The ops of the agent's start, in order (differences name them by 1-based number).
    pub plan: Vec<String>,
    pub attached: Vec<Attachment>,
    /// What would be attached after the agent's start.
    pub would_leave: Vec<Attachment>,
    pub differences: Vec<Difference>,
}

/// Reads the ConfigMap, the profile and the namespace, and computes the verdict. Read-only.
pub fn explain(args: &ExplainArgs) -> Result<Report, ExplainError> {
    let (profile, note) = resolve_profile(args.profile.as_deref(), args.version.as_deref())?;
    let (map, ignored) = if args.config == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(ExplainError::Stdin)?;
        hostdp_model::scenario::parse_config_map_text(Path::new("<stdin>"), &buf)?
    } else {
        hostdp_model::scenario::load_config_map(&args.config)?
    };
    let read = || -> Result<_, crate::sys::netlink::NetlinkError> {
        let nl = crate::sys::netlink::Rtnl::open()?;
        Ok((nl.links()?, nl.routes()?, crate::sys::inspect::inspect_with(&nl)))
    };
    let (links, routes, now) = match &args.netns {
        Some(n) => {
            let ns =
                crate::sys::netns::Netns::open(n).map_err(|source| ExplainError::Netns { name: n.clone(), source })?;
            ns.run(read).map_err(|source| ExplainError::Netns { name: n.clone(), source })??
        }
        None => read()?,
    };
    let now = now?;
    let node_ip = node_ip_of(&links, &routes);
    let kernel_tcx = kernel_has_tcx();
    let mut report = Report {
        profile: profile.as_str().to_string(),
        version: args.version.clone(),
        notes: note.into_iter().collect(),
        netns: args.netns.clone(),
        node_ip: node_ip.map(|i| i.to_string()),
        kernel_tcx,
        ignored_keys: ignored,
        verdict: Verdict::Refused,
        refusal: None,
        warnings: Vec::new(),
        devices_required: None,
        selected: Vec::new(),
        devices: Vec::new(),
        plan: Vec::new(),
        attached: now.clone(),
        would_leave: Vec::new(),
        differences: Vec::new(),
    };
    report.notes.push(match node_ip {
        Some(ip) => format!("node IP taken as {ip}: the first global address of the device with the default route"),
        None => "no node IP: no device with a default route holds a global address".into(),
    });
    let started = AgentConfig::from_map(&map, profile).map_err(|e| e.to_string()).and_then(|cfg| {
        hostdp_model::startup::start(&cfg, profile, &links, &routes, node_ip).map_err(|e| e.to_string())
    });
    let st = match started {
        Ok(st) => st,
        Err(e) => {
            report.refusal = Some(e);
            return Ok(report);
        }
    };
    report.warnings = st.settings.warnings.clone();
    report.devices_required = Some(st.settings.are_devices_required());
    report.selected = st.selection.devices.clone();
    report.devices = links
        .iter()
        .map(|l| DeviceWhy {
            name: l.name.clone(),
            selected: st.selection.devices.contains(&l.name),
            why: devices::why(&st.settings, &st.selection, &l.name, &links, &routes, node_ip),
        })
        .collect();
    let plan = match datapath::plan(&st.settings, &st.selection, &links) {
        Ok(p) => p,
        Err(e) => {
            report.refusal = Some(e.to_string());
            return Ok(report);
        }
    };
    report.plan = plan.ops.iter().map(datapath::Op::describe).collect();
    let sim = verdict::simulate(&plan.ops, &now, kernel_tcx);
    report.differences = verdict::differences(&now, &sim, &plan.ops);
    report.would_leave = sim.after;
    report.would_leave.sort_by(|a, b| (&a.device, a.hook, a.priority).cmp(&(&b.device, b.hook, b.priority)));
    report.verdict = if report.differences.is_empty() { Verdict::Match } else { Verdict::Differs };
    Ok(report)
}

/// `--profile` and `--version` (the version's profile; both must agree); v1.14.4 when neither.
fn resolve_profile(profile: Option<&str>, version: Option<&str>) -> Result<(Profile, Option<String>), ExplainError> {
    let named = profile.map(|p| Profile::parse(p).ok_or_else(|| ExplainError::Profile(p.to_string()))).transpose()?;
    let Some(v) = version else { return Ok((named.unwrap_or(Profile::V1_14_4), None)) };
    let (implied, note) = Profile::from_version(v).map_err(ExplainError::Version)?;
    if let Some(p) = named.filter(|p| *p != implied) {
        return Err(ExplainError::Disagree {
            profile: p.as_str().into(),
            version: v.into(),
            implied: implied.as_str().into(),
        });
    }
    Ok((implied, note))
}

/// The Kubernetes node IP as `explain` assumes it: the first global address of the device that
/// holds the default route.
fn node_ip_of(
    links: &[hostdp_model::observed::LinkInfo],
    routes: &[hostdp_model::observed::RouteInfo],
) -> Option<IpAddr> {
    routes
        .iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .filter_map(|r| r.oif)
        .filter_map(|i| links.iter().find(|l| l.index == i))
        .flat_map(|l| l.addresses.iter())
        .map(|a| a.addr())
        .find(|a| devices::is_global_unicast(*a))
}

/// tcx came with Linux 6.6: read from the release, so that `explain` attaches nothing to find out.
fn kernel_has_tcx() -> bool {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut nums = release.split(|c: char| !c.is_ascii_digit()).map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// The report as text.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let version = r.version.as_deref().map(|v| format!(" (Cilium {v})")).unwrap_or_default();
    let ns = r.netns.as_deref().map_or("the root namespace".to_string(), |n| format!("namespace {n}"));
    let tcx = if r.kernel_tcx { "yes" } else { "no" };
    let _ = writeln!(out, "profile {}{version}, {ns}; kernel has tcx: {tcx}", r.profile);
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if !r.ignored_keys.is_empty() {
        let _ = writeln!(out, "ConfigMap keys the profile does not model (ignored): {}", r.ignored_keys.join(", "));
    }
    for w in &r.warnings {
        let _ = writeln!(out, "agent warning: {w}");
    }
    if let Some(req) = r.devices_required {
        let _ = writeln!(out, "devices required (AreDevicesRequired): {req}");
        let _ = writeln!(out, "selected devices: [{}]", r.selected.join(", "));
        for d in &r.devices {
            let _ = writeln!(out, "  {:<16} {}", d.name, d.why);
        }
    }
    if !r.plan.is_empty() {
        let _ = writeln!(out, "the agent's start would do:");
        for (i, p) in r.plan.iter().enumerate() {
            let _ = writeln!(out, "  {:>2}. {p}", i + 1);
        }
    }
    let _ = writeln!(out, "attached now:");
    if r.attached.is_empty() {
        let _ = writeln!(out, "  nothing");
    }
    for a in &r.attached {
        let full = Attachment { program: datapath::full_program_name(&a.program).to_string(), ..a.clone() };
        let _ = writeln!(out, "  {:<16} {:<8} {}", a.device, a.hook.as_str(), hostdp_model::record::fmt_att(&full));
    }
    match r.verdict {
        Verdict::Refused => {
            let _ = writeln!(
                out,
                "verdict: the agent would refuse to start: {}",
                r.refusal.as_deref().unwrap_or("(no message)")
            );
        }
        Verdict::Match => {
            let _ = writeln!(out, "verdict: match: what is attached is what the agent's start would leave");
        }
        Verdict::Differs => {
            let _ = writeln!(
                out,
                "verdict: differs: {} difference(s) from what the agent's start would leave",
                r.differences.len()
            );
            for d in &r.differences {
                let _ = writeln!(out, "  {}", d.line());
            }
        }
    }
    out
}
