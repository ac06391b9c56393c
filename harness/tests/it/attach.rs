//! Attach executor, tc/XDP netlink and inspector against the real kernel (needs root; skipped
//! otherwise). Every test builds its own namespaces `hostdp-t<pid>-<name>`, deleted on drop,
//! and checks the inspector against iproute2's `tc` and `bpftool`, so it is not its own judge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::support::NsGuard;
use hostdp::model::datapath::{Object, Op, ProgramRef, VlanAllow, XdpMode};
use hostdp::model::observed::{Attachment, Hook, Mechanism};
use hostdp::sys::attach::{self, AttachContext, AttachError, DeviceConfig, OpOutcome};
use hostdp::sys::compile::{default_bpf_dir, Compiler};
use hostdp::sys::inspect::{self};
use hostdp::sys::netlink::{Change, NewLink, Rtnl};
use hostdp::sys::netns::Netns;
use hostdp::sys::tc;

const FROM_NETDEV: ProgramRef = ProgramRef { object: Object::Host, symbol: "cil_from_netdev" };
const TO_NETDEV: ProgramRef = ProgramRef { object: Object::Host, symbol: "cil_to_netdev" };
const TO_HOST: ProgramRef = ProgramRef { object: Object::Host, symbol: "cil_to_host" };
const FROM_HOST: ProgramRef = ProgramRef { object: Object::Host, symbol: "cil_from_host" };
const XDP_ENTRY: ProgramRef = ProgramRef { object: Object::Xdp, symbol: "cil_xdp_entry" };

/// Deletes the namespace on drop, even when the test panics.
fn skip() -> bool {
    !crate::support::root_or_skip()
}

fn ns(name: &str) -> NsGuard {
    let full = format!("hostdp-t{}-{name}", std::process::id());
    let _ = hostdp::sys::netns::delete_named(&full);
    {
        Netns::create(&full).expect("create namespace");
        NsGuard(full)
    }
}

/// `veth0` in `a` paired with `veth1` in `b`, both up.
fn veth_pair(a: &Netns, b: &Netns) {
    let peer = NewLink::Veth { peer: "veth1".into(), peer_netns: Some(b.path()) };
    let up = |name: &str| Change::SetUp { name: name.into(), up: true };
    a.run(|| Rtnl::open()?.apply(&[Change::AddLink { name: "veth0".into(), link: peer }, up("veth0")]))
        .unwrap()
        .unwrap();
    b.run(|| Rtnl::open()?.apply(&[up("veth1")])).unwrap().unwrap();
}

fn context(cache: &Path) -> AttachContext {
    let defines = BTreeMap::from([("ENABLE_NODEPORT".to_string(), "1".to_string())]);
    AttachContext {
        compiler: Arc::new(Compiler::new(default_bpf_dir(), cache.to_path_buf())),
        defines,
        bpffs: None,
        kernel_tcx: hostdp::sys::caps::probe(&hostdp::runner::cache_dir()).has("tcx"),
    }
}

/// A node namespace wired to a peer namespace by veth0/veth1, and a fresh compile cache.
struct Bench {
    node: NsGuard,
    wire: NsGuard,
    ctx: AttachContext,
    _cache: tempfile::TempDir,
}

/// `None` (test skipped) without root.
fn bench(name: &str) -> Option<Bench> {
    if skip() {
        return None;
    }
    let node = ns(name);
    let wire = ns(&format!("{name}w"));
    veth_pair(&node.ns(), &wire.ns());
    let cache = tempfile::tempdir().unwrap();
    let ctx = context(cache.path());
    Some(Bench { node, wire, ctx, _cache: cache })
}

fn attach_tc(device: &str, hook: Hook, program: ProgramRef, vlan: VlanAllow) -> Op {
    Op::AttachTc { device: device.into(), hook, program, priority: 1, vlan, seclabel: 2 }
}

/// Sends `n` copies of an Ethernet frame out of `device` through an AF_PACKET socket (calling
/// thread's namespace), optionally 802.1Q-tagged with `vlan`.
fn send_frames(device: &str, vlan: Option<u16>, n: usize) {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    if let Some(id) = vlan {
        frame.extend_from_slice(&0x8100u16.to_be_bytes());
        frame.extend_from_slice(&id.to_be_bytes());
    }
    frame.extend_from_slice(&0x88b5u16.to_be_bytes());
    frame.resize(frame.len() + 46, 0xab);
    let index = tc::ifindex(&Rtnl::open().unwrap(), device).unwrap();
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        for _ in 0..n {
            let r = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, frame.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
    // Frames on veth are delivered through a softirq; give it a moment.
    std::thread::sleep(std::time::Duration::from_millis(100));
}

fn on<'a>(atts: &'a [Attachment], device: &str, hook: Hook) -> Vec<&'a Attachment> {
    atts.iter().filter(|a| a.device == device && a.hook == hook).collect()
}

fn run_tool(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns.name()]).args(args).output().expect("run ip netns exec");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tc filter show dev D ingress|egress` → (name, pref, handle, id, tag, direct-action) per filter.
fn tc_show(ns: &Netns, device: &str, hook: Hook) -> Vec<(String, u16, u32, u32, String, bool)> {
    let text = run_tool(ns, &["tc", "filter", "show", "dev", device, hook.as_str()]);
    let mut v = Vec::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let after = |k: &str| t.iter().position(|x| *x == k).and_then(|i| t.get(i + 1)).copied();
        let Some(handle) = after("handle") else { continue };
        let handle = u32::from_str_radix(handle.trim_start_matches("0x"), 16).unwrap();
        let hpos = t.iter().position(|x| *x == "handle").unwrap();
        v.push((
            t[hpos + 2].to_string(),
            after("pref").unwrap().parse().unwrap(),
            handle,
            after("id").unwrap().parse().unwrap(),
            after("tag").unwrap_or_default().to_string(),
            t.contains(&"direct-action"),
        ));
    }
    v
}

/// The same from the inspector.
fn inspect_tc(atts: &[Attachment], device: &str, hook: Hook) -> Vec<(String, u16, u32, u32, String, bool)> {
    on(atts, device, hook)
        .into_iter()
        .filter(|a| a.mechanism == Mechanism::Tc)
        .map(|a| {
            (
                a.filter.clone().unwrap_or_default(),
                a.priority.unwrap(),
                a.handle.unwrap(),
                a.prog_id,
                a.tag.clone().unwrap_or_default(),
                a.direct_action.unwrap(),
            )
        })
        .collect()
}

/// `bpftool -j net show`: the `tc` and `xdp` arrays.
fn bpftool_net(ns: &Netns) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let text = run_tool(ns, &["bpftool", "-j", "net", "show"]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("bpftool json");
    let first = v.as_array().and_then(|a| a.first()).cloned().unwrap_or_default();
    let arr = |k: &str| first.get(k).and_then(|x| x.as_array()).cloned().unwrap_or_default();
    (arr("tc"), arr("xdp"))
}

fn program_name(ns: &Netns, id: u32) -> String {
    let text = run_tool(ns, &["bpftool", "-j", "prog", "show", "id", &id.to_string()]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["name"].as_str().unwrap_or_default().to_string()
}

#[test]
fn plan_attaches_filters_that_tools_see_and_that_run() {
    let Some(Bench { node, wire, ctx, _cache }) = bench("node") else { return };

    let ops = vec![
        Op::CreateHostDevices,
        attach_tc("veth0", Hook::Ingress, FROM_NETDEV, VlanAllow::Ids(vec![212])),
        attach_tc("veth0", Hook::Egress, TO_NETDEV, VlanAllow::Ids(vec![212])),
        attach_tc("cilium_host", Hook::Ingress, TO_HOST, VlanAllow::Ids(vec![])),
        attach_tc("cilium_host", Hook::Egress, FROM_HOST, VlanAllow::Ids(vec![])),
        attach_tc("cilium_net", Hook::Ingress, TO_HOST, VlanAllow::Ids(vec![])),
    ];
    let report = attach::execute(&node.ns(), &ctx, &ops).unwrap();
    assert_eq!(report.outcomes[0], OpOutcome::HostDevices { created: true });
    // One object, four programs from it: clang ran once.
    assert_eq!(ctx.compiler.clang_invocations(), 1);
    attach::foreign(&node.ns(), &ctx, "veth0", Hook::Egress, "foreign_tc", None).unwrap();
    assert_eq!(ctx.compiler.clang_invocations(), 2);

    // Every aya handle is gone by now: what follows sees only what the kernel keeps.
    let atts = inspect::inspect_netns(&node.ns()).unwrap();
    let summary: Vec<_> = atts
        .iter()
        .map(|a| (a.device.as_str(), a.hook, a.program.as_str(), a.filter.as_deref(), a.priority, a.handle))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("cilium_host", Hook::Ingress, "cil_to_host", Some("cil_to_host-cilium_host"), Some(1), Some(1)),
            ("cilium_host", Hook::Egress, "cil_from_host", Some("cil_from_host-cilium_host"), Some(1), Some(1)),
            ("cilium_net", Hook::Ingress, "cil_to_host", Some("cil_to_host-cilium_net"), Some(1), Some(1)),
            ("veth0", Hook::Ingress, "cil_from_netdev", Some("cil_from_netdev-veth0"), Some(1), Some(1)),
            ("veth0", Hook::Egress, "cil_to_netdev", Some("cil_to_netdev-veth0"), Some(1), Some(1)),
            ("veth0", Hook::Egress, "foreign_tc", Some("foreign_tc"), Some(100), Some(1)),
        ]
    );
    assert!(atts.iter().all(|a| a.mechanism == Mechanism::Tc && a.direct_action == Some(true)));

    // iproute2's and bpftool's view agree with the inspector's.
    for (dev, hook) in [
        ("veth0", Hook::Ingress),
        ("veth0", Hook::Egress),
        ("cilium_host", Hook::Ingress),
        ("cilium_net", Hook::Ingress),
    ] {
        assert_eq!(tc_show(&node.ns(), dev, hook), inspect_tc(&atts, dev, hook), "{dev} {hook:?}");
    }
    let (bt_tc, bt_xdp) = bpftool_net(&node.ns());
    let mut from_bpftool: Vec<(String, String, String, u64)> = bt_tc
        .iter()
        .map(|e| {
            (
                e["devname"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
                e["id"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut from_inspect: Vec<(String, String, String, u64)> = atts
        .iter()
        .map(|a| (a.device.clone(), format!("clsact/{}", a.hook.as_str()), a.filter.clone().unwrap(), a.prog_id as u64))
        .collect();
    from_bpftool.sort();
    from_inspect.sort();
    assert_eq!(from_bpftool, from_inspect);
    assert!(bt_xdp.is_empty());
    for a in &atts {
        assert_eq!(program_name(&node.ns(), a.prog_id), a.program);
    }

    // Traffic: the attached programs run, and cil_from_netdev applies the VLAN filter.
    let ingress = on(&atts, "veth0", Hook::Ingress)[0].prog_id;
    let egress = on(&atts, "veth0", Hook::Egress)[0].prog_id;
    let foreign = on(&atts, "veth0", Hook::Egress)[1].prog_id;
    let before = inspect::counters(ingress).unwrap();
    wire.ns().run(|| send_frames("veth1", None, 3)).unwrap();
    let after_plain = inspect::counters(ingress).unwrap();
    assert!(after_plain.seen >= before.seen + 3, "{before:?} → {after_plain:?}");
    assert_eq!(after_plain.dropped, before.dropped);
    wire.ns().run(|| send_frames("veth1", Some(100), 2)).unwrap();
    let after_100 = inspect::counters(ingress).unwrap();
    assert_eq!(after_100.dropped, before.dropped + 2, "VLAN 100 is not allowed on veth0");
    wire.ns().run(|| send_frames("veth1", Some(212), 2)).unwrap();
    let after_212 = inspect::counters(ingress).unwrap();
    assert_eq!(after_212.dropped, after_100.dropped, "VLAN 212 is allowed on veth0");
    assert!(after_212.seen >= after_100.seen + 2);
    let (e0, f0) = (inspect::counters(egress).unwrap(), inspect::counters(foreign).unwrap());
    node.ns().run(|| send_frames("veth0", None, 2)).unwrap();
    assert!(inspect::counters(egress).unwrap().seen >= e0.seen + 2);
    // Direct action: cil_to_netdev's TC_ACT_OK ends the chain, the filter at priority 100
    // never sees these frames.
    assert_eq!(inspect::counters(foreign).unwrap().seen, f0.seen);

    // Re-attaching replaces in place (same name, priority, handle), with a new program.
    attach::execute(&node.ns(), &ctx, &[attach_tc("veth0", Hook::Ingress, FROM_NETDEV, VlanAllow::All)]).unwrap();
    let again = inspect::inspect_netns(&node.ns()).unwrap();
    let now = on(&again, "veth0", Hook::Ingress);
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].prog_id, ingress);
    assert_eq!(ctx.compiler.clang_invocations(), 2, "cached");

    // FlushTc removes every egress filter, foreign too; RemoveObsoleteTc clears ingress.
    let r = attach::execute(
        &node.ns(),
        &ctx,
        &[Op::FlushTc { device: "veth0".into(), hook: Hook::Egress }, Op::RemoveObsoleteTc { device: "veth0".into() }],
    )
    .unwrap();
    assert_eq!(r.outcomes[0], OpOutcome::TcFlushed { device: "veth0".into(), hook: Hook::Egress, removed: 2 });
    assert_eq!(r.outcomes[1], OpOutcome::ObsoleteRemoved { device: "veth0".into(), hooks: vec![Hook::Ingress] });
    let left = inspect::inspect_netns(&node.ns()).unwrap();
    assert!(left.iter().all(|a| a.device != "veth0"), "{left:?}");
    assert_eq!(left.len(), 3);
    assert!(tc_show(&node.ns(), "veth0", Hook::Ingress).is_empty());
    assert!(tc_show(&node.ns(), "veth0", Hook::Egress).is_empty());
    // Obsolete clean-up leaves foreign filters alone.
    attach::foreign(&node.ns(), &ctx, "veth0", Hook::Ingress, "foreign_tc", None).unwrap();
    attach::execute(&node.ns(), &ctx, &[Op::RemoveObsoleteTc { device: "veth0".into() }]).unwrap();
    assert_eq!(tc_show(&node.ns(), "veth0", Hook::Ingress).len(), 1);
    // Host devices exist already: not created twice.
    let r = attach::execute(&node.ns(), &ctx, &[Op::CreateHostDevices]).unwrap();
    assert_eq!(r.outcomes[0], OpOutcome::HostDevices { created: false });
}

#[test]
fn xdp_generic_native_and_detach() {
    let Some(Bench { node, wire, ctx, _cache }) = bench("xdp") else { return };
    let r = attach::execute(
        &node.ns(),
        &ctx,
        &[Op::AttachXdp {
            device: "veth0".into(),
            program: XDP_ENTRY,
            mode: XdpMode::Generic,
            link_dir: None,
            best_effort: false,
        }],
    )
    .unwrap();
    let OpOutcome::XdpAttached { prog_id, ref mode, .. } = r.outcomes[0] else { panic!("{r:?}") };
    assert_eq!(mode, "generic");
    let atts = inspect::inspect_netns(&node.ns()).unwrap();
    assert_eq!(atts.len(), 1);
    let a = &atts[0];
    assert_eq!(
        (a.device.as_str(), a.hook, a.mechanism, a.program.as_str()),
        ("veth0", Hook::Xdp, Mechanism::Xdp, "cil_xdp_entry")
    );
    assert_eq!((a.prog_id, a.mode.as_deref()), (prog_id, Some("generic")));
    let (_, bt_xdp) = bpftool_net(&node.ns());
    assert_eq!(bt_xdp.len(), 1);
    assert_eq!(bt_xdp[0]["devname"], "veth0");
    assert_eq!(bt_xdp[0]["mode"], "generic");
    assert_eq!(bt_xdp[0]["id"].as_u64(), Some(prog_id as u64));
    let ip = run_tool(&node.ns(), &["ip", "link", "show", "dev", "veth0"]);
    assert!(ip.contains(" xdpgeneric ") && ip.contains(&format!("prog/xdp id {prog_id} ")), "{ip}");

    // It runs: frames arriving on veth0 go through it.
    let c0 = inspect::counters(prog_id).unwrap();
    wire.ns().run(|| send_frames("veth1", None, 2)).unwrap();
    assert!(inspect::counters(prog_id).unwrap().seen >= c0.seen + 2);

    // A foreign XDP program replaces it in the same (generic) mode.
    let foreign = attach::foreign(&node.ns(), &ctx, "veth0", Hook::Xdp, "foreign_xdp", None).unwrap();
    let atts = inspect::inspect_netns(&node.ns()).unwrap();
    assert_eq!((atts[0].program.as_str(), atts[0].prog_id), ("foreign_xdp", foreign));
    assert!(attach::foreign(&node.ns(), &ctx, "veth0", Hook::Ingress, "foreign_xdp", None).is_err());

    let r = attach::execute(&node.ns(), &ctx, &[Op::DetachXdp { device: "veth0".into(), keep: None, link_dir: None }])
        .unwrap();
    assert_eq!(r.outcomes[0], OpOutcome::XdpDetached { device: "veth0".into(), prog_ids: vec![foreign] });
    assert!(inspect::inspect_netns(&node.ns()).unwrap().is_empty());

    // veth takes native XDP; loopback refuses it with a clear error.
    attach::execute(
        &node.ns(),
        &ctx,
        &[Op::AttachXdp {
            device: "veth0".into(),
            program: XDP_ENTRY,
            mode: XdpMode::Native,
            link_dir: None,
            best_effort: false,
        }],
    )
    .unwrap();
    let atts = inspect::inspect_netns(&node.ns()).unwrap();
    assert_eq!(atts[0].mode.as_deref(), Some("native"));
    let e = attach::execute(
        &node.ns(),
        &ctx,
        &[Op::AttachXdp {
            device: "lo".into(),
            program: XDP_ENTRY,
            mode: XdpMode::Native,
            link_dir: None,
            best_effort: false,
        }],
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("lo") && msg.contains("attaching XDP program to interface lo"), "{msg}");
    assert_eq!(ctx.compiler.clang_invocations(), 2, "bpf_xdp.c and foreign.c, once each");
}

#[test]
fn missing_link_is_named() {
    if skip() {
        return;
    }
    let node = ns("nolink");
    let cache = tempfile::tempdir().unwrap();
    let ctx = context(cache.path());
    for op in [
        attach_tc("nope0", Hook::Ingress, FROM_NETDEV, VlanAllow::All),
        Op::FlushTc { device: "nope0".into(), hook: Hook::Egress },
        Op::DetachXdp { device: "nope0".into(), keep: None, link_dir: None },
    ] {
        let e = attach::execute(&node.ns(), &ctx, &[op]).unwrap_err();
        assert!(matches!(e, AttachError::NoLink { .. }), "{e}");
        assert!(e.to_string().contains("nope0"), "{e}");
    }
    assert!(matches!(inspect::inspect_named("hostdp-t0-does-not-exist"), Err(inspect::InspectError::NoNamespace(_))));
}

/// A private bpffs mount, unmounted on drop.
struct Bpffs(tempfile::TempDir);

impl Bpffs {
    fn mount() -> Bpffs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(Some("bpf"), dir.path(), Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .expect("mount bpffs");
        Bpffs(dir)
    }
    fn path(&self) -> PathBuf {
        self.0.path().to_path_buf()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn kernel_has_tcx() -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse::<u32>().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (6, 6)
}

#[test]
fn tcx_attach_pins_and_inspect_sees_it() {
    if !kernel_has_tcx() {
        eprintln!("skipping: kernel without tcx");
        return;
    }
    let Some(Bench { node, wire, mut ctx, _cache }) = bench("tcx") else { return };
    let fs = Bpffs::mount();
    ctx.bpffs = Some(fs.path());
    let pin = fs.path().join("devices/veth0/links/cil_from_netdev");
    let cfg = DeviceConfig::default();
    // A legacy filter on the same hook too: tcx runs first, so the inspector lists it first.
    attach::foreign(&node.ns(), &ctx, "veth0", Hook::Ingress, "foreign_tc", None).unwrap();
    let t = attach::attach_tcx(&node.ns(), &ctx, "veth0", Hook::Ingress, FROM_NETDEV, &cfg, &pin).unwrap();
    assert!(!t.updated && pin.exists());

    let atts = inspect::inspect_netns(&node.ns()).unwrap();
    let ing = on(&atts, "veth0", Hook::Ingress);
    assert_eq!(ing.len(), 2, "{atts:?}");
    assert_eq!(
        (ing[0].mechanism, ing[0].program.as_str(), ing[0].prog_id),
        (Mechanism::Tcx, "cil_from_netdev", t.prog_id)
    );
    assert_eq!(ing[0].filter, None);
    assert_eq!((ing[1].mechanism, ing[1].program.as_str()), (Mechanism::Tc, "foreign_tc"));
    // tc sees only the legacy filter; bpftool's program view agrees on the tcx program.
    let shown = tc_show(&node.ns(), "veth0", Hook::Ingress);
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].0, "foreign_tc");
    assert_eq!(program_name(&node.ns(), t.prog_id), "cil_from_netdev");

    // It runs.
    let c0 = inspect::counters(t.prog_id).unwrap();
    wire.ns().run(|| send_frames("veth1", None, 2)).unwrap();
    assert!(inspect::counters(t.prog_id).unwrap().seen >= c0.seen + 2);

    // Attaching again through the pin updates the same link in place.
    let t2 = attach::attach_tcx(&node.ns(), &ctx, "veth0", Hook::Ingress, FROM_NETDEV, &cfg, &pin).unwrap();
    assert!(t2.updated);
    assert_ne!(t2.prog_id, t.prog_id);
    let ing: Vec<_> =
        inspect::inspect_netns(&node.ns()).unwrap().into_iter().filter(|a| a.mechanism == Mechanism::Tcx).collect();
    assert_eq!(ing.len(), 1);
    assert_eq!(ing[0].prog_id, t2.prog_id);

    // Unpinning drops the last reference: the tcx attachment goes away.
    assert!(attach::detach_tcx(&pin).unwrap());
    let mut gone = false;
    for _ in 0..50 {
        if inspect::inspect_netns(&node.ns()).unwrap().iter().all(|a| a.mechanism != Mechanism::Tcx) {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone, "tcx link still attached after unpin");
    assert!(!attach::detach_tcx(&pin).unwrap());
}

/// The map ids of program `id`, as bpftool reports them.
fn map_ids(ns: &Netns, id: u32) -> Vec<u64> {
    let text = run_tool(ns, &["bpftool", "-j", "prog", "show", "id", &id.to_string()]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut ids: Vec<u64> =
        v["map_ids"].as_array().map(|a| a.iter().filter_map(|m| m.as_u64()).collect()).unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn attached_ids(report: &attach::ExecReport) -> Vec<u32> {
    report
        .outcomes
        .iter()
        .filter_map(|o| match o {
            OpOutcome::TcAttached { prog_id, .. } => Some(*prog_id),
            _ => None,
        })
        .collect()
}

/// As Cilium's `replaceDatapath` does, a device's programs come from one opened object and so
/// share its maps; another device, or another batch, gets its own.
#[test]
fn a_devices_programs_share_one_opened_object() {
    let Some(Bench { node, wire: _wire, ctx, _cache }) = bench("share") else { return };
    let ops = vec![
        Op::CreateHostDevices,
        attach_tc("veth0", Hook::Ingress, FROM_NETDEV, VlanAllow::Ids(vec![])),
        attach_tc("veth0", Hook::Egress, TO_NETDEV, VlanAllow::Ids(vec![])),
        attach_tc("cilium_host", Hook::Ingress, TO_HOST, VlanAllow::Ids(vec![])),
    ];
    let ids = attached_ids(&attach::execute(&node.ns(), &ctx, &ops).unwrap());
    let [ingress, egress, host] = ids[..] else { panic!("three attachments expected, got {ids:?}") };
    let (mi, me, mh) = (map_ids(&node.ns(), ingress), map_ids(&node.ns(), egress), map_ids(&node.ns(), host));
    assert!(!mi.is_empty(), "bpftool shows no maps for program {ingress}");
    assert_eq!(mi, me, "veth0's ingress and egress programs should share their object's maps");
    assert!(mh.iter().all(|m| !mi.contains(m)), "cilium_host's program shares maps with veth0's: {mh:?} / {mi:?}");

    // Re-attaching the egress alone (a later regeneration) opens the object again.
    let again = attached_ids(
        &attach::execute(&node.ns(), &ctx, &[attach_tc("veth0", Hook::Egress, TO_NETDEV, VlanAllow::Ids(vec![]))])
            .unwrap(),
    );
    let later = map_ids(&node.ns(), again[0]);
    assert!(later.iter().all(|m| !mi.contains(m)), "a new batch reused an old object's maps");
}

#[test]
fn encap_device_lifecycle_and_overlay_filters() {
    use hostdp::model::observed::EncapKind;
    use hostdp::sys::netlink::EncapAction;
    if skip() {
        return;
    }
    let node = ns("encap");
    let cache = tempfile::tempdir().unwrap();
    let ctx = context(cache.path());
    let dev = "cilium_vxlan";
    let ensure = |port: u16| Op::EnsureEncapDevice { device: dev.into(), kind: EncapKind::Vxlan, port };
    let from = ProgramRef { object: Object::Overlay, symbol: "cil_from_overlay" };
    let to = ProgramRef { object: Object::Overlay, symbol: "cil_to_overlay" };
    let ops = [
        ensure(8472),
        attach_tc(dev, Hook::Ingress, from, VlanAllow::Ids(vec![])),
        attach_tc(dev, Hook::Egress, to, VlanAllow::Ids(vec![])),
    ];
    let r = attach::execute(&node.ns(), &ctx, &ops).unwrap();
    assert_eq!(r.outcomes[0], OpOutcome::EncapDevice { device: dev.into(), action: EncapAction::Created });
    let details = run_tool(&node.ns(), &["ip", "-d", "link", "show", dev]);
    assert!(details.contains("vxlan external") && details.contains("dstport 8472"), "{details}");
    assert!(details.contains(",UP") || details.contains("<UP"), "{details}");
    // The filters as iproute2 and the inspector see them, the programs as bpftool names them.
    let atts = inspect::inspect_netns(&node.ns()).unwrap();
    for (hook, name, kernel_name) in [
        (Hook::Ingress, "cil_from_overlay-cilium_vxlan", "cil_from_overlay"),
        (Hook::Egress, "cil_to_overlay-cilium_vxlan", "cil_to_overlay"),
    ] {
        let shown = tc_show(&node.ns(), dev, hook);
        assert_eq!(shown, inspect_tc(&atts, dev, hook));
        assert_eq!(shown.len(), 1);
        assert_eq!((shown[0].0.as_str(), shown[0].1, shown[0].2, shown[0].5), (name, 1, 1, true));
        assert_eq!(program_name(&node.ns(), shown[0].3), kernel_name);
    }
    // Frames sent out of the device run cil_to_overlay (its counter slot is read back).
    let egress = on(&atts, dev, Hook::Egress)[0].prog_id;
    node.ns().run(|| send_frames(dev, None, 2)).unwrap();
    let c = inspect::counters(egress).unwrap();
    assert!(c.seen >= 2 && c.dropped == 0, "{c:?}");
    // Same kind and port: kept, with its filters.
    let r = attach::execute(&node.ns(), &ctx, &[ensure(8472)]).unwrap();
    assert_eq!(r.outcomes[0], OpOutcome::EncapDevice { device: dev.into(), action: EncapAction::Kept });
    assert_eq!(tc_show(&node.ns(), dev, Hook::Ingress).len(), 1);
    // Another port: the device is made again, and the old one's filters went with it.
    let r = attach::execute(&node.ns(), &ctx, &[ensure(4789)]).unwrap();
    assert_eq!(r.outcomes[0], OpOutcome::EncapDevice { device: dev.into(), action: EncapAction::Recreated });
    assert!(run_tool(&node.ns(), &["ip", "-d", "link", "show", dev]).contains("dstport 4789"));
    assert!(tc_show(&node.ns(), dev, Hook::Ingress).is_empty());
    // Deleted if present; absent is fine.
    let del = [Op::DeleteLink { device: dev.into() }];
    let r = attach::execute(&node.ns(), &ctx, &del).unwrap();
    assert_eq!(r.outcomes[0], OpOutcome::LinkDeleted { device: dev.into(), existed: true });
    let r = attach::execute(&node.ns(), &ctx, &del).unwrap();
    assert_eq!(r.outcomes[0], OpOutcome::LinkDeleted { device: dev.into(), existed: false });
}
