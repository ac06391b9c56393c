//! Running a command under another kernel: a Debian kernel booted by virtme-ng (`vng`) in qemu.
//!
//! The machine's own kernel has no bonding, 8021q, wireguard or dummy, and is too new to show
//! what a pre-tcx kernel does, so scenarios that need those run in a VM. virtme-ng shares the
//! host's root file system read-only over 9p (with tmpfs overlays on /etc, /usr, /var, /tmp), so
//! the harness binary, clang and iproute2 are simply there; only the folders passed as `rw_dirs`
//! (a cargo target dir, a results dir) are writable back to the host.
//!
//! Nested KVM does not work on these machines, so qemu emulates (TCG, `--disable-kvm`): a call
//! costs 10–30 s. The command's output and exit status travel through files in a per-call folder
//! that is shared read-write: without udev on the host, virtme-ng cannot find its virtio-serial
//! ports in the guest and falls back to the console, which mixes kernel messages into stdout
//! and loses the exit status.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kernel names that `ci/kernels` knows how to fetch.
pub const KNOWN_KERNELS: &[&str] = &["debian-6.1", "debian-6.12"];

/// Modules loaded in the guest before the command: the link kinds and tc pieces scenarios use.
pub const DEFAULT_MODULES: &[&str] = &[
    "bonding",
    "8021q",
    "wireguard",
    "dummy",
    "sch_ingress",
    "cls_bpf",
    "veth",
    "bridge",
    "macvlan",
    "vxlan",
    "geneve",
    "ifb",
    "vrf",
];

/// Modules the guest must not load. Under TCG, loading kvm (which udev's coldplug does when udev
/// is on the host) alone costs about 8 s of boot, for nothing.
const GUEST_MODULE_BLACKLIST: &str = "kvm,kvm_amd,kvm_intel";

/// Programs in the guest start at the same addresses every time. TCG keys its translated code
/// by virtual address, so with address-space randomisation every `tc` or `bpftool` start (the
/// cross-check runs them at each step) translated the loader and its libraries again: 111 ms
/// against 52 ms for `tc -V` in a debian-6.1 guest. A throwaway guest loses nothing by it.
const GUEST_NORANDMAPS: &str = "norandmaps";

/// No self-tests of the kernel's crypto algorithms at boot (with `initcall_debug` under TCG,
/// crypto_algapi_init took 413 ms): debian-6.1 reached the command 0.8 s sooner (7.9 s of
/// uptime against 8.7). The datapath under test uses none of them.
const GUEST_CRYPTO_NOTESTS: &str = "cryptomgr.notests=1";

/// Default limit on one VM call (boot, command, power-off); `HOSTDP_VM_TIMEOUT` (seconds)
/// overrides it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// How many console lines a boot failure quotes.
const CONSOLE_TAIL_LINES: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("qemu-system-x86_64 not found: run ci/setup or apt-get install qemu-system-x86")]
    QemuMissing,
    #[error(
        "vng (virtme-ng) not found (looked at {searched}): in a checkout run ci/setup; elsewhere install \
         it with `python3 -m venv {venv} && {venv}/bin/pip install virtme-ng` (or put vng on PATH, \
         or set HOSTDP_VNG)"
    )]
    VngMissing { searched: String, venv: String },
    #[error(
        "kernel {name} is not in {dir}: in a checkout run ci/kernels {name}; elsewhere put its image \
         at {cache_kernels}/{name}/vmlinuz (with lib/modules/<release>/ beside boot/), or give \
         --kernel PATH to a vmlinuz"
    )]
    KernelNotFetched { name: String, dir: String, cache_kernels: String },
    #[error(
        "unknown kernel {0:?}: give one of {known} (fetched by ci/kernels) or a path to a vmlinuz",
        known = KNOWN_KERNELS.join(", ")
    )]
    UnknownKernel(String),
    #[error("kernel image {path}: {message}")]
    KernelImage { path: PathBuf, message: String },
    #[error("vm command: {0}")]
    InvalidCommand(String),
    #[error("prepare vm run: {0}")]
    Prepare(String),
    #[error("start {vng}: {message}")]
    Spawn { vng: PathBuf, message: String },
    #[error("boot of kernel {kernel} failed ({how}); the command did not run. Last console lines:\n{console_tail}")]
    Boot { kernel: String, how: String, console_tail: String },
    #[error("vm on kernel {kernel} timed out after {} s (set HOSTDP_VM_TIMEOUT to wait longer). Last console lines:\n{console_tail}", .after.as_secs())]
    Timeout { kernel: String, after: Duration, console_tail: String },
}

/// A kernel to boot: its image, its release string and where its modules are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRef {
    /// What the user named it: `debian-6.1`, or the path given.
    pub name: String,
    /// The kernel image (bzImage), canonical path.
    pub image: PathBuf,
    /// What qemu boots: the decompressed kernel `vmlinux-<release>` beside the bzImage when
    /// `ci/vmlinux` wrote one (entered through its PVH entry, it skips the bzImage's
    /// decompressor: 4 s of each debian-6.1 boot under TCG, 2.5 s of debian-6.12's), else
    /// [`KernelRef::image`].
    pub boot: PathBuf,
    /// The release (`uname -r` in the guest), e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `lib/modules/<release>` next to the image, if there is one.
    pub modules: Option<PathBuf>,
}

impl KernelRef {
    /// Resolves a kernel name (a folder under one of [`kernel_dirs`], as laid out by
    /// `ci/kernels`) or a path to a kernel image.
    pub fn resolve(name_or_path: &str) -> Result<KernelRef, VmError> {
        KernelRef::resolve_in(name_or_path, &kernel_dirs())
    }

    /// [`KernelRef::resolve`] with the folders that hold named kernels given explicitly.
    pub fn resolve_in(name_or_path: &str, kernel_dirs: &[PathBuf]) -> Result<KernelRef, VmError> {
        if name_or_path.is_empty() {
            return Err(VmError::UnknownKernel(String::new()));
        }
        if looks_like_path(name_or_path) {
            return KernelRef::from_image(name_or_path, Path::new(name_or_path));
        }
        if !is_valid_name(name_or_path) {
            return Err(VmError::UnknownKernel(name_or_path.to_string()));
        }
        for base in kernel_dirs {
            let dir = base.join(name_or_path);
            let image = dir.join("vmlinuz");
            if image.exists() {
                let mut k = KernelRef::from_image(name_or_path, &image)?;
                // ci/kernels records the release; trust it over the file name.
                if let Ok(v) = std::fs::read_to_string(dir.join("version")) {
                    let v = v.trim();
                    if !v.is_empty() && v != k.release {
                        k.release = v.to_string();
                        k.modules = modules_dir_for(&k.image, v);
                    }
                }
                return Ok(k);
            }
        }
        if KNOWN_KERNELS.contains(&name_or_path) {
            let dir = match kernel_dirs {
                [] => "ci/.cache/kernels".to_string(),
                dirs => dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or "),
            };
            Err(VmError::KernelNotFetched {
                name: name_or_path.to_string(),
                dir,
                cache_kernels: crate::paths::get().cache.join("kernels").display().to_string(),
            })
        } else {
            Err(VmError::UnknownKernel(name_or_path.to_string()))
        }
    }

    fn from_image(name: &str, path: &Path) -> Result<KernelRef, VmError> {
        let err = |message: String| VmError::KernelImage { path: path.to_path_buf(), message };
        let image = path.canonicalize().map_err(|e| err(format!("cannot open: {e}")))?;
        if !image.is_file() {
            return Err(err("not a file".into()));
        }
        let mut head = vec![0u8; 64 * 1024];
        let n = std::fs::File::open(&image)
            .and_then(|mut f| read_up_to(&mut f, &mut head))
            .map_err(|e| err(format!("cannot read: {e}")))?;
        head.truncate(n);
        let release = bzimage_release(&head)
            .or_else(|| release_from_file_name(&image))
            .ok_or_else(|| err("not a bzImage with a version string, nor named vmlinuz-VERSION".into()))?;
        let modules = modules_dir_for(&image, &release);
        let boot = decompressed_beside(&image).unwrap_or_else(|| image.clone());
        Ok(KernelRef { name: name.to_string(), image, boot, release, modules })
    }
}

/// `vmlinux-X` beside a `vmlinuz-X`, if it is an ELF file at least as new as the bzImage (one
/// left from an older kernel of the same name is not booted).
fn decompressed_beside(image: &Path) -> Option<PathBuf> {
    let name = image.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let elf = image.with_file_name(format!("vmlinux-{name}"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&elf)? < modified(image)? {
        return None;
    }
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(&elf).and_then(|mut f| read_up_to(&mut f, &mut magic)).ok()?;
    (n == 4 && magic == *b"\x7fELF").then_some(elf)
}

/// What a command run in the VM gave back.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// The guest command's exit status (128+N if a signal N ended it).
    pub status: i32,
    /// The command's standard output, nothing else (no kernel messages): fit to carry JSON.
    pub stdout: String,
    pub stderr: String,
    /// The whole call: boot, modules, the command, power-off.
    pub boot_and_run: Duration,
    /// Guest uptime when the command started, after modules and mounts (boot to first command),
    /// if the guest reported it.
    pub command_started: Option<Duration>,
    /// virtme-ng's own output with the guest console (kernel messages), for diagnostics.
    pub console: String,
}

impl VmOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Settings of a VM call; [`VmOptions::default`] is what [`run_in_vm`] uses.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub cpus: u32,
    /// qemu's notation: `1G`, `768M`.
    pub memory: String,
    /// Modules `modprobe -a`'d before the command (failures ignored: a kernel may have them
    /// built in, and the scenario that needs one reports its absence better).
    pub modules: Vec<String>,
    /// Environment for the command; the guest does not inherit the host's.
    pub env: Vec<(String, String)>,
    /// The whole call is killed after this long.
    pub timeout: Duration,
    /// Progress on standard error while the call runs: the boot (a spinner on a terminal, a line
    /// every 10 s otherwise), then every `hostdp: ` line the command writes to its standard
    /// error (a scenario started or done), prefixed with the kernel's name.
    pub progress: bool,
    /// Files copied into [`GUEST_TOOLS`], a tmpfs, before the command (all of them, or else the
    /// folder is removed): programs it starts often, with their libraries and loader
    /// ([`tool_closure`]). Started from there they cost less: the 9p root keeps no page cache, so
    /// each start from it reads the files again and TCG translates their code again.
    pub tools: Vec<PathBuf>,
    /// The command's program is copied into a tmpfs first and started from there: for the same
    /// reason as `tools`, a long-running program that pages its code in from the 9p root as it
    /// goes pays a read of the shared folder for each part it touches (a scenario batch's
    /// `hostdp`, stripped by [`copy_program_for_guest`]: 16 MB, copied in 1.7 s, then no further
    /// reads).
    pub exe_in_tmpfs: bool,
}

/// The vCPUs of each of `guests` guests that run at once: `HOSTDP_VM_CPUS`, else this
/// machine's CPUs split between them, one or two each. Under TCG two guests of one vCPU on two
/// cores finished the scenario tests' 60 VM files in 93 s, one after the other (two vCPUs) in
/// 115 s, two of two vCPUs at once in 153 s: emulated CPUs beyond the real ones lose time to each
/// other.
pub fn cpus_each(guests: u32) -> u32 {
    crate::paths::get().vm_cpus.unwrap_or_else(|| {
        let here = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        (here / guests.max(1)).clamp(1, 2)
    })
}

/// Where the guest keeps the program of [`VmOptions::exe_in_tmpfs`].
const GUEST_EXE: &str = "/run/hostdp-exe";

/// The guest's folder of [`VmOptions::tools`].
pub const GUEST_TOOLS: &str = "/run/hostdp-tools";

/// Where the guest keeps the kernel's module helper (a tmpfs).
const GUEST_HELPERS: &str = "/run/hostdp-helpers";

/// Copies program `from` to `to` for a guest to start, without its symbols and debug
/// information when binutils' `strip` is on PATH (a plain copy otherwise). A guest reads a
/// file over 9p at a few MB/s under TCG: copying the 38 MB test build into its tmpfs took 5.0 s
/// of a debian-6.12 batch, the 16 MB stripped one 1.7 s. A panic in the guest still names its
/// message and source line; only the frames of a backtrace lose their names.
pub fn copy_program_for_guest(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(strip) = which("strip") {
        let stripped = Command::new(strip)
            .arg("--strip-all")
            .arg("-o")
            .arg(to)
            .arg(from)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if stripped {
            return Ok(());
        }
    }
    std::fs::copy(from, to).map(|_| ())
}

/// `names` (looked up on PATH) with every shared library they load and the loader itself, as
/// this machine's `ldd` lists them: the guest's root is this machine's, so the same files. Empty
/// when a tool or `ldd` is missing; the guest then starts the tools from its root.
pub fn tool_closure(names: &[&str]) -> Vec<PathBuf> {
    let Some(progs) = names.iter().map(|n| which(n)).collect::<Option<Vec<PathBuf>>>() else {
        return Vec::new();
    };
    let Ok(out) = std::process::Command::new("ldd").args(&progs).output() else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    let mut files = progs;
    for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if word.starts_with('/') && !word.ends_with(':') && !files.iter().any(|f| f.as_os_str() == word) {
            files.push(PathBuf::from(word));
        }
    }
    files
}

impl Default for VmOptions {
    fn default() -> Self {
        let paths = crate::paths::get();
        let timeout = paths.vm_timeout_secs.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
        VmOptions {
            cpus: paths.vm_cpus.unwrap_or(2),
            memory: "2G".to_string(),
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            timeout,
            progress: false,
            tools: Vec::new(),
            exe_in_tmpfs: false,
        }
    }
}

/// Finds virtme-ng's `vng`: `$HOSTDP_VNG`, then the checkout's `ci/.cache/venv/bin/vng`
/// (ci/setup's venv), then `<cache>/venv/bin/vng`, then `vng` on PATH.
pub fn find_vng() -> Result<PathBuf, VmError> {
    let paths = crate::paths::get();
    let venv = paths.cache.join("venv").display().to_string();
    let mut searched = Vec::new();
    if let Some(p) = &paths.vng {
        if is_executable(p) {
            return Ok(p.clone());
        }
        // An explicit choice that is wrong is an error, not a reason to pick another vng.
        return Err(VmError::VngMissing { searched: format!("HOSTDP_VNG={}", p.display()), venv });
    }
    for p in paths.vng_candidates() {
        if is_executable(&p) {
            return Ok(p);
        }
        searched.push(p.display().to_string());
    }
    if let Some(p) = which("vng") {
        return Ok(p);
    }
    searched.push("vng on PATH".to_string());
    Err(VmError::VngMissing { searched: searched.join(", "), venv })
}

/// Boots `kernel` and runs `command` (an argv, not a shell line: pass `sh -c '...'` for one)
/// in `cwd` as root, after loading [`DEFAULT_MODULES`] and mounting bpffs. The host root is
/// read-only in the guest except for `rw_dirs`. A non-zero status of the command is an `Ok`
/// with that status; `Err` means the command could not run.
pub fn run_in_vm(kernel: &KernelRef, command: &[String], rw_dirs: &[PathBuf], cwd: &Path) -> Result<VmOutput, VmError> {
    run_in_vm_with(kernel, command, rw_dirs, cwd, &VmOptions::default())
}

/// How often a VM call is tried when the guest kernel panics. Under TCG with two vCPUs, Debian's
/// 6.12 kernel panics now and then ("Oops: int3" where live code patching, a static key being
/// switched, raced with the other vCPU): about one boot in ten while booting, and once in a
/// 60-scenario batch mid-run. The guest is thrown away and the host keeps nothing of a call
/// that wrote no status (the compiled templates are the same whoever asked), so running the
/// whole call again is safe; a panic our command causes every time still fails, with the
/// console of the last attempt.
const BOOT_ATTEMPTS: u32 = 3;

/// [`run_in_vm`] with explicit settings.
pub fn run_in_vm_with(
    kernel: &KernelRef,
    command: &[String],
    rw_dirs: &[PathBuf],
    cwd: &Path,
    opts: &VmOptions,
) -> Result<VmOutput, VmError> {
    let mut attempt = 1;
    loop {
        let r = boot_once(kernel, command, rw_dirs, cwd, opts);
        let panicked = matches!(&r, Err(VmError::Boot { console_tail, .. }) if guest_panicked(console_tail));
        if !panicked || attempt == BOOT_ATTEMPTS {
            return r;
        }
        attempt += 1;
        if opts.progress {
            errln!(
                "hostdp: {} VM: the guest kernel panicked; running the whole call again in a new boot \
                 (attempt {attempt} of {BOOT_ATTEMPTS})",
                kernel.name
            );
        }
    }
}

/// Whether a VM call that gave no status ended in a guest kernel panic (its console's last
/// lines say so).
fn guest_panicked(console: &str) -> bool {
    console.contains("Kernel panic - not syncing")
}

/// One boot of [`run_in_vm_with`].
fn boot_once(
    kernel: &KernelRef,
    command: &[String],
    rw_dirs: &[PathBuf],
    cwd: &Path,
    opts: &VmOptions,
) -> Result<VmOutput, VmError> {
    let started = Instant::now();
    if command.is_empty() {
        return Err(VmError::InvalidCommand("empty command".into()));
    }
    if let Some(a) = command.iter().find(|a| a.contains('\0')) {
        return Err(VmError::InvalidCommand(format!("argument {a:?} contains a NUL byte")));
    }
    for (k, _) in &opts.env {
        if !is_env_name(k) {
            return Err(VmError::InvalidCommand(format!("invalid environment variable name {k:?}")));
        }
    }
    if !kernel.boot.is_file() {
        return Err(VmError::KernelImage {
            path: kernel.boot.clone(),
            message: "does not exist (run ci/kernels?)".into(),
        });
    }
    which("qemu-system-x86_64").ok_or(VmError::QemuMissing)?;
    let vng = find_vng()?;

    let cwd = cwd.canonicalize().map_err(|e| VmError::Prepare(format!("working directory {}: {e}", cwd.display())))?;
    let mut rw = Vec::new();
    for d in rw_dirs {
        let c = d.canonicalize().map_err(|e| VmError::Prepare(format!("rw dir {}: {e}", d.display())))?;
        if !c.is_dir() {
            return Err(VmError::Prepare(format!("rw dir {} is not a directory", c.display())));
        }
        check_vng_path(&c)?;
        rw.push(c);
    }

    let run_dir = tempfile::Builder::new()
        .prefix(&scratch_prefix())
        .tempdir()
        .map_err(|e| VmError::Prepare(format!("create a run folder in {}: {e}", std::env::temp_dir().display())))?;
    let run = run_dir
        .path()
        .canonicalize()
        .map_err(|e| VmError::Prepare(format!("run folder {}: {e}", run_dir.path().display())))?;
    check_vng_path(&run)?;
    let _scratch = Scratch::track(&run);
    let script_path = run.join("guest.sh");
    std::fs::write(&script_path, guest_script(&run, &cwd, command, opts))
        .map_err(|e| VmError::Prepare(format!("write {}: {e}", script_path.display())))?;

    let mut cmd = Command::new(&vng);
    cmd.arg("--verbose")
        .arg("--run")
        .arg(&kernel.boot)
        // --force-9p: qemu 7.2's C virtiofsd is found but fails, after 3 s of retries.
        .args(["--disable-kvm", "--force-9p", "--user", "root"])
        .arg("--cpus")
        .arg(opts.cpus.max(1).to_string())
        .arg("--memory")
        .arg(&opts.memory)
        .arg("--append")
        .arg(format!("module_blacklist={GUEST_MODULE_BLACKLIST} {GUEST_NORANDMAPS} {GUEST_CRYPTO_NOTESTS}"))
        .arg("--cwd")
        .arg(&cwd)
        .arg(format!("--rwdir={}", run.display()));
    for d in &rw {
        cmd.arg(format!("--rwdir={}", d.display()));
    }
    // The command line travels on the kernel command line (2 KiB at most): keep it short.
    cmd.arg("--exec").arg(format!("sh {}", shell_quote(&script_path.to_string_lossy())));
    // vng runs virtme-run by name: its own folder must be on PATH.
    cmd.env("PATH", path_with(vng.parent()));
    // vng's own temporary files (the `virtme_ret*` status channel) go into the run folder, and
    // with it, even when the call is killed (a timeout, a signal) before vng cleans up.
    cmd.env("TMPDIR", &run);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group, so a timeout takes qemu down with it.
    cmd.process_group(0);

    let child = cmd.spawn().map_err(|e| VmError::Spawn { vng: vng.clone(), message: e.to_string() })?;
    let mut guard = KillOnDrop::new(child);
    let child = guard.0.as_mut().expect("child present");
    let out_reader = spawn_reader(child.stdout.take());
    let err_reader = spawn_reader(child.stderr.take());

    let mut progress = opts.progress.then(|| Progress::new(&kernel.name, &run));
    let exit = loop {
        if let Some(p) = &mut progress {
            p.tick(started.elapsed());
        }
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if started.elapsed() >= opts.timeout => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                return Err(VmError::Spawn { vng: vng.clone(), message: format!("wait: {e}") });
            }
        }
    };
    if exit.is_none() {
        guard.kill();
    } else {
        guard.0 = None;
    }
    if let Some(p) = &mut progress {
        p.tick(started.elapsed());
        p.finish();
    }
    let console = {
        let mut s = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
        let out = out_reader.join().unwrap_or_default();
        if !out.is_empty() {
            s.push_str(&String::from_utf8_lossy(&out));
        }
        s
    };
    let boot_and_run = started.elapsed();
    let Some(exit) = exit else {
        return Err(VmError::Timeout {
            kernel: kernel.name.clone(),
            after: opts.timeout,
            console_tail: console_tail(&console),
        });
    };

    let status = std::fs::read_to_string(run.join("status")).ok().and_then(|s| s.trim().parse::<i32>().ok());
    let Some(status) = status else {
        let how = match exit.code() {
            Some(c) => format!("vng exited with {c} and the guest wrote no exit status"),
            None => format!("vng was killed ({exit}) before the guest wrote an exit status"),
        };
        return Err(VmError::Boot { kernel: kernel.name.clone(), how, console_tail: console_tail(&console) });
    };
    let read =
        |f: &str| std::fs::read(run.join(f)).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let command_started = std::fs::read_to_string(run.join("started")).ok().and_then(|s| parse_uptime(&s));
    Ok(VmOutput { status, stdout: read("stdout"), stderr: read("stderr"), boot_and_run, command_started, console })
}

/// The progress lines of one VM call (see [`VmOptions::progress`]).
struct Progress {
    kernel: String,
    run: PathBuf,
    tty: bool,
    /// Whether the command has started (the guest wrote `started`).
    booted: bool,
    /// How far the command's standard error has been relayed.
    relayed: usize,
    /// The last boot line (seconds since the start), or spinner frame.
    last: u64,
    /// A spinner line is on the terminal and must be cleared before the next line.
    spinning: bool,
}

impl Progress {
    fn new(kernel: &str, run: &Path) -> Progress {
        use std::io::IsTerminal;
        Progress {
            kernel: kernel.to_string(),
            run: run.to_path_buf(),
            tty: std::io::stderr().is_terminal(),
            booted: false,
            relayed: 0,
            last: 0,
            spinning: false,
        }
    }

    fn tick(&mut self, elapsed: Duration) {
        if !self.booted && self.run.join("started").exists() {
            self.booted = true;
            self.line(&format!("hostdp: {} VM booted in {} s", self.kernel, elapsed.as_secs()));
        }
        if !self.booted {
            if self.tty {
                const FRAMES: &[char] = &['|', '/', '-', '\\'];
                let frame = (elapsed.as_millis() / 250) as u64;
                if frame != self.last {
                    self.last = frame;
                    self.spinning = true;
                    err!(
                        "\r{} hostdp: {} VM booting ({} s)",
                        FRAMES[frame as usize % FRAMES.len()],
                        self.kernel,
                        elapsed.as_secs()
                    );
                }
            } else if elapsed.as_secs() / 10 > self.last {
                self.last = elapsed.as_secs() / 10;
                self.line(&format!("hostdp: {} VM booting ({} s)", self.kernel, elapsed.as_secs()));
            }
            return;
        }
        let Ok(err) = std::fs::read(self.run.join("stderr")) else { return };
        let Some(end) = err.iter().rposition(|&b| b == b'\n').map(|i| i + 1) else { return };
        if end <= self.relayed {
            return;
        }
        let text = String::from_utf8_lossy(&err[self.relayed..end]).into_owned();
        self.relayed = end;
        for l in text.lines().filter_map(|l| l.strip_prefix("hostdp: ")) {
            self.line(&format!("hostdp: [{}] {l}", self.kernel));
        }
    }

    /// A whole line, after clearing the spinner.
    fn line(&mut self, l: &str) {
        if std::mem::take(&mut self.spinning) {
            err!("\r\x1b[2K");
        }
        errln!("{l}");
    }

    fn finish(&mut self) {
        if std::mem::take(&mut self.spinning) {
            err!("\r\x1b[2K");
        }
    }
}

/// The script the guest runs: prepare, run the command with its streams in files, record the
/// status last (its presence says the command ran to the end).
fn guest_script(run: &Path, cwd: &Path, command: &[String], opts: &VmOptions) -> String {
    let r = shell_quote(&run.to_string_lossy());
    let mut s = String::new();
    let _ = writeln!(s, "# written by hostdp::sys::vm for one VM call");
    let _ = writeln!(s, "R={r}");
    let _ = writeln!(s, "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let _ = writeln!(s, "export HOME=/root");
    for (k, v) in &opts.env {
        let _ = writeln!(s, "export {k}={}", shell_quote(v));
    }
    if !opts.modules.is_empty() {
        let mods: Vec<String> = opts.modules.iter().map(|m| shell_quote(m)).collect();
        let _ = writeln!(s, "modprobe -a {} >\"$R/modprobe.log\" 2>&1 || true", mods.join(" "));
    }
    // virtme-ng mounts debugfs and tracefs but not bpffs, where loaders pin.
    for (fs, dir) in [("bpf", "/sys/fs/bpf"), ("debugfs", "/sys/kernel/debug"), ("tracefs", "/sys/kernel/tracing")] {
        let _ =
            writeln!(s, "grep -qs ' {dir} ' /proc/mounts || mount -t {fs} {fs} {dir} 2>>\"$R/modprobe.log\" || true");
    }
    let _ = writeln!(s, "ulimit -l unlimited 2>/dev/null || true");
    // Every bpffs mount (one per node) asks the kernel for the bpf_preload module, which
    // Debian's kernels do not build: each mount waited for a modprobe that searched the module
    // indexes over 9p. The kernel's module helper answers that one at once and hands every
    // other request to the modprobe it named before.
    let _ = writeln!(
        s,
        "M=$(cat /proc/sys/kernel/modprobe) && mkdir -p {GUEST_HELPERS} && cat >{GUEST_HELPERS}/modprobe <<EOF"
    );
    let _ = writeln!(s, "#!/bin/sh");
    let _ = writeln!(s, "case \" \\$* \" in *\" bpf_preload \"*) exit 1;; esac");
    let _ = writeln!(s, "exec $M \"\\$@\"");
    let _ = writeln!(s, "EOF");
    let _ = writeln!(
        s,
        "chmod +x {GUEST_HELPERS}/modprobe && echo {GUEST_HELPERS}/modprobe >/proc/sys/kernel/modprobe 2>>\"$R/modprobe.log\""
    );
    if !opts.tools.is_empty() {
        let files: Vec<String> = opts.tools.iter().map(|p| shell_quote(&p.to_string_lossy())).collect();
        let _ = writeln!(
            s,
            "mkdir -p {GUEST_TOOLS} && cp -L {} {GUEST_TOOLS}/ 2>>\"$R/modprobe.log\" || rm -rf {GUEST_TOOLS}",
            files.join(" ")
        );
    }
    let _ = writeln!(
        s,
        "cd {} || {{ echo \"hostdp vm: cannot cd to {}\" >\"$R/stderr\"; echo 126 >\"$R/status\"; exit 126; }}",
        shell_quote(&cwd.to_string_lossy()),
        cwd.display().to_string().replace(['"', '$', '`', '\\'], "_"),
    );
    let _ = writeln!(s, "cat /proc/uptime >\"$R/started\" 2>/dev/null");
    let mut argv: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    if opts.exe_in_tmpfs && !argv.is_empty() {
        // After the `started` stamp: the copy is the command's work, not the boot's. Started
        // from the shared folder when the copy fails.
        let _ = writeln!(
            s,
            "X={} && mkdir -p {GUEST_EXE} && cp \"$X\" {GUEST_EXE}/cmd 2>>\"$R/modprobe.log\" && X={GUEST_EXE}/cmd",
            argv[0]
        );
        argv[0] = "\"$X\"".to_string();
    }
    let _ = writeln!(s, "{} </dev/null >\"$R/stdout\" 2>\"$R/stderr\"", argv.join(" "));
    let _ = writeln!(s, "echo $? >\"$R/status.tmp\" && mv \"$R/status.tmp\" \"$R/status\"");
    let _ = writeln!(s, "sync");
    s
}

/// Quotes one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The kernel release from a bzImage's setup header: the `kernel_version` field (0x20e) points,
/// 0x200 bytes on, to "6.1.0-56-amd64 (debian-kernel@...) #1 SMP ...".
fn bzimage_release(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*head.get(0x20e)?, *head.get(0x20f)?]) as usize;
    if ptr == 0 {
        return None;
    }
    let start = ptr + 0x200;
    let rest = head.get(start..)?;
    let end = rest.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&rest[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_string())
}

fn release_from_file_name(image: &Path) -> Option<String> {
    let name = image.file_name()?.to_str()?;
    name.strip_prefix("vmlinuz-")
        .or_else(|| name.strip_prefix("bzImage-"))
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// `lib/modules/<release>` in the nearest folder above the image that has one (as virtme-ng
/// looks for it).
fn modules_dir_for(image: &Path, release: &str) -> Option<PathBuf> {
    image.ancestors().skip(1).map(|a| a.join("lib/modules").join(release)).find(|p| p.is_dir())
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn looks_like_path(s: &str) -> bool {
    s.contains('/') || s.starts_with('.') || Path::new(s).is_file()
}

fn is_valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
}

fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// vng splits `--rwdir` on `=` (guest=host) and qemu options on `,`.
fn check_vng_path(p: &Path) -> Result<(), VmError> {
    let s = p.to_string_lossy();
    if s.contains([',', '=', ' ', '\n']) {
        return Err(VmError::Prepare(format!(
            "{} cannot be shared with the guest: no ',', '=' or spaces in shared paths",
            p.display()
        )));
    }
    Ok(())
}

fn parse_uptime(s: &str) -> Option<Duration> {
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The last lines of the console that say something (qemu/vng errors, the kernel's last words).
fn console_tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(no console output)".to_string();
    }
    let from = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    lines[from..].join("\n")
}

/// Folders that hold named kernels: `$HOSTDP_KERNEL_DIR`, the checkout's `ci/.cache/kernels`,
/// `<cache>/kernels` (see [`crate::paths`]).
pub fn kernel_dirs() -> Vec<PathBuf> {
    crate::paths::get().kernel_dirs()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = crate::paths::get().exe_path.as_ref()?;
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn path_with(dir: Option<&Path>) -> OsString {
    let mut parts: Vec<PathBuf> = dir.map(|d| vec![d.to_path_buf()]).unwrap_or_default();
    if let Some(p) = &crate::paths::get().exe_path {
        parts.extend(std::env::split_paths(p));
    } else {
        parts.extend(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

fn spawn_reader<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// How the folders of VM calls are named: `hostdp-vm<pid>-…`, so that the leak ledger can tell
/// a live run's from one left behind (`sys::ledger::owner_in`).
pub const SCRATCH_PREFIX: &str = "hostdp-vm";

/// This process's prefix for a VM call's folder.
pub fn scratch_prefix() -> String {
    format!("{SCRATCH_PREFIX}{}-", std::process::id())
}

/// The process groups of this process's running VM calls (vng and its qemu, each in a group of
/// its own, out of reach of a terminal's Ctrl-C), for [`kill_running`].
static RUNNING: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Folders of running VM calls (the guest's script and streams, a batch's scratch), for
/// [`kill_running`]; see [`Scratch`].
static SCRATCH: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Kills every running VM call's process group, then removes their folders; how many calls
/// there were. For a signal's cleanup, which ends the process without running [`KillOnDrop`]
/// or any folder's destructor: the guests would run on, orphaned, and their folders stay.
pub fn kill_running() -> usize {
    let groups = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    for g in groups.iter() {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*g), nix::sys::signal::Signal::SIGKILL);
    }
    for d in SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = std::fs::remove_dir_all(d);
    }
    groups.len()
}

/// A VM call's folder, removed by [`kill_running`] on a signal while this lives (its
/// `TempDir` removes it otherwise).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn track(dir: &Path) -> Scratch {
        SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).push(dir.to_path_buf());
        Scratch(dir.to_path_buf())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).retain(|d| *d != self.0);
    }
}

/// Kills vng's whole process group (vng, qemu) if the call is abandoned: a timeout, a panic.
/// Registered in [`RUNNING`] while it lives.
struct KillOnDrop(Option<Child>, i32);

impl KillOnDrop {
    fn new(child: Child) -> KillOnDrop {
        let pgid = child.id() as i32;
        RUNNING.lock().unwrap_or_else(|p| p.into_inner()).push(pgid);
        KillOnDrop(Some(child), pgid)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let pgid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
        RUNNING.lock().unwrap_or_else(|p| p.into_inner()).retain(|g| *g != self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_for_a_guest_is_copied_stripped_and_still_runs() {
        let me = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("prog");
        copy_program_for_guest(&me, &copy).unwrap();
        let (before, after) = (std::fs::metadata(&me).unwrap().len(), std::fs::metadata(&copy).unwrap().len());
        if which("strip").is_some() {
            assert!(after < before, "stripped copy of {} bytes from {before}", after);
        } else {
            assert_eq!(after, before);
        }
        // The test binary lists its tests: the copy is a whole program.
        let out = Command::new(&copy).arg("--list").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("a_program_for_a_guest_is_copied_stripped"));
    }

    #[test]
    fn a_guest_kernel_panic_runs_the_call_again() {
        // The console of a debian-6.12 boot under TCG that panicked in one of about ten boots.
        let console = "[    3.921948] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI\n\
                       [    3.922130] RIP: 0010:sched_clock_cpu+0x9/0x190\n\
                       [    3.922632] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert!(guest_panicked(console));
        assert!(!guest_panicked("qemu-system-x86_64: could not load kernel"));
    }

    #[test]
    fn quotes_shell_words() {
        assert_eq!(shell_quote("ip"), "ip");
        assert_eq!(shell_quote("/a/b-c.d"), "/a/b-c.d");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }

    #[test]
    fn reads_release_from_bzimage_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let v = b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        img[0x500..0x500 + v.len()].copy_from_slice(v);
        assert_eq!(bzimage_release(&img).as_deref(), Some("6.1.0-56-amd64"));
        img[0x202] = b'X';
        assert_eq!(bzimage_release(&img), None);
        assert_eq!(bzimage_release(&[0u8; 16]), None);
    }

    #[test]
    fn release_from_names() {
        assert_eq!(
            release_from_file_name(Path::new("/k/boot/vmlinuz-6.12.117+deb12-amd64")).as_deref(),
            Some("6.12.117+deb12-amd64")
        );
        assert_eq!(release_from_file_name(Path::new("/k/bzImage")), None);
    }

    #[test]
    fn unknown_and_missing_kernels() {
        let empty = tempfile::tempdir().unwrap();
        let dirs = vec![empty.path().to_path_buf()];
        let e = KernelRef::resolve_in("debian-6.1", &dirs).unwrap_err();
        assert!(matches!(e, VmError::KernelNotFetched { .. }), "{e}");
        assert!(e.to_string().contains("run ci/kernels debian-6.1"), "{e}");
        let e = KernelRef::resolve_in("debian-9.9", &dirs).unwrap_err();
        assert!(matches!(e, VmError::UnknownKernel(_)), "{e}");
        let e = KernelRef::resolve_in("bad name;", &dirs).unwrap_err();
        assert!(matches!(e, VmError::UnknownKernel(_)), "{e}");
        let e = KernelRef::resolve_in("/no/such/vmlinuz", &dirs).unwrap_err();
        assert!(matches!(e, VmError::KernelImage { .. }), "{e}");
    }

    #[test]
    fn resolves_a_fetched_layout() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("debian-x");
        std::fs::create_dir_all(k.join("boot")).unwrap();
        std::fs::create_dir_all(k.join("lib/modules/9.9.9-test")).unwrap();
        std::fs::write(k.join("boot/vmlinuz-9.9.9-test"), b"not really a kernel").unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-9.9.9-test", k.join("vmlinuz")).unwrap();
        let r = KernelRef::resolve_in("debian-x", &[d.path().to_path_buf()]).unwrap();
        assert_eq!(r.release, "9.9.9-test");
        assert_eq!(r.image, k.join("boot/vmlinuz-9.9.9-test").canonicalize().unwrap());
        assert_eq!(r.modules, Some(k.join("lib/modules/9.9.9-test").canonicalize().unwrap()));
        assert_eq!(r.name, "debian-x");
        assert_eq!(r.boot, r.image, "no vmlinux: the bzImage boots");
        // ci/vmlinux's decompressed kernel is booted instead, once it is there and an ELF file.
        std::fs::write(k.join("boot/vmlinux-9.9.9-test"), b"not an ELF").unwrap();
        assert_eq!(KernelRef::resolve_in("debian-x", &[d.path().to_path_buf()]).unwrap().boot, r.image);
        std::fs::write(k.join("boot/vmlinux-9.9.9-test"), b"\x7fELF and the rest").unwrap();
        let r = KernelRef::resolve_in("debian-x", &[d.path().to_path_buf()]).unwrap();
        assert_eq!(r.boot, k.join("boot/vmlinux-9.9.9-test").canonicalize().unwrap());
        assert_eq!(r.image, k.join("boot/vmlinuz-9.9.9-test").canonicalize().unwrap());
    }

    #[test]
    fn script_quotes_the_command_and_records_status_last() {
        let opts = VmOptions { env: vec![("A".into(), "x y".into())], ..VmOptions::default() };
        let cmd = vec!["sh".to_string(), "-c".to_string(), "echo 'hi'; exit 3".to_string()];
        let s = guest_script(Path::new("/tmp/r"), Path::new("/w"), &cmd, &opts);
        assert!(s.contains("sh -c 'echo '\\''hi'\\''; exit 3' </dev/null >\"$R/stdout\""), "{s}");
        assert!(s.contains("export A='x y'"), "{s}");
        assert!(s.contains("modprobe -a bonding 8021q wireguard dummy sch_ingress cls_bpf"), "{s}");
        assert!(s.contains("mount -t bpf bpf /sys/fs/bpf"), "{s}");
        assert!(s.contains("/proc/sys/kernel/modprobe"), "{s}");
        let status = s.find("mv \"$R/status.tmp\"").unwrap();
        assert!(status > s.find("$R/stdout").unwrap());
    }

    #[test]
    fn tools_are_staged_with_their_loader_before_the_command() {
        let tools = tool_closure(&["tc"]);
        if tools.is_empty() {
            errln!("skipped: tc or ldd is not on PATH");
            return;
        }
        assert!(tools[0].ends_with("tc"), "{tools:?}");
        assert!(tools.iter().any(|p| p.to_string_lossy().contains("ld-linux")), "no loader in {tools:?}");
        assert!(tools.iter().any(|p| p.to_string_lossy().contains("libc.so")), "no libc in {tools:?}");
        let opts = VmOptions { tools: tools.clone(), ..VmOptions::default() };
        let s = guest_script(Path::new("/tmp/r"), Path::new("/w"), &["true".to_string()], &opts);
        let copy = s.find(&format!("cp -L {}", tools[0].display())).unwrap_or_else(|| panic!("{s}"));
        assert!(copy < s.find("$R/stdout").unwrap(), "{s}");
        assert!(tool_closure(&["no-such-tool-anywhere"]).is_empty());
    }

    #[test]
    fn rejects_bad_input_before_booting() {
        let k = KernelRef {
            name: "x".into(),
            image: PathBuf::from("/nonexistent/vmlinuz"),
            boot: PathBuf::from("/nonexistent/vmlinuz"),
            release: "0".into(),
            modules: None,
        };
        let e = run_in_vm(&k, &[], &[], Path::new("/")).unwrap_err();
        assert!(matches!(e, VmError::InvalidCommand(_)), "{e}");
        let e = run_in_vm(&k, &["true".into()], &[], Path::new("/")).unwrap_err();
        assert!(matches!(e, VmError::KernelImage { .. }), "{e}");
    }

    #[test]
    fn console_tail_keeps_the_last_lines() {
        let c: String = (0..100).map(|i| format!("line {i}\n\n")).collect();
        let t = console_tail(&c);
        assert_eq!(t.lines().count(), CONSOLE_TAIL_LINES);
        assert!(t.ends_with("line 99"));
        assert_eq!(console_tail(""), "(no console output)");
    }
}
