//! The bpf(2) syscall where aya has no call for it: the capability probe's trivial program
//! and tcx link, and program information by id. One place for the attribute structs (leading
//! parts of `union bpf_attr` and `struct bpf_prog_info`; the kernel accepts shorter ones).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME`: per-program run counts and times.
const BPF_STATS_RUN_TIME: u32 = 0;
/// `BPF_PROG_TYPE_SOCKET_FILTER`.
pub const PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// `BPF_PROG_TYPE_SCHED_CLS`.
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

/// A failed bpf(2) call.
#[derive(Debug, thiserror::Error)]
#[error("bpf({call}): {}", crate::sys::netlink::errno_text(source.raw_os_error().unwrap_or(0)))]
pub struct BpfError {
    pub call: &'static str,
    #[source]
    pub source: std::io::Error,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

#[repr(C)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The raw call: `Ok(return value)` or the errno.
fn raw<T>(cmd: libc::c_long, call: &'static str, attr: &mut T) -> Result<libc::c_long, BpfError> {
    // SAFETY: `attr` is a #[repr(C)] leading part of `union bpf_attr` for `cmd`, valid for the
    // call; the kernel reads and writes at most `size_of::<T>()` bytes of it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if r < 0 {
        return Err(BpfError { call, source: std::io::Error::last_os_error() });
    }
    Ok(r)
}

/// A call that returns a file descriptor.
fn fd_call<T>(cmd: libc::c_long, call: &'static str, attr: &mut T) -> Result<OwnedFd, BpfError> {
    let fd = raw(cmd, call, attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `r0 = 0; exit` as a program of type `prog_type` (the capability probe's).
pub fn load_trivial_program(prog_type: u32) -> Result<OwnedFd, BpfError> {
    // (opcode, regs, off, imm): BPF_ALU64|BPF_MOV|BPF_K r0 = 0; BPF_JMP|BPF_EXIT.
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..12].copy_from_slice(b"hostdp_probe");
    fd_call(BPF_PROG_LOAD, "BPF_PROG_LOAD", &mut attr)
}

/// Attaches `prog` as a tcx ingress link on `ifindex`; closing the link detaches it again.
pub fn tcx_attach_ingress(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd, BpfError> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        ..Default::default()
    };
    fd_call(BPF_LINK_CREATE, "BPF_LINK_CREATE", &mut attr)
}

/// Turns on the kernel's per-program run statistics (`run_cnt` in `bpftool prog show`) for as
/// long as the returned descriptor is open; unlike the `kernel.bpf_stats_enabled` sysctl,
/// nothing stays switched on after the process.
pub fn enable_run_stats() -> Result<OwnedFd, BpfError> {
    let mut attr: u32 = BPF_STATS_RUN_TIME;
    fd_call(BPF_ENABLE_STATS, "BPF_ENABLE_STATS", &mut attr)
}

/// What the kernel says of a loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramInfo {
    /// The kernel's name (at most 15 bytes).
    pub name: String,
    /// The program tag, hex.
    pub tag: String,
}

/// Name and tag of program `id`, if it is still loaded.
pub fn program_info(id: u32) -> Option<ProgramInfo> {
    let mut by_id = GetFdById { id, next_id: 0, open_flags: 0 };
    let fd = fd_call(BPF_PROG_GET_FD_BY_ID, "BPF_PROG_GET_FD_BY_ID", &mut by_id).ok()?;
    let mut info = ProgInfo::default();
    let mut get = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    // `get` points at `info`, which outlives the call; the kernel writes at most `info_len`.
    raw(BPF_OBJ_GET_INFO_BY_FD, "BPF_OBJ_GET_INFO_BY_FD", &mut get).ok()?;
    if info.id != id {
        return None;
    }
    let end = info.name.iter().position(|&b| b == 0).unwrap_or(info.name.len());
    let name = String::from_utf8_lossy(&info.name[..end]).into_owned();
    Some(ProgramInfo { name, tag: format!("{:016x}", u64::from_be_bytes(info.tag)) })
}
