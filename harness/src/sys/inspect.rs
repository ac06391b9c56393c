//! Read-back: every tc filter, tcx link and XDP program on every link of a namespace, through
//! netlink and the bpf syscall. Read-only: nothing here changes kernel state.

use std::collections::{BTreeSet, HashMap};

use aya::maps::{Array, Map, MapData, MapInfo};
use aya::programs::{loaded_programs, ProgramError, SchedClassifier, TcAttachType};
use serde::Serialize;

use crate::sys::bpf;
use crate::sys::netlink::{NetlinkError, Rtnl};
use crate::sys::netns::{Netns, NetnsError};
use crate::sys::tc::{self, Direction, TcError};
use hostdp_model::observed::{Attachment, Hook, Mechanism};

/// Errors of the read-back.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("inspect {object}: {source}")]
    Call {
        object: String,
        #[source]
        source: Cause,
    },
    /// What was looked for is not there (a program id, a harness map).
    #[error("inspect {object}: {reason}")]
    Missing { object: String, reason: String },
    #[error("inspect: namespace {0} does not exist")]
    NoNamespace(String),
}

/// The failed call under an [`InspectError::Call`].
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Tc(TcError),
    #[error(transparent)]
    Netlink(NetlinkError),
    #[error(transparent)]
    Netns(NetnsError),
    #[error(transparent)]
    Program(aya::programs::ProgramError),
    #[error(transparent)]
    Map(aya::maps::MapError),
}

impl From<NetnsError> for InspectError {
    fn from(e: NetnsError) -> Self {
        match e {
            NetnsError::Missing(n) => InspectError::NoNamespace(n),
            other => InspectError::Call { object: "namespace".into(), source: Cause::Netns(other) },
        }
    }
}

/// Every tc filter (both directions), tcx program and XDP program on every link of `ns`,
/// sorted by device, hook, then the order the kernel runs them in (tcx before tc filters,
/// filters by chain, priority and handle).
pub fn inspect_netns(ns: &Netns) -> Result<Vec<Attachment>, InspectError> {
    if !ns.path().exists() {
        return Err(InspectError::NoNamespace(ns.name().to_string()));
    }
    ns.run(inspect_current)?
}

/// [`inspect_netns`] by namespace name; [`InspectError::NoNamespace`] if there is none.
pub fn inspect_named(name: &str) -> Result<Vec<Attachment>, InspectError> {
    inspect_netns(&Netns::open(name)?)
}

/// [`inspect_netns`] for the calling thread's namespace.
pub fn inspect_current() -> Result<Vec<Attachment>, InspectError> {
    let nl = Rtnl::open().map_err(|e| InspectError::Call { object: "links".into(), source: Cause::Netlink(e) })?;
    inspect_with(&nl)
}

/// Every attachment of the namespace `nl` was opened in. tcx queries and program lookups run
/// on the calling thread, which must be in that namespace too.
pub fn inspect_with(nl: &Rtnl) -> Result<Vec<Attachment>, InspectError> {
    let call =
        |object: String| move |e: tc::TcError| InspectError::Call { object: object.clone(), source: Cause::Tc(e) };
    let links = tc::list_links(nl).map_err(call("links".into()))?;
    // (device, hook, order) → attachment; program names filled in afterwards.
    let mut found: Vec<((String, Hook, u64), Attachment)> = Vec::new();
    for link in &links {
        for direction in Direction::BOTH {
            let hook = direction.hook();
            for (i, prog) in query_tcx(&link.name, direction)?.into_iter().enumerate() {
                found.push(((link.name.clone(), hook, i as u64), bare(&link.name, hook, Mechanism::Tcx, prog)));
            }
            let filters = tc::list_filters_by_index(nl, link.index, &link.name, direction).map_err(call(format!(
                "tc filters of {} {}",
                link.name,
                hook.as_str()
            )))?;
            for f in filters {
                let order = (1u64 << 62)
                    | (u64::from(f.chain.unwrap_or(0)) << 48)
                    | (u64::from(f.priority) << 32)
                    | u64::from(f.handle);
                let mut a = bare(&link.name, hook, Mechanism::Tc, f.prog_id.unwrap_or(0));
                a.filter = f.name.clone();
                a.priority = Some(f.priority);
                a.handle = Some(f.handle);
                a.direct_action = Some(f.direct_action);
                a.tag = f.tag.clone();
                if f.kind != "bpf" {
                    // Not a BPF classifier: keep it visible, named by its kind.
                    a.program = format!("({})", f.kind);
                }
                found.push(((link.name.clone(), hook, order), a));
            }
        }
        for (i, x) in link.xdp.iter().enumerate() {
            let mut a = bare(&link.name, Hook::Xdp, Mechanism::Xdp, x.prog_id);
            a.mode = Some(x.mode.as_str().to_string());
            found.push(((link.name.clone(), Hook::Xdp, i as u64), a));
        }
    }
    let ids: BTreeSet<u32> = found.iter().map(|(_, a)| a.prog_id).filter(|id| *id != 0).collect();
    let names = program_names(&ids);
    for (_, a) in found.iter_mut() {
        if !a.program.is_empty() {
            continue;
        }
        match names.get(&a.prog_id) {
            Some((name, tag)) => {
                a.program = name.clone();
                if a.tag.is_none() {
                    a.tag = Some(tag.clone());
                }
            }
            None => a.program = format!("prog#{}", a.prog_id),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found.into_iter().map(|(_, a)| a).collect())
}

fn bare(device: &str, hook: Hook, mechanism: Mechanism, prog_id: u32) -> Attachment {
    Attachment {
        device: device.to_string(),
        hook,
        mechanism,
        program: String::new(),
        filter: None,
        priority: None,
        handle: None,
        direct_action: None,
        prog_id,
        tag: None,
        mode: None,
        endpoint: None,
    }
}

/// Program ids of the tcx list of one hook, in run order; empty on kernels without tcx.
fn query_tcx(device: &str, direction: Direction) -> Result<Vec<u32>, InspectError> {
    let attach = match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    };
    match SchedClassifier::query_tcx(device, attach) {
        Ok((_, progs)) => Ok(progs.iter().map(|p| p.id()).collect()),
        Err(ProgramError::SyscallError(e))
            if matches!(e.io_error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524)) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(InspectError::Call {
            object: format!("tcx {device} {}", direction.as_str()),
            source: Cause::Program(e),
        }),
    }
}

/// Kernel name and tag (hex) of each program id, through the bpf syscall. Ids that vanished
/// in between are left out. Each id is looked up on its own (BPF_PROG_GET_FD_BY_ID), so the
/// cost follows the attachments read back, not the programs loaded on the machine.
fn program_names(ids: &BTreeSet<u32>) -> HashMap<u32, (String, String)> {
    ids.iter().filter_map(|&id| bpf::program_info(id).map(|p| (id, (p.name, p.tag)))).collect()
}

/// The kernel name of one loaded program, if it is still loaded.
pub fn program_name(id: u32) -> Option<String> {
    program_names(&BTreeSet::from([id])).remove(&id).map(|(name, _)| name)
}

/// Kernel program name (≤ 15 bytes) → slot in `hostdp_counters`, as in `bpf/include/hostdp.h`.
pub fn counter_slot(program: &str) -> Option<u32> {
    const SLOTS: [(&str, u32); 13] = [
        ("cil_from_netdev", 0),
        ("cil_to_netdev", 1),
        ("cil_from_host", 2),
        ("cil_to_host", 3),
        ("cil_xdp_entry", 4),
        ("cil_from_contai", 5),
        ("cil_to_containe", 6),
        ("foreign_tc", 7),
        ("foreign_xdp", 8),
        ("cil_from_overla", 9),
        ("cil_to_overlay", 10),
        ("cil_to_wireguar", 11),
        ("cil_from_wiregu", 12),
    ];
    SLOTS.iter().find(|(n, _)| *n == program).map(|(_, s)| *s)
}

/// Offset of the "dropped" counters in `hostdp_counters`.
const DROP_BASE: u32 = 16;
/// Offset of the counters of a `traffic` step's (marked) packets.
const MARKED_BASE: u32 = 32;

/// Packet counters of one loaded harness program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Packets the program ran on.
    pub seen: u64,
    /// Packets it dropped (the VLAN filter).
    pub dropped: u64,
    /// Of `seen`, the packets of `traffic` steps (`bpf/include/hostdp.h` `hostdp_marked`).
    pub marked_seen: u64,
    /// Of `dropped`, the packets of `traffic` steps.
    pub marked_dropped: u64,
}

/// Reads the counters of program `prog_id` from its `hostdp_counters` map. Works for any
/// loaded harness program, attached or not; needs no namespace (maps are global objects).
pub fn counters(prog_id: u32) -> Result<Counters, InspectError> {
    let object = || format!("counters of program {prog_id}");
    let missing = |reason: String| InspectError::Missing { object: object(), reason };
    let call = |source: Cause| InspectError::Call { object: object(), source };
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .ok_or_else(|| missing("no such program".into()))?;
    let name = info.name_as_str().unwrap_or_default().to_string();
    let slot = counter_slot(&name).ok_or_else(|| missing(format!("{name} is not a harness program")))?;
    let map_ids = info.map_ids().map_err(|e| call(Cause::Program(e)))?.unwrap_or_default();
    for id in map_ids {
        let Ok(mi) = MapInfo::from_id(id) else { continue };
        if mi.name_as_str() != Some("hostdp_counters") {
            continue;
        }
        let data = MapData::from_id(id).map_err(|e| call(Cause::Map(e)))?;
        let array: Array<MapData, u64> = Array::try_from(Map::Array(data)).map_err(|e| call(Cause::Map(e)))?;
        let get = |i: u32| array.get(&i, 0).map_err(|e| call(Cause::Map(e)));
        return Ok(Counters {
            seen: get(slot)?,
            dropped: get(DROP_BASE + slot)?,
            marked_seen: get(MARKED_BASE + slot)?,
            marked_dropped: get(MARKED_BASE + DROP_BASE + slot)?,
        });
    }
    Err(missing(format!("{name} has no hostdp_counters map")))
}
