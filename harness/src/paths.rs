//! Where hostdp finds and keeps things, and every setting the environment gives it: the
//! checkout it runs from (if any), the cache folder, and the `HOSTDP_*` overrides. The
//! environment is read once, here, into [`Paths`]; the rest of the crate asks [`get`] (the
//! binary installs the value it built at start-up) and no other module reads a variable.
//!
//! - **checkout**: a folder with `harness/Cargo.toml` and `ci/kernels`, found above the working
//!   directory, or else the one this binary was built from when the binary still lives in its
//!   build folder (`<checkout>/target/...` or `$CARGO_TARGET_DIR/...`). An installed copy
//!   (`cargo install`, a release binary copied anywhere) run outside a checkout has none, and
//!   needs none: the C sources and the policy schemas are compiled into it.
//! - **cache**: `$HOSTDP_CACHE_DIR`; else, from a checkout, `$CARGO_TARGET_DIR/hostdp-cache` or
//!   `<checkout>/target/hostdp-cache`; else `$XDG_CACHE_HOME/hostdp`, else `~/.cache/hostdp`.
//!   It holds the compiled templates, the capability probe's answer, the VM scratch folders, and
//!   may hold `venv/bin/vng` (virtme-ng) and `kernels/NAME/vmlinuz` for an installed binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The folders of one hostdp process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The checkout the binary runs from, if any (see the module documentation).
    pub checkout: Option<PathBuf>,
    /// Compiled templates, the capability probe's answer, VM scratch folders.
    pub cache: PathBuf,
    /// `HOSTDP_BPF_DIR`: C sources to compile instead of the ones compiled into the binary.
    pub bpf_dir: Option<PathBuf>,
    /// `HOSTDP_KERNEL_DIR`: a folder of named VM kernels, searched first.
    pub kernel_dir: Option<PathBuf>,
    /// `HOSTDP_VNG`: the virtme-ng `vng` to use.
    pub vng: Option<PathBuf>,
    /// `HOSTDP_CLANG`: the clang binary (default `clang` on PATH).
    pub clang: Option<String>,
    /// `HOSTDP_VM_TIMEOUT`: seconds one VM call may take.
    pub vm_timeout_secs: Option<u64>,
    /// `HOSTDP_VM_CPUS`: the guests' vCPUs (default 2).
    pub vm_cpus: Option<u32>,
    /// `HOSTDP_ALLOW_MODPROBE=1`: the capability probe may make the kernel load modules (set
    /// inside the throwaway VMs).
    pub allow_modprobe: bool,
    /// `HOSTDP_CROSSCHECK=1`: every read-back is compared with `tc` and `bpftool`.
    pub crosscheck: bool,
    /// `HOSTDP_TOOL_DIR`: in a VM guest, the tmpfs copy of `tc` and `bpftool` with their
    /// libraries and loader (see `sys::vm::VmOptions::tools`), started from there.
    pub tool_dir: Option<PathBuf>,
    /// `HOSTDP_QUIET` (any value): no progress lines.
    pub quiet: bool,
    /// `HOSTDP_FAULT`: test-only fault injection (`panic-after-step:N`, `sleep-after-each-step:MS`).
    pub fault: Option<String>,
    /// `HOSTDP_TEST_KERNELS`: the VM kernels the scenario tests use, comma-separated.
    pub test_kernels: Option<String>,
    /// `HOSTDP_COMPILE_HOST`: in a VM guest, the shared folder through which the host compiles
    /// the guest's templates (see `sys::compile::HostCompiles`).
    pub compile_host: Option<PathBuf>,
    /// `HOSTDP_TEST_LOCAL_DONE`: a file the scenario tests create once every selected scenario
    /// this kernel hosts has run (only VM batches remain): `ci/test` then starts the tests that
    /// need the machine's namespaces to themselves.
    pub test_local_done: Option<PathBuf>,
    /// `NEXTEST_RUN_ID`: set by cargo-nextest, which runs each test in a process of its own; the
    /// scenario tests' processes of one run share their VM batches through it.
    pub nextest_run_id: Option<String>,
    /// `PATH`, where tools (clang, vng, qemu) are looked up.
    pub exe_path: Option<OsString>,
}

/// The checkout this crate was built from (known at build time; it may not exist any more).
pub fn build_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Whether `p` is the root of a hostdp checkout.
pub fn is_checkout(p: &Path) -> bool {
    p.join("ci/kernels").is_file() && p.join("harness/Cargo.toml").is_file()
}

impl Paths {
    /// Reads the environment, the working directory and the executable's location.
    pub fn from_env() -> Paths {
        let cwd = std::env::current_dir().ok();
        let exe = std::env::current_exe().ok();
        Paths::resolve(|k| std::env::var_os(k), cwd.as_deref(), exe.as_deref())
    }

    /// [`Paths::from_env`] with its inputs given: `var` reads an environment variable.
    pub fn resolve(var: impl Fn(&str) -> Option<OsString>, cwd: Option<&Path>, exe: Option<&Path>) -> Paths {
        let var = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let target = var("CARGO_TARGET_DIR");
        let built = build_checkout();
        let from_cwd = cwd.and_then(|c| c.ancestors().find(|p| is_checkout(p)).map(Path::to_path_buf));
        let exe_in_build = exe
            .is_some_and(|e| e.starts_with(built.join("target")) || target.as_ref().is_some_and(|t| e.starts_with(t)));
        let checkout = from_cwd.or_else(|| (exe_in_build && is_checkout(&built)).then_some(built));
        let cache = if let Some(d) = var("HOSTDP_CACHE_DIR") {
            d
        } else if let Some(c) = &checkout {
            target.unwrap_or_else(|| c.join("target")).join("hostdp-cache")
        } else if let Some(x) = var("XDG_CACHE_HOME") {
            x.join("hostdp")
        } else if let Some(h) = var("HOME") {
            h.join(".cache").join("hostdp")
        } else {
            std::env::temp_dir().join("hostdp-cache")
        };
        let text = |k: &str| var(k).map(|p| p.to_string_lossy().into_owned());
        Paths {
            checkout,
            cache,
            bpf_dir: var("HOSTDP_BPF_DIR"),
            kernel_dir: var("HOSTDP_KERNEL_DIR"),
            vng: var("HOSTDP_VNG"),
            clang: text("HOSTDP_CLANG"),
            vm_timeout_secs: text("HOSTDP_VM_TIMEOUT").and_then(|s| s.trim().parse().ok()).filter(|&s| s > 0),
            vm_cpus: text("HOSTDP_VM_CPUS").and_then(|s| s.trim().parse().ok()).filter(|&n| n > 0),
            allow_modprobe: text("HOSTDP_ALLOW_MODPROBE").is_some_and(|v| v == "1"),
            crosscheck: text("HOSTDP_CROSSCHECK").is_some_and(|v| v == "1"),
            tool_dir: var("HOSTDP_TOOL_DIR"),
            quiet: var("HOSTDP_QUIET").is_some(),
            fault: text("HOSTDP_FAULT"),
            test_kernels: text("HOSTDP_TEST_KERNELS"),
            compile_host: var("HOSTDP_COMPILE_HOST"),
            test_local_done: var("HOSTDP_TEST_LOCAL_DONE"),
            nextest_run_id: text("NEXTEST_RUN_ID"),
            exe_path: var("PATH").map(PathBuf::into_os_string),
        }
    }

    /// Folders that hold named VM kernels (`NAME/vmlinuz`, as `ci/kernels` lays them out):
    /// `$HOSTDP_KERNEL_DIR`, the checkout's `ci/.cache/kernels`, the cache's `kernels`.
    pub fn kernel_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.kernel_dir.iter().cloned().collect();
        v.extend(self.checkout.iter().map(|c| c.join("ci/.cache/kernels")));
        v.push(self.cache.join("kernels"));
        v
    }

    /// Where a `vng` may be, besides `$HOSTDP_VNG` and PATH: the checkout's venv (`ci/setup`'s)
    /// and a venv in the cache.
    pub fn vng_candidates(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.checkout.iter().map(|c| c.join("ci/.cache/venv/bin/vng")).collect();
        v.push(self.cache.join("venv/bin/vng"));
        v
    }
}

static PATHS: OnceLock<Paths> = OnceLock::new();

/// Makes `p` the process's paths; the first call wins (the binary calls it before anything
/// else). Returns false when they were already set.
pub fn install(p: Paths) -> bool {
    PATHS.set(p).is_ok()
}

/// The process's paths: those installed, else read from the environment on first use.
pub fn get() -> &'static Paths {
    PATHS.get_or_init(Paths::from_env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)], cwd: &Path, exe: &Path) -> Paths {
        let m: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        Paths::resolve(|k| m.get(k).cloned(), Some(cwd), Some(exe))
    }

    #[test]
    fn installed_binary_outside_a_checkout_uses_the_user_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("bin/hostdp");
        let p = resolve(&[("HOME", "/home/u")], tmp.path(), &exe);
        assert_eq!(p.checkout, None);
        assert_eq!(p.cache, PathBuf::from("/home/u/.cache/hostdp"));
        let p = resolve(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")], tmp.path(), &exe);
        assert_eq!(p.cache, PathBuf::from("/x/hostdp"));
        let p = resolve(&[("HOME", "/home/u"), ("HOSTDP_CACHE_DIR", "/c")], tmp.path(), &exe);
        assert_eq!(p.cache, PathBuf::from("/c"));
        assert_eq!(p.kernel_dirs(), vec![PathBuf::from("/c/kernels")]);
        assert_eq!(p.vng_candidates(), vec![PathBuf::from("/c/venv/bin/vng")]);
    }

    #[test]
    fn a_checkout_keeps_its_cache_in_target() {
        let built = build_checkout();
        if !is_checkout(&built) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        // The binary in its build folder, run from elsewhere.
        let p = resolve(&[("HOME", "/home/u")], tmp.path(), &built.join("target/debug/hostdp"));
        assert_eq!(p.checkout.as_deref(), Some(built.as_path()));
        assert_eq!(p.cache, built.join("target/hostdp-cache"));
        let p = resolve(&[("CARGO_TARGET_DIR", "/t")], tmp.path(), Path::new("/t/debug/hostdp"));
        assert_eq!(p.cache, PathBuf::from("/t/hostdp-cache"));
        // An installed copy run from inside the checkout.
        let p = resolve(&[("HOME", "/home/u")], &built.join("scenarios"), Path::new("/usr/local/bin/hostdp"));
        assert_eq!(p.checkout.as_deref(), Some(built.as_path()));
        assert_eq!(p.kernel_dirs()[0], built.join("ci/.cache/kernels"));
    }
}
