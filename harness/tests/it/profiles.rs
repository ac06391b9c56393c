//! Profiles on a real kernel: v1.16's tcx links (tail of the hook, pins laid out as upstream's
//! `cilium/devices/<dev with . as ->/links/<prog>`), and a profile switch on restart.
//! Needs root and a kernel with tcx; skips otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hostdp::agent::Agent;
use hostdp::model::datapath::{Object, ProgramRef};
use hostdp::model::observed::{Hook, Mechanism};
use hostdp::model::profile::Profile;
use hostdp::sys::attach::{self, AttachContext, DeviceConfig};
use hostdp::sys::compile::{default_bpf_dir, Compiler};
use hostdp::sys::inspect::{self};
use hostdp::sys::topology::{Node, RunId};

const NODE: &str = "
name: tcx-pins
profile: v1.16
node: {ip: 192.168.10.2}
topology:
  links:
    - {name: eth0.5, kind: veth, addresses: [192.168.10.2/24]}
  routes:
    - {dst: default, via: 192.168.10.1, dev: eth0.5}
agent:
  kube-proxy-replacement: \"true\"
steps:
  - start: {}
";

fn runnable() -> bool {
    if !crate::support::root_or_skip() {
        return false;
    }
    if !hostdp::sys::caps::probe(&hostdp::runner::cache_dir()).has("tcx") {
        eprintln!("skipping: kernel without tcx");
        return false;
    }
    true
}

#[test]
fn v1_16_pins_tcx_links_per_device_at_the_tail() {
    if !runnable() {
        return;
    }
    let sc = hostdp::model::scenario::parse(Path::new("tcx-pins.yaml"), NODE.as_bytes()).unwrap();
    let node = Node::build(&sc, &RunId::new()).unwrap();
    let compiler = Arc::new(Compiler::new(default_bpf_dir(), hostdp::runner::cache_dir()));
    let bpffs = node.bpffs().to_path_buf();

    // Another tool's tcx program is on eth0.5's ingress first; Cilium's link goes behind it.
    let ctx = AttachContext {
        compiler: compiler.clone(),
        defines: BTreeMap::new(),
        bpffs: Some(bpffs.clone()),
        kernel_tcx: true,
    };
    let foreign = ProgramRef { object: Object::Foreign, symbol: "foreign_tc" };
    let other_pin = bpffs.join("other/foreign_tc");
    attach::attach_tcx(node.netns(), &ctx, "eth0.5", Hook::Ingress, foreign, &DeviceConfig::default(), &other_pin)
        .unwrap();

    let mut agent = Agent::new(
        Profile::V1_16,
        sc.agent.clone(),
        Some("192.168.10.2".parse().unwrap()),
        BTreeMap::new(),
        compiler,
        Some(bpffs.clone()),
        true,
    );
    agent.start(&node, &[]).unwrap();
    for pin in [
        "cilium/devices/eth0-5/links/cil_from_netdev",
        "cilium/devices/eth0-5/links/cil_to_netdev",
        "cilium/devices/cilium_host/links/cil_to_host",
        "cilium/devices/cilium_host/links/cil_from_host",
        "cilium/devices/cilium_net/links/cil_to_host",
    ] {
        assert!(bpffs.join(pin).exists(), "{pin} is not pinned");
    }
    assert_eq!(
        ingress_of(&node, "eth0.5"),
        vec![("foreign_tc".to_string(), Mechanism::Tcx), ("cil_from_netdev".to_string(), Mechanism::Tcx)]
    );

    // Downgrade to v1.15: tc filters, and the v1.16 pins are gone (their links detached); the
    // foreign tcx program stays.
    agent.restart(&node, &[], &BTreeMap::new(), Some("v1.15")).unwrap();
    assert!(!bpffs.join("cilium/devices/eth0-5/links/cil_from_netdev").exists());
    assert!(!bpffs.join("cilium/devices/cilium_host/links/cil_to_host").exists());
    assert_eq!(
        ingress_of(&node, "eth0.5"),
        vec![("foreign_tc".to_string(), Mechanism::Tcx), ("cil_from_netdev".to_string(), Mechanism::Tc)]
    );
}

/// `(program, mechanism)` of what is attached on `device`'s ingress, in order.
fn ingress_of(node: &hostdp::sys::topology::Node, device: &str) -> Vec<(String, Mechanism)> {
    let atts = inspect::inspect_netns(node.netns()).unwrap();
    atts.iter()
        .filter(|a| a.device == device && a.hook == Hook::Ingress)
        .map(|a| (a.program.clone(), a.mechanism))
        .collect()
}
