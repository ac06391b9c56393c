//! Opening objects with aya without paying for the kernel's BTF.
//!
//! aya 0.14's `EbpfLoader::new` always parses `/sys/kernel/btf/vmlinux` (30–40 ms and megabytes
//! of allocations here) and offers no constructor that does not. The kernel's BTF only serves
//! CO-RE relocations, and the objects of `bpf/` have none (they are compiled per configuration,
//! as Cilium's are). So loaders are made on a short-lived thread whose private mount namespace
//! hides `/sys/kernel/btf`: the parse fails at once and the loader has no target BTF. Where that
//! namespace cannot be made, the loader is made the ordinary way.
//!
//! Loaders are also kept in a pool and reused: every load overrides the same five globals, so
//! nothing of an earlier load leaks into the next one.

use std::collections::HashSet;
use std::sync::Mutex;

use aya::{Ebpf, EbpfError, EbpfLoader};

/// The per-device globals of the harness objects (`bpf/include/hostdp.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Globals {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub seclabel: u32,
    pub vlan_allow_all: u32,
    pub vlan_ids: [u16; 5],
}

/// Idle loaders; one is taken per load, so parallel loads never wait for each other.
static POOL: Mutex<Vec<EbpfLoader<'static>>> = Mutex::new(Vec::new());

/// Idle loaders that have been given a map pin path. aya keeps a pin path for the loader's
/// life, so these are only reused for loads that set their own.
static PINNED_POOL: Mutex<Vec<EbpfLoader<'static>>> = Mutex::new(Vec::new());

/// Global values the pooled loaders may still borrow. Interned: the set only grows with the
/// distinct device configurations a process attached to.
static VALUES: Mutex<Option<HashSet<&'static Globals>>> = Mutex::new(None);

fn intern(g: Globals) -> &'static Globals {
    let mut set = VALUES.lock().unwrap_or_else(|p| p.into_inner());
    let set = set.get_or_insert_with(HashSet::new);
    if let Some(v) = set.get(&g) {
        return v;
    }
    let v: &'static Globals = Box::leak(Box::new(g));
    set.insert(v);
    v
}

/// Opens the object in `data` with `g` written into its globals and, when given, the map
/// `pin.0` pinned at (or reused from) `pin.1`.
pub fn load(data: &[u8], g: Globals, pin: Option<(&'static str, &std::path::Path)>) -> Result<Ebpf, EbpfError> {
    let v = intern(g);
    let pool = if pin.is_some() { &PINNED_POOL } else { &POOL };
    let idle = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut loader = idle.unwrap_or_else(new_loader);
    if let Some((name, path)) = pin {
        loader.map_pin_path(name, path.to_path_buf());
    }
    loader
        .override_global("hostdp_ifindex", &v.ifindex, true)
        .override_global("hostdp_mac", &v.mac, true)
        .override_global("hostdp_seclabel", &v.seclabel, true)
        .override_global("hostdp_vlan_allow_all", &v.vlan_allow_all, true)
        .override_global("hostdp_vlan_ids", &v.vlan_ids, true);
    let out = loader.load(data);
    pool.lock().unwrap_or_else(|p| p.into_inner()).push(loader);
    out
}

/// A loader without target BTF, made where `/sys/kernel/btf` is hidden (see the module's doc).
fn new_loader() -> EbpfLoader<'static> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("hostdp-loader".into()).spawn(move || {
        let hidden = hide_kernel_btf();
        let _ = tx.send(hidden.then(EbpfLoader::new));
        // The thread's mount namespace goes with it; nobody waits for that.
    });
    match spawned.ok().and_then(|_| rx.recv().ok()).flatten() {
        Some(loader) => loader,
        None => EbpfLoader::new(),
    }
}

/// Gives the calling thread its own mount namespace, private so nothing propagates back, with
/// an empty tmpfs over `/sys/kernel/btf`. Only the calling thread sees it.
fn hide_kernel_btf() -> bool {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    if unshare(CloneFlags::CLONE_NEWNS).is_err() {
        return false;
    }
    if mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).is_err() {
        return false;
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("hostdp-nobtf"), "/sys/kernel/btf", Some("tmpfs"), flags, Some("size=4k")).is_ok()
        && !std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
}

#[cfg(test)]
mod tests {
    /// The loader has not parsed the kernel's BTF, and the trick does not leak: the caller
    /// still sees `/sys/kernel/btf/vmlinux`.
    #[test]
    fn hiding_the_kernel_btf_stays_on_the_loader_thread() {
        if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            errln!("skipped: needs root and /sys/kernel/btf/vmlinux");
            return;
        }
        let loader = super::new_loader();
        assert!(std::path::Path::new("/sys/kernel/btf/vmlinux").exists(), "the kernel BTF vanished for the caller");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains("hostdp-nobtf"), "the masking mount leaked into the process's namespace");
        // aya keeps no way to ask; its Debug output shows whether the kernel BTF was parsed.
        let shown = format!("{loader:?}");
        assert!(shown.contains("btf: None"), "the loader parsed the kernel BTF: {}", &shown[..shown.len().min(200)]);
    }
}
