//! What an agent's start would leave attached on a live node, simulated by running its plan on
//! what is attached now, and how that differs from now: `hostdp explain`'s verdict. Each op's
//! effect follows what `hostdp::sys::attach` does for it (which follows upstream), so a program
//! of another tool that the plan flushes or overwrites is named with the op that does it.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::datapath::{full_program_name, Op, XdpMode};
use crate::observed::{Attachment, Hook, Mechanism};

/// The kinds of difference between what is attached and what the agent would leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The agent would attach it; it is not attached now.
    Missing,
    /// Attached now (Cilium's), gone after the agent's start.
    Unexpected,
    /// Another tool's program that the agent would remove or overwrite.
    Foreign,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Unexpected => "unexpected",
            Kind::Foreign => "foreign",
        }
    }
}

/// One difference, with the plan op responsible (1-based, as `explain` numbers them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: Kind,
    pub device: String,
    pub hook: Hook,
    pub mechanism: Mechanism,
    /// The full program name (not the kernel's 15-byte cut).
    pub program: String,
    /// tc: the filter's priority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    /// `removed` or `overwritten` for what is attached now; `attached` for what is missing.
    pub action: &'static str,
    /// The plan op that does it (1-based index into the plan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<usize>,
}

impl Difference {
    /// `foreign: foreign_tc on eth0 egress (tc pref 100): the agent would remove it (op 12)`.
    pub fn line(&self) -> String {
        let how = match (self.mechanism, self.priority) {
            (Mechanism::Tc, Some(p)) => format!("tc pref {p}"),
            (Mechanism::Tc, None) => "tc".into(),
            (Mechanism::Tcx, _) => "tcx".into(),
            (Mechanism::Xdp, _) => "xdp".into(),
        };
        let who = match self.kind {
            Kind::Missing => "the agent would attach it, it is not attached",
            Kind::Unexpected => "attached now, the agent would not leave it",
            Kind::Foreign => "another tool's program, the agent would",
        };
        let op = self.op.map(|o| format!(" (op {o})")).unwrap_or_default();
        let act = match (self.kind, self.action) {
            (Kind::Foreign, "overwritten") => " overwrite it",
            (Kind::Foreign, _) => " remove it",
            _ => "",
        };
        format!(
            "{:<10} {} on {} {} ({how}): {who}{act}{op}",
            self.kind.as_str(),
            self.program,
            self.device,
            self.hook.as_str()
        )
    }
}

/// Whether an attachment is Cilium's: its program or filter is named as Cilium names them.
pub fn is_cilium(a: &Attachment) -> bool {
    a.program.starts_with("cil_") || a.filter.as_deref().is_some_and(is_cilium_filter)
}

/// `cilium cleanup`'s test on a filter name (cilium/cmd/cleanup.go `getTCFilters`).
pub fn is_cilium_filter(name: &str) -> bool {
    ["bpf_netdev", "bpf_network", "bpf_host", "bpf_lxc", "bpf_overlay", "cil_"].iter().any(|p| name.contains(p))
}

/// init.sh's `grep -qE "\b(bpf_host|cil_from_netdev|cil_to_netdev)"` on a filter name.
pub fn is_cilium_netdev_filter(name: &str) -> bool {
    ["bpf_host", "cil_from_netdev", "cil_to_netdev"].iter().any(|pat| {
        name.match_indices(pat).any(|(i, _)| {
            i == 0 || !name[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

/// The state after the plan, and what each op removed or overwrote.
#[derive(Debug, Clone, Default)]
pub struct Simulation {
    pub after: Vec<Attachment>,
    /// (attachment that was there, op index 1-based, `removed` / `overwritten`).
    pub gone: Vec<(Attachment, usize, &'static str)>,
}

fn kernel_name(symbol: &str) -> String {
    symbol.chars().take(15).collect()
}

fn new_att(device: &str, hook: Hook, mechanism: Mechanism, symbol: &str) -> Attachment {
    Attachment {
        device: device.to_string(),
        hook,
        mechanism,
        program: kernel_name(symbol),
        filter: None,
        priority: None,
        handle: None,
        direct_action: None,
        prog_id: 0,
        tag: None,
        mode: None,
        endpoint: None,
    }
}

fn tc_att(device: &str, hook: Hook, symbol: &str, priority: u16) -> Attachment {
    Attachment {
        filter: Some(format!("{symbol}-{device}")),
        priority: Some(priority.max(1)),
        handle: Some(1),
        direct_action: Some(true),
        ..new_att(device, hook, Mechanism::Tc, symbol)
    }
}

impl Simulation {
    fn remove(&mut self, op: usize, how: &'static str, pred: impl Fn(&Attachment) -> bool) {
        let (gone, kept): (Vec<Attachment>, Vec<Attachment>) = self.after.drain(..).partition(|a| pred(a));
        self.after = kept;
        self.gone.extend(gone.into_iter().map(|a| (a, op, how)));
    }
}

/// Runs `ops` on the attachments `now`: what is attached after them and what each removed.
/// `kernel_tcx`: whether the kernel has tcx (a tcx op falls back to tc filters without it).
pub fn simulate(ops: &[Op], now: &[Attachment], kernel_tcx: bool) -> Simulation {
    let mut s = Simulation { after: now.to_vec(), gone: Vec::new() };
    let on = |d: &str, h: Hook, m: Mechanism| {
        let d = d.to_string();
        move |a: &Attachment| a.device == d && a.hook == h && a.mechanism == m
    };
    for (i, op) in ops.iter().enumerate() {
        let n = i + 1;
        match op {
            Op::CreateHostDevices | Op::EnsureEncapDevice { .. } => {}
            Op::DeleteLink { device } => s.remove(n, "removed", |a| &a.device == device),
            Op::AttachTc { device, hook, program, priority, .. } => {
                let p = (*priority).max(1);
                s.remove(n, "overwritten", |a| {
                    on(device, *hook, Mechanism::Tc)(a) && a.priority == Some(p) && a.handle == Some(1)
                });
                s.after.push(tc_att(device, *hook, program.symbol, p));
            }
            Op::FlushTc { device, hook } => s.remove(n, "removed", on(device, *hook, Mechanism::Tc)),
            Op::RemoveObsoleteTc { device } => {
                for hook in [Hook::Ingress, Hook::Egress] {
                    let tc = on(device, hook, Mechanism::Tc);
                    if s.after.iter().any(|a| tc(a) && a.filter.as_deref().is_some_and(is_cilium_netdev_filter)) {
                        s.remove(n, "removed", &tc);
                    }
                }
            }
            Op::RemoveCiliumFilters { device } => {
                s.remove(n, "removed", |a| {
                    &a.device == device
                        && match a.mechanism {
                            Mechanism::Tc => is_cilium(a),
                            Mechanism::Xdp => a.program.contains("cil_xdp_entry"),
                            Mechanism::Tcx => false,
                        }
                });
            }
            Op::AttachXdp { device, program, mode, .. } => {
                s.remove(n, "overwritten", on(device, Hook::Xdp, Mechanism::Xdp));
                let mut a = new_att(device, Hook::Xdp, Mechanism::Xdp, program.symbol);
                a.mode = Some(mode_str(*mode).into());
                s.after.push(a);
            }
            Op::DetachXdp { device, keep, .. } => {
                let xdp = on(device, Hook::Xdp, Mechanism::Xdp);
                let there: Vec<&Attachment> = s.after.iter().filter(|a| xdp(a)).collect();
                let kept =
                    matches!((keep, there.as_slice()), (Some(m), [a]) if a.mode.as_deref() == Some(mode_str(*m)));
                if !kept {
                    s.remove(n, "removed", &xdp);
                }
            }
            Op::AttachSkb { device, hook, program, priority, tcx, remove_stale, .. } => {
                let name = kernel_name(program.symbol);
                if *tcx && kernel_tcx {
                    // An existing pin (the same program of an earlier start) is updated in place.
                    let tcx_on = on(device, *hook, Mechanism::Tcx);
                    if !s.after.iter().any(|a| tcx_on(a) && a.program == name) {
                        s.after.push(new_att(device, *hook, Mechanism::Tcx, program.symbol));
                    }
                    s.remove(n, "removed", on(device, *hook, Mechanism::Tc));
                    continue;
                }
                let p = (*priority).max(1);
                let tc = on(device, *hook, Mechanism::Tc);
                s.remove(n, "overwritten", |a| tc(a) && a.priority == Some(p) && a.handle == Some(1));
                s.after.push(tc_att(device, *hook, program.symbol, p));
                if *remove_stale {
                    s.remove(n, "removed", |a| {
                        tc(a) && a.priority != Some(p) && a.filter.as_deref().is_some_and(|f| f.starts_with("cil_"))
                    });
                }
                // A tcx link pinned for this program goes (the downgrade path).
                let tcx_on = on(device, *hook, Mechanism::Tcx);
                s.remove(n, "removed", |a| tcx_on(a) && a.program == name);
            }
            Op::DetachSkb { device, hook, symbol, .. } => {
                let name = kernel_name(symbol);
                let tcx_on = on(device, *hook, Mechanism::Tcx);
                s.remove(n, "removed", |a| tcx_on(a) && a.program == name);
                s.remove(n, "removed", on(device, *hook, Mechanism::Tc));
            }
            Op::RemoveObsoleteNetdev { device, device_dir } => {
                if device_dir.is_some() {
                    // The device's bpffs folder holds Cilium's pinned links.
                    s.remove(n, "removed", |a| &a.device == device && a.mechanism == Mechanism::Tcx && is_cilium(a));
                }
                for (hook, prefix) in [(Hook::Ingress, "cil_from_netdev"), (Hook::Egress, "cil_to_netdev")] {
                    let tc = on(device, hook, Mechanism::Tc);
                    if s.after.iter().any(|a| tc(a) && a.filter.as_deref().is_some_and(|f| f.starts_with(prefix))) {
                        s.remove(n, "removed", &tc);
                    }
                }
            }
        }
    }
    s
}

fn mode_str(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Native => "native",
        XdpMode::Generic => "generic",
    }
}

type Identity = (String, Hook, Mechanism, String, Option<u16>);

fn identity(a: &Attachment) -> Identity {
    let prio = if a.mechanism == Mechanism::Tc { a.priority } else { None };
    (a.device.clone(), a.hook, a.mechanism, a.program.clone(), prio)
}

/// The differences between what is attached `now` and what the simulation leaves, sorted by
/// device, hook and kind. Empty: the node is as the agent would leave it.
pub fn differences(now: &[Attachment], sim: &Simulation, ops_to_attach: &[Op]) -> Vec<Difference> {
    let before: BTreeSet<Identity> = now.iter().map(identity).collect();
    let after: BTreeSet<Identity> = sim.after.iter().map(identity).collect();
    let mut out = Vec::new();
    for a in now.iter().filter(|a| !after.contains(&identity(a))) {
        let (op, action) = sim
            .gone
            .iter()
            .rev()
            .find(|(g, _, _)| identity(g) == identity(a))
            .map(|(_, o, how)| (Some(*o), *how))
            .unwrap_or((None, "removed"));
        out.push(Difference {
            kind: if is_cilium(a) { Kind::Unexpected } else { Kind::Foreign },
            device: a.device.clone(),
            hook: a.hook,
            mechanism: a.mechanism,
            program: full_program_name(&a.program).to_string(),
            priority: if a.mechanism == Mechanism::Tc { a.priority } else { None },
            action,
            op,
        });
    }
    for a in sim.after.iter().filter(|a| !before.contains(&identity(a))) {
        out.push(Difference {
            kind: Kind::Missing,
            device: a.device.clone(),
            hook: a.hook,
            mechanism: a.mechanism,
            program: full_program_name(&a.program).to_string(),
            priority: if a.mechanism == Mechanism::Tc { a.priority } else { None },
            action: "attached",
            op: attaching_op(ops_to_attach, a),
        });
    }
    out.sort_by(|x, y| (&x.device, x.hook, x.kind, &x.program).cmp(&(&y.device, y.hook, y.kind, &y.program)));
    out
}

/// The op that attaches `a` (1-based), if one does.
fn attaching_op(ops: &[Op], a: &Attachment) -> Option<usize> {
    ops.iter()
        .position(|op| match op {
            Op::AttachTc { device, hook, program, .. } | Op::AttachSkb { device, hook, program, .. } => {
                device == &a.device && *hook == a.hook && kernel_name(program.symbol) == a.program
            }
            Op::AttachXdp { device, program, .. } => {
                device == &a.device && a.hook == Hook::Xdp && kernel_name(program.symbol) == a.program
            }
            _ => false,
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use crate::devices::tu::*;
    use crate::profile::Profile;

    fn foreign_tc(device: &str, hook: Hook) -> Attachment {
        Attachment {
            filter: Some("foreign_tc".into()),
            priority: Some(100),
            handle: Some(1),
            ..new_att(device, hook, Mechanism::Tc, "foreign_tc")
        }
    }

    fn plan_for(profile: Profile, pairs: &[(&str, &str)]) -> Vec<Op> {
        let links = vec![lo(), {
            let mut l = link(2, "eth0", "veth");
            l.addresses = vec!["192.168.10.2/24".parse().unwrap()];
            l
        }];
        let mut routes = kernel_routes(&links);
        routes.push(default_via("192.168.10.1", 2));
        let m = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cfg = AgentConfig::from_map(&m, profile).unwrap();
        let st = crate::startup::start(&cfg, profile, &links, &routes, Some("192.168.10.2".parse().unwrap())).unwrap();
        crate::datapath::plan(&st.settings, &st.selection, &links).unwrap().ops
    }

    #[test]
    fn v1_16_tcx_removes_a_foreign_egress_filter() {
        let ops = plan_for(Profile::V1_16, &[("kube-proxy-replacement", "true")]);
        let now = vec![foreign_tc("eth0", Hook::Egress)];
        let sim = simulate(&ops, &now, true);
        let d = differences(&now, &sim, &ops);
        let f: Vec<&Difference> = d.iter().filter(|x| x.kind == Kind::Foreign).collect();
        assert_eq!(f.len(), 1, "{d:?}");
        assert_eq!((f[0].device.as_str(), f[0].hook, f[0].action), ("eth0", Hook::Egress, "removed"));
        assert!(matches!(ops[f[0].op.unwrap() - 1], Op::AttachSkb { tcx: true, hook: Hook::Egress, .. }));
        assert!(d.iter().any(|x| x.kind == Kind::Missing && x.program == "cil_from_overlay"), "{d:?}");
    }

    #[test]
    fn v1_14_keeps_a_foreign_filter_at_another_priority_and_matches_its_own_result() {
        let ops = plan_for(Profile::V1_14_4, &[("kube-proxy-replacement", "strict")]);
        let now = vec![foreign_tc("eth0", Hook::Egress)];
        let sim = simulate(&ops, &now, false);
        assert!(differences(&now, &sim, &ops).iter().all(|x| x.kind == Kind::Missing));
        // What the agent leaves is what it would leave again: no difference.
        let again = simulate(&ops, &sim.after, false);
        assert!(differences(&sim.after, &again, &ops).is_empty());
    }

    #[test]
    fn a_foreign_filter_in_ciliums_slot_is_overwritten() {
        let ops = plan_for(Profile::V1_14_4, &[("kube-proxy-replacement", "strict")]);
        let mut squatter = foreign_tc("eth0", Hook::Ingress);
        squatter.priority = Some(1);
        let sim = simulate(&ops, std::slice::from_ref(&squatter), false);
        let d = differences(&[squatter], &sim, &ops);
        assert!(d.iter().any(|x| x.kind == Kind::Foreign && x.action == "overwritten"), "{d:?}");
    }
}
