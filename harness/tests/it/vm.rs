//! The VM runner against real Debian kernels under virtme-ng (qemu, TCG).
//!
//! The booting tests need `ci/setup` (vng in ci/.cache/venv, the kernels in ci/.cache/kernels);
//! without them they say why and pass, unless `HOSTDP_REQUIRE_VM=1` (set by ci/test), where a
//! missing piece fails them. `timings_on_every_kernel` is ignored by default: it boots every
//! kernel and prints the timings recorded in ci/TIMINGS.md
//! (`cargo test --test vm -- --ignored --nocapture`).

use std::path::{Path, PathBuf};

use std::time::Duration;

use hostdp::sys::vm::{find_vng, run_in_vm, run_in_vm_with, KernelRef, VmError, VmOptions};

/// The kernel and vng, or `None` (after saying why) when this machine has not run ci/setup.
fn vm_available(kernel: &str) -> Option<KernelRef> {
    let required = std::env::var("HOSTDP_REQUIRE_VM").is_ok_and(|v| v == "1");
    let missing = |why: String| {
        if required {
            panic!("HOSTDP_REQUIRE_VM=1 but {why}");
        }
        eprintln!("skipping VM test: {why}");
        None
    };
    let k = match KernelRef::resolve(kernel) {
        Ok(k) => k,
        Err(e) => return missing(e.to_string()),
    };
    if let Err(e) = find_vng() {
        return missing(e.to_string());
    }
    Some(k)
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// A namespace of the guest with a bond of two veths, a VLAN on the bond and clsact on both;
/// its link list is printed as JSON.
const BOND_VLAN: &str = r#"
set -e
ip netns add hostdp-vm
ip -n hostdp-vm link add bond0 type bond mode 802.3ad
ip -n hostdp-vm link add eth0 type veth peer name eth0-p
ip -n hostdp-vm link add eth1 type veth peer name eth1-p
ip -n hostdp-vm link set eth0 master bond0
ip -n hostdp-vm link set eth1 master bond0
ip -n hostdp-vm link add link bond0 name bond0.212 type vlan id 212
ip -n hostdp-vm link set bond0 up
ip -n hostdp-vm link set bond0.212 up
tc -n hostdp-vm qdisc add dev bond0.212 clsact
tc -n hostdp-vm qdisc add dev bond0 clsact
tc -n hostdp-vm qdisc show >&2
ip -j -n hostdp-vm -d link show
"#;

fn link_names(json: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{json}"));
    v.as_array()
        .expect("ip -j gives an array")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn missing_kernel_name_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let e = KernelRef::resolve_in("debian-6.1", &[empty.path().to_path_buf()]).unwrap_err();
    assert!(matches!(e, VmError::KernelNotFetched { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with("kernel debian-6.1 is not in "), "{msg}");
    // What to do about it: fetch it in a checkout, or put it in the cache, or give a path.
    assert!(msg.contains("in a checkout run ci/kernels debian-6.1"), "{msg}");
    assert!(msg.ends_with("or give --kernel PATH to a vmlinuz"), "{msg}");

    let e = KernelRef::resolve("no-such-kernel").unwrap_err();
    assert!(matches!(e, VmError::UnknownKernel(_)), "{e:?}");
    assert!(e.to_string().contains("debian-6.1"), "{e}");
}

#[test]
fn boots_debian_6_1_loads_modules_and_returns_the_status() {
    let Some(kernel) = vm_available("debian-6.1") else {
        return;
    };
    assert!(kernel.release.starts_with("6.1."), "{kernel:?}");
    let results = tempfile::tempdir().unwrap();
    let marker = results.path().join("written-in-guest");
    let not_shared = tempfile::tempdir().unwrap();
    let leak = not_shared.path().join("must-not-reach-the-host");
    // The links prove bonding and 8021q loaded; the last command fails, and its status must
    // come back; the marker proves the rw dir is writable from the guest, the leak that the
    // rest of the host stays untouched (the guest writes into a tmpfs overlay there).
    // The program is started from the guest's tmpfs copy (`exe_in_tmpfs`), as a batch's hostdp
    // is: the marker's second line is where the shell ran from.
    let script = format!(
        "{BOND_VLAN}\nuname -r >{marker}\nreadlink /proc/$$/exe >>{marker}\necho x >{leak}\nset +e\nip link add x0 type no-such-kind\n",
        marker = marker.display(),
        leak = leak.display()
    );
    // One vCPU: ci/test runs this beside the scenario tests' VM batches, on two cores.
    let opts = VmOptions { cpus: 1, exe_in_tmpfs: true, ..VmOptions::default() };
    let mut cmd = sh(&script);
    cmd[0] = "/bin/sh".into();
    let out = run_in_vm_with(&kernel, &cmd, &[results.path().to_path_buf()], Path::new("/"), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "debian-6.1: whole call {:.1} s, command started {:.1} s after power-on",
        out.boot_and_run.as_secs_f64(),
        out.command_started.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    assert_ne!(out.status, 0, "a failing command gives a non-zero status\n{}", out.stderr);
    let links = link_names(&out.stdout);
    for l in ["bond0", "eth0", "eth1", "bond0.212"] {
        assert!(links.iter().any(|n| n == l), "{l} missing from {links:?}\nstderr:\n{}", out.stderr);
    }
    assert!(out.stderr.contains("clsact"), "{}", out.stderr);
    assert!(out.stderr.contains("Unknown device type"), "the failing command's message: {}", out.stderr);
    let marker = std::fs::read_to_string(&marker).unwrap();
    let lines: Vec<&str> = marker.lines().collect();
    assert_eq!(lines.first().copied(), Some(kernel.release.as_str()), "{marker}");
    assert_eq!(lines.get(1).copied(), Some("/run/hostdp-exe/cmd"), "{marker}");
    assert!(!leak.exists(), "a write outside the rw dirs reached the host");
}

#[test]
fn a_kernel_that_does_not_boot_is_a_boot_error_with_the_console() {
    let Some(_) = vm_available("debian-6.1") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("vmlinuz-0.0.0-garbage");
    std::fs::write(&image, vec![0x5a; 4096]).unwrap();
    let kernel = KernelRef::resolve(image.to_str().unwrap()).unwrap();
    let e = run_in_vm(&kernel, &["true".into()], &[], Path::new("/")).unwrap_err();
    assert!(matches!(e, VmError::Boot { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("Last console lines"), "{msg}");
    eprintln!("{msg}");
}

#[test]
fn a_run_over_its_time_limit_is_killed() {
    let Some(kernel) = vm_available("debian-6.1") else {
        return;
    };
    let opts = VmOptions { timeout: Duration::from_secs(3), ..VmOptions::default() };
    let t = std::time::Instant::now();
    let e = run_in_vm_with(&kernel, &["sleep".into(), "600".into()], &[], Path::new("/"), &opts).unwrap_err();
    assert!(matches!(e, VmError::Timeout { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(30), "killed promptly: {:?}", t.elapsed());
}

/// SIGTERM while `hostdp run --kernel` boots its guest: the run exits 130 and the guest does not
/// run on. vng and qemu run in a process group of their own (a terminal's Ctrl-C does not reach
/// them), so the signal's cleanup has to stop them itself.
#[test]
fn a_signal_during_a_vm_run_stops_its_guest() {
    let Some(_) = vm_available("debian-6.1") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hostdp"))
        .args(["run", "--kernel", "debian-6.1", "scenarios/seed-kpr-partial-bond-vlan.yaml"])
        .env("HOSTDP_CACHE_DIR", cache.path())
        .env("TMPDIR", tmp.path())
        .env("HOSTDP_QUIET", "1")
        .current_dir(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The cache folder is shared into the guest, so it is on its qemu's command line.
    let marker = cache.path().to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while qemus_with(&marker).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no qemu started within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !qemus_with(&marker).is_empty() {
        assert!(std::time::Instant::now() < deadline, "qemu still runs: {:?}", qemus_with(&marker));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The batch's scratch folder (in the cache) and the call's run folder (in TMPDIR) went too.
    for dir in [cache.path().join("vm"), tmp.path().to_path_buf()] {
        let left: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "left behind in {}: {left:?}", dir.display());
    }
}

/// The processes whose command line names qemu and holds `marker`.
fn qemus_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("qemu-system") && cmd.contains(marker)
        })
        .collect()
}

/// Boots every kernel with the bond/VLAN/clsact command and a bpffs check, and prints timings.
#[test]
#[ignore = "boots every kernel (about 30 s each under TCG); run with --ignored"]
fn timings_on_every_kernel() {
    let kernels: Vec<String> = std::env::var("HOSTDP_VM_KERNELS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_else(|_| vec!["debian-6.1".into(), "debian-6.12".into()]);
    for name in kernels {
        let Some(kernel) = vm_available(&name) else {
            continue;
        };
        let script = format!(
            "{BOND_VLAN}\nbpftool map create /sys/fs/bpf/hostdp_probe type array key 4 value 4 entries 1 name hostdp_probe\n\
             ls /sys/fs/bpf >&2\nls /sys/kernel/btf/vmlinux >&2\n"
        );
        let out = run_in_vm(&kernel, &sh(&script), &[] as &[PathBuf], Path::new("/"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.status, 0, "{name}: {}", out.stderr);
        assert!(out.stderr.contains("hostdp_probe"), "{name}: bpffs pin: {}", out.stderr);
        let links = link_names(&out.stdout);
        assert!(links.iter().any(|n| n == "bond0.212"), "{name}: {links:?}");
        println!(
            "TIMING {name} {}: command started {:.1} s after power-on, whole call {:.1} s",
            kernel.release,
            out.command_started.map_or(f64::NAN, |d| d.as_secs_f64()),
            out.boot_and_run.as_secs_f64()
        );
    }
}
