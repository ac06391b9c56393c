//! Why a failing expectation came out as it did, from the loader's own reasoning: for a device
//! expected but not selected (or selected but not expected) the rule that decided it, and for
//! an attachment that differs the plan ops that acted on that hook, or that none did.

use std::net::IpAddr;

use crate::config::Settings;
use crate::datapath::Op;
use crate::devices::{self, Selection};
use crate::observed::{Hook, LinkInfo, RouteInfo};

/// What the agent decided at its last start or reload, kept for the explanations.
#[derive(Debug, Clone)]
pub struct Reasoning {
    pub settings: Settings,
    pub selection: Selection,
    /// The links and routes detection read.
    pub links: Vec<LinkInfo>,
    pub routes: Vec<RouteInfo>,
    pub node_ip: Option<IpAddr>,
    /// The plans the agent carried out, named (`host datapath plan`, `endpoint pod:default/web`,
    /// `cilium cleanup`), latest of each kind.
    pub plans: Vec<(String, Vec<Op>)>,
}

impl Reasoning {
    /// Records a plan under `name`, replacing the previous plan of that name.
    pub fn set_plan(&mut self, name: &str, ops: Vec<Op>) {
        self.plans.retain(|(n, _)| n != name);
        self.plans.push((name.to_string(), ops));
    }

    /// For each device in one list and not in the other, why the selection took it or not.
    pub fn devices(&self, expected: &[String], observed: &[String]) -> Vec<String> {
        let mut names: Vec<&String> = expected
            .iter()
            .filter(|d| !observed.contains(d))
            .chain(observed.iter().filter(|d| !expected.contains(d)))
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|d| {
                let why = devices::why(&self.settings, &self.selection, d, &self.links, &self.routes, self.node_ip);
                format!("{d}: {why}")
            })
            .collect()
    }

    /// The plan ops that acted on `device`'s `hook` (every hook when `None`), or that none did,
    /// and why the selection took the device or not when it is one of the node's links.
    pub fn attachment(&self, device: &str, hook: Option<Hook>) -> Vec<String> {
        let mut out = Vec::new();
        for (name, ops) in &self.plans {
            for (i, op) in ops.iter().enumerate() {
                if touches(op, device, hook) {
                    out.push(format!("{name}, op {}: {}", i + 1, op.describe()));
                }
            }
        }
        if out.is_empty() {
            let on = hook.map_or(device.to_string(), |h| format!("{device} {}", h.as_str()));
            out.push(format!("no op of the agent's plans acts on {on}"));
        }
        let own = device.starts_with("cilium_") || device.starts_with("lxc");
        if !own && self.links.iter().any(|l| l.name == device) {
            let why = devices::why(&self.settings, &self.selection, device, &self.links, &self.routes, self.node_ip);
            out.push(format!("{device}: {why}"));
        }
        out
    }
}

/// Whether `op` attaches to, or removes from, `device`'s `hook` (any hook when `None`).
fn touches(op: &Op, device: &str, hook: Option<Hook>) -> bool {
    let on = |d: &str, h: Hook| d == device && hook.is_none_or(|x| x == h);
    match op {
        Op::AttachTc { device: d, hook: h, .. }
        | Op::AttachSkb { device: d, hook: h, .. }
        | Op::FlushTc { device: d, hook: h }
        | Op::DetachSkb { device: d, hook: h, .. } => on(d, *h),
        Op::AttachXdp { device: d, .. } => on(d, Hook::Xdp),
        // Run on every link: named only when XDP is what is asked about.
        Op::DetachXdp { device: d, .. } => d == device && hook == Some(Hook::Xdp),
        Op::RemoveObsoleteTc { device: d } | Op::RemoveObsoleteNetdev { device: d, .. } => {
            d == device && hook != Some(Hook::Xdp)
        }
        Op::DeleteLink { device: d } | Op::RemoveCiliumFilters { device: d } => d == device,
        Op::CreateHostDevices | Op::EnsureEncapDevice { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use crate::devices::tu::*;
    use crate::profile::Profile;

    fn reasoning(profile: Profile, pairs: &[(&str, &str)]) -> Reasoning {
        let mut eth1 = link(3, "eth1", "veth");
        eth1.addresses = vec!["10.1.0.2/24".parse().unwrap()];
        let mut eth0 = link(2, "eth0", "veth");
        eth0.addresses = vec!["192.168.10.2/24".parse().unwrap()];
        let links = vec![lo(), eth0, eth1];
        let mut routes = kernel_routes(&links);
        routes.push(default_via("192.168.10.1", 2));
        let m = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cfg = AgentConfig::from_map(&m, profile).unwrap();
        let node_ip = Some("192.168.10.2".parse().unwrap());
        let st = crate::startup::start(&cfg, profile, &links, &routes, node_ip).unwrap();
        let plan = crate::datapath::plan(&st.settings, &st.selection, &links).unwrap();
        let mut r =
            Reasoning { settings: st.settings, selection: st.selection, links, routes, node_ip, plans: Vec::new() };
        r.set_plan("host datapath plan", plan.ops);
        r
    }

    #[test]
    fn a_veth_without_default_route_is_named_with_its_rule() {
        let r = reasoning(Profile::V1_15, &[("kube-proxy-replacement", "true")]);
        let why = r.devices(&["eth0".into(), "eth1".into()], &["eth0".into()]);
        assert_eq!(why, vec!["eth1: not selected (isSelectedDevice): veth without default route".to_string()]);
        let r = reasoning(Profile::V1_14_4, &[("kube-proxy-replacement", "strict")]);
        let why = r.devices(&["eth1".into()], &["eth0".into()]);
        assert!(why[0].starts_with("eth0: selected (isViableDevice)"), "{why:?}");
        assert_eq!(why[1], "eth1: not selected (isViableDevice): veth without a default route");
    }

    #[test]
    fn detection_that_did_not_run_says_so() {
        let r = reasoning(Profile::V1_15, &[]);
        let why = r.devices(&["eth0".into()], &[]);
        assert!(why[0].contains("AreDevicesRequired is false"), "{why:?}");
    }

    #[test]
    fn attachments_name_the_op_or_its_absence() {
        let r = reasoning(Profile::V1_14_4, &[("kube-proxy-replacement", "strict")]);
        let why = r.attachment("eth0", Some(Hook::Egress));
        assert!(
            why.iter()
                .any(|w| w.starts_with("host datapath plan, op ") && w.contains("attach cil_to_netdev on eth0 egress")),
            "{why:?}"
        );
        let why = r.attachment("eth1", Some(Hook::Ingress));
        assert!(why[0].contains("remove Cilium's old filters from eth1"), "{why:?}");
        let why = r.attachment("cilium_host", Some(Hook::Xdp));
        assert_eq!(why, vec!["no op of the agent's plans acts on cilium_host xdp".to_string()]);
    }
}
