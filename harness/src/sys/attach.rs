//! Executes a datapath plan ([`Op`]s) against the kernel inside a namespace: compile (cached),
//! load with aya, per-device globals, then attach as Cilium does (tc filters through
//! [`crate::sys::tc`], XDP through netlink, tcx through a pinned bpf_link).
//!
//! Attachments outlive this process: filters and netlink XDP hold their own program
//! references, tcx links are pinned, so every aya handle is dropped once its batch of ops is
//! done. Within a batch a device's object is opened once and all its programs come from it.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp};
use aya::Ebpf;
use serde::Serialize;

use crate::sys::compile::{CompileError, Compiler};
use crate::sys::netlink::{Change, NewLink, Rtnl};
use crate::sys::netns::{Netns, NetnsError};
use crate::sys::tc::{self, Direction, FilterSpec, TcError, XdpAttachMode};
use hostdp_model::datapath::{Object, Op, ProgramRef, VlanAllow, XdpMode};
use hostdp_model::observed::Hook;
use hostdp_model::verdict::{is_cilium_filter, is_cilium_netdev_filter};

/// The host device pair Cilium creates.
pub const CILIUM_HOST: &str = "cilium_host";
pub const CILIUM_NET: &str = "cilium_net";

/// Priority and handle of the harness's foreign tc filter.
pub const FOREIGN_PRIORITY: u16 = 100;
pub const FOREIGN_HANDLE: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op}: {source}")]
    Compile { op: String, source: CompileError },
    #[error("{op}: {message}")]
    Load { op: String, message: String },
    #[error("{op}: {source}")]
    Kernel { op: String, source: TcError },
    #[error("{op}: link {device} does not exist in namespace {netns}")]
    NoLink { op: String, device: String, netns: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{op}: {source}")]
    Netlink { op: String, source: crate::sys::netlink::NetlinkError },
    /// The kernel refused `cil_xdp_entry` on a device (upstream's agent dies of it).
    #[error("attaching XDP program to interface {device}: {message}")]
    XdpRefused { device: String, message: String },
}

/// What executing a plan needs besides the ops.
#[derive(Debug, Clone)]
pub struct AttachContext {
    /// Shared so that every step of a scenario reuses the compile cache.
    pub compiler: Arc<Compiler>,
    /// The plan's node-config defines.
    pub defines: BTreeMap<String, String>,
    /// A bpffs folder for pinned links (tcx); `None` where nothing is pinned.
    pub bpffs: Option<PathBuf>,
    /// Whether this kernel has tcx (the capability probe's answer): upstream falls back to tc
    /// on `link.ErrNotSupported`, which cilium/ebpf derives from a feature probe.
    pub kernel_tcx: bool,
}

/// Per-device values the programs read from their globals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub vlan: VlanAllow,
    pub seclabel: u32,
}

impl Default for DeviceConfig {
    /// No VLAN allowed, world identity (2), as Cilium's templates default to.
    fn default() -> Self {
        DeviceConfig { vlan: VlanAllow::Ids(Vec::new()), seclabel: 2 }
    }
}

/// What one op did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpOutcome {
    HostDevices {
        created: bool,
    },
    /// [`Op::EnsureEncapDevice`]: kept, created or created again.
    EncapDevice {
        device: String,
        action: crate::sys::netlink::EncapAction,
    },
    /// [`Op::DeleteLink`]: whether the link was there.
    LinkDeleted {
        device: String,
        existed: bool,
    },
    TcAttached {
        device: String,
        hook: Hook,
        program: String,
        filter: String,
        prog_id: u32,
    },
    TcFlushed {
        device: String,
        hook: Hook,
        removed: usize,
    },
    ObsoleteRemoved {
        device: String,
        hooks: Vec<Hook>,
    },
    /// `via`: `link` (a pinned bpf_link, new or updated) or `netlink`.
    XdpAttached {
        device: String,
        program: String,
        mode: String,
        prog_id: u32,
        via: String,
    },
    /// Best-effort acceleration: the kernel refused XDP on this device, which is skipped.
    XdpSkipped {
        device: String,
        reason: String,
    },
    /// [`Op::DetachXdp`]: the programs that went (a pinned link unpinned, or netlink).
    XdpDetached {
        device: String,
        prog_ids: Vec<u32>,
    },
    /// [`Op::DetachXdp`] left the device's program in place: it runs in the configured mode.
    XdpKept {
        device: String,
        prog_id: u32,
    },
    /// A tcx link (new or updated in place) and the legacy filters removed in that direction.
    TcxAttached {
        device: String,
        hook: Hook,
        program: String,
        pin: PathBuf,
        prog_id: u32,
        updated: bool,
        legacy_removed: usize,
    },
    /// A tc attach of [`Op::AttachSkb`]: the filter, stale Cilium filters deleted, whether a
    /// tcx link was unpinned.
    SkbTcAttached {
        device: String,
        hook: Hook,
        program: String,
        filter: String,
        prog_id: u32,
        stale_removed: usize,
        unpinned: bool,
    },
    /// [`Op::DetachSkb`]: whether a pin went, and how many filters.
    SkbDetached {
        device: String,
        hook: Hook,
        unpinned: bool,
        removed: usize,
    },
}

/// The result of [`execute`]: one outcome per op, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecReport {
    pub outcomes: Vec<OpOutcome>,
}

/// A tcx attachment made by [`attach_tcx`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcxAttached {
    pub prog_id: u32,
    pub pin: PathBuf,
    /// An existing pinned link was updated in place instead of a new link created.
    pub updated: bool,
}

/// Runs `ops` in order inside `ns`; stops at the first failing op.
pub fn execute(ns: &Netns, ctx: &AttachContext, ops: &[Op]) -> Result<ExecReport, AttachError> {
    crate::sys::timing::time(crate::sys::timing::Phase::Execute, || {
        ns.run(|| {
            let here = Inside::enter(ns)?;
            let mut report = ExecReport::default();
            let mut opened = Opened::default();
            for op in ops {
                report.outcomes.push(execute_one(&here, ctx, &mut opened, op)?);
            }
            Ok(report)
        })?
    })
}

fn execute_one(ns: &Inside<'_>, ctx: &AttachContext, opened: &mut Opened, op: &Op) -> Result<OpOutcome, AttachError> {
    match op {
        Op::CreateHostDevices => create_host_devices(&ns.nl).map(|created| OpOutcome::HostDevices { created }),
        Op::EnsureEncapDevice { device, kind, port } => {
            let op = format!("set up encapsulation device {device} ({} port {port})", kind.as_str());
            let action = ns
                .nl
                .ensure_encap_device(device, *kind, *port)
                .map_err(|source| AttachError::Netlink { op, source })?;
            Ok(OpOutcome::EncapDevice { device: device.clone(), action })
        }
        Op::DeleteLink { device } => {
            let op = format!("delete link {device}");
            let existed = ns.nl.delete_link_if_present(device).map_err(|source| AttachError::Netlink { op, source })?;
            Ok(OpOutcome::LinkDeleted { device: device.clone(), existed })
        }
        Op::AttachTc { device, hook, program, priority, vlan, seclabel } => {
            let what = format!("attach {} to {device} {}", program.symbol, hook.as_str());
            let direction = Direction::from_hook(*hook)
                .ok_or_else(|| AttachError::Invalid(format!("{what}: a tc program needs ingress or egress")))?;
            let cfg = DeviceConfig { vlan: vlan.clone(), seclabel: *seclabel };
            let filter = format!("{}-{device}", program.symbol);
            let spec = FilterSpec { direction, priority: (*priority).max(1), handle: tc::CILIUM_HANDLE, name: &filter };
            let prog_id = attach_tc_filter(ns, ctx, opened, device, *program, &cfg, &spec, &what)?;
            Ok(OpOutcome::TcAttached {
                device: device.clone(),
                hook: *hook,
                program: program.symbol.into(),
                filter,
                prog_id,
            })
        }
        Op::FlushTc { device, hook } => {
            let what = format!("remove tc filters from {device} {}", hook.as_str());
            let direction = Direction::from_hook(*hook)
                .ok_or_else(|| AttachError::Invalid(format!("{what}: tc has only ingress and egress")))?;
            let removed = tc::flush_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
            Ok(OpOutcome::TcFlushed { device: device.clone(), hook: *hook, removed })
        }
        Op::RemoveObsoleteTc { device } => {
            let what = format!("remove obsolete tc filters from {device}");
            let mut hooks = Vec::new();
            for direction in Direction::BOTH {
                let filters = tc::list_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
                if filters.iter().any(|f| f.name.as_deref().is_some_and(is_cilium_netdev_filter)) {
                    tc::flush_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
                    hooks.push(direction.hook());
                }
            }
            Ok(OpOutcome::ObsoleteRemoved { device: device.clone(), hooks })
        }
        Op::RemoveCiliumFilters { device } => {
            let what = format!("remove Cilium's filters from {device}");
            let mut hooks = Vec::new();
            for direction in Direction::BOTH {
                let filters = tc::list_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
                for f in filters.iter().filter(|f| f.name.as_deref().is_some_and(is_cilium_filter)) {
                    tc::delete_filter(&ns.nl, device, direction, f.priority, f.handle)
                        .map_err(|e| kernel(ns, &what, device, e))?;
                    if !hooks.contains(&direction.hook()) {
                        hooks.push(direction.hook());
                    }
                }
            }
            let xdp = tc::xdp(&ns.nl, device).map_err(|e| kernel(ns, &what, device, e))?;
            let mut prog_ids = Vec::new();
            if xdp
                .iter()
                .any(|p| crate::sys::inspect::program_name(p.prog_id).is_some_and(|n| n.contains("cil_xdp_entry")))
            {
                // A v1.15+ bpf_link refuses the netlink detach; its pin goes with the bpffs
                // folder (v1.16) or stays (not modelled further).
                tc::detach_xdp_both_modes(&ns.nl, device);
                let after = tc::xdp(&ns.nl, device).map_err(|e| kernel(ns, &what, device, e))?;
                prog_ids = xdp.iter().map(|p| p.prog_id).filter(|id| !after.iter().any(|a| a.prog_id == *id)).collect();
            }
            if !prog_ids.is_empty() {
                hooks.push(Hook::Xdp);
            }
            Ok(OpOutcome::ObsoleteRemoved { device: device.clone(), hooks })
        }
        Op::AttachXdp { device, program, mode, link_dir, best_effort } => {
            let what = format!("attach {} to {device} xdp", program.symbol);
            let mode = match mode {
                XdpMode::Native => XdpAttachMode::Native,
                XdpMode::Generic => XdpAttachMode::Generic,
            };
            let pin = match (link_dir, &ctx.bpffs) {
                (Some(d), Some(b)) => Some(b.join(d).join(program.symbol)),
                (Some(_), None) => {
                    return Err(AttachError::Invalid(format!("{what}: a bpf_link needs a bpffs folder to pin it in")))
                }
                (None, _) => None,
            };
            let cfg = DeviceConfig::default();
            let res = match &pin {
                Some(pin) => attach_xdp_link(ns, ctx, opened, device, *program, &cfg, mode, pin, &what),
                None => attach_xdp_prog(ns, ctx, opened, device, *program, &cfg, mode, &what)
                    .map(|id| (id, "netlink"))
                    .map_err(|e| match e {
                        AttachError::Kernel {
                            source: e @ (TcError::Call { .. } | TcError::NativeXdpRefused { .. }),
                            ..
                        } => AttachError::XdpRefused { device: device.clone(), message: e.kernel_text() },
                        e => e,
                    }),
            };
            match res {
                Ok((prog_id, via)) => Ok(OpOutcome::XdpAttached {
                    device: device.clone(),
                    program: program.symbol.into(),
                    mode: mode.as_str().into(),
                    prog_id,
                    via: via.into(),
                }),
                // "Failed to attach XDP program, ignoring due to best-effort mode".
                Err(AttachError::XdpRefused { device, message }) if *best_effort => {
                    Ok(OpOutcome::XdpSkipped { device, reason: message })
                }
                Err(e) => Err(e),
            }
        }
        Op::AttachSkb { device, hook, program, priority, vlan, seclabel, pin_dir, tcx, remove_stale } => {
            let cfg = DeviceConfig { vlan: vlan.clone(), seclabel: *seclabel };
            let skb =
                SkbAttach { program: *program, priority: *priority, pin_dir, tcx: *tcx, remove_stale: *remove_stale };
            attach_skb(ns, ctx, opened, device, *hook, &cfg, &skb)
        }
        Op::DetachSkb { device, hook, symbol, pin_dir } => {
            let what = format!("detach {symbol} from {device} {}", hook.as_str());
            let direction = Direction::from_hook(*hook)
                .ok_or_else(|| AttachError::Invalid(format!("{what}: tc has only ingress and egress")))?;
            let unpinned = match &ctx.bpffs {
                Some(b) => detach_tcx(&b.join(pin_dir).join(symbol))?,
                None => false,
            };
            let removed = tc::flush_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
            Ok(OpOutcome::SkbDetached { device: device.clone(), hook: *hook, unpinned, removed })
        }
        Op::RemoveObsoleteNetdev { device, device_dir } => {
            let what = format!("remove obsolete netdev programs from {device}");
            if let (Some(b), Some(d)) = (&ctx.bpffs, device_dir) {
                remove_pins(&b.join(d))?;
            }
            let mut hooks = Vec::new();
            for (direction, prefix) in [(Direction::Ingress, "cil_from_netdev"), (Direction::Egress, "cil_to_netdev")] {
                let filters = tc::list_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
                if filters.iter().any(|f| f.name.as_deref().is_some_and(|n| n.starts_with(prefix))) {
                    tc::flush_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
                    hooks.push(direction.hook());
                }
            }
            Ok(OpOutcome::ObsoleteRemoved { device: device.clone(), hooks })
        }
        Op::DetachXdp { device, keep, link_dir } => {
            let what = format!("detach xdp from {device}");
            let before = tc::xdp(&ns.nl, device).map_err(|e| kernel(ns, &what, device, e))?;
            let kept = match (keep, before.as_slice()) {
                (Some(XdpMode::Native), [p]) if p.mode == XdpAttachMode::Native => Some(p.prog_id),
                (Some(XdpMode::Generic), [p]) if p.mode == XdpAttachMode::Generic => Some(p.prog_id),
                _ => None,
            };
            if let Some(prog_id) = kept {
                return Ok(OpOutcome::XdpKept { device: device.clone(), prog_id });
            }
            if before.is_empty() {
                return Ok(OpOutcome::XdpDetached { device: device.clone(), prog_ids: Vec::new() });
            }
            // `DetachXDP`: the pinned link if there is one, else netlink in both modes.
            let pin = match (link_dir, &ctx.bpffs) {
                (Some(d), Some(b)) => Some(b.join(d).join(hostdp_model::datapath::CIL_XDP_ENTRY.symbol)),
                _ => None,
            };
            if !pin.as_deref().is_some_and(|p| detach_tcx(p).unwrap_or(false)) {
                tc::detach_xdp_both_modes(&ns.nl, device);
            }
            let after = tc::xdp(&ns.nl, device).map_err(|e| kernel(ns, &what, device, e))?;
            let prog_ids =
                before.iter().map(|p| p.prog_id).filter(|id| !after.iter().any(|a| a.prog_id == *id)).collect();
            Ok(OpOutcome::XdpDetached { device: device.clone(), prog_ids })
        }
    }
}

/// Maps a tc-layer error, turning a missing link into [`AttachError::NoLink`].
fn kernel(ns: &Inside<'_>, what: &str, device: &str, e: TcError) -> AttachError {
    match e {
        TcError::NoLink { .. } => {
            AttachError::NoLink { op: what.to_string(), device: device.to_string(), netns: ns.ns.name().to_string() }
        }
        source => AttachError::Kernel { op: what.to_string(), source },
    }
}

/// An error and its sources, one line (aya's errors keep the useful part in `source()`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Objects opened during one batch of ops for the device being handled. Cilium opens a device's object once and
/// attaches every program it needs from that collection (`replaceDatapath`), so a device's
/// ingress and egress programs share the object's maps; the harness does the same.
/// A thread inside the namespace, and the namespace's netlink connection opened from it.
struct Inside<'a> {
    ns: &'a Netns,
    nl: Rtnl,
}

impl<'a> Inside<'a> {
    /// Call on a thread that entered `ns` ([`Netns::run`]).
    fn enter(ns: &'a Netns) -> Result<Inside<'a>, AttachError> {
        let nl = Rtnl::open().map_err(|source| AttachError::Netlink {
            op: format!("open netlink in namespace {}", ns.name()),
            source,
        })?;
        Ok(Inside { ns, nl })
    }
}

#[derive(Default)]
struct Opened(Vec<(u32, Object, DeviceConfig, Ebpf)>);

/// Compiles `object` and opens it with the per-device globals set, or hands back the one
/// already opened for the device in this batch unless `symbol` was loaded from it already.
/// Runs inside the namespace (the device's ifindex and MAC are looked up there).
#[allow(clippy::too_many_arguments)]
fn open_object<'o>(
    ns: &Inside<'_>,
    ctx: &AttachContext,
    opened: &'o mut Opened,
    device: &str,
    object: Object,
    cfg: &DeviceConfig,
    symbol: &str,
    what: &str,
) -> Result<&'o mut Ebpf, AttachError> {
    let link = tc::find_link(&ns.nl, device).map_err(|e| kernel(ns, what, device, e))?;
    let loaded = |e: &Ebpf| e.program(symbol).is_some_and(|p| p.fd().is_ok());
    if let Some(i) =
        opened.0.iter().position(|(ix, o, c, e)| *ix == link.index && *o == object && c == cfg && !loaded(e))
    {
        return Ok(&mut opened.0[i].3);
    }
    let compiled =
        crate::sys::timing::time(crate::sys::timing::Phase::Compile, || ctx.compiler.compile(object, &ctx.defines))
            .map_err(|source| AttachError::Compile { op: what.to_string(), source })?;
    let load_err = |message: String| AttachError::Load { op: what.to_string(), message };
    let data = std::fs::read(&compiled.path).map_err(|e| load_err(format!("read {}: {e}", compiled.path.display())))?;
    let (allow_all, ids) = vlan_globals(&cfg.vlan).map_err(|m| AttachError::Invalid(format!("{what}: {m}")))?;
    // The endpoint's policy map, pinned per endpoint so all its programs share it.
    let pin = crate::sys::policymap::prepare_pin(ctx.bpffs.as_deref(), object, device)
        .map_err(|e| AttachError::Load { op: what.to_string(), message: e.to_string() })?;
    let globals = crate::sys::ebpf_load::Globals {
        ifindex: link.index,
        mac: link.mac.unwrap_or_default(),
        seclabel: cfg.seclabel,
        vlan_allow_all: allow_all,
        vlan_ids: ids,
    };
    let ebpf =
        crate::sys::ebpf_load::load(&data, globals, pin.as_deref().map(|p| (crate::sys::policymap::MAP_NAME, p)))
            .map_err(|e| load_err(format!("open {}: {}", object.source(), chain(&e))))?;
    // Plans handle a device's hooks one after the other: what was opened for other devices is
    // done with, and keeping it would hold file descriptors in proportion to the node's links.
    opened.0.retain(|(ix, ..)| *ix == link.index);
    opened.0.push((link.index, object, cfg.clone(), ebpf));
    Ok(&mut opened.0.last_mut().expect("just pushed").3)
}

/// The VLAN globals: allow-all flag and up to five ids (0 = unused).
fn vlan_globals(vlan: &VlanAllow) -> Result<(u32, [u16; 5]), String> {
    let mut ids = [0u16; 5];
    match vlan {
        VlanAllow::All => Ok((1, ids)),
        VlanAllow::Ids(v) => {
            if v.len() > ids.len() {
                return Err(format!("at most 5 VLAN ids can be allowed on a device, got {}", v.len()));
            }
            if let Some(bad) = v.iter().find(|id| **id == 0 || **id > 4094) {
                return Err(format!("VLAN id {bad} is out of range 1-4094"));
            }
            ids[..v.len()].copy_from_slice(v);
            Ok((0, ids))
        }
    }
}

/// How many of the verifier's last log lines a load error carries: the refusal reason is at
/// the end, the full log can run to thousands of lines.
const VERIFIER_TAIL: usize = 10;

/// The message of a failed program load; a verifier refusal keeps the log's last lines.
fn load_failure(symbol: &str, e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            // The statistics the kernel appends after the verdict say nothing about why.
            let stats = ["verification time", "stack depth", "processed "];
            let lines: Vec<&str> = log
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty() && !stats.iter().any(|s| l.starts_with(s)))
                .collect();
            let tail = &lines[lines.len().saturating_sub(VERIFIER_TAIL)..];
            if tail.is_empty() {
                format!("load {symbol}: the kernel refused the program ({io_error}) and the verifier wrote no log")
            } else {
                format!(
                    "load {symbol}: the verifier refused the program ({io_error}); its last lines:\n  {}",
                    tail.join("\n  ")
                )
            }
        }
        other => format!("load {symbol}: {}", chain(other)),
    }
}

/// Loads a tc program of `ebpf` and returns it (still owned by `ebpf`).
fn load_classifier<'a>(ebpf: &'a mut Ebpf, symbol: &str, what: &str) -> Result<&'a mut SchedClassifier, AttachError> {
    let load_err = |message: String| AttachError::Load { op: what.to_string(), message };
    let prog: &mut SchedClassifier = ebpf
        .program_mut(symbol)
        .ok_or_else(|| load_err(format!("the object has no program {symbol}")))?
        .try_into()
        .map_err(|e| load_err(format!("{symbol} is not a tc classifier: {}", chain(&e))))?;
    prog.load().map_err(|e| load_err(load_failure(symbol, &e)))?;
    Ok(prog)
}

#[allow(clippy::too_many_arguments)]
fn attach_tc_filter(
    ns: &Inside<'_>,
    ctx: &AttachContext,
    opened: &mut Opened,
    device: &str,
    program: ProgramRef,
    cfg: &DeviceConfig,
    spec: &FilterSpec<'_>,
    what: &str,
) -> Result<u32, AttachError> {
    let ebpf = open_object(ns, ctx, opened, device, program.object, cfg, program.symbol, what)?;
    let prog = load_classifier(ebpf, program.symbol, what)?;
    let load_err = |message: String| AttachError::Load { op: what.to_string(), message };
    let fd = prog.fd().map_err(|e| load_err(chain(&e)))?;
    tc::replace_filter(&ns.nl, device, spec, fd.as_fd()).map_err(|e| kernel(ns, what, device, e))?;
    let id = prog.info().map_err(|e| load_err(chain(&e)))?.id();
    Ok(id)
}

#[allow(clippy::too_many_arguments)]
fn attach_xdp_prog(
    ns: &Inside<'_>,
    ctx: &AttachContext,
    opened: &mut Opened,
    device: &str,
    program: ProgramRef,
    cfg: &DeviceConfig,
    mode: XdpAttachMode,
    what: &str,
) -> Result<u32, AttachError> {
    let prog = load_xdp(ns, ctx, opened, device, program, cfg, what)?;
    let load_err = |message: String| AttachError::Load { op: what.to_string(), message };
    let fd = prog.fd().map_err(|e| load_err(chain(&e)))?;
    tc::attach_xdp(&ns.nl, device, fd.as_fd(), mode).map_err(|e| kernel(ns, what, device, e))?;
    let id = prog.info().map_err(|e| load_err(chain(&e)))?.id();
    Ok(id)
}

/// Opens the device's object (once per batch) and loads its XDP program `program`.
fn load_xdp<'o>(
    ns: &Inside<'_>,
    ctx: &AttachContext,
    opened: &'o mut Opened,
    device: &str,
    program: ProgramRef,
    cfg: &DeviceConfig,
    what: &str,
) -> Result<&'o mut Xdp, AttachError> {
    let ebpf = open_object(ns, ctx, opened, device, program.object, cfg, program.symbol, what)?;
    let load_err = |message: String| AttachError::Load { op: what.to_string(), message };
    let symbol = program.symbol;
    let prog: &mut Xdp = ebpf
        .program_mut(symbol)
        .ok_or_else(|| load_err(format!("the object has no program {symbol}")))?
        .try_into()
        .map_err(|e| load_err(format!("{symbol} is not an XDP program: {}", chain(&e))))?;
    prog.load().map_err(|e| load_err(load_failure(symbol, &e)))?;
    Ok(prog)
}

/// v1.15 `attachXDPProgram`: update the link pinned at `pin` (a defunct one is unpinned),
/// else create a bpf_link and pin it; when the kernel refuses the link with EBUSY (a program
/// attached through netlink is there) attach through netlink instead, which replaces it.
/// Returns the program id and how it went on (`link` or `netlink`).
#[allow(clippy::too_many_arguments)]
fn attach_xdp_link(
    ns: &Inside<'_>,
    ctx: &AttachContext,
    opened: &mut Opened,
    device: &str,
    program: ProgramRef,
    cfg: &DeviceConfig,
    mode: XdpAttachMode,
    pin: &Path,
    what: &str,
) -> Result<(u32, &'static str), AttachError> {
    use aya::programs::xdp::{XdpLink, XdpMode as AyaMode};
    let prog = load_xdp(ns, ctx, opened, device, program, cfg, what)?;
    let load_err = |message: String| AttachError::Load { op: what.to_string(), message };
    let refused = |message: String| AttachError::XdpRefused { device: device.to_string(), message };
    let symbol = program.symbol;
    let prog_id = prog.info().map_err(|e| load_err(chain(&e)))?.id();
    if pin.exists() {
        let pinned = PinnedLink::from_pin(pin)
            .map_err(|e| load_err(format!("open pinned link {}: {}", pin.display(), chain(&e))))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| load_err(format!("pinned link {} is not an XDP link: {}", pin.display(), chain(&e))))?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                drop(prog.take_link(id).map_err(|e| load_err(chain(&e)))?);
                return Ok((prog_id, "link"));
            }
            Err(e) if errno(&e) == Some(nix::libc::ENOLINK) => {
                detach_tcx(pin)?;
            }
            Err(e) => {
                return Err(refused(format!("updating link {} for program {symbol}: {}", pin.display(), chain(&e))))
            }
        }
    }
    let aya_mode = match mode {
        XdpAttachMode::Native => AyaMode::Driver,
        XdpAttachMode::Generic => AyaMode::Skb,
        XdpAttachMode::Offload => AyaMode::Hardware,
    };
    match prog.attach(device, aya_mode) {
        Ok(id) => {
            let link = prog.take_link(id).map_err(|e| load_err(chain(&e)))?;
            let fd_link = FdLink::try_from(link).map_err(|e| load_err(chain(&e)))?;
            if let Some(dir) = pin.parent() {
                std::fs::create_dir_all(dir).map_err(|e| load_err(format!("create {}: {e}", dir.display())))?;
            }
            fd_link.pin(pin).map_err(|e| load_err(format!("pin at {}: {}", pin.display(), chain(&e))))?;
            Ok((prog_id, "link"))
        }
        Err(e) if errno(&e) == Some(nix::libc::EBUSY) => {
            let fd = prog.fd().map_err(|e| load_err(chain(&e)))?;
            tc::attach_xdp(&ns.nl, device, fd.as_fd(), mode).map_err(|e| match e {
                e @ (TcError::Call { .. } | TcError::NativeXdpRefused { .. }) => refused(format!(
                    "attaching XDP program {symbol} to interface {device} using netlink: {}",
                    e.kernel_text()
                )),
                e => kernel(ns, what, device, e),
            })?;
            Ok((prog_id, "netlink"))
        }
        Err(e) => Err(refused(format!("attaching program {symbol} using bpf_link: {}", chain(&e)))),
    }
}

/// The errno of a failed bpf syscall, if that is what failed.
fn errno(e: &aya::programs::ProgramError) -> Option<i32> {
    match e {
        aya::programs::ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

/// Creates the `cilium_host` / `cilium_net` veth pair unless `cilium_host` exists, and sets
/// both up. Returns whether it created them.
fn create_host_devices(nl: &Rtnl) -> Result<bool, AttachError> {
    let what = "create cilium_host/cilium_net";
    let links = tc::list_links(nl).map_err(|source| AttachError::Kernel { op: what.into(), source })?;
    let created = !links.iter().any(|l| l.name == CILIUM_HOST);
    let mut changes = Vec::new();
    if created {
        let link = NewLink::Veth { peer: CILIUM_NET.into(), peer_netns: None };
        changes.push(Change::AddLink { name: CILIUM_HOST.into(), link });
    }
    changes.extend([CILIUM_HOST, CILIUM_NET].map(|name| Change::SetUp { name: name.into(), up: true }));
    nl.apply(&changes).map_err(|source| AttachError::Netlink { op: what.into(), source })?;
    Ok(created)
}

/// Attaches `program` to `device` through tcx at the tail of the hook's list (v1.16
/// `upsertTCXProgram`) and pins the link at `pin_path`; an existing pinned link there is
/// updated to the new program instead. Kernel ≥ 6.6.
pub fn attach_tcx(
    ns: &Netns,
    ctx: &AttachContext,
    device: &str,
    hook: Hook,
    program: ProgramRef,
    cfg: &DeviceConfig,
    pin_path: &Path,
) -> Result<TcxAttached, AttachError> {
    let what = format!("attach {} to {device} {} (tcx)", program.symbol, hook.as_str());
    let attach_type = match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
        Hook::Xdp => return Err(AttachError::Invalid(format!("{what}: tcx has only ingress and egress"))),
    };
    ns.run(|| {
        let here = Inside::enter(ns)?;
        tcx_here(&here, ctx, &mut Opened::default(), device, attach_type, program, cfg, pin_path, &what)
    })?
}

/// [`attach_tcx`] in the calling thread (already inside `ns`). A pin whose link is defunct
/// (its device went away: ENOLINK on update) is removed and a new link made, as upstream's
/// `updateTCX` does.
#[allow(clippy::too_many_arguments)]
fn tcx_here(
    ns: &Inside<'_>,
    ctx: &AttachContext,
    opened: &mut Opened,
    device: &str,
    attach_type: TcAttachType,
    program: ProgramRef,
    cfg: &DeviceConfig,
    pin_path: &Path,
    what: &str,
) -> Result<TcxAttached, AttachError> {
    let load_err = |message: String| AttachError::Load { op: what.to_string(), message };
    let ebpf = open_object(ns, ctx, opened, device, program.object, cfg, program.symbol, what)?;
    let prog = load_classifier(ebpf, program.symbol, what)?;
    let mut updated = false;
    if pin_path.exists() {
        let pinned = PinnedLink::from_pin(pin_path)
            .map_err(|e| load_err(format!("open pinned link {}: {}", pin_path.display(), chain(&e))))?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| load_err(format!("pinned link {} is not a tcx link: {}", pin_path.display(), chain(&e))))?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                // The update holds; drop our handle, the pin keeps the link.
                drop(prog.take_link(id).map_err(|e| load_err(chain(&e)))?);
                updated = true;
            }
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(nix::libc::ENOLINK) =>
            {
                detach_tcx(pin_path)?;
            }
            Err(e) => return Err(load_err(format!("update link {}: {}", pin_path.display(), chain(&e)))),
        }
    }
    if !updated {
        let link_id = prog
            .attach_with_options(device, attach_type, TcAttachOptions::TcxOrder(LinkOrder::last()))
            .map_err(|e| load_err(format!("tcx attach: {}", chain(&e))))?;
        let link = prog.take_link(link_id).map_err(|e| load_err(chain(&e)))?;
        let fd_link = FdLink::try_from(link).map_err(|e| load_err(chain(&e)))?;
        if let Some(dir) = pin_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| load_err(format!("create {}: {e}", dir.display())))?;
        }
        fd_link.pin(pin_path).map_err(|e| load_err(format!("pin at {}: {}", pin_path.display(), chain(&e))))?;
    }
    let prog_id = prog.info().map_err(|e| load_err(chain(&e)))?.id();
    Ok(TcxAttached { prog_id, pin: pin_path.to_path_buf(), updated })
}

/// How [`Op::AttachSkb`] attaches (see there).
struct SkbAttach<'a> {
    program: ProgramRef,
    priority: u16,
    pin_dir: &'a str,
    tcx: bool,
    remove_stale: bool,
}

/// [`Op::AttachSkb`], inside the namespace.
fn attach_skb(
    ns: &Inside<'_>,
    ctx: &AttachContext,
    opened: &mut Opened,
    device: &str,
    hook: Hook,
    cfg: &DeviceConfig,
    a: &SkbAttach<'_>,
) -> Result<OpOutcome, AttachError> {
    let symbol = a.program.symbol;
    let what = format!("attach {symbol} to {device} {}", hook.as_str());
    let (direction, attach_type) = match hook {
        Hook::Ingress => (Direction::Ingress, TcAttachType::Ingress),
        Hook::Egress => (Direction::Egress, TcAttachType::Egress),
        Hook::Xdp => return Err(AttachError::Invalid(format!("{what}: a tc program needs ingress or egress"))),
    };
    let pin = ctx.bpffs.as_ref().map(|b| b.join(a.pin_dir).join(symbol));
    if a.tcx && ctx.kernel_tcx {
        let pin =
            pin.ok_or_else(|| AttachError::Invalid(format!("{what}: tcx needs a bpffs folder to pin the link in")))?;
        let t = tcx_here(ns, ctx, opened, device, attach_type, a.program, cfg, &pin, &what)?;
        // tcx runs before legacy tc: every filter left in that direction goes.
        let legacy_removed = tc::flush_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
        return Ok(OpOutcome::TcxAttached {
            device: device.to_string(),
            hook,
            program: symbol.into(),
            pin: t.pin,
            prog_id: t.prog_id,
            updated: t.updated,
            legacy_removed,
        });
    }
    let filter = format!("{symbol}-{device}");
    let priority = a.priority.max(1);
    let spec = FilterSpec { direction, priority, handle: tc::CILIUM_HANDLE, name: &filter };
    let prog_id = attach_tc_filter(ns, ctx, opened, device, a.program, cfg, &spec, &what)?;
    let mut stale_removed = 0;
    if a.remove_stale {
        let filters = tc::list_filters(&ns.nl, device, direction).map_err(|e| kernel(ns, &what, device, e))?;
        for f in filters
            .iter()
            .filter(|f| f.priority != priority && f.name.as_deref().is_some_and(|n| n.starts_with("cil_")))
        {
            tc::delete_filter(&ns.nl, device, direction, f.priority, f.handle)
                .map_err(|e| kernel(ns, &what, device, e))?;
            stale_removed += 1;
        }
    }
    let unpinned = match &pin {
        Some(p) => detach_tcx(p)?,
        None => false,
    };
    Ok(OpOutcome::SkbTcAttached {
        device: device.to_string(),
        hook,
        program: symbol.into(),
        filter,
        prog_id,
        stale_removed,
        unpinned,
    })
}

/// Removes a pinned tcx link: the attachment goes away with the last reference.
/// `Ok(false)` if nothing was pinned there.
pub fn detach_tcx(pin_path: &Path) -> Result<bool, AttachError> {
    if !pin_path.exists() {
        return Ok(false);
    }
    remove_pins(pin_path)?;
    Ok(true)
}

/// Removes a pin file or a bpffs folder of pins, then waits until the links pinned there are
/// gone: the kernel releases a link whose last reference was a bpffs pin asynchronously, so
/// right after the unlink the program can still be attached for a moment. Nothing there is fine.
pub fn remove_pins(path: &Path) -> Result<(), AttachError> {
    let err = |e: std::io::Error| AttachError::Load { op: format!("unpin {}", path.display()), message: e.to_string() };
    let pinned = pinned_links(path);
    let res = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match res {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    // The link's id is freed before its release detaches the program; the program (held by
    // the link alone) goes last, so its id is what tells that the hook is clear.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let links: Vec<u32> = aya::programs::loaded_links().filter_map(Result::ok).map(|l| l.id()).collect();
        let progs: Vec<u32> = aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect();
        if !pinned.iter().any(|(l, p)| links.contains(l) || progs.contains(p)) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(AttachError::Load {
                op: format!("unpin {}", path.display()),
                message: "the kernel still holds the unpinned links after 5 s".into(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// (link id, program id) of the bpf links pinned at `path` (a pin or a folder, recursively).
fn pinned_links(path: &Path) -> Vec<(u32, u32)> {
    if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_else(|_| Vec::new());
        return entries.iter().flat_map(|p: &PathBuf| pinned_links(p)).collect();
    }
    PinnedLink::from_pin(path)
        .ok()
        .and_then(|p| FdLink::from(p).info().ok())
        .map(|i| vec![(i.id(), i.program_id())])
        .unwrap_or_default()
}

/// Another tool's program: `foreign_tc` as a tc filter named `foreign_tc` (priority 100,
/// handle 1) on ingress or egress, or `foreign_xdp` through netlink in `xdp_mode` (`direction`
/// xdp; generic when `None`). Returns the program id.
pub fn foreign(
    ns: &Netns,
    ctx: &AttachContext,
    device: &str,
    direction: Hook,
    program: &str,
    xdp_mode: Option<XdpMode>,
) -> Result<u32, AttachError> {
    let what = format!("attach foreign program {program} to {device} {}", direction.as_str());
    let cfg = DeviceConfig::default();
    match (program, Direction::from_hook(direction)) {
        ("foreign_tc", Some(dir)) => {
            let prog = ProgramRef { object: Object::Foreign, symbol: "foreign_tc" };
            let spec =
                FilterSpec { direction: dir, priority: FOREIGN_PRIORITY, handle: FOREIGN_HANDLE, name: "foreign_tc" };
            ns.run(|| {
                let here = Inside::enter(ns)?;
                attach_tc_filter(&here, ctx, &mut Opened::default(), device, prog, &cfg, &spec, &what)
            })?
        }
        ("foreign_xdp", None) => {
            let prog = ProgramRef { object: Object::Foreign, symbol: "foreign_xdp" };
            ns.run(|| {
                let here = Inside::enter(ns)?;
                let mode = match xdp_mode {
                    Some(XdpMode::Native) => XdpAttachMode::Native,
                    Some(XdpMode::Generic) | None => XdpAttachMode::Generic,
                };
                attach_xdp_prog(&here, ctx, &mut Opened::default(), device, prog, &cfg, mode, &what)
            })?
        }
        ("foreign_tc" | "foreign_xdp", _) => {
            Err(AttachError::Invalid(format!("{what}: foreign_tc goes on ingress or egress, foreign_xdp on xdp")))
        }
        _ => Err(AttachError::Invalid(format!("{what}: unknown foreign program (foreign_tc, foreign_xdp)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obsolete_names_follow_init_sh() {
        assert!(is_cilium_netdev_filter("cil_from_netdev-eth0"));
        assert!(is_cilium_netdev_filter("cil_to_netdev-bond0.212"));
        assert!(is_cilium_netdev_filter("bpf_host.o:[from-netdev]"));
        assert!(is_cilium_netdev_filter("x-cil_to_netdev"));
        assert!(!is_cilium_netdev_filter("foreign_tc"));
        assert!(!is_cilium_netdev_filter("cil_to_host-cilium_host"));
        assert!(!is_cilium_netdev_filter("xcil_from_netdev"));
    }

    #[test]
    fn vlan_globals_bound_the_list() {
        assert_eq!(vlan_globals(&VlanAllow::All).unwrap(), (1, [0; 5]));
        assert_eq!(vlan_globals(&VlanAllow::Ids(vec![212, 300])).unwrap(), (0, [212, 300, 0, 0, 0]));
        assert!(vlan_globals(&VlanAllow::Ids(vec![1, 2, 3, 4, 5, 6])).is_err());
        assert!(vlan_globals(&VlanAllow::Ids(vec![0])).is_err());
        assert!(vlan_globals(&VlanAllow::Ids(vec![4095])).is_err());
    }
}
