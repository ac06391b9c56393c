//! Opening objects with aya without paying for the kernel's BTF every time.
//!
//! `EbpfLoader::new` parses `/sys/kernel/btf/vmlinux` (tens of milliseconds, megabytes of
//! allocations); that was most of the cost of an attach. Loaders are therefore kept in a pool
//! and reused: every load overrides the same five globals, so nothing of an earlier load leaks
//! into the next one.

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
    let mut loader = pool.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
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
