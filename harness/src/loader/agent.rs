//! The agent: what one Cilium agent process does to a node across its life. `start` runs the
//! full loader (configuration → devices → plan → compile → attach) and regenerates every
//! endpoint; `stop` leaves the attachments in place, as the real agent does; `cleanup` is
//! `cilium cleanup`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::loader::attach::{self, AttachContext};
use crate::loader::compile::Compiler;
use crate::loader::config::{AgentConfig, Settings};
use crate::loader::datapath::{self, Op};
use crate::loader::devices;
use crate::loader::profile::Profile;
use crate::policy;
use crate::scenario::PodSpec;
use crate::topology::Node;

/// Why a step failed: the agent refused (an expectable outcome, as upstream's start-up errors
/// are), or the harness could not do its part (a kernel call failed).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Harness(String),
}

impl AgentError {
    fn harness(e: impl std::fmt::Display) -> AgentError {
        AgentError::Harness(e.to_string())
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

pub struct Agent<'c> {
    pub profile: Profile,
    /// ConfigMap keys and values, as edited by `restart` steps.
    pub config: BTreeMap<String, String>,
    node_ip: Option<IpAddr>,
    node_labels: BTreeMap<String, String>,
    compiler: &'c Compiler,
    bpffs: Option<PathBuf>,
    running: bool,
    settings: Option<Settings>,
    devices: Option<Vec<String>>,
    applied: BTreeMap<PathBuf, Applied>,
}

/// What a step did, for the record.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub regenerated: Vec<String>,
}

impl<'c> Agent<'c> {
    pub fn new(
        profile: Profile,
        config: BTreeMap<String, String>,
        node_ip: Option<IpAddr>,
        node_labels: BTreeMap<String, String>,
        compiler: &'c Compiler,
        bpffs: Option<PathBuf>,
    ) -> Agent<'c> {
        Agent {
            profile,
            config,
            node_ip,
            node_labels,
            compiler,
            bpffs,
            running: false,
            settings: None,
            devices: None,
            applied: BTreeMap::new(),
        }
    }

    /// The native device list the loader ended up with (None before the first start).
    pub fn devices(&self) -> Option<&[String]> {
        self.devices.as_deref()
    }

    pub fn running(&self) -> bool {
        self.running
    }

    /// Agent start-up: derive settings, detect devices, reload the host datapath, then
    /// regenerate every pod endpoint.
    pub fn start(&mut self, node: &Node, pods: &[PodSpec]) -> Result<StepOutcome, AgentError> {
        self.running = false;
        let cfg = AgentConfig::from_map(&self.config, self.profile).map_err(AgentError::refused)?;
        let settings = Settings::derive(&cfg, self.profile).map_err(AgentError::refused)?;
        self.settings = Some(settings);
        self.reload_host(node)?;
        self.running = true;
        let mut out = StepOutcome { regenerated: vec!["host".to_string()] };
        for pod in pods {
            self.regenerate_pod(node, pod)?;
            out.regenerated.push(pod.key());
        }
        Ok(out)
    }

    /// The host endpoint's regeneration: detection, then the whole host-datapath reload.
    fn reload_host(&mut self, node: &Node) -> Result<(), AgentError> {
        let mut settings = self.settings.clone().ok_or_else(|| AgentError::Harness("agent has no settings".into()))?;
        let links = node.links().map_err(AgentError::harness)?;
        let routes = node.routes().map_err(AgentError::harness)?;
        let sel = devices::select(&settings, &links, &routes, self.node_ip).map_err(AgentError::refused)?;
        settings.finish_kpr_init(&sel);
        let plan = datapath::plan(&settings, &sel, &links).map_err(AgentError::refused)?;
        let ctx = AttachContext::new(self.compiler, plan.defines.clone(), self.bpffs.clone());
        attach::execute(node.netns(), &ctx, &plan.ops).map_err(classify_attach)?;
        self.devices = Some(sel.devices.clone());
        self.settings = Some(settings);
        Ok(())
    }

    fn regenerate_pod(&mut self, node: &Node, pod: &PodSpec) -> Result<(), AgentError> {
        let settings = self.settings.as_ref().ok_or_else(|| AgentError::Harness("agent has no settings".into()))?;
        let lxc = node.lxc_name(&pod.key());
        let ops = datapath::endpoint_ops(settings, &lxc);
        let defines = datapath::endpoint_defines(settings);
        let ctx = AttachContext::new(self.compiler, defines, self.bpffs.clone());
        attach::execute(node.netns(), &ctx, &ops).map_err(classify_attach)?;
        Ok(())
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

    /// `cleanup`: `cilium cleanup` removes Cilium's filters and XDP programs and its links.
    pub fn cleanup(&mut self, node: &Node) -> Result<StepOutcome, AgentError> {
        self.running = false;
        let links = node.links().map_err(AgentError::harness)?;
        let ops = datapath::cleanup_ops(&links);
        let ctx = AttachContext::new(self.compiler, BTreeMap::new(), self.bpffs.clone());
        attach::execute(node.netns(), &ctx, &ops).map_err(AgentError::harness)?;
        self.devices = None;
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

    /// A topology change while the agent runs. v1.14.4 reacts only with runtime device
    /// detection on and devices required; then the host datapath is reloaded.
    pub fn link_changed(&mut self, node: &Node) -> Result<StepOutcome, AgentError> {
        let Some(settings) = &self.settings else { return Ok(StepOutcome::default()) };
        if !self.running || !settings.runtime_device_detection() {
            return Ok(StepOutcome::default());
        }
        self.reload_host(node)?;
        Ok(StepOutcome { regenerated: vec!["host".into()] })
    }

    /// `apply`: the endpoints the policies select are regenerated (pods: their programs
    /// reloaded; the host, with the host firewall on: the whole host datapath).
    pub fn apply(&mut self, node: &Node, pods: &[PodSpec], fixture: &Path) -> Result<StepOutcome, AgentError> {
        let policies = policy::load_policies(fixture).map_err(AgentError::refused)?;
        let out = self.regenerate_selected(node, pods, &policies)?;
        self.applied.insert(fixture.to_path_buf(), Applied { policies });
        Ok(out)
    }

    /// `delete`: the endpoints the fixture's policies selected are regenerated again.
    pub fn delete(&mut self, node: &Node, pods: &[PodSpec], fixture: &Path) -> Result<StepOutcome, AgentError> {
        let policies = match self.applied.remove(fixture) {
            Some(a) => a.policies,
            None => policy::load_policies(fixture).map_err(AgentError::refused)?,
        };
        self.regenerate_selected(node, pods, &policies)
    }

    fn regenerate_selected(&mut self, node: &Node, pods: &[PodSpec], policies: &[policy::Policy]) -> Result<StepOutcome, AgentError> {
        if !self.running {
            return Ok(StepOutcome::default());
        }
        let host_firewall = self.settings.as_ref().map(|s| s.enable_host_firewall()).unwrap_or(false);
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
                self.reload_host(node)?;
            } else if let Some(pod) = pods.iter().find(|p| p.key() == key) {
                self.regenerate_pod(node, pod)?;
            }
            out.regenerated.push(key);
        }
        Ok(out)
    }
}

/// A device that refuses native XDP is fatal for upstream's agent: an expectable refusal.
fn classify_attach(e: attach::AttachError) -> AgentError {
    if e.is_refusal() {
        AgentError::Refused(e.to_string())
    } else {
        AgentError::Harness(e.to_string())
    }
}
