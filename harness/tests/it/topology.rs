//! Building nodes in real namespaces (needs root; every test skips without it). Each test uses a
//! scenario name of its own, so its namespaces (`hostdp-t<pid>-...`) can be told apart from
//! those of tests running in parallel.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use hostdp::model::observed::LinkInfo;
use hostdp::model::scenario::{LinkKind, LinkSpec, PeerIn, PodSpec, RouteSpec, RouteTable, Scenario, TopologySpec};
use hostdp::sys::netlink::{self};
use hostdp::sys::netns::{self, Netns};
use hostdp::sys::topology::{self, Node, RunId, TopologyError};

macro_rules! need_root {
    () => {
        if !crate::support::root_or_skip() {
            return;
        }
    };
}

fn link(name: &str, kind: LinkKind) -> LinkSpec {
    hostdp::model::scenario::LinkSpec::bare(name, kind)
}

fn route(dst: &str, via: Option<&str>, dev: &str, table: Option<RouteTable>) -> RouteSpec {
    RouteSpec { dst: dst.into(), via: via.map(str::to_string), dev: dev.into(), table }
}

fn scenario(name: &str, links: Vec<LinkSpec>, routes: Vec<RouteSpec>, pods: Vec<PodSpec>) -> Scenario {
    Scenario {
        path: PathBuf::from(format!("tests/{name}.yaml")),
        name: name.into(),
        description: None,
        profile: "v1.14.4".into(),
        requires: Default::default(),
        node: Default::default(),
        topology: TopologySpec { links, routes },
        agent: BTreeMap::new(),
        agent_ignored: vec![],
        agent_file: None,
        pods,
        steps: vec![],
        warnings: vec![],
    }
}

fn pod(name: &str) -> PodSpec {
    PodSpec { name: name.into(), namespace: "default".into(), labels: BTreeMap::new() }
}

/// Namespaces of this process whose names start with the scenario's node prefix.
fn namespaces_of(s: &Scenario) -> Vec<String> {
    let prefix = topology::node_prefix(s, &RunId::for_tests());
    netns::list_named().into_iter().filter(|n| n.starts_with(&prefix)).collect()
}

fn by_name<'a>(links: &'a [LinkInfo], name: &str) -> &'a LinkInfo {
    links.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no link {name} in {links:#?}"))
}

fn links_in(ns: &Netns) -> Vec<LinkInfo> {
    ns.run(|| netlink::Rtnl::open()?.links()).unwrap().unwrap()
}

#[test]
fn veth_bridge_macvlan_vxlan_and_routes() {
    need_root!();
    let mut eth0 = link("eth0", LinkKind::Veth);
    eth0.addresses = vec!["192.168.50.10/24".into(), "fd00:50::10/64".into()];
    eth0.mac = Some("02:00:00:00:50:10".into());
    eth0.mtu = Some(1400);
    let mut eth1 = link("eth1", LinkKind::Veth);
    eth1.master = Some("br0".into());
    eth1.peer = Some("uplink1".into());
    let mut br0 = link("br0", LinkKind::Bridge);
    br0.addresses = vec!["192.168.60.1/24".into()];
    let mut mv0 = link("mv0", LinkKind::Macvlan);
    mv0.parent = Some("eth0".into());
    mv0.mode = Some("bridge".into());
    mv0.addresses = vec!["192.168.51.2/24".into()];
    let mut vx0 = link("vx0", LinkKind::Vxlan);
    vx0.vni = Some(42);
    vx0.parent = Some("eth0".into());
    let mut eth2 = link("eth2", LinkKind::Veth);
    eth2.peer_in = Some(PeerIn::Node);
    eth2.up = false;
    // Listed before its parent and master on purpose: creation order comes from references.
    let links = vec![mv0, vx0, eth1, br0, eth0, eth2];
    let routes = vec![
        route("default", Some("192.168.50.1"), "eth0", None),
        route("10.99.0.0/16", Some("192.168.50.1"), "eth0", Some(RouteTable::Number(100))),
        route("10.98.0.0/16", None, "br0", Some(RouteTable::Name("main".into()))),
        route("default", Some("fd00:50::1"), "eth0", Some(RouteTable::Number(100))),
    ];
    let s = scenario("t-build-basic", links, routes, vec![pod("network-multitool")]);
    let run = RunId::for_tests();
    let mut node = Node::build(&s, &run).unwrap();
    assert!(node.netns().name().starts_with(&format!("hostdp-t{}-", std::process::id())));
    assert!(node.netns().name().len() <= 40, "{}", node.netns().name());

    let links = node.links().unwrap();
    let lo = by_name(&links, "lo");
    assert!(lo.up && lo.loopback);
    let eth0 = by_name(&links, "eth0");
    assert_eq!(eth0.kind, "veth");
    assert!(eth0.up && eth0.multicast && !eth0.slave);
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(eth0.mac, Some([2, 0, 0, 0, 0x50, 0x10]));
    assert!(eth0.addresses.contains(&"192.168.50.10/24".parse().unwrap()));
    assert!(eth0.addresses.contains(&"fd00:50::10/64".parse().unwrap()));
    assert_eq!(eth0.parent_index, None, "a veth's peer is no parent");
    let br0 = by_name(&links, "br0");
    assert_eq!(br0.kind, "bridge");
    let eth1 = by_name(&links, "eth1");
    assert_eq!(eth1.master_index, Some(br0.index));
    assert!(eth1.up);
    let mv0 = by_name(&links, "mv0");
    assert_eq!((mv0.kind.as_str(), mv0.parent_index), ("macvlan", Some(eth0.index)));
    assert!(mv0.addresses.contains(&"192.168.51.2/24".parse().unwrap()));
    let vx0 = by_name(&links, "vx0");
    assert_eq!(vx0.kind, "vxlan");
    assert!(vx0.up);
    let eth2 = by_name(&links, "eth2");
    assert!(!eth2.up);
    assert!(by_name(&links, "eth2-p").up, "a node-side peer is brought up");

    // Peers in the wire namespace, up.
    let wire = links_in(node.wire());
    assert!(by_name(&wire, "eth0-p").up);
    assert!(by_name(&wire, "uplink1").up);
    assert!(by_name(&wire, "lo").up);

    let routes = node.routes().unwrap();
    let has = |dst: &str, gw: Option<&str>, table: u32, oif: u32| {
        routes.iter().any(|r| {
            r.dst == dst.parse().unwrap()
                && r.gateway == gw.map(|g| g.parse().unwrap())
                && r.table == table
                && r.oif == Some(oif)
        })
    };
    assert!(has("0.0.0.0/0", Some("192.168.50.1"), 254, eth0.index), "{routes:#?}");
    assert!(has("10.99.0.0/16", Some("192.168.50.1"), 100, eth0.index), "{routes:#?}");
    assert!(has("10.98.0.0/16", None, 254, br0.index), "{routes:#?}");
    assert!(has("::/0", Some("fd00:50::1"), 100, eth0.index), "{routes:#?}");
    assert!(has("192.168.50.0/24", None, 254, eth0.index), "connected route: {routes:#?}");

    // The pod: lxc side in the node, eth0 in its own namespace.
    let lxc = node.lxc_name("default/network-multitool");
    assert_eq!(lxc, topology::lxc_name("default/network-multitool"));
    let l = by_name(&links, &lxc);
    assert!(l.up && l.kind == "veth");
    let p = node.pod("network-multitool").unwrap();
    assert_eq!(p.lxc, lxc);
    assert!(p.netns.name().ends_with("-pod0"));
    let pod_links = links_in(&p.netns);
    assert!(by_name(&pod_links, "lo").up);
    let peth0 = by_name(&pod_links, "eth0");
    assert!(peth0.up);
    assert!(peth0.addresses.contains(&p.ip));

    // Changes while running.
    let mut ifb = link("ifb7", LinkKind::Ifb);
    ifb.up = false;
    node.add_link(&ifb).unwrap();
    assert!(!by_name(&node.links().unwrap(), "ifb7").up);
    node.set_link_up("ifb7", true).unwrap();
    assert!(by_name(&node.links().unwrap(), "ifb7").up);
    let mut eth3 = link("eth3", LinkKind::Veth);
    eth3.addresses = vec!["192.168.70.2/24".into()];
    node.add_link(&eth3).unwrap();
    assert!(by_name(&links_in(node.wire()), "eth3-p").up);
    node.delete_link("eth3").unwrap();
    assert!(!node.links().unwrap().iter().any(|l| l.name == "eth3"));
    let err = node.delete_link("eth3").unwrap_err().to_string();
    assert_eq!(err, "delete link eth3: no such link eth3");
    let err = node.add_link(&{
        let mut l = link("eth4", LinkKind::Veth);
        l.master = Some("bond9".into());
        l
    });
    assert_eq!(err.unwrap_err().to_string(), "enslave link eth4 to bond9: no such link bond9");

    let pod_ns = {
        let p2 =
            node.add_pod(&PodSpec { name: "web".into(), namespace: "prod".into(), labels: BTreeMap::new() }).unwrap();
        assert!(p2.netns.name().ends_with("-pod1"));
        p2.netns.name().to_string()
    };
    assert!(by_name(&node.links().unwrap(), &topology::lxc_name("prod/web")).up);
    assert!(node.add_pod(&PodSpec { name: "web".into(), namespace: "prod".into(), labels: BTreeMap::new() }).is_err());
    node.delete_pod("prod/web").unwrap();
    assert!(!netns::list_named().contains(&pod_ns));
    assert!(!node.links().unwrap().iter().any(|l| l.name == topology::lxc_name("prod/web")));
    assert!(matches!(node.delete_pod("prod/web"), Err(TopologyError::NoPod(_))));

    // A fresh bpffs to pin into.
    let fs = nix::sys::statfs::statfs(node.bpffs()).unwrap();
    assert_eq!(fs.filesystem_type(), nix::sys::statfs::BPF_FS_MAGIC);
}

#[test]
fn bond_with_vlan_on_top() {
    need_root!();
    let caps = hostdp::sys::caps::probe(&hostdp::runner::cache_dir());
    let mut missing: Vec<&str> = ["bonding", "vlan"].into_iter().filter(|f| !caps.has(f)).collect();
    missing.sort();
    if !missing.is_empty() {
        eprintln!("skipping: kernel {} lacks {}", caps.kernel, missing.join(", "));
        return;
    }
    let mut eth0 = link("eth0", LinkKind::Veth);
    eth0.master = Some("bond0".into());
    let mut eth1 = link("eth1", LinkKind::Veth);
    eth1.master = Some("bond0".into());
    let mut bond0 = link("bond0", LinkKind::Bond);
    bond0.mode = Some("802.3ad".into());
    bond0.miimon = Some(100);
    let mut vlan = link("bond0.212", LinkKind::Vlan);
    vlan.parent = Some("bond0".into());
    vlan.id = Some(212);
    vlan.addresses = vec!["10.212.0.10/24".into()];
    let s = scenario(
        "t-bond-vlan",
        vec![eth0, eth1, bond0, vlan],
        vec![route("default", Some("10.212.0.1"), "bond0.212", None)],
        vec![],
    );
    let node = Node::build(&s, &RunId::for_tests()).unwrap();
    let links = node.links().unwrap();
    let bond = by_name(&links, "bond0");
    assert_eq!(bond.kind, "bond");
    for slave in ["eth0", "eth1"] {
        let l = by_name(&links, slave);
        assert_eq!(l.master_index, Some(bond.index), "{slave}");
        assert!(l.slave && l.up, "{slave}: {l:?}");
    }
    let v = by_name(&links, "bond0.212");
    assert_eq!((v.kind.as_str(), v.vlan_id, v.parent_index), ("vlan", Some(212), Some(bond.index)));
    assert!(v.addresses.contains(&"10.212.0.10/24".parse().unwrap()));
    let routes = node.routes().unwrap();
    assert!(routes.iter().any(|r| r.dst == "0.0.0.0/0".parse().unwrap() && r.oif == Some(v.index) && r.table == 254));
}

#[test]
fn drop_removes_namespaces_and_bpffs() {
    need_root!();
    let s = scenario("t-drop", vec![link("eth0", LinkKind::Veth)], vec![], vec![pod("a"), pod("b")]);
    let node = Node::build(&s, &RunId::for_tests()).unwrap();
    let names = node.namespace_names();
    assert_eq!(names.len(), 4);
    let all = netns::list_named();
    assert!(names.iter().all(|n| all.contains(n)));
    let dir = node.bpffs().parent().unwrap().to_path_buf();
    assert!(dir.exists());
    drop(node);
    let all = netns::list_named();
    assert!(names.iter().all(|n| !all.contains(n)), "left behind: {names:?}");
    assert!(!dir.exists());
    assert!(namespaces_of(&s).is_empty());
}

#[test]
fn panic_while_holding_a_node_cleans_up() {
    need_root!();
    let s = scenario("t-panic", vec![link("eth0", LinkKind::Veth)], vec![], vec![pod("a")]);
    let seen = std::sync::Mutex::new((Vec::new(), PathBuf::new()));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let node = Node::build(&s, &RunId::for_tests()).unwrap();
        *seen.lock().unwrap() = (node.namespace_names(), node.bpffs().to_path_buf());
        panic!("test panic while holding the node");
    }));
    assert!(r.is_err());
    let (names, bpffs) = seen.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    let all = netns::list_named();
    assert!(names.iter().all(|n| !all.contains(n)), "left behind: {names:?}");
    assert!(!bpffs.exists());
}

#[test]
fn failed_build_leaves_nothing_behind() {
    need_root!();
    // The gateway is unreachable (eth0 has no address): the kernel refuses the route, after
    // the namespaces, the bpffs and the links exist.
    let s = scenario(
        "t-error",
        vec![link("eth0", LinkKind::Veth)],
        vec![route("default", Some("10.9.9.1"), "eth0", None)],
        vec![pod("a")],
    );
    let err = Node::build(&s, &RunId::for_tests()).unwrap_err().to_string();
    assert_eq!(err, "add route 0.0.0.0/0 via 10.9.9.1 dev eth0 table 254: Network is unreachable");
    assert!(namespaces_of(&s).is_empty(), "{:?}", namespaces_of(&s));
    let prefix = topology::node_prefix(&s, &RunId::for_tests());
    let dirs: Vec<_> = std::fs::read_dir(topology::RUN_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(dirs.is_empty(), "{dirs:?}");

    // Bad input is reported before anything is created.
    let mut v = link("v", LinkKind::Vlan);
    v.parent = Some("missing".into());
    v.id = Some(3);
    let s = scenario("t-error-spec", vec![v], vec![], vec![]);
    let err = Node::build(&s, &RunId::for_tests()).unwrap_err().to_string();
    assert_eq!(err, "topology: link v: references unknown link missing");
    assert!(namespaces_of(&s).is_empty());
}

/// Deletes a namespace at the end of a test even when an assertion failed.
use crate::support::NsGuard;

#[test]
fn stale_cleanup_removes_dead_runs_only() {
    need_root!();
    let me = std::process::id();
    let live = RunId::for_tests();
    // pid_max is at most 2^22, so 9999999 is never a live process.
    let dead_ns = format!("hostdp-t9999999-zz-{me}-node");
    let live_ns = format!("{live}-stale-live-node");
    let word_ns = format!("hostdp-t{me}-stalecheck");
    let _guards: Vec<NsGuard> = [&dead_ns, &live_ns, &word_ns]
        .into_iter()
        .map(|n| {
            let _ = netns::delete_named(n);
            Netns::create(n).unwrap();
            NsGuard(n.clone())
        })
        .collect();
    // A dead run's directory with a bpffs mounted in it.
    let dead_dir = Path::new(topology::RUN_ROOT).join(format!("hostdp-t9999999-zz-{me}"));
    std::fs::create_dir_all(dead_dir.join("bpffs")).unwrap();
    nix::mount::mount(Some("bpf"), &dead_dir.join("bpffs"), Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .unwrap();

    let removed = topology::cleanup_stale();
    let all = netns::list_named();
    assert!(removed.contains(&dead_ns), "{removed:?}");
    assert!(!all.contains(&dead_ns));
    assert!(removed.contains(&dead_dir.display().to_string()), "{removed:?}");
    assert!(!dead_dir.exists());
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&dead_dir.display().to_string()));
    for kept in [&live_ns, &word_ns] {
        assert!(all.contains(kept), "{kept} was removed");
        assert!(!removed.contains(kept));
    }
    assert!(removed.iter().all(|r| r.starts_with("hostdp-") || r.starts_with(topology::RUN_ROOT)));
}

#[test]
fn parallel_builds_of_one_scenario_do_not_collide() {
    need_root!();
    let mut eth0 = link("eth0", LinkKind::Veth);
    eth0.addresses = vec!["192.168.80.2/24".into()];
    let s =
        scenario("t-parallel", vec![eth0], vec![route("default", Some("192.168.80.1"), "eth0", None)], vec![pod("a")]);
    let run = RunId::for_tests();
    let nodes: Vec<Node> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2).map(|_| sc.spawn(|| Node::build(&s, &run).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(nodes[0].netns().name(), nodes[1].netns().name());
    assert_ne!(nodes[0].bpffs(), nodes[1].bpffs());
    for n in &nodes {
        assert!(n.links().unwrap().iter().any(|l| l.name == "eth0"));
        assert_eq!(n.pods().len(), 1);
    }
    assert_eq!(namespaces_of(&s).len(), 6);
    drop(nodes);
    assert!(namespaces_of(&s).is_empty());
}

/// Child side of [`sigterm_removes_everything`]: runs only when that test starts it.
#[test]
fn signal_child() {
    if std::env::var_os("HOSTDP_SIGNAL_CHILD").is_none() {
        return;
    }
    topology::install_signal_cleanup();
    let s = scenario("t-signal", vec![link("eth0", LinkKind::Veth)], vec![], vec![pod("a")]);
    let node = Node::build(&s, &RunId::for_tests()).unwrap();
    println!("NAMESPACES {} BPFFS {}", node.namespace_names().join(","), node.bpffs().display());
    std::thread::sleep(std::time::Duration::from_secs(60));
    panic!("the signal did not arrive");
}

#[test]
fn sigterm_removes_everything() {
    need_root!();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "topology::signal_child", "--nocapture", "--test-threads=1"])
        .env("HOSTDP_SIGNAL_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // libtest may have printed `test signal_child ... ` on the same line.
    let line =
        lines.by_ref().map_while(Result::ok).find(|l| l.contains("NAMESPACES ")).expect("child reports its node");
    let mut parts = line[line.find("NAMESPACES ").unwrap()..].split_whitespace().skip(1);
    let names: Vec<String> = parts.next().unwrap().split(',').map(str::to_string).collect();
    let bpffs = PathBuf::from(parts.nth(1).unwrap());
    assert_eq!(names.len(), 3);
    let _guards: Vec<NsGuard> = names.iter().cloned().map(NsGuard).collect();
    assert!(names.iter().all(|n| netns::list_named().contains(n)));
    assert!(bpffs.exists());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let all = netns::list_named();
    assert!(names.iter().all(|n| !all.contains(n)), "left behind: {names:?}");
    assert!(!bpffs.exists());
}
