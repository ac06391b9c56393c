//! What a scenario needs of the kernel: the feature names the capability probe answers for,
//! and, given a probe's answer, why a scenario cannot run here. Pure: the probing itself is the
//! kernel layer's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scenario::{Action, LinkKind, LinkSpec, Scenario};

/// Features the probe knows, beside the link kinds' (`veth`, `bonding`, `vlan`, ...).
/// `geneve` is no scenario link kind, but the agent creates `cilium_geneve` when configured so.
pub const EXTRA_FEATURES: &[&str] = &["vlan-802.1ad", "clsact", "cls_bpf", "bpf", "tcx", "geneve"];

/// Every link kind's feature name (see [`crate::observed::feature_of_kind`]).
pub const LINK_FEATURES: &[&str] =
    &["veth", "bonding", "vlan", "bridge", "dummy", "ifb", "wireguard", "macvlan", "vxlan", "vrf"];

/// Probed capabilities of the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel: String,
    /// Feature name → `None` if available, `Some(why not)` otherwise. Holds every name of
    /// [`LINK_FEATURES`] and [`EXTRA_FEATURES`].
    pub features: BTreeMap<String, Option<String>>,
}

impl Capabilities {
    /// Every known feature but `missing` (refused with "Operation not supported"), on
    /// `kernel`: a made-up answer, for tests of what depends on the probe.
    pub fn all_but(missing: &[&str], kernel: &str) -> Capabilities {
        let features = LINK_FEATURES
            .iter()
            .chain(EXTRA_FEATURES)
            .map(|f| (f.to_string(), missing.contains(f).then(|| "Operation not supported".to_string())))
            .collect();
        Capabilities { kernel: kernel.into(), features }
    }

    pub fn has(&self, feature: &str) -> bool {
        matches!(self.features.get(feature), Some(None))
    }

    /// Why each feature the scenario needs is unavailable (`kernel lacks bonding`), from its
    /// links (also those added by steps), `requires` and kernel bounds. Empty: it can run.
    pub fn missing_for(&self, scenario: &Scenario) -> Vec<String> {
        let mut needed: Vec<String> = Vec::new();
        let mut need = |f: &str| {
            if !needed.iter().any(|n| n == f) {
                needed.push(f.to_string());
            }
        };
        let step_links = scenario.steps.iter().filter_map(|s| match &s.action {
            Action::LinkAdd(l) => Some(l),
            _ => None,
        });
        for l in scenario.topology.links.iter().chain(step_links) {
            for f in link_features(l) {
                need(f);
            }
        }
        if !scenario.pods.is_empty() {
            need("veth");
        }
        // A tagged `traffic` step puts a VLAN sub-interface on the wire side.
        if scenario.steps.iter().any(|s| matches!(&s.action, Action::Traffic(t) if t.vlan.is_some())) {
            need("vlan");
        }
        // The agent's encapsulation device (cilium_vxlan / cilium_geneve), under each
        // configuration the scenario's agent runs with.
        for f in encap_features(scenario) {
            need(f);
        }
        for f in &scenario.requires.features {
            need(f);
        }
        let mut out: Vec<String> = needed
            .iter()
            .filter(|f| !self.has(f))
            .map(|f| match self.features.get(f.as_str()) {
                Some(_) => format!("kernel lacks {f}"),
                None => format!("kernel lacks {f} (not a feature the probe knows)"),
            })
            .collect();
        if let Some(min) = &scenario.requires.kernel_min {
            if compare_kernel(&self.kernel, min) == Some(std::cmp::Ordering::Less) {
                out.push(format!("kernel {} is older than {min} (requires kernel min)", self.kernel));
            }
        }
        if let Some(max) = &scenario.requires.kernel_max {
            if compare_kernel(&self.kernel, max) == Some(std::cmp::Ordering::Greater) {
                out.push(format!("kernel {} is newer than {max} (requires kernel max)", self.kernel));
            }
        }
        out
    }

    /// Why a feature is missing, as probed (`None` if available or unknown).
    pub fn detail(&self, feature: &str) -> Option<&str> {
        self.features.get(feature).and_then(|d| d.as_deref())
    }
}

/// A VM kernel `--kernel NAME` boots (`ci/kernels NAME` fetches it): its release, and the
/// features of the probe it lacks. Both Debian kernels build every link kind as a module; tcx
/// came in 6.6 and netkit in 6.7.
pub struct VmKernel {
    pub name: &'static str,
    pub release: &'static str,
    pub lacks: &'static [&'static str],
    /// What a batch costs before and after its scenarios (boot, starting `hostdp`, power-off),
    /// in [`share_out`]'s units of work: a unit was 0.50 s on debian-6.1 and 0.52 s on
    /// debian-6.12 in the scenario tests' batches, which spent 28 s and 36 s beside their
    /// scenarios (debian-6.12 boots later: its command starts 14.5 s after power-on against
    /// 12.2 s, alone).
    pub batch_work: usize,
}

/// The named VM kernels, newest first.
pub const VM_KERNELS: &[VmKernel] = &[
    VmKernel { name: "debian-6.12", release: "6.12.0", lacks: &[], batch_work: 70 },
    VmKernel { name: "debian-6.1", release: "6.1.0", lacks: &["tcx", "netkit"], batch_work: 56 },
];

/// The named VM kernels that have what `scenario` needs (features and kernel bounds), newest
/// first: what a skip on this kernel can point to.
pub fn hosting_kernels(scenario: &Scenario) -> Vec<&'static str> {
    VM_KERNELS
        .iter()
        .filter(|k| Capabilities::all_but(k.lacks, k.release).missing_for(scenario).is_empty())
        .map(|k| k.name)
        .collect()
}

/// Which of `kernels` (VM kernel names, in order of preference) runs each of `scenarios`, by
/// index into `kernels`: decided before any VM boots, so that the kernels' batches can run side
/// by side. A scenario goes to the first kernel that can host it, unless the choice cannot
/// change what it observes: when every profile it runs under predates tcx (before v1.16 Cilium
/// attaches with tc whatever the kernel has), it goes to the kernel with the least work so far,
/// the longest such scenarios first (work: its steps, and one for the node; a kernel starts
/// with its [`VmKernel::batch_work`]). A scenario none of them hosts goes to the first, which
/// then says why it skips it.
pub fn share_out(scenarios: &[&Scenario], kernels: &[&str]) -> Vec<usize> {
    let hosts: Vec<Vec<usize>> = scenarios
        .iter()
        .map(|sc| {
            let able = hosting_kernels(sc);
            (0..kernels.len()).filter(|&i| able.contains(&kernels[i])).collect()
        })
        .collect();
    let work = |sc: &Scenario| sc.steps.len() + 1;
    let mut load: Vec<usize> =
        kernels.iter().map(|k| VM_KERNELS.iter().find(|v| v.name == *k).map_or(0, |v| v.batch_work)).collect();
    let mut out = vec![0usize; scenarios.len()];
    let mut free = Vec::new();
    for (i, sc) in scenarios.iter().enumerate() {
        match hosts[i].as_slice() {
            [_, _, ..] if tc_only(sc) => free.push(i),
            [first, ..] => {
                out[i] = *first;
                load[*first] += work(sc);
            }
            [] => out[i] = 0,
        }
    }
    free.sort_by_key(|&i| (std::cmp::Reverse(work(scenarios[i])), i));
    for i in free {
        let k = *hosts[i].iter().min_by_key(|&&k| (load[k], k)).expect("two or more hosts");
        out[i] = k;
        load[k] += work(scenarios[i]);
    }
    out
}

/// Whether every profile the scenario runs under (its own and each `restart`'s) predates tcx,
/// so that it attaches the same way on any kernel. An unknown profile counts as not.
fn tc_only(scenario: &Scenario) -> bool {
    use crate::profile::{Change, Profile};
    let restarts = scenario.steps.iter().filter_map(|st| match &st.action {
        Action::Restart { profile: Some(p), .. } => Some(p),
        _ => None,
    });
    std::iter::once(&scenario.profile).chain(restarts).all(|p| Profile::parse(p).is_some_and(|p| !p.has(Change::Tcx)))
}

/// The link kinds of the devices the scenario's agent creates (encapsulation, cilium_wg0): its
/// configuration at the start and after each `restart` (profile changes included). A
/// configuration the agent refuses creates nothing.
fn encap_features(scenario: &Scenario) -> Vec<&'static str> {
    use crate::config::{AgentConfig, Settings, TunnelProtocol};
    use crate::profile::Profile;
    let mut config = scenario.agent.clone();
    let mut profile = scenario.profile.clone();
    let mut configs = vec![(config.clone(), profile.clone())];
    for step in &scenario.steps {
        if let Action::Restart { agent, profile: p } = &step.action {
            for (k, v) in agent {
                match v {
                    Some(v) => config.insert(k.clone(), v.clone()),
                    None => config.remove(k),
                };
            }
            if let Some(p) = p {
                profile = p.clone();
            }
            configs.push((config.clone(), profile.clone()));
        }
    }
    let mut out = Vec::new();
    for (map, p) in configs {
        let Some(p) = Profile::parse(&p) else { continue };
        let Some(settings) = AgentConfig::from_map(&map, p).ok().and_then(|c| Settings::derive(&c, p).ok()) else {
            continue;
        };
        let encap = match settings.encap() {
            Some((TunnelProtocol::Vxlan, _)) => Some("vxlan"),
            Some((TunnelProtocol::Geneve, _)) => Some("geneve"),
            None => None,
        };
        // The agent makes cilium_wg0 itself when the topology has none.
        let wireguard = settings.enable_wireguard.then_some("wireguard");
        for f in encap.into_iter().chain(wireguard) {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out
}

/// The features a link needs: its kind's, and `vlan-802.1ad` for such VLANs.
fn link_features(l: &LinkSpec) -> Vec<&'static str> {
    let mut v = vec![feature_of(l.kind)];
    if l.kind == LinkKind::Vlan && l.protocol.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("802.1ad")) {
        v.push("vlan-802.1ad");
    }
    v
}

fn feature_of(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Bond => "bonding",
        k => k.as_str(),
    }
}

/// The leading numeric components of a kernel release: `6.18.44-fc` → `[6, 18, 44]`.
pub fn kernel_version(release: &str) -> Vec<u64> {
    let mut v = Vec::new();
    for part in release.split('.') {
        let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            break;
        }
        v.push(digits.parse().unwrap_or(u64::MAX));
        if digits.len() != part.len() {
            break;
        }
    }
    v
}

/// Compares a kernel release with a bound on the bound's components only, so `6.5.7` is
/// within `max: 6.5` and `6.6.0` meets `min: 6.6`. `None` if either is not a version.
pub fn compare_kernel(release: &str, bound: &str) -> Option<std::cmp::Ordering> {
    let k = kernel_version(release);
    let b = kernel_version(bound);
    if k.is_empty() || b.is_empty() {
        return None;
    }
    let n = b.len();
    let mut k: Vec<u64> = k.into_iter().take(n).collect();
    k.resize(n, 0);
    Some(k.cmp(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn skips_point_to_a_kernel_that_has_the_features() {
        let sc = |links: &str, requires: &str| {
            let text = format!("profile: v1.16\n{requires}topology:\n  links:\n{links}steps:\n  - start: {{}}\n");
            crate::scenario::parse(std::path::Path::new("s.yaml"), text.as_bytes()).unwrap()
        };
        let bond = sc("    - {name: bond0, kind: bond}\n", "");
        assert_eq!(hosting_kernels(&bond), ["debian-6.12", "debian-6.1"]);
        let tcx = sc("    - {name: eth0, kind: veth}\n", "requires: [tcx]\n");
        assert_eq!(hosting_kernels(&tcx), ["debian-6.12"]);
        let old = sc("    - {name: eth0, kind: veth}\n", "requires: {kernel: {max: \"5.10\"}}\n");
        assert!(hosting_kernels(&old).is_empty());
    }

    #[test]
    fn kernel_versions_compare_numerically() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), vec![6, 18, 44]);
        assert_eq!(kernel_version("6.1.0-56-amd64"), vec![6, 1, 0]);
        assert_eq!(kernel_version("5.15"), vec![5, 15]);
        assert_eq!(compare_kernel("6.10.1", "6.6"), Some(Ordering::Greater));
        assert_eq!(compare_kernel("6.5.7", "6.5"), Some(Ordering::Equal));
        assert_eq!(compare_kernel("6.6.0-rc1", "6.6"), Some(Ordering::Equal));
        assert_eq!(compare_kernel("6.1.0-56-amd64", "6.6"), Some(Ordering::Less));
        assert_eq!(compare_kernel("6", "6.1"), Some(Ordering::Less));
        assert_eq!(compare_kernel("x", "6.1"), None);
    }

    fn caps(missing: &[&str], kernel: &str) -> Capabilities {
        Capabilities::all_but(missing, kernel)
    }

    fn scenario() -> Scenario {
        let link = LinkSpec::bare;
        let mut vlan = link("bond0.212", LinkKind::Vlan);
        vlan.protocol = Some("802.1ad".into());
        Scenario {
            path: "s.yaml".into(),
            name: "s".into(),
            description: None,
            profile: "v1.14.4".into(),
            requires: crate::scenario::Requires {
                features: vec!["tcx".into()],
                kernel_min: Some("6.6".into()),
                kernel_max: None,
            },
            node: Default::default(),
            topology: crate::scenario::TopologySpec {
                links: vec![link("eth0", LinkKind::Veth), link("bond0", LinkKind::Bond), vlan],
                routes: vec![],
            },
            agent: Default::default(),
            agent_ignored: vec![],
            agent_file: None,
            pods: vec![],
            steps: vec![crate::scenario::Step {
                action: Action::LinkAdd(link("wg0", LinkKind::Wireguard)),
                expect: Default::default(),
                line: 1,
            }],
            warnings: vec![],
        }
    }

    #[test]
    fn the_agents_encapsulation_device_needs_its_kind() {
        let mut s = scenario();
        s.requires = Default::default();
        s.steps.clear();
        // Tunnel routing (the default): vxlan.
        assert_eq!(caps(&["vxlan"], "6.18").missing_for(&s), vec!["kernel lacks vxlan"]);
        assert!(caps(&["geneve"], "6.18").missing_for(&s).is_empty());
        // Geneve from the start, or after a restart that switches to it.
        s.agent.insert("tunnel-protocol".into(), "geneve".into());
        assert_eq!(caps(&["geneve"], "6.18").missing_for(&s), vec!["kernel lacks geneve"]);
        s.agent.clear();
        s.steps.push(crate::scenario::Step {
            action: Action::Restart {
                agent: [("tunnel-protocol".to_string(), Some("geneve".to_string()))].into(),
                profile: None,
            },
            expect: Default::default(),
            line: 2,
        });
        assert_eq!(caps(&["geneve"], "6.18").missing_for(&s), vec!["kernel lacks geneve"]);
        // Native routing throughout: no encapsulation device.
        s.steps.clear();
        s.agent.insert("routing-mode".into(), "native".into());
        s.agent.insert("ipv4-native-routing-cidr".into(), "10.0.0.0/8".into());
        assert!(caps(&["vxlan", "geneve"], "6.18").missing_for(&s).is_empty());
        // WireGuard on: the agent makes cilium_wg0 when the topology has none.
        s.agent.insert("enable-wireguard".into(), "true".into());
        assert_eq!(caps(&["wireguard"], "6.18").missing_for(&s), vec!["kernel lacks wireguard"]);
    }

    #[test]
    fn missing_features_name_the_kernel_feature() {
        let s = scenario();
        assert!(caps(&[], "6.18.44").missing_for(&s).is_empty());
        let m = caps(&["bonding", "vlan-802.1ad", "wireguard", "tcx"], "6.1.0-56-amd64").missing_for(&s);
        assert_eq!(
            m,
            vec![
                "kernel lacks bonding",
                "kernel lacks vlan-802.1ad",
                "kernel lacks wireguard",
                "kernel lacks tcx",
                "kernel 6.1.0-56-amd64 is older than 6.6 (requires kernel min)",
            ]
        );
        let mut s2 = s.clone();
        s2.requires.kernel_min = None;
        s2.requires.kernel_max = Some("6.5".into());
        s2.requires.features = vec!["teleport".into()];
        let m = caps(&[], "6.6.1").missing_for(&s2);
        assert_eq!(
            m,
            vec![
                "kernel lacks teleport (not a feature the probe knows)",
                "kernel 6.6.1 is newer than 6.5 (requires kernel max)"
            ]
        );
    }

    #[test]
    fn scenarios_that_attach_alike_everywhere_are_shared_out_the_rest_go_first() {
        let sc = |profile: &str, requires: &str, steps: usize, restart: &str| {
            let mut text = format!(
                "profile: {profile}\n{requires}topology:\n  links:\n    - {{name: bond0, kind: bond}}\nsteps:\n  - start: {{}}\n"
            );
            for _ in 1..steps {
                text.push_str(&format!("  - restart: {{{restart}}}\n"));
            }
            crate::scenario::parse(std::path::Path::new("s.yaml"), text.as_bytes()).unwrap()
        };
        let kernels = ["debian-6.1", "debian-6.12"];
        let tcx = sc("v1.16", "", 3, "");
        let tcx_only = sc("v1.16", "requires:\n  kernel: {min: \"6.6\"}\n", 1, "");
        let old_long = sc("v1.14.4", "", 12, "");
        let old_short = sc("v1.15", "", 1, "");
        let old_short_2 = sc("v1.14.4", "", 1, "");
        let upgraded = sc("v1.15", "", 2, "profile: v1.16");
        let all = [&tcx, &tcx_only, &old_long, &old_short, &old_short_2, &upgraded];
        // The batches start at 56 (6.1) and 70 (6.12). tcx (4) and upgraded (3) stay on 6.1
        // (63), tcx_only (2) goes to 6.12 (72); then the tc-only ones, longest first, each where
        // the load is least: old_long (13) to 6.1 (63 < 72), old_short (2) to 6.12 (72 < 76),
        // old_short_2 (2) to 6.12 (74 < 76).
        assert_eq!(share_out(&all, &kernels), [0, 1, 0, 1, 1, 0]);
        // Deterministic: the same input, the same answer; one kernel takes everything.
        assert_eq!(share_out(&all, &kernels), share_out(&all, &kernels));
        assert_eq!(share_out(&all, &kernels[..1]), [0; 6]);
        assert!(tc_only(&old_long) && !tc_only(&upgraded) && !tc_only(&tcx));
    }
}
