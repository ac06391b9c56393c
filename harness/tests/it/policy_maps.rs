//! Policy maps on a real kernel (root): the entries the agent writes into an endpoint's pinned
//! `hostdp_policy` map on regeneration, read back through the bpf syscall (the inspect API the
//! runner and `hostdp inspect --maps` use).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use hostdp::agent::Agent;
use hostdp::model::observed::PolicyMapView;
use hostdp::model::policy::{self, Direction, Endpoint, PeerId};
use hostdp::model::profile::Profile;
use hostdp::model::record::{ScenarioRecord, Status};
use hostdp::runner;
use hostdp::sys::compile::{default_bpf_dir, Compiler};
use hostdp::sys::policymap::{self, PolicyKey};
use hostdp::sys::topology::{Node, RunId};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "policy map tests need root (namespaces, bpf): sudo -E cargo test --test it -- policy_maps::"
    );
}

fn run(file: &str) -> ScenarioRecord {
    require_root();
    let sc = hostdp::model::scenario::load(&root().join(file)).unwrap_or_else(|e| panic!("{e}"));
    let rec = runner::run_scenario(&sc, &RunId::for_tests());
    assert_eq!(rec.status, Status::Pass, "{file}: {:#?}", rec);
    rec
}

/// The L4 rule's entry for a pod labelled app=network-multitool: TCP/80 ingress from the identity
/// of the `app=network-multitool` peer selector, allowed.
fn l4_key() -> PolicyKey {
    let docs = policy::load_fixture(root().join("fixtures/policies/l4-rule.yaml")).unwrap();
    let p = policy::policies(&docs).next().unwrap();
    let labels = BTreeMap::from([("app".to_string(), "network-multitool".to_string())]);
    let entries = policy::policy_entries(p, &Endpoint::pod("default", "network-multitool", &labels));
    let e = entries
        .iter()
        .find(|e| e.port == 80 && e.protocol == 6 && e.direction == Direction::Ingress && !e.deny)
        .expect("the L4 rule gives a TCP/80 ingress allow entry");
    let PeerId::Identity(id) = e.peer else { panic!("the peer is an endpoint selector") };
    let sel = &p.rules[0].ingress[0].peers;
    let policy::Peers::List(list) = sel else { panic!("fromEndpoints") };
    let policy::Peer::Endpoints(s) = &list[0] else { panic!("fromEndpoints") };
    assert_eq!(id, policy::selector_identity(s), "identity of the app=network-multitool selector");
    policymap::key_of(e).unwrap()
}

/// A scenario's node, built, with its agent started (steps driven by the test itself).
fn started(file: &str) -> (hostdp::model::scenario::Scenario, Node, Agent) {
    require_root();
    let sc = hostdp::model::scenario::load(&root().join(file)).unwrap_or_else(|e| panic!("{e}"));
    let node = Node::build(&sc, &RunId::for_tests()).expect("build the node");
    let compiler = Arc::new(Compiler::new(default_bpf_dir(), runner::cache_dir()));
    let ip = sc.node.ip.as_deref().and_then(|s| s.parse().ok());
    let bpffs = Some(node.bpffs().to_path_buf());
    let mut agent = Agent::new(Profile::V1_14_4, sc.agent.clone(), ip, sc.node.labels.clone(), compiler, bpffs, false);
    agent.start(&node, &sc.pods).expect("start");
    (sc, node, agent)
}

fn map_of<'a>(maps: &'a [PolicyMapView], endpoint: &str) -> &'a PolicyMapView {
    maps.iter().find(|m| m.endpoint == endpoint).unwrap_or_else(|| panic!("no policy map for {endpoint}: {maps:#?}"))
}

fn holds(m: &PolicyMapView, key: &PolicyKey, verdict: &str) -> bool {
    m.entries.iter().any(|e| hostdp::sys::policymap::entry_is(e, key) && e.verdict == verdict)
}

#[test]
fn l4_entry_is_written_on_apply_and_add_pod_and_removed_on_delete() {
    let rec = run("scenarios/policy-add-pod.yaml");
    let key = l4_key();
    let actions: Vec<&str> = rec.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["start", "apply", "add-pod", "delete-pod", "delete"]);
    let pod = "pod:default/network-multitool";
    let web = "pod:default/web";

    let start = map_of(&rec.steps[0].policy_maps, pod);
    assert!(start.entries.is_empty(), "no policy yet: {start:#?}");

    let applied = map_of(&rec.steps[1].policy_maps, pod);
    assert!(holds(applied, &key, "allow"), "after apply: {applied:#?}");
    assert_eq!(applied.entries.len(), 1);
    assert_eq!(applied.map_id, start.map_id, "the pinned map is reused across regenerations");

    let new_pod = map_of(&rec.steps[2].policy_maps, web);
    assert!(holds(new_pod, &key, "allow"), "the added pod starts with the policy's entries: {new_pod:#?}");
    assert_ne!(new_pod.map_id, applied.map_id, "one map per endpoint");

    assert!(rec.steps[3].policy_maps.iter().all(|m| m.endpoint != web), "the deleted pod's map is gone");

    let deleted = map_of(&rec.steps[4].policy_maps, pod);
    assert!(!holds(deleted, &key, "allow") && deleted.entries.is_empty(), "after delete: {deleted:#?}");
}

#[test]
fn host_policy_fills_the_one_map_all_host_programs_share() {
    let rec = run("scenarios/policy-host-firewall-on.yaml");
    let cidr: ipnet::IpNet = "192.0.2.0/24".parse().unwrap();
    let ssh = PolicyKey::new(policymap::cidr_identity(&cidr), 22, 6, Direction::Ingress);
    let host = map_of(&rec.steps[1].policy_maps, "host");
    assert!(holds(host, &ssh, "allow"), "{host:#?}");
    let users: Vec<(&str, &str)> = host.programs.iter().map(|u| (u.device.as_str(), u.program.as_str())).collect();
    for want in [
        ("eth0", "cil_from_netdev"),
        ("eth0", "cil_to_netdev"),
        ("cilium_host", "cil_to_host"),
        ("cilium_net", "cil_to_host"),
    ] {
        assert!(users.contains(&want), "{want:?} uses the host map: {users:?}");
    }
    assert_eq!(rec.steps[1].policy_maps.iter().filter(|m| m.endpoint == "host").count(), 1);
    assert!(map_of(&rec.steps[2].policy_maps, "host").entries.is_empty(), "after delete");
    // The pod is not selected by a nodeSelector: its map stays empty.
    assert!(map_of(&rec.steps[1].policy_maps, "pod:default/network-multitool").entries.is_empty());
}

#[test]
fn host_firewall_off_gives_the_host_no_policy_map() {
    let rec = run("scenarios/policy-host-firewall-off.yaml");
    for s in &rec.steps {
        assert!(s.policy_maps.iter().all(|m| m.endpoint != "host"), "{}: {:#?}", s.action, s.policy_maps);
    }
}

/// `hostdp inspect --maps --format json --netns NODE` on a live node: the contract's attachments
/// beside the maps, with the L4 entry in the pod's map.
#[test]
fn inspect_maps_cli_reads_a_live_node() {
    let (sc, node, mut agent) = started("scenarios/policy-add-pod.yaml");
    let fixture = root().join("fixtures/policies/l4-rule.yaml");
    agent.apply(&node, &sc.pods, &fixture).expect("apply");

    let out = Command::new(env!("CARGO_BIN_EXE_hostdp"))
        .args(["inspect", "--maps", "--format", "json", "--netns", node.netns().name()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let atts: Vec<hostdp::model::observed::Attachment> = serde_json::from_value(v["attachments"].clone()).unwrap();
    assert!(atts.iter().any(|a| a.device == "eth0" && a.program == "cil_from_netdev"));
    let maps: Vec<PolicyMapView> = serde_json::from_value(v["maps"].clone()).unwrap();
    let lxc = node.lxc_name("default/network-multitool");
    assert!(holds(map_of(&maps, &lxc), &l4_key(), "allow"), "{maps:#?}");

    agent.delete(&node, &sc.pods, &fixture).expect("delete");
    let after = policymap::read_policy_maps(&hostdp::sys::inspect::inspect_netns(node.netns()).unwrap()).unwrap();
    assert!(map_of(&after, &lxc).entries.is_empty());

    let table = Command::new(env!("CARGO_BIN_EXE_hostdp"))
        .args(["inspect", "--maps", "--netns", node.netns().name()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&format!("endpoint {lxc}")) && text.contains("(no entries)"), "{text}");
    let missing = Command::new(env!("CARGO_BIN_EXE_hostdp"))
        .args(["inspect", "--maps", "--netns", "hostdp-no-such-ns"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// The programs really look the map up: an ICMP echo sent from the wire to the node's eth0 hits
/// the host policy's "ICMP type 8 from any peer" entry, counted by cil_from_netdev.
#[test]
fn host_program_counts_the_entry_a_ping_hits() {
    let (sc, node, mut agent) = started("scenarios/policy-host-firewall-on.yaml");
    agent.apply(&node, &sc.pods, &root().join("fixtures/policies/host-ssh-apiserver.yaml")).expect("apply");
    let wire = node.wire().name().to_string();
    let sh = |args: &[&str]| {
        let out = Command::new("ip").args(["netns", "exec", &wire]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh(&["ip", "addr", "add", "192.168.10.1/24", "dev", "eth0-p"]);
    sh(&["ip", "link", "set", "eth0-p", "up"]);
    node.wire().run(|| (0..3).for_each(|seq| send_echo([192, 168, 10, 2], seq))).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let maps = policymap::read_policy_maps(&hostdp::sys::inspect::inspect_netns(node.netns()).unwrap()).unwrap();
    let echo = PolicyKey::new(0, 8, 1, Direction::Ingress);
    let e = map_of(&maps, "host")
        .entries
        .iter()
        .find(|e| hostdp::sys::policymap::entry_is(e, &echo))
        .expect("the ICMP echo entry");
    assert!(e.packets >= 3 && e.bytes > 0, "{e:?}");
}

/// One ICMP echo request through a raw socket (no ping binary needed), from the calling
/// thread's namespace.
fn send_echo(dst: [u8; 4], seq: u16) {
    let mut pkt = [8u8, 0, 0, 0, 0x68, 0x64, (seq >> 8) as u8, seq as u8, b'h', b'o', b's', b't', b'd', b'p', 0, 0];
    let sum = pkt.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    // SAFETY: plain socket calls on a local fd and stack buffers of the given sizes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst) },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, pkt.len() as isize, "sendto: {err}");
    }
}
