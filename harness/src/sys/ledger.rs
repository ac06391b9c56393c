//! The leak ledger: a snapshot of the machine state the harness could leave behind (named
//! namespaces, bpffs and netns mounts, `/run/hostdp`, `/sys/fs/bpf`, the links and tc/tcx/XDP
//! attachments of this process's own namespace, loaded programs and maps with the harness's
//! names, VM calls' scratch folders), and a comparison of two snapshots. `hostdp ledger save
//! FILE` before a test suite and `hostdp ledger diff FILE` after it prove the suite left nothing
//! behind and touched nothing it did not create.
//!
//! Other runs may be live on the same machine (parallel test binaries, other developers): an
//! item that belongs to another live process (a `hostdp-*` name whose owner pid is alive, a
//! program attached in such a run's namespace or held open by another process) is marked
//! foreign when the snapshot is taken and is not reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sys::netns::{NETNS_RUN_DIR, PREFIX};
use crate::sys::topology::RUN_ROOT;

/// Where the machine's bpffs is mounted.
pub const SYS_BPF: &str = "/sys/fs/bpf";

/// Kernel program and map names that are the harness's (its templates, foreign programs and maps).
const HARNESS_NAMES: [&str; 4] = ["cil_", "foreign_", "hostdp_", "cilium_"];

/// How deep folder walks go; the harness's own trees are shallow.
const MAX_DEPTH: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: LedgerCause,
    },
}

/// The call under a [`LedgerError`].
#[derive(Debug, thiserror::Error)]
pub enum LedgerCause {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// One state of the machine: every item as one line (`netns NAME`, `attach eth0 ingress ...`),
/// and which of them belonged to another live process when the snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub items: BTreeSet<String>,
    pub foreign: BTreeSet<String>,
    /// Items that could not be read (a failed netlink dump), as notes; never compared.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// What differs between two snapshots (foreign items left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// In the later snapshot only: left behind.
    pub added: Vec<String>,
    /// In the earlier snapshot only: something removed what it did not create.
    pub removed: Vec<String>,
    /// Programs and maps of the earlier snapshot that are gone: freed when whatever held them
    /// went away (another run's namespace, say). Shown, not counted as a difference: removing
    /// what was attached shows up in the namespaces and attachments.
    pub freed: Vec<String>,
}

impl Diff {
    /// Nothing left behind and nothing removed (`freed` does not count).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for a in &self.added {
            writeln!(f, "+ {a}")?;
        }
        for r in &self.removed {
            writeln!(f, "- {r}")?;
        }
        for r in &self.freed {
            writeln!(f, "~ {r} (freed)")?;
        }
        Ok(())
    }
}

/// Compares two snapshots: items added (not foreign in `after`) and removed (not foreign in
/// `before`). Program and map ids are part of the items, so a replaced program shows up.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Diff {
    let (freed, removed): (Vec<String>, Vec<String>) = before
        .items
        .difference(&after.items)
        .filter(|i| !before.foreign.contains(*i))
        .cloned()
        .partition(|i| i.starts_with("prog ") || i.starts_with("map "));
    Diff {
        added: after.items.difference(&before.items).filter(|i| !after.foreign.contains(*i)).cloned().collect(),
        removed,
        freed,
    }
}

/// Compares `before` with the machine now; while they differ, looks again every 200 ms for up
/// to `wait`: the kernel frees a deleted namespace's programs asynchronously.
pub fn diff_settled(before: &Snapshot, wait: Duration) -> Diff {
    let t0 = Instant::now();
    loop {
        let d = diff(before, &snapshot());
        if d.is_empty() || t0.elapsed() >= wait {
            return d;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Takes a snapshot of the machine as seen from the calling thread's namespace.
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    let me = std::process::id();
    let own = own_lineage(me);
    let is_foreign_name = |text: &str| owner_in(text).is_some_and(|pid| !own.contains(&pid) && pid_alive(pid));

    let namespaces = crate::sys::netns::list_named();
    for n in &namespaces {
        add(&mut s, format!("netns {n}"), is_foreign_name(n));
    }
    for (point, fstype) in mounts() {
        let p = point.display().to_string();
        let watched = fstype == "bpf" || point.starts_with(NETNS_RUN_DIR) || point.starts_with(RUN_ROOT);
        // The folders themselves are made shared mount points once and stay: not a leak.
        if watched && point != Path::new(NETNS_RUN_DIR) && point != Path::new(RUN_ROOT) {
            add(&mut s, format!("mount {p} {fstype}"), is_foreign_name(&p));
        }
    }
    for p in walk(Path::new(RUN_ROOT)) {
        let text = p.display().to_string();
        add(&mut s, format!("file {text}"), is_foreign_name(&text));
    }
    for p in walk(Path::new(SYS_BPF)) {
        let text = p.display().to_string();
        add(&mut s, format!("bpffs {text}"), is_foreign_name(&text));
    }
    // VM calls' folders, in the temporary folder and the cache (owner pid in the name).
    for dir in [std::env::temp_dir(), crate::paths::get().cache.join("vm")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(crate::sys::vm::SCRATCH_PREFIX) {
                add(&mut s, format!("scratch {}", e.path().display()), is_foreign_name(&name));
            }
        }
    }
    // One netlink connection to this namespace for its links and their attachments.
    match crate::sys::netlink::Rtnl::open() {
        Ok(nl) => {
            match nl.links() {
                Ok(links) => {
                    for l in links {
                        add(&mut s, format!("link {} kind={} up={} mtu={}", l.name, l.kind, l.up, l.mtu), false);
                    }
                }
                Err(e) => s.notes.push(format!("links of this namespace: {e}")),
            }
            match crate::sys::inspect::inspect_with(&nl) {
                Ok(atts) => {
                    for a in atts {
                        add(&mut s, format!("attach {}", describe(&a)), false);
                    }
                }
                Err(e) => s.notes.push(format!("attachments of this namespace: {e}")),
            }
        }
        Err(e) => s.notes.push(format!("links and attachments of this namespace: {e}")),
    }

    // Programs and maps: foreign when another live run's namespace has them attached, another
    // process holds them open, or another live run pinned them.
    let mut foreign_progs: BTreeSet<u32> = BTreeSet::new();
    for n in namespaces.iter().filter(|n| is_foreign_name(n)) {
        if let Ok(atts) = crate::sys::inspect::inspect_named(n) {
            foreign_progs.extend(atts.iter().map(|a| a.prog_id));
        }
    }
    let (held_progs, held_maps) = held_by_others(me);
    foreign_progs.extend(held_progs);
    let mut foreign_maps = held_maps;
    for p in walk(Path::new(RUN_ROOT)).into_iter().chain(walk(Path::new(SYS_BPF))) {
        if is_foreign_name(&p.display().to_string()) {
            if let Ok(mi) = aya::maps::MapInfo::from_pin(&p) {
                foreign_maps.insert(mi.id());
            }
            if let Ok(pi) = aya::programs::ProgramInfo::from_pin(&p) {
                foreign_progs.insert(pi.id());
            }
        }
    }
    for p in aya::programs::loaded_programs().filter_map(Result::ok) {
        let name = p.name_as_str().unwrap_or_default().to_string();
        if !is_harness_name(&name) {
            continue;
        }
        let foreign = foreign_progs.contains(&p.id());
        if foreign {
            foreign_maps.extend(p.map_ids().ok().flatten().unwrap_or_default());
        }
        add(&mut s, format!("prog {} {name}", p.id()), foreign);
    }
    for m in aya::maps::loaded_maps().filter_map(Result::ok) {
        let name = m.name_as_str().unwrap_or_default().to_string();
        if is_harness_name(&name) {
            add(&mut s, format!("map {} {name}", m.id()), foreign_maps.contains(&m.id()));
        }
    }
    s
}

fn add(s: &mut Snapshot, item: String, foreign: bool) {
    if foreign {
        s.foreign.insert(item.clone());
    }
    s.items.insert(item);
}

fn is_harness_name(name: &str) -> bool {
    HARNESS_NAMES.iter().any(|p| name.starts_with(p))
}

fn describe(a: &hostdp_model::observed::Attachment) -> String {
    let mut s = format!("{} {} {:?} {} id={}", a.device, a.hook.as_str(), a.mechanism, a.program, a.prog_id);
    if let Some(f) = &a.filter {
        s.push_str(&format!(" filter={f}"));
    }
    if let (Some(p), Some(h)) = (a.priority, a.handle) {
        s.push_str(&format!(" pref={p} handle={h:#x}"));
    }
    if let Some(m) = &a.mode {
        s.push_str(&format!(" mode={m}"));
    }
    s
}

/// The pid of the run owning a name that holds `hostdp-[a-z]*PID-...` anywhere (a path's
/// component, a namespace name).
pub fn owner_in(text: &str) -> Option<u32> {
    let at = text.find(PREFIX)?;
    let rest = &text[at + PREFIX.len()..];
    let digits = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    if end == 0 || !digits[end..].starts_with('-') {
        return None;
    }
    digits[..end].parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// This process and its ancestors: their runs are the ones being checked, never foreign.
fn own_lineage(me: u32) -> BTreeSet<u32> {
    let mut v = BTreeSet::from([me]);
    let mut pid = me;
    for _ in 0..64 {
        let Some(pp) = parent_of(pid) else { break };
        if pp <= 1 || !v.insert(pp) {
            break;
        }
        pid = pp;
    }
    v
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Mount points and file system types, from this process's mount table.
fn mounts() -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let point = l.split_whitespace().nth(4)?;
            let fstype = l.split(" - ").nth(1)?.split_whitespace().next()?;
            Some((PathBuf::from(point.replace("\\040", " ")), fstype.to_string()))
        })
        .collect()
}

/// Every path below `root` (not `root` itself), at most [`MAX_DEPTH`] levels down, sorted.
fn walk(root: &Path) -> Vec<PathBuf> {
    fn go(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            out.push(p.clone());
            if is_dir && depth < MAX_DEPTH {
                go(&p, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, 1, &mut out);
    out.sort();
    out
}

/// Program and map ids held open by processes other than `me` (from `/proc/*/fdinfo`).
fn held_by_others(me: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut progs = BTreeSet::new();
    let mut maps = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return (progs, maps) };
    for p in procs.filter_map(Result::ok) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            let (is_prog, is_map) = (target == "anon_inode:bpf-prog", target == "anon_inode:bpf-map");
            if !is_prog && !is_map {
                continue;
            }
            let info = std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name())).unwrap_or_default();
            let key = if is_prog { "prog_id:" } else { "map_id:" };
            if let Some(id) = info.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok()) {
                if is_prog {
                    progs.insert(id);
                } else {
                    maps.insert(id);
                }
            }
        }
    }
    (progs, maps)
}

/// Writes a snapshot as JSON.
pub fn save(path: &Path, s: &Snapshot) -> Result<(), LedgerError> {
    let text = serde_json::to_string_pretty(s).map_err(|e| io("serialise snapshot for", path, e))?;
    std::fs::write(path, text).map_err(|e| io("write", path, e))
}

/// Reads a snapshot written by [`save`].
pub fn load(path: &Path) -> Result<Snapshot, LedgerError> {
    let text = std::fs::read_to_string(path).map_err(|e| io("read", path, e))?;
    serde_json::from_str(&text).map_err(|e| io("parse", path, e))
}

fn io(op: &'static str, path: &Path, e: impl Into<LedgerCause>) -> LedgerError {
    LedgerError::Io { op, path: path.display().to_string(), source: e.into() }
}

/// Counts of a snapshot's items by kind, for a one-line summary.
pub fn summary(s: &Snapshot) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for i in &s.items {
        *by.entry(i.split(' ').next().unwrap_or("")).or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!("{} item(s): {} ({} of other live runs)", s.items.len(), parts.join(", "), s.foreign.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_found_in_names_and_paths() {
        assert_eq!(owner_in("hostdp-123-abc-node"), Some(123));
        assert_eq!(owner_in("hostdp-t77-3f-x"), Some(77));
        assert_eq!(owner_in("/run/hostdp/hostdp-9-z-1/bpffs/x"), Some(9));
        assert_eq!(owner_in("hostdp-vm4242-Ab3xQz"), Some(4242));
        assert_eq!(owner_in("/run/hostdp"), None);
        assert_eq!(owner_in("hostdp-unit-12"), None);
        assert_eq!(owner_in("eth0"), None);
    }

    #[test]
    fn diff_ignores_foreign_items() {
        let mut a = Snapshot::default();
        a.items.extend(["netns x".to_string(), "netns gone-foreign".to_string(), "netns gone".to_string()]);
        a.foreign.insert("netns gone-foreign".into());
        let mut b = Snapshot::default();
        b.items.extend(["netns x".to_string(), "netns new".to_string(), "netns new-foreign".to_string()]);
        b.foreign.insert("netns new-foreign".into());
        let d = diff(&a, &b);
        assert_eq!(d.added, vec!["netns new".to_string()]);
        assert_eq!(d.removed, vec!["netns gone".to_string()]);
        assert_eq!(d.to_string(), "+ netns new\n- netns gone\n");
        assert!(diff(&a, &a).is_empty());
        a.items.insert("prog 7 cil_to_host".into());
        let d = diff(&a, &b);
        assert_eq!(d.freed, vec!["prog 7 cil_to_host".to_string()]);
        assert_eq!(d.removed, vec!["netns gone".to_string()]);
    }
}
