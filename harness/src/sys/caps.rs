//! What the running kernel can do, probed for real in a scratch namespace: each link kind, a
//! clsact qdisc, a cls_bpf filter, BPF program loading and tcx links. A scenario needing
//! something missing is skipped with a reason (`kernel lacks bonding`), not failed.
//!
//! Creating a link of an unknown kind makes the kernel call modprobe; the probe never lets it:
//! where the kernel supports modules, a kind is only tried when its module is loaded or built
//! in (set `HOSTDP_ALLOW_MODPROBE=1`, e.g. inside a throwaway VM, to let the kernel load it).

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::sys::netlink::{Change, NewLink, Rtnl};
use crate::sys::{bpf, tc};
use hostdp_model::needs::{Capabilities, EXTRA_FEATURES, LINK_FEATURES};

/// Probes once per boot of the kernel and set of loaded modules (about 50 ms, and the
/// scratch namespace's teardown then runs behind the caller's back for tens more); the
/// answer is kept in memory for the process and on disk in `cache_dir`.
pub fn probe(cache_dir: &Path) -> Capabilities {
    static CACHE: OnceLock<Capabilities> = OnceLock::new();
    CACHE.get_or_init(|| probe_cached(cache_dir, probe_key().as_deref(), probe_now)).clone()
}

fn uname_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

/// The module providing a feature, for the modprobe guard.
fn module_of(feature: &str) -> &str {
    match feature {
        "vlan" | "vlan-802.1ad" => "8021q",
        "clsact" => "sch_ingress",
        other => other,
    }
}

/// `None` if trying `feature` cannot make the kernel call modprobe, else why it is not tried.
fn modprobe_guard(feature: &str, release: &str) -> Option<String> {
    if !Path::new("/proc/modules").exists() || crate::paths::get().allow_modprobe {
        return None; // no module support: nothing can be loaded behind our back
    }
    let m = module_of(feature);
    if Path::new("/sys/module").join(m).exists() {
        return None;
    }
    let builtin = std::fs::read_to_string(format!("/lib/modules/{release}/modules.builtin")).unwrap_or_default();
    if builtin.lines().any(|l| l.rsplit('/').next() == Some(&format!("{m}.ko"))) {
        return None;
    }
    Some(format!("module {m} is not loaded (not probed, to avoid loading modules)"))
}

/// What a probe's answer depends on: the kernel's boot (its release and boot id), the loaded
/// modules (a module loaded later changes the answer), whether modprobe is allowed, and the
/// probe itself. `None` where the boot id is unknown: then nothing is kept on disk.
fn probe_key() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let mut names: Vec<&str> = modules.lines().filter_map(|l| l.split_whitespace().next()).collect();
    names.sort_unstable();
    let features: Vec<&str> = LINK_FEATURES.iter().chain(EXTRA_FEATURES).copied().collect();
    Some(format!(
        "hostdp {} probe {PROBE_VERSION}; features {}; kernel {} boot {}; allow-modprobe {}; modules {}",
        env!("CARGO_PKG_VERSION"),
        features.join(","),
        uname_release(),
        boot.trim(),
        if crate::paths::get().allow_modprobe { "1" } else { "" },
        names.join(",")
    ))
}

/// Bumped whenever the probe changes what it tries, so older answers are not reused.
const PROBE_VERSION: u32 = 2;

/// A probe's answer as kept on disk.
#[derive(Serialize, Deserialize)]
struct KeptProbe {
    key: String,
    capabilities: Capabilities,
}

/// The answer kept in `dir` for `key`, else `probe()`'s, then kept (one file per kernel
/// release, replaced atomically, so parallel runs never read half a file). A probe that failed
/// is not kept.
fn probe_cached(dir: &Path, key: Option<&str>, probe: impl FnOnce() -> Capabilities) -> Capabilities {
    let Some(key) = key else { return probe() };
    let file = dir.join("capabilities").join(format!("{}.json", uname_release()));
    let kept = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<KeptProbe>(&b).ok());
    if let Some(k) = kept.filter(|k| k.key == key) {
        return k.capabilities;
    }
    let capabilities = probe();
    let failed = capabilities.features.values().flatten().any(|why| why.starts_with("probe failed"));
    if !failed {
        let kept = KeptProbe { key: key.to_string(), capabilities: capabilities.clone() };
        if let (Ok(json), Some(parent)) = (serde_json::to_vec(&kept), file.parent()) {
            if std::fs::create_dir_all(parent).is_ok() {
                let _ = crate::sys::compile::write_atomic(&file, &json);
            }
        }
    }
    capabilities
}

fn probe_now() -> Capabilities {
    let kernel = uname_release();
    let mut features: BTreeMap<String, Option<String>> = BTreeMap::new();
    let guarded: Vec<(String, Option<String>)> = LINK_FEATURES
        .iter()
        .chain(EXTRA_FEATURES)
        .map(|f| (f.to_string(), if *f == "bpf" || *f == "tcx" { None } else { modprobe_guard(f, &kernel) }))
        .collect();
    let name = format!("{}-caps", crate::sys::topology::RunId::new());
    let result = crate::sys::topology::with_scratch_netns(&name, |ns| ns.run(|| probe_inside(&guarded)))
        .and_then(|r| r)
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match result {
        Ok(found) => features = found,
        Err(e) => {
            for f in LINK_FEATURES.iter().chain(EXTRA_FEATURES) {
                features.insert(f.to_string(), Some(format!("probe failed: {e}")));
            }
        }
    }
    Capabilities { kernel, features }
}

/// Runs inside the scratch namespace: tries every feature not ruled out by `guarded`.
fn probe_inside(guarded: &[(String, Option<String>)]) -> Result<BTreeMap<String, Option<String>>, String> {
    let nl = Rtnl::open().map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    let blocked = |f: &str| guarded.iter().find(|(n, _)| n == f).and_then(|(_, g)| g.clone());
    let try_link = |feature: &str, name: &str, link: NewLink, needs_veth: bool| -> Option<String> {
        if let Some(g) = blocked(feature) {
            return Some(g);
        }
        if needs_veth && blocked("veth").is_some() {
            return Some("needs a veth to stack on, and veth is unavailable".into());
        }
        nl.apply(&[Change::AddLink { name: name.into(), link }]).err().map(|e| short(&e.to_string()))
    };
    // `pv0`/`pv1`: the veth other probes stack on and attach to; kept until the namespace goes.
    let veth = try_link("veth", "pv0", NewLink::Veth { peer: "pv1".into(), peer_netns: None }, false);
    let veth_ok = veth.is_none();
    out.insert("veth".to_string(), veth);
    let vlan_on = |p: Option<&str>| NewLink::Vlan { parent: "pv0".into(), id: 7, protocol: p.map(str::to_string) };
    let probes: Vec<(&str, &str, NewLink, bool)> = vec![
        ("bonding", "pbond", NewLink::Bond { mode: Some("active-backup".into()), miimon: Some(100) }, false),
        ("vlan", "pv0.7", vlan_on(None), true),
        (
            "vlan-802.1ad",
            "pv0.8",
            NewLink::Vlan { parent: "pv0".into(), id: 8, protocol: Some("802.1ad".into()) },
            true,
        ),
        ("bridge", "pbr", NewLink::Bridge, false),
        ("dummy", "pdummy", NewLink::Dummy, false),
        ("ifb", "pifb", NewLink::Ifb, false),
        ("wireguard", "pwg", NewLink::Wireguard, false),
        ("macvlan", "pmv", NewLink::Macvlan { parent: "pv0".into(), mode: None }, true),
        ("vxlan", "pvx", NewLink::Vxlan { vni: 42, port: None, parent: None }, false),
        ("vrf", "pvrf", NewLink::Vrf { table: 10 }, false),
    ];
    for (feature, name, link, needs_veth) in probes {
        let r = try_link(feature, name, link, needs_veth);
        out.insert(feature.to_string(), r);
    }
    // geneve as the agent makes cilium_geneve (external, Cilium's default port).
    let geneve = match blocked("geneve") {
        Some(g) => Some(g),
        None => nl
            .ensure_encap_device("pgen", hostdp_model::observed::EncapKind::Geneve, 6081)
            .err()
            .map(|e| short(&e.to_string())),
    };
    out.insert("geneve".into(), geneve);
    let index = if veth_ok { nl.index_of("pv0").ok() } else { None };

    let clsact = match (blocked("clsact"), index) {
        (Some(g), _) => Some(g),
        (None, None) => Some("needs a veth to attach to, and veth is unavailable".into()),
        // The same tc calls the attach path makes (sys::tc), on the probe's veth.
        (None, Some(_)) => tc::ensure_clsact(&nl, "pv0").err().map(|e| short(&e.to_string())),
    };
    let clsact_ok = clsact.is_none();
    out.insert("clsact".into(), clsact);

    // The errno's text, as the other features report theirs.
    let why = |e: bpf::BpfError| crate::sys::netlink::errno_text(e.source.raw_os_error().unwrap_or(0));
    let sched_cls = bpf::load_trivial_program(bpf::PROG_TYPE_SCHED_CLS).map_err(why);
    out.insert("bpf".into(), bpf::load_trivial_program(bpf::PROG_TYPE_SOCKET_FILTER).map_err(why).err());
    let cls_bpf = match (blocked("cls_bpf"), &sched_cls, index, clsact_ok) {
        (Some(g), ..) => Some(g),
        (None, Err(e), ..) => Some(format!("cannot load a sched_cls program: {e}")),
        (None, Ok(_), None, _) | (None, Ok(_), _, false) => Some("needs a clsact qdisc on a veth".into()),
        (None, Ok(fd), Some(_), true) => {
            let spec =
                tc::FilterSpec { direction: tc::Direction::Ingress, priority: 1, handle: 1, name: "hostdp_probe" };
            tc::replace_filter(&nl, "pv0", &spec, fd.as_fd()).err().map(|e| short(&e.to_string()))
        }
    };
    out.insert("cls_bpf".into(), cls_bpf);
    let tcx = match (&sched_cls, index) {
        (Err(e), _) => Some(format!("cannot load a sched_cls program: {e}")),
        (Ok(_), None) => Some("needs a veth to attach to, and veth is unavailable".into()),
        (Ok(fd), Some(i)) => bpf::tcx_attach_ingress(fd, i).map(drop).map_err(why).err(),
    };
    out.insert("tcx".into(), tcx);
    Ok(out)
}

/// `create link pbond: Operation not supported (kernel lacks bonding?)` → the kernel's words.
fn short(message: &str) -> String {
    message.split_once(": ").map(|(_, m)| m).unwrap_or(message).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(missing: &[&str], kernel: &str) -> Capabilities {
        Capabilities::all_but(missing, kernel)
    }

    #[test]
    fn probe_is_fast_and_real() {
        if !nix::unistd::geteuid().is_root() {
            errln!("skipping: needs root");
            return;
        }
        // Probed for real here, whatever a kept answer says.
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        let c = probe_now();
        let took = t.elapsed();
        errln!("probe took {took:?}: {c:#?}");
        assert!(took < std::time::Duration::from_millis(500), "probe took {took:?}");
        assert!(c.has("veth"), "{c:?}");
        assert!(c.has("bpf"), "{c:?}");
        for f in LINK_FEATURES.iter().chain(EXTRA_FEATURES) {
            assert!(c.features.contains_key(*f), "{f}");
        }
        // The answer kept for the process (and on disk) is the same.
        assert_eq!(probe(dir.path()), c);
        let t = std::time::Instant::now();
        assert_eq!(probe(dir.path()), c);
        assert!(t.elapsed() < std::time::Duration::from_millis(5));
    }

    #[test]
    fn a_kept_probe_is_reused_for_the_same_boot_and_modules_only() {
        let dir = tempfile::tempdir().unwrap();
        let probed = std::cell::Cell::new(0);
        let fake = |has_bonding: bool| {
            probed.set(probed.get() + 1);
            caps(if has_bonding { &[] } else { &["bonding"] }, "6.18.0")
        };
        let a = probe_cached(dir.path(), Some("boot 1; modules a"), || fake(false));
        assert_eq!(probed.get(), 1);
        assert!(!a.has("bonding"));
        // Same key: read back, not probed.
        let b = probe_cached(dir.path(), Some("boot 1; modules a"), || fake(true));
        assert_eq!((probed.get(), &b), (1, &a));
        // A module loaded since (or another boot): probed again, and the new answer kept.
        let c = probe_cached(dir.path(), Some("boot 1; modules a,bonding"), || fake(true));
        assert_eq!(probed.get(), 2);
        assert!(c.has("bonding"));
        let d = probe_cached(dir.path(), Some("boot 1; modules a,bonding"), || fake(false));
        assert_eq!((probed.get(), d.has("bonding")), (2, true));
        // No key (boot id unknown): always probed.
        probe_cached(dir.path(), None, || fake(false));
        assert_eq!(probed.get(), 3);
    }

    #[test]
    fn a_failed_probe_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let failed = || {
            let mut c = caps(&[], "6.18.0");
            c.features.insert("veth".into(), Some("probe failed: no namespace".into()));
            c
        };
        probe_cached(dir.path(), Some("k"), failed);
        let again = probe_cached(dir.path(), Some("k"), || caps(&[], "6.18.0"));
        assert!(again.has("veth"));
    }
}
