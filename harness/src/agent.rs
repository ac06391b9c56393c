//! The agent: what one Cilium agent process does to a node across its life. `start` runs the
//! full loader (configuration → devices → plan → compile → attach) and regenerates every
//! endpoint; `stop` leaves the attachments in place, as the real agent does; `cleanup` is
//! `cilium cleanup`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::sys::attach::{self, AttachContext};
use crate::sys::compile::Compiler;
use crate::sys::netlink::{self, Change, NewLink};
use crate::sys::policymap;
use crate::sys::topology::Node;
use hostdp_model::config::{AgentConfig, Settings, WIREGUARD_DEVICE};
use hostdp_model::datapath::{self, Op};
use hostdp_model::policy;
use hostdp_model::profile::{self, Profile};
use hostdp_model::scenario::PodSpec;

/// Why a step failed: the agent refused (an expectable outcome, as upstream's start-up errors
/// are), or the harness could not do its part (a kernel call failed).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Upstream's agent refuses: its message, as a scenario's `error:` expects it.
    #[error("{0}")]
    Refused(String),
    /// A kernel or file-system call of the harness failed; the cause is kept.
    #[error(transparent)]
    Harness(Box<dyn std::error::Error + Send + Sync>),
    /// The harness cannot do what a step asks (no such pod, no settings yet).
    #[error("{0}")]
    Step(String),
}

impl AgentError {
    pub(crate) fn harness(e: impl std::error::Error + Send + Sync + 'static) -> AgentError {
        AgentError::Harness(Box::new(e))
    }
    fn refused(e: impl std::fmt::Display) -> AgentError {
        AgentError::Refused(e.to_string())
    }
}

/// An applied policy fixture: its policies, kept to compute selections again on delete.
#[derive(Debug, Clone)]
struct Applied {
    policies: Vec<policy::Policy>,
}

pub struct Agent {
    pub profile: Profile,
    /// ConfigMap keys and values, as edited by `restart` steps.
    pub config: BTreeMap<String, String>,
    node_ip: Option<IpAddr>,
    node_labels: BTreeMap<String, String>,
    compiler: Arc<Compiler>,
    bpffs: Option<PathBuf>,
    kernel_tcx: bool,
    running: bool,
    settings: Option<Settings>,
    devices: Option<Vec<String>>,
    /// The selection of the last host-datapath reload (v1.14.4's `Listen` starts from it).
    selection: Option<hostdp_model::devices::Selection>,
    /// init.sh's `$RUNDIR/device.state` from the previous start.
    device_state: Option<String>,
    applied: BTreeMap<PathBuf, Applied>,
    /// What the last start decided, and the plans carried out since, for failure messages.
    reasoning: Option<hostdp_model::why::Reasoning>,
}

/// What a step did, for the record.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub regenerated: Vec<String>,
}

impl Agent {
    pub fn new(
        profile: Profile,
        config: BTreeMap<String, String>,
        node_ip: Option<IpAddr>,
        node_labels: BTreeMap<String, String>,
        compiler: Arc<Compiler>,
        bpffs: Option<PathBuf>,
        kernel_tcx: bool,
    ) -> Agent {
        Agent {
            profile,
            config,
            node_ip,
            node_labels,
            compiler,
            bpffs,
            kernel_tcx,
            running: false,
            settings: None,
            devices: None,
            selection: None,
            device_state: None,
            applied: BTreeMap::new(),
            reasoning: None,
        }
    }

    /// The native device list the loader ended up with (None before the first start).
    pub fn devices(&self) -> Option<&[String]> {
        self.devices.as_deref()
    }

    /// What the last start decided and the plans carried out since (None before a start).
    pub fn reasoning(&self) -> Option<&hostdp_model::why::Reasoning> {
        self.reasoning.as_ref()
    }

    fn note_plan(&mut self, name: &str, ops: &[Op]) {
        if let Some(r) = &mut self.reasoning {
            r.set_plan(name, ops.to_vec());
        }
    }

    pub fn running(&self) -> bool {
        self.running
    }

    /// Agent start-up (`newDaemon`): derive settings, detect devices, finish the
    /// kube-proxy-replacement init, reload the host datapath, then regenerate every pod.
    pub fn start(&mut self, node: &Node, pods: &[PodSpec]) -> Result<StepOutcome, AgentError> {
        self.running = false;
        let cfg = AgentConfig::from_map(&self.config, self.profile).map_err(AgentError::refused)?;
        if cfg.enable_wireguard {
            self.ensure_wireguard_device(node)?;
        }
        self.detect_and_reload(node, &cfg)?;
        self.running = true;
        // v1.14.4: `Listen` starts right after, with the routes that exist (`ListExisting`).
        self.listen(node)?;
        let mut out = StepOutcome { regenerated: vec!["host".to_string()] };
        for pod in pods {
            self.regenerate_pod(node, pod)?;
            out.regenerated.push(pod.key());
        }
        Ok(out)
    }

    /// The agent creates its WireGuard device itself; here it is made in the node namespace.
    fn ensure_wireguard_device(&self, node: &Node) -> Result<(), AgentError> {
        let links = node.links().map_err(AgentError::harness)?;
        if links.iter().any(|l| l.name == WIREGUARD_DEVICE) {
            return Ok(());
        }
        node.netns()
            .run(|| {
                netlink::Rtnl::open()?.apply(&[
                    Change::AddLink { name: WIREGUARD_DEVICE.into(), link: NewLink::Wireguard },
                    Change::SetUp { name: WIREGUARD_DEVICE.into(), up: true },
                ])
            })
            .map_err(AgentError::harness)?
            .map_err(AgentError::harness)
    }

    /// `reloadHostDatapath` (plus init.sh and the XDP set-up) for a device selection.
    fn reload_host(
        &mut self,
        node: &Node,
        sel: &hostdp_model::devices::Selection,
        links: &[hostdp_model::observed::LinkInfo],
    ) -> Result<(), AgentError> {
        let settings = self.settings.as_ref().ok_or_else(|| AgentError::Step("agent has no settings".into()))?;
        let plan = datapath::plan_with_state(settings, sel, links, self.device_state.as_deref())
            .map_err(AgentError::refused)?;
        let ctx = AttachContext {
            compiler: self.compiler.clone(),
            defines: plan.defines.clone(),
            bpffs: self.bpffs.clone(),
            kernel_tcx: self.kernel_tcx,
        };
        if let Some(r) = &mut self.reasoning {
            r.selection = sel.clone();
            r.links = links.to_vec();
            r.set_plan("host datapath plan", plan.ops.clone());
        }
        attach::execute(node.netns(), &ctx, &plan.ops).map_err(classify_attach)?;
        // Reported sorted (the contract's `devices`); upstream appends cilium_wg0 at the end.
        let mut devices = sel.devices.clone();
        devices.sort();
        self.devices = Some(devices);
        self.selection = Some(sel.clone());
        self.device_state = plan.device_state.clone();
        if plan.defines.contains_key("ENABLE_HOST_FIREWALL") {
            self.write_policy_map(&policy::Endpoint::host(&self.node_labels), policymap::HOST_ENDPOINT)?;
        }
        Ok(())
    }

    /// Detection again and the whole host-datapath reload (the host endpoint's regeneration).
    fn regenerate_host(&mut self, node: &Node) -> Result<(), AgentError> {
        let cfg = AgentConfig::from_map(&self.config, self.profile).map_err(AgentError::refused)?;
        self.detect_and_reload(node, &cfg)
    }

    /// `newDaemon` up to the datapath (settings, detection, KPR init) on the node's links as
    /// they are now, then the host-datapath reload.
    fn detect_and_reload(&mut self, node: &Node, cfg: &AgentConfig) -> Result<(), AgentError> {
        let links = node.links().map_err(AgentError::harness)?;
        let routes = node.routes().map_err(AgentError::harness)?;
        let startup = hostdp_model::startup::start(cfg, self.profile, &links, &routes, self.node_ip)
            .map_err(AgentError::refused)?;
        let mut plans = self.reasoning.take().map(|r| r.plans).unwrap_or_default();
        plans.retain(|(n, _)| n.starts_with("endpoint "));
        self.reasoning = Some(hostdp_model::why::Reasoning {
            settings: startup.settings.clone(),
            selection: startup.selection.clone(),
            links: links.clone(),
            routes: routes.clone(),
            node_ip: self.node_ip,
            plans,
        });
        self.settings = Some(startup.settings);
        self.reload_host(node, &startup.selection, &links)
    }

    fn regenerate_pod(&mut self, node: &Node, pod: &PodSpec) -> Result<(), AgentError> {
        let settings = self.settings.as_ref().ok_or_else(|| AgentError::Step("agent has no settings".into()))?;
        let lxc = node.lxc_name(&pod.key());
        let identity = endpoint_identity(pod);
        let mut ops: Vec<Op> = datapath::endpoint_ops(settings, &lxc);
        for op in &mut ops {
            if let Op::AttachTc { seclabel, .. } | Op::AttachSkb { seclabel, .. } = op {
                *seclabel = identity;
            }
        }
        let ctx = AttachContext {
            compiler: self.compiler.clone(),
            defines: BTreeMap::new(),
            bpffs: self.bpffs.clone(),
            kernel_tcx: self.kernel_tcx,
        };
        self.note_plan(&format!("endpoint pod:{}", pod.key()), &ops);
        attach::execute(node.netns(), &ctx, &ops).map_err(classify_attach)?;
        self.write_policy_map(&policy::Endpoint::pod(&pod.namespace, &pod.name, &pod.labels), &lxc)
    }

    /// The endpoint's policy map after its regeneration: the entries of every applied policy.
    fn write_policy_map(&self, endpoint: &policy::Endpoint, name: &str) -> Result<(), AgentError> {
        let policies = self.applied.values().flat_map(|a| a.policies.iter());
        policymap::write_endpoint(self.bpffs.as_deref(), policies, endpoint, name).map_err(AgentError::harness)?;
        Ok(())
    }

    /// `delete-pod`: the endpoint goes, and its pinned policy map with it.
    pub fn pod_deleted(&mut self, node: &Node, pod: &PodSpec) -> Result<StepOutcome, AgentError> {
        if let Some(b) = &self.bpffs {
            policymap::remove(b, &node.lxc_name(&pod.key())).map_err(AgentError::harness)?;
        }
        Ok(StepOutcome::default())
    }

    /// `restart`: the agent stops, the ConfigMap is edited, the agent starts again.
    pub fn restart(
        &mut self,
        node: &Node,
        pods: &[PodSpec],
        changes: &BTreeMap<String, Option<String>>,
        profile: Option<&str>,
    ) -> Result<StepOutcome, AgentError> {
        for (k, v) in changes {
            match v {
                Some(v) => self.config.insert(k.clone(), v.clone()),
                None => self.config.remove(k),
            };
        }
        if let Some(p) = profile {
            self.profile = Profile::parse(p).ok_or_else(|| AgentError::Refused(format!("unknown profile {p:?}")))?;
        }
        self.start(node, pods)
    }

    /// `stop`: the process goes away; what it attached stays.
    pub fn stop(&mut self) -> StepOutcome {
        self.running = false;
        StepOutcome::default()
    }

    /// `cleanup`: `cilium cleanup` removes Cilium's filters and XDP programs and its links
    /// (v1.16: its bpffs folder too).
    pub fn cleanup(&mut self, node: &Node) -> Result<StepOutcome, AgentError> {
        self.running = false;
        let links = node.links().map_err(AgentError::harness)?;
        let ops = datapath::cleanup_ops(&links);
        self.note_plan("cilium cleanup", &ops);
        let ctx = AttachContext {
            compiler: self.compiler.clone(),
            defines: BTreeMap::new(),
            bpffs: self.bpffs.clone(),
            kernel_tcx: self.kernel_tcx,
        };
        attach::execute(node.netns(), &ctx, &ops).map_err(AgentError::harness)?;
        if let Some(b) = &self.bpffs {
            policymap::remove_all(b).map_err(AgentError::harness)?;
        }
        // v1.16's cleanup also removes Cilium's bpffs folder (`removeCiliumBPFFS`), which
        // unpins, and so detaches, its tcx links.
        if let (true, Some(b)) = (self.profile.has(profile::Change::CleanupRemovesBpffs), &self.bpffs) {
            attach::remove_pins(&b.join("cilium")).map_err(AgentError::harness)?;
        }
        self.devices = None;
        self.selection = None;
        Ok(StepOutcome::default())
    }

    /// A new pod endpoint: regenerated if the agent runs.
    pub fn pod_added(&mut self, node: &Node, pod: &PodSpec) -> Result<StepOutcome, AgentError> {
        if !self.running {
            return Ok(StepOutcome::default());
        }
        self.regenerate_pod(node, pod)?;
        Ok(StepOutcome { regenerated: vec![pod.key()] })
    }

    /// Whether the running agent watches the node's links and routes: v1.14.4 and v1.15 only
    /// with runtime device detection on and devices required; v1.16's device reloader always
    /// runs (the flag is deprecated and ignored).
    fn watches_devices(&self) -> bool {
        let Some(settings) = &self.settings else { return false };
        self.running
            && (settings.profile.has(profile::Change::DeviceReloaderAlwaysOn)
                || (settings.enable_runtime_device_detection && settings.are_devices_required()))
    }

    /// v1.14.4 `(*DeviceManager).Listen` then `ReloadOnDeviceChange`: the device list is
    /// updated from the routes and link deletions ([`hostdp_model::devices::listen_update`]);
    /// only a changed list reloads the datapath. Returns whether it did.
    fn listen(&mut self, node: &Node) -> Result<bool, AgentError> {
        let (Some(settings), Some(sel)) = (&self.settings, &self.selection) else { return Ok(false) };
        if !settings.profile.has(profile::Change::ListenRuntimeDevices) || !self.watches_devices() {
            return Ok(false);
        }
        let links = node.links().map_err(AgentError::harness)?;
        let routes = node.routes().map_err(AgentError::harness)?;
        let devices = hostdp_model::devices::listen_update(settings, &sel.devices, &links, &routes);
        if let Some(r) = &mut self.reasoning {
            r.routes = routes.clone();
        }
        let mut before = sel.devices.clone();
        before.sort();
        if devices == before {
            return Ok(false);
        }
        let sel = hostdp_model::devices::Selection { devices, ..sel.clone() };
        self.reload_host(node, &sel, &links)?;
        Ok(true)
    }

    /// A change of the node's links or routes while the agent runs. v1.14.4 follows `Listen`;
    /// later profiles detect the devices again and reload the host datapath.
    pub fn link_changed(&mut self, node: &Node) -> Result<StepOutcome, AgentError> {
        if !self.watches_devices() {
            return Ok(StepOutcome::default());
        }
        let listens = self.settings.as_ref().is_some_and(|s| s.profile.has(profile::Change::ListenRuntimeDevices));
        if listens {
            let reloaded = self.listen(node)?;
            return Ok(StepOutcome { regenerated: if reloaded { vec!["host".into()] } else { Vec::new() } });
        }
        self.regenerate_host(node)?;
        Ok(StepOutcome { regenerated: vec!["host".into()] })
    }

    /// `apply`: the endpoints the policies select are regenerated (pods: their programs
    /// reloaded; the host, with the host firewall on: the whole host datapath).
    pub fn apply(&mut self, node: &Node, pods: &[PodSpec], fixture: &Path) -> Result<StepOutcome, AgentError> {
        let policies = load_policies(fixture)?;
        // Stored first, as the API server stores it: the regenerated endpoints' maps include it.
        self.applied.insert(fixture.to_path_buf(), Applied { policies: policies.clone() });
        self.regenerate_selected(node, pods, &policies)
    }

    /// `delete`: the endpoints the fixture's policies selected are regenerated again.
    pub fn delete(&mut self, node: &Node, pods: &[PodSpec], fixture: &Path) -> Result<StepOutcome, AgentError> {
        let policies = match self.applied.remove(fixture) {
            Some(a) => a.policies,
            None => load_policies(fixture)?,
        };
        self.regenerate_selected(node, pods, &policies)
    }

    fn regenerate_selected(
        &mut self,
        node: &Node,
        pods: &[PodSpec],
        policies: &[policy::Policy],
    ) -> Result<StepOutcome, AgentError> {
        if !self.running {
            return Ok(StepOutcome::default());
        }
        let host_firewall = self.settings.as_ref().map(|s| s.enable_host_firewall).unwrap_or(false);
        let pod_refs: Vec<(String, String, BTreeMap<String, String>)> =
            pods.iter().map(|p| (p.namespace.clone(), p.name.clone(), p.labels.clone())).collect();
        let mut selected = std::collections::BTreeSet::new();
        for p in policies {
            for e in policy::select_endpoints(p, &pod_refs, &self.node_labels, host_firewall) {
                selected.insert(e.to_string());
            }
        }
        let mut out = StepOutcome::default();
        for key in selected {
            if key == "host" {
                self.regenerate_host(node)?;
            } else if let Some(pod) = pods.iter().find(|p| p.key() == key) {
                self.regenerate_pod(node, pod)?;
            }
            out.regenerated.push(key);
        }
        Ok(out)
    }
}

/// The policies of a fixture (documents of other kinds are not the agent's business).
fn load_policies(fixture: &Path) -> Result<Vec<policy::Policy>, AgentError> {
    let docs = policy::load_fixture(fixture).map_err(AgentError::refused)?;
    Ok(policy::policies(&docs).cloned().collect())
}

/// A pod's security identity: stable per labels, in the range Cilium allocates cluster-local
/// identities from (256 and up), so programs and policy maps can tell endpoints apart.
pub fn endpoint_identity(pod: &PodSpec) -> u32 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(pod.namespace.as_bytes());
    for (k, v) in &pod.labels {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b";");
    }
    let d = h.finalize();
    256 + (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 65000)
}

/// A device that refuses `cil_xdp_entry` is fatal for upstream's agent (`Reinitialize`:
/// `log.Fatal("Failed to compile XDP program")`): an expectable refusal.
fn classify_attach(e: attach::AttachError) -> AgentError {
    match e {
        attach::AttachError::XdpRefused { .. } => AgentError::Refused(format!("Failed to compile XDP program: {e}")),
        e => AgentError::harness(e),
    }
}
