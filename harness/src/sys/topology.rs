//! Builds a scenario's node: the node namespace with its links, addresses and routes, the wire
//! namespace holding veth peers (the outside world), one namespace per pod joined by a veth pair
//! named like Cilium's, and a fresh bpffs for the loader's pins. A [`Node`] removes everything it
//! created when dropped, also when a build fails half-way and while unwinding from a panic.
//!
//! Every name starts with the run id `hostdp-<pid>-<start>` (`hostdp-t<pid>-<start>` in tests),
//! `start` being the owner's start time in jiffies in base 36, so [`cleanup_stale`] can tell a
//! dead run's leftovers (owner gone, or its pid reused by another process) from a live run's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::sys::netlink::{self, Change, NetlinkError, NewLink, Rtnl};
use crate::sys::netns::{self, Netns, NetnsError, NsCause, PREFIX};
use hostdp_model::observed::{LinkInfo, RouteInfo};
use hostdp_model::scenario::{LinkKind, LinkSpec, PeerIn, PodSpec, RouteSpec, Scenario};

/// Per-run directories (bpffs mounts) live below this.
pub const RUN_ROOT: &str = "/run/hostdp";

/// The pods' addresses: one small range per node (each node has its own namespaces, so the
/// ranges of two nodes may overlap).
const POD_NET: [u8; 3] = [10, 200, 0];

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The scenario's topology cannot be built as written (bad reference, cycle, bad value).
    #[error("topology: {0}")]
    Spec(String),
    #[error("{op} {path}: {source}")]
    Fs {
        op: &'static str,
        path: String,
        #[source]
        source: FsCause,
    },
    #[error("pod {0}: no such pod")]
    NoPod(String),
}

type Result<T> = std::result::Result<T, TopologyError>;

/// Identifies this process's run: `hostdp-<pid>-<start time base36>`. Every namespace and
/// directory of the run starts with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

impl RunId {
    /// The run id of this process.
    pub fn new() -> RunId {
        RunId::with_tag("")
    }

    /// The run id of this process for tests: `hostdp-t<pid>-<start>`, the tests' convention.
    pub fn for_tests() -> RunId {
        RunId::with_tag("t")
    }

    fn with_tag(tag: &str) -> RunId {
        let pid = std::process::id();
        let start = start_time(pid).map(base36).unwrap_or_else(|| "0".into());
        RunId(format!("{PREFIX}{tag}{pid}-{start}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn base36(mut n: u64) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut v = Vec::new();
    loop {
        v.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    v.reverse();
    String::from_utf8(v).unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat`: the process's start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The owner encoded in a name: `(pid, start token, owner prefix)` of `hostdp-[a-z]*PID-TOKEN...`.
fn parse_owner(name: &str) -> Option<(u32, &str, &str)> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits_at = rest.find(|c: char| !c.is_ascii_lowercase())?;
    let after_tag = &rest[digits_at..];
    let pid_len = after_tag.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_tag.len());
    if pid_len == 0 {
        return None;
    }
    let pid: u32 = after_tag[..pid_len].parse().ok()?;
    let tail = after_tag[pid_len..].strip_prefix('-')?;
    let tok_len = tail.find('-').unwrap_or(tail.len());
    let token = &tail[..tok_len];
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
        return None;
    }
    let owner_len = PREFIX.len() + digits_at + pid_len + 1 + tok_len;
    Some((pid, token, &name[..owner_len]))
}

/// Whether `name` (a namespace or a directory of [`RUN_ROOT`]) belongs to a run that is over.
/// A live pid counts as the owner unless the name's start time differs from the process's
/// and the run directory proves the name was made by this module (other code may follow the
/// `hostdp-t<pid>-<word>` convention, whose word is no start time).
fn is_stale(name: &str, run_dirs: &[String]) -> bool {
    let Some((pid, token, owner)) = parse_owner(name) else { return false };
    let Some(start) = start_time(pid) else { return true };
    if base36(start) == token {
        return false;
    }
    run_dirs.iter().any(|d| d == owner || d.starts_with(&format!("{owner}-")))
}

fn run_dir_names() -> Vec<String> {
    std::fs::read_dir(RUN_ROOT)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// Removes the namespaces and [`RUN_ROOT`] directories (unmounting what is mounted below them)
/// of runs whose owner is gone; returns what it removed. Never touches a name not starting with
/// `hostdp-`, nor one whose owner is alive.
pub fn cleanup_stale() -> Vec<String> {
    let dirs = run_dir_names();
    let mut removed = Vec::new();
    for name in netns::list_named() {
        if is_stale(&name, &dirs) && netns::delete_named(&name).is_ok() {
            removed.push(name);
        }
    }
    for name in &dirs {
        if is_stale(name, &dirs) {
            let path = Path::new(RUN_ROOT).join(name);
            if remove_dir_unmounting(&path).is_ok() {
                removed.push(path.display().to_string());
            }
        }
    }
    removed
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Unmounts everything below `dir` (so pinned objects are not deleted through it), then
/// removes the directory tree.
fn remove_dir_unmounting(dir: &Path) -> std::io::Result<()> {
    for m in mounts_below(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Process-wide registry of what this process created, for cleanup on SIGINT/SIGTERM.

#[derive(Default)]
struct Registry {
    namespaces: BTreeSet<String>,
    dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { namespaces: BTreeSet::new(), dirs: BTreeSet::new() });

/// Creation and deletion happen under the lock, so the signal thread (which takes it and
/// exits holding it) never misses something half-created.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates a namespace with `lo` up (as on every real node; `ip netns add` leaves it down).
fn create_netns_tracked(name: &str) -> Result<Netns> {
    let mut r = registry();
    let ns = Netns::create(name)?;
    r.namespaces.insert(name.to_string());
    let lo = [Change::SetUp { name: "lo".into(), up: true }];
    match ns.run(|| Rtnl::open().and_then(|nl| nl.apply(&lo))) {
        Ok(Ok(())) => Ok(ns),
        failed => {
            let _ = netns::delete_named(name);
            r.namespaces.remove(name);
            Err(match failed {
                Err(e) => TopologyError::Netns(e),
                Ok(Err(e)) => TopologyError::Netlink(e),
                Ok(Ok(())) => unreachable!(),
            })
        }
    }
}

fn delete_netns_tracked(name: &str) -> std::result::Result<(), NetnsError> {
    let mut r = registry();
    let res = netns::delete_named(name);
    r.namespaces.remove(name);
    res
}

/// Creates `dir/bpffs` and mounts a fresh bpffs instance there.
fn create_bpffs_tracked(dir: &Path) -> Result<PathBuf> {
    let mut r = registry();
    let fs_err =
        |op: &'static str, p: &Path, source: FsCause| TopologyError::Fs { op, path: p.display().to_string(), source };
    let mnt = dir.join("bpffs");
    std::fs::create_dir_all(&mnt).map_err(|e| fs_err("create directory", &mnt, FsCause::Io(e)))?;
    r.dirs.insert(dir.to_path_buf());
    nix::mount::mount(Some("bpf"), &mnt, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| fs_err("mount bpffs on", &mnt, FsCause::Sys(e)))?;
    Ok(mnt)
}

fn remove_dir_tracked(dir: &Path) -> std::io::Result<()> {
    let mut r = registry();
    let res = remove_dir_unmounting(dir);
    r.dirs.remove(dir);
    res
}

static SIGNAL_PIPE_WRITE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: hand the signal number to the cleanup thread.
    let b = sig as u8;
    let fd = SIGNAL_PIPE_WRITE.load(Ordering::Relaxed);
    unsafe {
        libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
    }
}

/// On SIGINT or SIGTERM, deletes every namespace and directory this process created and exits
/// with status 130. A signal handler only writes to a pipe; a dedicated thread does the work.
/// Idempotent.
pub fn install_signal_cleanup() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let mut fds = [0 as libc::c_int; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            log::warn!("install signal cleanup: pipe2 failed: {}", std::io::Error::last_os_error());
            return;
        }
        SIGNAL_PIPE_WRITE.store(fds[1], Ordering::Relaxed);
        let read_fd = fds[0];
        std::thread::Builder::new()
            .name("hostdp-signal-cleanup".into())
            .spawn(move || {
                let mut b = 0u8;
                loop {
                    let n = unsafe { libc::read(read_fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
                    if n == 1 {
                        break;
                    }
                    if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                let r = registry();
                for name in r.namespaces.iter().rev() {
                    let _ = netns::delete_named(name);
                }
                for dir in &r.dirs {
                    let _ = remove_dir_unmounting(dir);
                }
                // The guests of VM calls run in process groups of their own: they go too.
                let vms = crate::sys::vm::kill_running();
                let vms = if vms > 0 { format!(" and stopped {vms} VM(s)") } else { String::new() };
                errln!("hostdp: interrupted by signal {b}; removed {} namespaces{vms}", r.namespaces.len());
                // Exit holding the lock: nothing new can be created after the sweep.
                std::process::exit(hostdp_model::exit::INTERRUPTED);
            })
            .expect("spawn the signal cleanup thread");
        for sig in [libc::SIGINT, libc::SIGTERM] {
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

/// The call under a [`TopologyError::Fs`].
#[derive(Debug, thiserror::Error)]
pub enum FsCause {
    #[error(transparent)]
    Io(std::io::Error),
    /// A mount: strerror's text, as `mount` prints it.
    #[error("{}", crate::sys::netlink::errno_text(*.0 as i32))]
    Sys(nix::errno::Errno),
}

/// Runs `f` with a fresh namespace `name` that is deleted afterwards (also on panic).
pub fn with_scratch_netns<R>(name: &str, f: impl FnOnce(&Netns) -> R) -> std::result::Result<R, NetnsError> {
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = delete_netns_tracked(&self.0);
        }
    }
    let ns = create_netns_tracked(name).map_err(|e| match e {
        TopologyError::Netns(e) => e,
        other => NetnsError::Create { name: name.to_string(), source: NsCause::Setup(Box::new(other)) },
    })?;
    let _guard = Guard(name.to_string());
    Ok(f(&ns))
}

/// Names of the namespaces this process created and has not deleted yet.
pub fn registered_namespaces() -> Vec<String> {
    registry().namespaces.iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Plans: pure translations of the scenario's topology into netlink changes.

/// Cilium-style host-side veth name of an endpoint: `lxc` + 12 hex digits of
/// sha256(`NAMESPACE/NAME`), 15 bytes, the longest interface name.
pub fn lxc_name(pod_key: &str) -> String {
    let digest = Sha256::digest(pod_key.as_bytes());
    format!("lxc{}", &hex::encode(digest)[..12])
}

/// The changes creating one link (without addresses and without bringing it up): the link,
/// mtu, mac, and enslavement (set down first, as bonds require).
fn link_changes(l: &LinkSpec, wire: &Path) -> Result<Vec<Change>> {
    let bad = |m: String| TopologyError::Spec(format!("link {}: {m}", l.name));
    let need = |v: &Option<String>, key: &str| {
        v.clone().ok_or_else(|| bad(format!("`{key}` is required for kind {}", l.kind.as_str())))
    };
    let link = match l.kind {
        LinkKind::Veth => NewLink::Veth {
            peer: l.peer_name(),
            peer_netns: match l.peer_in.unwrap_or_default() {
                PeerIn::Wire => Some(wire.to_path_buf()),
                PeerIn::Node => None,
            },
        },
        LinkKind::Bond => NewLink::Bond { mode: l.mode.clone(), miimon: l.miimon },
        LinkKind::Vlan => {
            let id = l.id.ok_or_else(|| bad("`id` is required for kind vlan".into()))?;
            if !(1..=4094).contains(&id) {
                return Err(bad(format!("vlan id {id} is outside 1-4094")));
            }
            NewLink::Vlan { parent: need(&l.parent, "parent")?, id: id as u16, protocol: l.protocol.clone() }
        }
        LinkKind::Bridge => NewLink::Bridge,
        LinkKind::Dummy => NewLink::Dummy,
        LinkKind::Ifb => NewLink::Ifb,
        LinkKind::Wireguard => NewLink::Wireguard,
        LinkKind::Macvlan => NewLink::Macvlan { parent: need(&l.parent, "parent")?, mode: l.mode.clone() },
        LinkKind::Vxlan => NewLink::Vxlan {
            vni: l.vni.ok_or_else(|| bad("`vni` is required for kind vxlan".into()))?,
            port: l.port,
            parent: l.parent.clone(),
        },
        LinkKind::Vrf => NewLink::Vrf { table: l.table.ok_or_else(|| bad("`table` is required for kind vrf".into()))? },
    };
    let name = l.name.clone();
    let mut v = vec![Change::AddLink { name: name.clone(), link }];
    if let Some(mtu) = l.mtu {
        v.push(Change::SetMtu { name: name.clone(), mtu });
    }
    if let Some(mac) = &l.mac {
        let mac = netlink::parse_mac(mac).ok_or_else(|| bad(format!("invalid mac {mac:?}")))?;
        v.push(Change::SetMac { name: name.clone(), mac });
    }
    if let Some(m) = &l.master {
        v.push(Change::SetUp { name: name.clone(), up: false });
        v.push(Change::SetMaster { name, master: Some(m.clone()) });
    }
    Ok(v)
}

fn address_changes(l: &LinkSpec) -> Result<Vec<Change>> {
    l.addresses
        .iter()
        .map(|a| {
            let addr: IpNet =
                a.parse().map_err(|_| TopologyError::Spec(format!("link {}: invalid address {a:?}", l.name)))?;
            Ok(Change::AddAddress { name: l.name.clone(), addr })
        })
        .collect()
}

/// The scenario's links ordered so that parents and masters come first.
pub fn creation_order(links: &[LinkSpec]) -> Result<Vec<&LinkSpec>> {
    let by_name: BTreeMap<&str, &LinkSpec> = links.iter().map(|l| (l.name.as_str(), l)).collect();
    if by_name.len() != links.len() {
        return Err(TopologyError::Spec("duplicate link names".into()));
    }
    let deps = |l: &LinkSpec| -> Vec<String> { l.parent.iter().chain(l.master.iter()).cloned().collect() };
    for l in links {
        for d in deps(l) {
            if !by_name.contains_key(d.as_str()) {
                return Err(TopologyError::Spec(format!("link {}: references unknown link {d}", l.name)));
            }
        }
    }
    // Depth-first, keeping the file's order among independent links.
    let mut order = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
    fn visit<'a>(
        l: &'a LinkSpec,
        by_name: &BTreeMap<&str, &'a LinkSpec>,
        state: &mut BTreeMap<&'a str, u8>,
        order: &mut Vec<&'a LinkSpec>,
        deps: &dyn Fn(&LinkSpec) -> Vec<String>,
    ) -> Result<()> {
        match state.get(l.name.as_str()) {
            Some(2) => return Ok(()),
            Some(_) => return Err(TopologyError::Spec(format!("link {}: reference cycle", l.name))),
            None => {}
        }
        state.insert(&l.name, 1);
        for d in deps(l) {
            visit(by_name[d.as_str()], by_name, state, order, deps)?;
        }
        state.insert(&l.name, 2);
        order.push(l);
        Ok(())
    }
    for l in links {
        visit(l, &by_name, &mut state, &mut order, &deps)?;
    }
    Ok(order)
}

/// Changes for the node namespace and for the wire namespace that build `links` and `routes`.
pub fn plan(scenario: &Scenario, wire: &Path) -> Result<(Vec<Change>, Vec<Change>)> {
    let order = creation_order(&scenario.topology.links)?;
    let mut node = Vec::new();
    // `lo` is up already: Netns::create brings it up in every namespace.
    let mut wire_changes = Vec::new();
    for l in &order {
        node.extend(link_changes(l, wire)?);
    }
    for l in &order {
        node.extend(address_changes(l)?);
    }
    for l in &order {
        if l.up {
            node.push(Change::SetUp { name: l.name.clone(), up: true });
        }
        if l.kind == LinkKind::Veth {
            // The peer is up so the link gets a carrier, wherever the peer lives.
            let peer = Change::SetUp { name: l.peer_name(), up: true };
            match l.peer_in.unwrap_or_default() {
                PeerIn::Wire => wire_changes.push(peer),
                PeerIn::Node => node.push(peer),
            }
        }
    }
    for r in &scenario.topology.routes {
        let (dst, via, table) = route_parts(r)?;
        node.push(Change::AddRoute { dst, via, dev: r.dev.clone(), table });
    }
    Ok((node, wire_changes))
}

/// A route of the format as (destination, gateway, table id): `default` is `0.0.0.0/0`, or
/// `::/0` with an IPv6 gateway.
fn route_parts(r: &RouteSpec) -> Result<(IpNet, Option<IpAddr>, u32)> {
    let bad = |m: String| TopologyError::Spec(format!("route {} dev {}: {m}", r.dst, r.dev));
    let via: Option<IpAddr> = match &r.via {
        Some(v) => Some(v.parse().map_err(|_| bad(format!("invalid gateway {v:?}")))?),
        None => None,
    };
    let dst: IpNet = if r.dst == "default" {
        match via {
            Some(IpAddr::V6(_)) => "::/0".parse().unwrap_or_default(),
            _ => IpNet::default(),
        }
    } else {
        r.dst.parse().map_err(|_| bad(format!("invalid destination {:?}", r.dst)))?
    };
    let table = match &r.table {
        None => netlink::TABLE_MAIN,
        Some(t) => t.id().ok_or_else(|| bad(format!("unknown table {t:?}")))?,
    };
    Ok((dst, via, table))
}

// ---------------------------------------------------------------------------------------------
// The node.

/// `<run>-<6 hex digits of the scenario's hash>`: what every name of a node built from
/// `scenario` in run `run` starts with (then `-<seq>-node`, `-<seq>-wire`, `-<seq>-pod<N>`).
pub fn node_prefix(scenario: &Scenario, run: &RunId) -> String {
    let digest = Sha256::digest(format!("{}\0{}", scenario.name, scenario.path.display()).as_bytes());
    format!("{run}-{}", &hex::encode(digest)[..6])
}

/// One pod of a node: its namespace and the veth pair joining it to the node.
#[derive(Debug, Clone)]
pub struct Pod {
    pub spec: PodSpec,
    /// `NAMESPACE/NAME`.
    pub key: String,
    /// The node-side veth (`lxc...`).
    pub lxc: String,
    pub netns: Netns,
    /// Address of the pod's `eth0`.
    pub ip: IpNet,
}

/// A built node. Dropping it deletes its namespaces and its bpffs directory.
#[derive(Debug)]
pub struct Node {
    id: String,
    run: RunId,
    node: Option<Netns>,
    wire: Option<Netns>,
    pods: Vec<Pod>,
    next_pod: u32,
    /// `/run/hostdp/<id>`; holds the `bpffs` mount.
    dir: Option<PathBuf>,
    bpffs: Option<PathBuf>,
}

/// Runs `f` with a netlink connection opened inside `ns`.
fn run_in<R: Send>(ns: &Netns, f: impl FnOnce(&Rtnl) -> std::result::Result<R, NetlinkError> + Send) -> Result<R> {
    Ok(ns.run(|| Rtnl::open().and_then(|nl| f(&nl)))??)
}

impl Node {
    /// Builds the scenario's node: namespaces, bpffs, links, addresses, routes and pods. On
    /// failure nothing is left behind.
    pub fn build(scenario: &Scenario, run_id: &RunId) -> Result<Node> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{seq}", node_prefix(scenario, run_id));
        // Dropped on any early return below, taking with it what was created so far.
        let mut n = Node {
            id,
            run: run_id.clone(),
            node: None,
            wire: None,
            pods: Vec::new(),
            next_pod: 0,
            dir: None,
            bpffs: None,
        };
        let node = create_netns_tracked(&format!("{}-node", n.id))?;
        n.node = Some(node);
        let wire = create_netns_tracked(&format!("{}-wire", n.id))?;
        n.wire = Some(wire);
        let dir = Path::new(RUN_ROOT).join(&n.id);
        n.dir = Some(dir.clone());
        n.bpffs = Some(create_bpffs_tracked(&dir)?);

        let (node_changes, wire_changes) = plan(scenario, &n.wire().path())?;
        run_in(n.netns(), |nl| nl.apply(&node_changes))?;
        run_in(n.wire(), |nl| nl.apply(&wire_changes))?;
        for p in &scenario.pods {
            n.add_pod(p)?;
        }
        Ok(n)
    }

    /// `<run>-<scenario hash>-<seq>`: the prefix of all this node's names.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// The node namespace (where the agent's loader works).
    pub fn netns(&self) -> &Netns {
        self.node.as_ref().expect("node namespace exists after build")
    }

    /// The wire namespace: veth peers, the outside world.
    pub fn wire(&self) -> &Netns {
        self.wire.as_ref().expect("wire namespace exists after build")
    }

    /// A fresh bpffs instance for this node's pins (`/run/hostdp/<id>/bpffs`).
    pub fn bpffs(&self) -> &Path {
        self.bpffs.as_deref().expect("bpffs exists after build")
    }

    /// Host-side veth name of a pod (`NAMESPACE/NAME`), whether or not it exists.
    pub fn lxc_name(&self, pod_key: &str) -> String {
        lxc_name(pod_key)
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// A pod by `NAMESPACE/NAME`, or by bare name if that is unambiguous.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pod_index(name).map(|i| &self.pods[i])
    }

    fn pod_index(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.pods.iter().position(|p| p.key == name) {
            return Some(i);
        }
        let m: Vec<usize> = self.pods.iter().enumerate().filter(|(_, p)| p.spec.name == name).map(|(i, _)| i).collect();
        (m.len() == 1).then(|| m[0])
    }

    /// Adds an endpoint: namespace `<id>-pod<N>`, veth `lxc...` (node, up) / `eth0` (pod, up,
    /// with an address of the node's pod range, default route via the node side).
    pub fn add_pod(&mut self, spec: &PodSpec) -> Result<&Pod> {
        let key = spec.key();
        if self.pods.iter().any(|p| p.key == key) {
            return Err(TopologyError::Spec(format!("pod {key}: already exists")));
        }
        let n = self.next_pod;
        if n >= 250 {
            return Err(TopologyError::Spec(format!("pod {key}: more than 250 pods on one node")));
        }
        self.next_pod += 1;
        let ns = create_netns_tracked(&format!("{}-pod{n}", self.id))?;
        let lxc = lxc_name(&key);
        let ip = IpNet::new(IpAddr::from([POD_NET[0], POD_NET[1], POD_NET[2], n as u8 + 2]), 24)
            .map_err(|e| TopologyError::Spec(e.to_string()))?;
        let pod = Pod { spec: spec.clone(), key, lxc: lxc.clone(), netns: ns, ip };
        // Recorded before configuring so a failure below still removes the namespace.
        self.pods.push(pod);
        let pod = self.pods.last().expect("just pushed");
        let node_changes = [
            Change::AddLink {
                name: lxc.clone(),
                link: NewLink::Veth { peer: "eth0".into(), peer_netns: Some(pod.netns.path()) },
            },
            Change::SetUp { name: lxc, up: true },
        ];
        let pod_changes =
            [Change::AddAddress { name: "eth0".into(), addr: ip }, Change::SetUp { name: "eth0".into(), up: true }];
        run_in(self.netns(), |nl| nl.apply(&node_changes))?;
        run_in(&pod.netns, |nl| nl.apply(&pod_changes))?;
        Ok(pod)
    }

    /// Removes a pod (`NAMESPACE/NAME` or bare name): its veth pair and namespace.
    pub fn delete_pod(&mut self, name: &str) -> Result<()> {
        let i = self.pod_index(name).ok_or_else(|| TopologyError::NoPod(name.to_string()))?;
        let pod = self.pods.remove(i);
        let del = [Change::DeleteLink { name: pod.lxc.clone() }];
        let res = run_in(self.netns(), |nl| nl.apply(&del));
        delete_netns_tracked(pod.netns.name())?;
        res
    }

    /// Adds one link to the running node (the `link: {add}` step); what it references must
    /// exist already.
    pub fn add_link(&mut self, spec: &LinkSpec) -> Result<()> {
        let mut changes = link_changes(spec, &self.wire().path())?;
        changes.extend(address_changes(spec)?);
        if spec.up {
            changes.push(Change::SetUp { name: spec.name.clone(), up: true });
        }
        let mut wire_changes = Vec::new();
        if spec.kind == LinkKind::Veth {
            let peer = Change::SetUp { name: spec.peer_name(), up: true };
            match spec.peer_in.unwrap_or_default() {
                PeerIn::Wire => wire_changes.push(peer),
                PeerIn::Node => changes.push(peer),
            }
        }
        run_in(self.netns(), |nl| nl.apply(&changes))?;
        run_in(self.wire(), |nl| nl.apply(&wire_changes))
    }

    /// Deletes a link of the node namespace (a veth takes its peer with it).
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let c = [Change::DeleteLink { name: name.to_string() }];
        run_in(self.netns(), |nl| nl.apply(&c))
    }

    pub fn set_link_up(&mut self, name: &str, up: bool) -> Result<()> {
        let c = [Change::SetUp { name: name.to_string(), up }];
        run_in(self.netns(), |nl| nl.apply(&c))
    }

    /// Adds (`add`) or deletes a route of the node namespace (the `route` step).
    pub fn change_route(&mut self, r: &RouteSpec, add: bool) -> Result<()> {
        let (dst, via, table) = route_parts(r)?;
        let c = if add {
            Change::AddRoute { dst, via, dev: r.dev.clone(), table }
        } else {
            Change::DeleteRoute { dst, via, dev: r.dev.clone(), table }
        };
        run_in(self.netns(), |nl| nl.apply(&[c]))
    }

    /// Links of the node namespace.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        run_in(self.netns(), Rtnl::links)
    }

    /// Routes of the node namespace, all tables.
    pub fn routes(&self) -> Result<Vec<RouteInfo>> {
        run_in(self.netns(), Rtnl::routes)
    }

    /// Names of every namespace this node owns (node, wire, pods).
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.node.iter().chain(self.wire.iter()).map(|n| n.name().to_string()).collect();
        v.extend(self.pods.iter().map(|p| p.netns.name().to_string()));
        v
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        for p in self.pods.drain(..) {
            if let Err(e) = delete_netns_tracked(p.netns.name()) {
                problems.push(e.to_string());
            }
        }
        for ns in [self.node.take(), self.wire.take()].into_iter().flatten() {
            if let Err(e) = delete_netns_tracked(ns.name()) {
                problems.push(e.to_string());
            }
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = remove_dir_tracked(&dir) {
                problems.push(format!("remove {}: {e}", dir.display()));
            }
        }
        for p in problems {
            log::warn!("node {} cleanup: {p}", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostdp_model::scenario::{RouteTable, TopologySpec};

    fn link(name: &str, kind: LinkKind) -> LinkSpec {
        LinkSpec::bare(name, kind)
    }

    fn scenario(links: Vec<LinkSpec>, routes: Vec<RouteSpec>) -> Scenario {
        Scenario {
            path: "t.yaml".into(),
            name: "t".into(),
            description: None,
            profile: "v1.14.4".into(),
            requires: Default::default(),
            node: Default::default(),
            topology: TopologySpec { links, routes },
            agent: Default::default(),
            agent_ignored: vec![],
            agent_file: None,
            pods: vec![],
            steps: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn lxc_names_are_cilium_shaped() {
        let n = lxc_name("default/network-multitool");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("lxc"));
        assert!(n[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(n, lxc_name("default/other"));
    }

    #[test]
    fn owners_parse() {
        assert_eq!(parse_owner("hostdp-123-abc-0f0f0f-0-node"), Some((123, "abc", "hostdp-123-abc")));
        assert_eq!(parse_owner("hostdp-t99-z"), Some((99, "z", "hostdp-t99-z")));
        assert_eq!(parse_owner("hostdp-unit-5"), None);
        assert_eq!(parse_owner("other-123-abc"), None);
        assert_eq!(parse_owner("hostdp-123"), None);
        assert_eq!(parse_start_time("1 (a b) c) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 4242 9"), Some(4242));
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 + 35), "10z");
    }

    #[test]
    fn own_run_is_not_stale() {
        let run = RunId::new();
        let name = format!("{run}-abcdef-0-node");
        assert!(!is_stale(&name, &[format!("{run}-abcdef-0")]));
        // A word instead of a start time, with a live owner and no run dir: kept.
        let other = format!("hostdp-t{}-bond", std::process::id());
        assert!(!is_stale(&other, &[]));
        // Same but our run dir marker exists with the same owner prefix: start differs, stale.
        assert!(is_stale(&other, &[format!("hostdp-t{}-bond-x", std::process::id())]));
        // A pid above pid_max is never alive.
        assert!(is_stale("hostdp-4194304999-abc-node", &[]));
    }

    #[test]
    fn order_puts_parents_and_masters_first() {
        let mut eth0 = link("eth0", LinkKind::Veth);
        eth0.master = Some("bond0".into());
        let mut vlan = link("bond0.212", LinkKind::Vlan);
        vlan.parent = Some("bond0".into());
        vlan.id = Some(212);
        let links = vec![eth0, link("bond0", LinkKind::Bond), vlan];
        let names: Vec<&str> = creation_order(&links).unwrap().iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["bond0", "eth0", "bond0.212"]);

        let mut a = link("a", LinkKind::Bridge);
        a.master = Some("b".into());
        let mut b = link("b", LinkKind::Bridge);
        b.master = Some("a".into());
        assert!(creation_order(&[a, b]).unwrap_err().to_string().contains("cycle"));
        let mut c = link("c", LinkKind::Vlan);
        c.parent = Some("nope".into());
        assert!(creation_order(&[c]).unwrap_err().to_string().contains("unknown link nope"));
    }

    #[test]
    fn plan_enslaves_down_and_routes_default() {
        let mut eth0 = link("eth0", LinkKind::Veth);
        eth0.master = Some("bond0".into());
        let mut bond = link("bond0", LinkKind::Bond);
        bond.addresses = vec!["10.0.0.2/24".into()];
        let routes = vec![RouteSpec {
            dst: "default".into(),
            via: Some("10.0.0.1".into()),
            dev: "bond0".into(),
            table: Some(RouteTable::Number(100)),
        }];
        let (node, wire) = plan(&scenario(vec![eth0, bond], routes), Path::new("/run/netns/w")).unwrap();
        let pos = |c: &Change| node.iter().position(|x| x == c).unwrap();
        let down = pos(&Change::SetUp { name: "eth0".into(), up: false });
        let enslave = pos(&Change::SetMaster { name: "eth0".into(), master: Some("bond0".into()) });
        let up = pos(&Change::SetUp { name: "eth0".into(), up: true });
        assert!(down < enslave && enslave < up);
        assert!(wire.contains(&Change::SetUp { name: "eth0-p".into(), up: true }));
        assert_eq!(
            node.last().unwrap(),
            &Change::AddRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                via: Some("10.0.0.1".parse().unwrap()),
                dev: "bond0".into(),
                table: 100
            }
        );
        let mut v = link("v", LinkKind::Vlan);
        v.parent = Some("bond0".into());
        v.id = Some(5000);
        assert!(plan(&scenario(vec![link("bond0", LinkKind::Bond), v], vec![]), Path::new("/x")).is_err());
    }
}
