//! Per-endpoint policy maps: what the applied policies give one endpoint, written into a real BPF
//! hash map keyed like Cilium v1.14's policy map (`struct policy_key`: peer identity, destination
//! port, protocol, direction → `struct policy_entry`: allow or deny, counters), and read back
//! through the bpf syscall.
//!
//! Layout (`bpf/include/policy.h`): the map is `hostdp_policy` in `bpf_lxc.c` and, with the host
//! firewall on, in `bpf_host.c`. With a node bpffs the loader pins it per endpoint at
//! `<bpffs>/tc/globals/cilium_policy_<endpoint>` (`host`, or the pod's lxc device name), so every
//! program of an endpoint shares one map that survives reloads, as Cilium's `cilium_policy_<ID>`
//! does; the agent syncs it after each regeneration (stale keys removed, missing ones added).
//! Without a bpffs each program load owns a fresh, empty map.
//!
//! Peers: the identities of [`hostdp_model::policy::policy_entries`]; a CIDR peer gets a local-scope
//! identity (1<<24 and up, as Cilium allocates for CIDRs) derived from the prefix. Entries with a
//! named port are left out: pods declare no container ports to resolve them against.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo};
use aya::programs::loaded_programs;
use ipnet::IpNet;

use hostdp_model::datapath::Object;
use hostdp_model::observed::Attachment;
use hostdp_model::observed::{MapEntry, MapUser, PolicyMapView};
use hostdp_model::policy::{self, Direction, Endpoint, PeerId, Policy, PolicyEntry};

/// The map's name in the objects (and the kernel's map name).
pub const MAP_NAME: &str = "hostdp_policy";
/// Endpoint name of the host endpoint in pin paths and read-back.
pub const HOST_ENDPOINT: &str = "host";
/// First identity of the local scope, where Cilium allocates CIDR identities.
pub const CIDR_IDENTITY_BASE: u32 = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum PolicyMapError {
    #[error("policy map {object}: {source}")]
    Map {
        object: String,
        #[source]
        source: MapCause,
    },
    #[error("policy map folder {path}: {source}")]
    Fs { path: PathBuf, source: std::io::Error },
}

/// The bpf call under a [`PolicyMapError::Map`].
#[derive(Debug, thiserror::Error)]
pub enum MapCause {
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
}

fn map_err(object: impl std::fmt::Display, e: impl Into<MapCause>) -> PolicyMapError {
    PolicyMapError::Map { object: object.to_string(), source: e.into() }
}

/// `struct hostdp_policy_key` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Peer identity; 0 is any peer.
    pub sec_label: u32,
    /// Destination port in network byte order; 0 is any port.
    pub dport: u16,
    /// IP protocol; 0 is any.
    pub protocol: u8,
    /// 1 egress, 0 ingress.
    pub egress: u8,
}

// SAFETY: plain integers, no padding (4 + 2 + 1 + 1), same layout as the C struct.
unsafe impl aya::Pod for PolicyKey {}

/// `struct hostdp_policy_entry` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyValue {
    pub proxy_port: u16,
    pub deny: u8,
    pub auth_type: u8,
    pub pad: u32,
    pub packets: u64,
    pub bytes: u64,
}

// SAFETY: plain integers, no implicit padding (2 + 1 + 1 + 4 + 8 + 8), same layout as the C struct.
unsafe impl aya::Pod for PolicyValue {}

impl PolicyKey {
    pub fn new(identity: u32, port: u16, protocol: u8, direction: Direction) -> PolicyKey {
        PolicyKey {
            sec_label: identity,
            dport: port.to_be(),
            protocol,
            egress: u8::from(direction == Direction::Egress),
        }
    }

    /// The destination port in host byte order.
    pub fn port(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

/// The local-scope identity of a CIDR peer: 1<<24 plus 24 bits of FNV-1a of the prefix text.
pub fn cidr_identity(net: &IpNet) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in net.trunc().to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    CIDR_IDENTITY_BASE | (h & 0x00ff_ffff)
}

/// The map key of a policy entry; `None` for a named port (not resolvable here).
pub fn key_of(e: &PolicyEntry) -> Option<PolicyKey> {
    if e.port_name.is_some() {
        return None;
    }
    let identity = match e.peer {
        PeerId::Identity(id) => id,
        PeerId::Cidr(net) => cidr_identity(&net),
    };
    Some(PolicyKey::new(identity, e.port, e.protocol, e.direction))
}

/// Key → deny, for every policy that selects `endpoint`. A key both allowed and denied is denied
/// (deny takes precedence in Cilium).
pub fn desired<'a>(policies: impl IntoIterator<Item = &'a Policy>, endpoint: &Endpoint) -> BTreeMap<PolicyKey, bool> {
    let mut out: BTreeMap<PolicyKey, bool> = BTreeMap::new();
    for p in policies {
        for e in policy::policy_entries(p, endpoint) {
            if let Some(k) = key_of(&e) {
                *out.entry(k).or_insert(false) |= e.deny;
            }
        }
    }
    out
}

/// `<bpffs>/tc/globals/cilium_policy_<endpoint>`.
pub fn pin_path(bpffs: &Path, endpoint: &str) -> PathBuf {
    bpffs.join("tc").join("globals").join(format!("cilium_policy_{endpoint}"))
}

/// Where the policy map of a program loaded from `object` onto `device` is pinned: bpf_host
/// programs belong to the host endpoint, bpf_lxc programs to the pod behind the lxc device.
/// Creates the folder. `None` without a bpffs or for objects without a policy map.
pub fn prepare_pin(bpffs: Option<&Path>, object: Object, device: &str) -> Result<Option<PathBuf>, PolicyMapError> {
    let Some(bpffs) = bpffs else { return Ok(None) };
    let endpoint = match object {
        Object::Host => HOST_ENDPOINT,
        Object::Lxc => device,
        Object::Xdp | Object::Foreign | Object::Overlay | Object::Wireguard => return Ok(None),
    };
    let pin = pin_path(bpffs, endpoint);
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|source| PolicyMapError::Fs { path: dir.to_path_buf(), source })?;
    }
    Ok(Some(pin))
}

/// What [`sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub added: usize,
    pub removed: usize,
}

fn open_hash(data: MapData, object: &str) -> Result<BpfHashMap<MapData, PolicyKey, PolicyValue>, PolicyMapError> {
    BpfHashMap::try_from(Map::HashMap(data)).map_err(|e| map_err(object, e))
}

/// Makes the pinned map at `pin` hold exactly `want` (key → deny): stale keys are removed,
/// missing or changed ones written; unchanged entries keep their counters. `Ok(None)` if nothing
/// is pinned there (no program of the endpoint was loaded with a policy map).
pub fn sync(pin: &Path, want: &BTreeMap<PolicyKey, bool>) -> Result<Option<SyncStats>, PolicyMapError> {
    if !pin.exists() {
        return Ok(None);
    }
    let what = pin.display().to_string();
    let data = MapData::from_pin(pin).map_err(|e| map_err(&what, e))?;
    let mut map = open_hash(data, &what)?;
    let have: Vec<(PolicyKey, PolicyValue)> = map.iter().collect::<Result<_, _>>().map_err(|e| map_err(&what, e))?;
    let mut stats = SyncStats::default();
    for (k, _) in have.iter().filter(|(k, _)| !want.contains_key(k)) {
        map.remove(k).map_err(|e| map_err(&what, e))?;
        stats.removed += 1;
    }
    for (k, deny) in want {
        let current = have.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.deny != 0);
        if current == Some(*deny) {
            continue;
        }
        let v = PolicyValue { deny: u8::from(*deny), ..PolicyValue::default() };
        map.insert(*k, v, 0).map_err(|e| map_err(&what, e))?;
        stats.added += 1;
    }
    Ok(Some(stats))
}

/// A regenerated endpoint's map: the entries of every applied policy selecting it. Nothing to do
/// without a bpffs (each program then owns an empty map).
pub fn write_endpoint<'a>(
    bpffs: Option<&Path>,
    policies: impl IntoIterator<Item = &'a Policy>,
    endpoint: &Endpoint,
    name: &str,
) -> Result<Option<SyncStats>, PolicyMapError> {
    let Some(bpffs) = bpffs else { return Ok(None) };
    sync(&pin_path(bpffs, name), &desired(policies, endpoint))
}

/// Unpins an endpoint's map (the endpoint went away). `Ok(false)` if none was pinned.
pub fn remove(bpffs: &Path, endpoint: &str) -> Result<bool, PolicyMapError> {
    let pin = pin_path(bpffs, endpoint);
    match std::fs::remove_file(&pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(PolicyMapError::Fs { path: pin, source }),
    }
}

/// `cilium cleanup`: every pinned policy map goes. Returns how many.
pub fn remove_all(bpffs: &Path) -> Result<usize, PolicyMapError> {
    let dir = bpffs.join("tc").join("globals");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(PolicyMapError::Fs { path: dir, source }),
    };
    let mut n = 0;
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with("cilium_policy_") {
            std::fs::remove_file(e.path()).map_err(|source| PolicyMapError::Fs { path: e.path(), source })?;
            n += 1;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Read-back

/// A map entry as the record shows it.
pub fn decode_entry(k: &PolicyKey, v: &PolicyValue) -> MapEntry {
    MapEntry {
        direction: if k.egress != 0 { "egress" } else { "ingress" }.into(),
        identity: k.sec_label,
        peer: peer_name(k.sec_label),
        port: k.port(),
        protocol: protocol_name(k.protocol),
        verdict: if v.deny != 0 { "deny" } else { "allow" }.into(),
        packets: v.packets,
        bytes: v.bytes,
    }
}

/// Whether `e` is the entry of `key` (counters aside).
pub fn entry_is(e: &MapEntry, key: &PolicyKey) -> bool {
    e.identity == key.sec_label
        && e.port == key.port()
        && e.protocol == protocol_name(key.protocol)
        && (e.direction == "egress") == (key.egress != 0)
}

fn peer_name(id: u32) -> String {
    if id == 0 {
        return "any".into();
    }
    if id >= CIDR_IDENTITY_BASE {
        return "cidr".into();
    }
    ["host", "world", "unmanaged", "health", "init", "remote-node", "kube-apiserver", "ingress"]
        .into_iter()
        .find(|n| policy::reserved_identity(n) == Some(id))
        .map_or_else(|| "endpoints".to_string(), str::to_string)
}

fn protocol_name(p: u8) -> String {
    match p {
        0 => "ANY".into(),
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// Kernel names of bpf_lxc's programs (truncated to 15 bytes).
const LXC_PROGRAMS: [&str; 2] = ["cil_from_contai", "cil_to_containe"];

/// The policy maps referenced by the attached programs in `attachments` (maps are global
/// objects: no namespace needed), sorted by endpoint. Programs that vanished meanwhile are
/// skipped.
pub fn read_policy_maps(attachments: &[Attachment]) -> Result<Vec<PolicyMapView>, PolicyMapError> {
    let ids: BTreeSet<u32> = attachments.iter().map(|a| a.prog_id).filter(|id| *id != 0).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut prog_maps: HashMap<u32, Vec<u32>> = HashMap::new();
    for info in loaded_programs().filter_map(Result::ok).filter(|p| ids.contains(&p.id())) {
        let maps = info.map_ids().map_err(|e| map_err(format!("ids of program {}", info.id()), e))?.unwrap_or_default();
        prog_maps.insert(info.id(), maps);
    }
    let mut by_map: BTreeMap<u32, Vec<MapUser>> = BTreeMap::new();
    let mut names: HashMap<u32, bool> = HashMap::new();
    for a in attachments {
        for &map_id in prog_maps.get(&a.prog_id).into_iter().flatten() {
            let is_policy = *names
                .entry(map_id)
                .or_insert_with(|| MapInfo::from_id(map_id).is_ok_and(|mi| mi.name_as_str() == Some(MAP_NAME)));
            if is_policy {
                by_map.entry(map_id).or_default().push(MapUser {
                    device: a.device.clone(),
                    hook: a.hook,
                    program: a.program.clone(),
                    prog_id: a.prog_id,
                });
            }
        }
    }
    let mut out = Vec::new();
    for (map_id, mut programs) in by_map {
        programs.sort();
        programs.dedup();
        let what = format!("id {map_id}");
        let data = match MapData::from_id(map_id) {
            Ok(d) => d,
            Err(_) => continue, // freed since the program was listed
        };
        let map = open_hash(data, &what)?;
        let mut entries: Vec<MapEntry> = map
            .iter()
            .map(|r| r.map(|(k, v)| decode_entry(&k, &v)))
            .collect::<Result<_, _>>()
            .map_err(|e| map_err(&what, e))?;
        entries.sort();
        let endpoint = programs
            .iter()
            .find(|u| LXC_PROGRAMS.contains(&u.program.as_str()))
            .map_or_else(|| HOST_ENDPOINT.to_string(), |u| u.device.clone());
        out.push(PolicyMapView { endpoint, map_id, name: MAP_NAME.into(), programs, entries });
    }
    out.sort_by(|a, b| (&a.endpoint, a.map_id).cmp(&(&b.endpoint, b.map_id)));
    Ok(out)
}

/// The table form of `hostdp inspect --maps`.
pub fn render_table(maps: &[PolicyMapView]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if maps.is_empty() {
        s.push_str("no policy maps\n");
    }
    for m in maps {
        let users: Vec<String> =
            m.programs.iter().map(|u| format!("{}/{}:{}", u.device, u.hook.as_str(), u.program)).collect();
        let _ = writeln!(s, "endpoint {}  map {} id {}  used by {}", m.endpoint, m.name, m.map_id, users.join(", "));
        if m.entries.is_empty() {
            let _ = writeln!(s, "  (no entries)");
        }
        for e in &m.entries {
            let _ = writeln!(
                s,
                "  {:<7} {:<6} peer {:<9} {:>8}  port {:<5} {:<6} packets {} bytes {}",
                e.direction, e.verdict, e.peer, e.identity, e.port, e.protocol, e.packets, e.bytes
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<PolicyKey>(), 8);
        assert_eq!(std::mem::size_of::<PolicyValue>(), 24);
        let k = PolicyKey::new(300, 80, 6, Direction::Ingress);
        assert_eq!(k.dport, 80u16.to_be());
        assert_eq!(k.port(), 80);
        assert_eq!(k.egress, 0);
    }

    #[test]
    fn cidr_identities_are_local_scope_and_stable() {
        let a: IpNet = "10.0.0.0/8".parse().unwrap();
        let b: IpNet = "10.1.2.3/8".parse().unwrap();
        assert_eq!(cidr_identity(&a), cidr_identity(&b), "host bits do not matter");
        assert!(cidr_identity(&a) >= CIDR_IDENTITY_BASE);
        assert_ne!(cidr_identity(&a), cidr_identity(&"10.0.0.0/9".parse().unwrap()));
    }

    #[test]
    fn named_ports_give_no_key_and_deny_wins() {
        let mut e = PolicyEntry {
            direction: Direction::Egress,
            peer: PeerId::Identity(2),
            port: 0,
            port_name: Some("http".into()),
            protocol: 6,
            deny: false,
        };
        assert_eq!(key_of(&e), None);
        e.port_name = None;
        e.port = 443;
        let k = key_of(&e).unwrap();
        assert_eq!((k.sec_label, k.port(), k.protocol, k.egress), (2, 443, 6, 1));
        let d = decode_entry(&k, &PolicyValue { deny: 1, ..Default::default() });
        assert_eq!(
            (d.peer.as_str(), d.protocol.as_str(), d.verdict.as_str(), d.direction.as_str()),
            ("world", "TCP", "deny", "egress")
        );
        assert!(entry_is(&d, &k));
    }

    #[test]
    fn pins_follow_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let host = prepare_pin(Some(dir.path()), Object::Host, "eth0").unwrap().unwrap();
        assert_eq!(host, dir.path().join("tc/globals/cilium_policy_host"));
        assert!(dir.path().join("tc/globals").is_dir());
        let pod = prepare_pin(Some(dir.path()), Object::Lxc, "lxc0123456789ab").unwrap().unwrap();
        assert!(pod.ends_with("cilium_policy_lxc0123456789ab"));
        assert_eq!(prepare_pin(Some(dir.path()), Object::Xdp, "eth0").unwrap(), None);
        assert_eq!(prepare_pin(None, Object::Host, "eth0").unwrap(), None);
        std::fs::write(&host, b"").unwrap();
        assert_eq!(remove_all(dir.path()).unwrap(), 1);
        assert!(!remove(dir.path(), "host").unwrap());
    }
}
