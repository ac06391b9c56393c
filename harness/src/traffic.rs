//! The `traffic` step: where the packets start and end on the scenario's node, and what each
//! attached program made of them (its marked counters read before and after).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::sys::crosscheck;
use crate::sys::inspect::{self, Counters};
use crate::sys::netlink::{self, Change};
use crate::sys::topology::Node;
use crate::sys::traffic::{self, Flow, TrafficError};
use hostdp_model::observed::LinkInfo;
use hostdp_model::record::{ProgramTraffic, TrafficRecord};
use hostdp_model::scenario::{Action, LinkSpec, PeerIn, Scenario, TrafficFrom, TrafficSpec};

/// Sends the step's packets and reads what every program attached in the node namespace saw
/// and dropped of them. `aliases` maps `pod:NAMESPACE/NAME` to lxc device names. With the
/// cross-check on, also where the figures disagree with `bpftool prog show`'s run counts.
pub fn run(
    sc: &Scenario,
    node: &Node,
    spec: &TrafficSpec,
    aliases: &BTreeMap<String, String>,
) -> Result<(TrafficRecord, Vec<String>), String> {
    let atts = inspect::inspect_netns(node.netns()).map_err(|e| e.to_string())?;
    let ids: BTreeSet<u32> = atts.iter().map(|a| a.prog_id).collect();
    // The cross-check brackets the counter reads with the kernel's own run counts.
    let check = crosscheck::enabled();
    let _stats = if check { crate::sys::bpf::enable_run_stats().ok() } else { None };
    let runs_before = if check { Some(crosscheck::run_counts(&ids)) } else { None };
    let before = read_counters(&ids)?;
    // The step's packets the programs have dropped so far: the wait for missing ones ends once
    // arrivals and drops cover them all.
    let dropped = || -> u64 {
        read_counters(&ids)
            .map_or(0, |now| now.iter().map(|(id, c)| c.marked_dropped.saturating_sub(before[id].marked_dropped)).sum())
    };
    let outcome = send(sc, node, spec, &dropped).map_err(|e| e.to_string())?;
    let after = read_counters(&ids)?;
    let mut disagreements = Vec::new();
    if let Some(runs_before) = runs_before {
        match runs_before.and_then(|b| crosscheck::run_counts(&ids).map(|a| (b, a))) {
            Ok((b, a)) => {
                let counted: Vec<(String, u32, u64, u64)> = ids
                    .iter()
                    .map(|id| {
                        let what = atts
                            .iter()
                            .find(|x| x.prog_id == *id)
                            .map_or(String::new(), |x| format!("{} {} {}", x.device, x.hook.as_str(), x.program));
                        let (c0, c1) = (before[id], after[id]);
                        (what, *id, c1.seen - c0.seen, c1.marked_seen - c0.marked_seen)
                    })
                    .collect();
                disagreements = crosscheck::compare_runs(&counted, &b, &a);
            }
            Err(e) => disagreements.push(e),
        }
    }
    let programs = atts
        .iter()
        .map(|a| {
            let (b, c) = (before[&a.prog_id], after[&a.prog_id]);
            ProgramTraffic {
                device: a.device.clone(),
                hook: a.hook,
                program: a.program.clone(),
                prog_id: a.prog_id,
                seen: c.marked_seen.saturating_sub(b.marked_seen),
                dropped: c.marked_dropped.saturating_sub(b.marked_dropped),
                endpoint: aliases.iter().find(|(_, d)| **d == a.device).map(|(k, _)| k.clone()),
            }
        })
        .collect();
    Ok((TrafficRecord { sent: outcome.sent, delivered: outcome.delivered, programs }, disagreements))
}

fn read_counters(ids: &BTreeSet<u32>) -> Result<BTreeMap<u32, Counters>, String> {
    ids.iter().map(|id| inspect::counters(*id).map(|c| (*id, c)).map_err(|e| e.to_string())).collect()
}

/// The scenario's spec of link `name`: from the topology or a `link: {add}` step.
fn link_spec<'a>(sc: &'a Scenario, name: &str) -> Option<&'a LinkSpec> {
    let added = sc.steps.iter().filter_map(|s| match &s.action {
        Action::LinkAdd(l) => Some(l),
        _ => None,
    });
    sc.topology.links.iter().chain(added).rfind(|l| l.name == name)
}

fn send(
    sc: &Scenario,
    node: &Node,
    spec: &TrafficSpec,
    dropped: &dyn Fn() -> u64,
) -> Result<traffic::Outcome, TrafficError> {
    let l = link_spec(sc, &spec.link)
        .ok_or_else(|| TrafficError::Setup(format!("link {} is not in the scenario", spec.link)))?;
    if l.peer_in.unwrap_or_default() == PeerIn::Node {
        return Err(TrafficError::Setup(format!(
            "link {}: its peer is in the node namespace (peer_in: node), not on the wire",
            spec.link
        )));
    }
    let peer = l.peer_name();
    let links = node.netns().run(|| netlink::Rtnl::open()?.links())??;
    let link = links
        .iter()
        .find(|x| x.name == spec.link)
        .ok_or_else(|| TrafficError::Setup(format!("link {} does not exist in the node", spec.link)))?;
    let mut flow = Flow { proto: spec.proto, to: spec.to, port: spec.port, count: spec.count, via: None };
    match &spec.from {
        TrafficFrom::Outside => {
            // The frames are addressed to the node device that holds the destination (a VLAN
            // device has its parent's address), else to `link`: no ARP or ND is needed.
            let holder = links.iter().find(|x| x.addresses.iter().any(|a| a.addr() == spec.to));
            let mac = holder
                .and_then(|h| h.mac)
                .or(link.mac)
                .ok_or_else(|| TrafficError::Setup(format!("link {} has no MAC address", spec.link)))?;
            let subnet = subnet_for(&links, link, spec.to);
            let src = wire_address(&links, subnet, spec.to);
            let dev = traffic::prepare_wire(node.wire(), &peer, spec.vlan, &[src], Some((spec.to, mac)))?;
            let receiver = match node.pods().iter().find(|p| p.ip.addr() == spec.to) {
                Some(pod) => {
                    pod_routing(node, pod)?;
                    &pod.netns
                }
                None => node.netns(),
            };
            flow.via = Some(dev);
            traffic::send(node.wire(), receiver, &flow, dropped)
        }
        TrafficFrom::Node | TrafficFrom::Pod(_) => {
            let prefix = links
                .iter()
                .flat_map(|x| x.addresses.iter())
                .find(|a| a.contains(&spec.to) && a.addr() != spec.to)
                .map_or(if spec.to.is_ipv4() { 32 } else { 128 }, |a| a.prefix_len());
            let addr = IpNet::new(spec.to, prefix).map_err(|e| TrafficError::Setup(e.to_string()))?;
            traffic::prepare_wire(node.wire(), &peer, spec.vlan, &[addr], None)?;
            match &spec.from {
                TrafficFrom::Pod(key) => {
                    let pod = node
                        .pod(key)
                        .ok_or_else(|| TrafficError::Setup(format!("pod {key} does not exist on the node")))?;
                    pod_routing(node, pod)?;
                    traffic::send(&pod.netns, node.wire(), &flow, dropped)
                }
                _ => traffic::send(node.netns(), node.wire(), &flow, dropped),
            }
        }
    }
}

/// The subnet the wire side's source address is taken from: the node's subnet holding the
/// destination, else the one on `link`, its master, or any address of that family.
fn subnet_for(links: &[LinkInfo], link: &LinkInfo, to: IpAddr) -> Option<IpNet> {
    let all = || links.iter().flat_map(|x| x.addresses.iter()).filter(|a| a.addr().is_ipv4() == to.is_ipv4());
    let on = |l: &LinkInfo| l.addresses.iter().find(|a| a.addr().is_ipv4() == to.is_ipv4()).copied();
    all()
        .find(|a| a.contains(&to) && a.prefix_len() < if to.is_ipv4() { 31 } else { 127 })
        .copied()
        .or_else(|| on(link))
        .or_else(|| link.master_index.and_then(|m| links.iter().find(|x| x.index == m)).and_then(on))
        .or_else(|| all().find(|a| !a.addr().is_loopback()).copied())
}

/// A host address of `subnet` that no node link holds, counting down from the last one; a
/// documentation address when there is no subnet.
fn wire_address(links: &[LinkInfo], subnet: Option<IpNet>, to: IpAddr) -> IpNet {
    let taken: BTreeSet<IpAddr> = links.iter().flat_map(|x| x.addresses.iter().map(|a| a.addr())).collect();
    if let Some(net) = subnet {
        let net = net.trunc();
        let candidates: Vec<IpAddr> = match net {
            IpNet::V4(n) => {
                let last = u32::from(n.broadcast());
                (1..=8u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(last - i))).collect()
            }
            IpNet::V6(n) => {
                let last = u128::from(n.broadcast());
                (1..=8u128).map(|i| IpAddr::from(std::net::Ipv6Addr::from(last - i))).collect()
            }
        };
        if let Some(ip) = candidates.into_iter().find(|ip| net.contains(ip) && !taken.contains(ip) && *ip != to) {
            if let Ok(a) = IpNet::new(ip, net.prefix_len()) {
                return a;
            }
        }
    }
    if to.is_ipv4() {
        IpNet::new(IpAddr::from([198, 18, 0, 254]), 32).expect("valid prefix")
    } else {
        IpNet::new(IpAddr::from([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0xfe]), 128).expect("valid prefix")
    }
}

/// Lets a pod reach the outside and be reached as a plain routed host would: a default route in
/// the pod via its eth0, proxy ARP on its lxc device, a route to it on the node and forwarding
/// on. (Cilium routes pods through cilium_host; the stand-in programs do not redirect, so
/// the kernel's routing carries the packets.)
fn pod_routing(node: &Node, pod: &crate::sys::topology::Pod) -> Result<(), TrafficError> {
    let v4 = pod.ip.addr().is_ipv4();
    let default: IpNet = if v4 { "0.0.0.0/0" } else { "::/0" }.parse().expect("a valid prefix");
    let host = IpNet::new(pod.ip.addr(), if v4 { 32 } else { 128 }).expect("a valid prefix");
    pod.netns.run(|| -> Result<(), TrafficError> {
        let nl = netlink::Rtnl::open()?;
        let routes = nl.routes()?;
        if !routes.iter().any(|r| r.dst == default && r.table == netlink::TABLE_MAIN) {
            let c = Change::AddRoute { dst: default, via: None, dev: "eth0".into(), table: netlink::TABLE_MAIN };
            nl.apply(&[c])?;
        }
        Ok(())
    })??;
    let lxc = pod.lxc.clone();
    node.netns().run(|| -> Result<(), TrafficError> {
        traffic::sysctl("net/ipv4/ip_forward", "1")?;
        traffic::sysctl(&format!("net/ipv4/conf/{lxc}/proxy_arp"), "1")?;
        let nl = netlink::Rtnl::open()?;
        let routes = nl.routes()?;
        if !routes.iter().any(|r| r.dst == host && r.table == netlink::TABLE_MAIN) {
            let c = Change::AddRoute { dst: host, via: None, dev: lxc.clone(), table: netlink::TABLE_MAIN };
            nl.apply(&[c])?;
        }
        Ok(())
    })?
}
