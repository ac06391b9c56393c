//! `hostdp-bench`: how fast the harness is, measured end to end through `hostdp run` child
//! processes (wall time, peak RSS by wait4, the records' per-phase times). Prints a table and
//! writes the figures as JSON. Driven by `ci/bench`; needs root like `hostdp run`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use serde_json::{json, Value};

use hostdp::model::record::Phases;
use hostdp::model::record::RunRecord;

#[derive(Parser)]
#[command(
    name = "hostdp-bench",
    about = "Times hostdp: one scenario, the flag matrix, a shell equivalent, scaling, RSS, VM"
)]
struct Args {
    /// The hostdp binary (default: `hostdp` next to this one).
    #[arg(long)]
    hostdp: Option<PathBuf>,
    /// Runs per measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also time the VM: boot to first scenario, the whole suite, and per kernel the batch of
    /// scenarios this kernel cannot host with a cold and a warm template cache (minutes).
    #[arg(long)]
    vm: bool,
    /// Link counts of the scaling test.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    sizes: Vec<usize>,
    /// Only these parts (single, matrix, script, rss, scaling, vm, vmbatch); default all but the
    /// VM ones unless --vm.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the JSON goes.
    #[arg(long, default_value = "ci/.cache/bench.json")]
    output: PathBuf,
}

/// One `hostdp run` child: its wall time, peak RSS and record.
struct Child {
    wall_ms: f64,
    maxrss_mb: f64,
    status: i32,
    record: Option<RunRecord>,
}

fn root() -> PathBuf {
    hostdp::runner::project_root()
}

fn run_hostdp(exe: &Path, args: &[&str], paths: &[PathBuf], cache: &Path) -> Child {
    let out = tempfile::NamedTempFile::new().expect("temporary file");
    let mut cmd = Command::new(exe);
    cmd.arg("run").args(["--format", "json", "--allow-skips", "--output"]).arg(out.path()).args(args).args(paths);
    cmd.env("HOSTDP_CACHE_DIR", cache)
        .env("HOSTDP_QUIET", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let (wall_ms, status, rss, stderr) = spawn_measured(&mut cmd);
    let record = std::fs::read_to_string(out.path()).ok().and_then(|t| serde_json::from_str::<RunRecord>(&t).ok());
    if record.is_none() {
        eprintln!("hostdp-bench: `hostdp run` wrote no record (status {status}): {}", tail(&stderr));
    }
    Child { wall_ms, maxrss_mb: rss, status, record }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Spawns, waits with wait4: (wall ms, exit status, peak RSS in MB, stderr).
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn spawn_measured(cmd: &mut Command) -> (f64, i32, f64, String) {
    let t = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let mut status = 0i32;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `ru` are valid out-parameters.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    let code = if r < 0 {
        -1
    } else if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (wall, code, ru.ru_maxrss as f64 / 1024.0, stderr)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_phases(v: &[Phases]) -> Phases {
    let m = |f: fn(&Phases) -> f64| (median(v.iter().map(f).collect()) * 100.0).round() / 100.0;
    Phases {
        namespaces_and_links: m(|p| p.namespaces_and_links),
        config_and_devices: m(|p| p.config_and_devices),
        compile: m(|p| p.compile),
        load_and_attach: m(|p| p.load_and_attach),
        readback: m(|p| p.readback),
        teardown: m(|p| p.teardown),
        clang_invocations: median(v.iter().map(|p| p.clang_invocations as f64).collect()) as u64,
    }
}

fn summary(rec: &Option<RunRecord>) -> Value {
    match rec {
        Some(r) => {
            json!({"passed": r.summary.passed, "failed": r.summary.failed, "errors": r.summary.errors, "skipped": r.summary.skipped})
        }
        None => Value::Null,
    }
}

fn first_phases(c: &Child) -> Option<Phases> {
    c.record.as_ref()?.scenarios.first()?.phases
}

fn scenario_ms(c: &Child) -> Option<f64> {
    Some(c.record.as_ref()?.scenarios.first()?.millis as f64)
}

fn bench_scenario() -> PathBuf {
    root().join("ci/bench-scenarios/bench-node.yaml")
}

/// One scenario end to end, cold cache (fresh folder each run) and warm.
fn single(exe: &Path, runs: usize, table: &mut String) -> Value {
    let file = bench_scenario();
    let warm_cache = tempfile::tempdir().expect("temporary dir");
    let mut out = serde_json::Map::new();
    for mode in ["cold", "warm"] {
        if mode == "warm" {
            run_hostdp(exe, &["-j", "1"], std::slice::from_ref(&file), warm_cache.path());
        }
        let mut children = Vec::new();
        for _ in 0..runs {
            let cold = tempfile::tempdir().expect("temporary dir");
            let cache = if mode == "cold" { cold.path() } else { warm_cache.path() };
            children.push(run_hostdp(exe, &["-j", "1"], std::slice::from_ref(&file), cache));
        }
        let phases: Vec<Phases> = children.iter().filter_map(first_phases).collect();
        let mp = median_phases(&phases);
        let wall = median(children.iter().map(|c| c.wall_ms).collect());
        let sc = median(children.iter().filter_map(scenario_ms).collect());
        let _ = writeln!(
            table,
            "single scenario ({mode} cache): process {wall:.1} ms, scenario {sc:.1} ms, clang runs {}",
            mp.clang_invocations
        );
        for (name, ms) in mp.named() {
            let _ = writeln!(table, "    {name:<22} {ms:>9.2} ms");
        }
        out.insert(
            mode.into(),
            json!({"process_ms": wall, "scenario_ms": sc, "phases": mp, "runs": runs,
                   "status": summary(&children.last().and_then(|c| c.record.clone()))}),
        );
    }
    Value::Object(out)
}

/// The six device-requiring features (wireguard included) × explicit/auto devices.
const FEATURES: [&str; 6] = hostdp::model::config::V1_14_4_DEVICE_FEATURES;

/// The matrix's scenario files, and how many combinations were left out: with `wireguard` false
/// (this kernel cannot create a wireguard link) those that turn enable-wireguard on.
fn matrix_files(dir: &Path, wireguard: bool) -> (Vec<PathBuf>, usize) {
    let mut files = Vec::new();
    let mut left_out = 0;
    for explicit in [true, false] {
        for bits in 0..64u32 {
            if bits & (1 << 3) != 0 && !wireguard {
                left_out += 1;
                continue;
            }
            let mut agent = String::from("  kube-proxy-replacement: partial\n");
            for (i, f) in FEATURES.iter().enumerate() {
                let _ = writeln!(agent, "  {f}: \"{}\"", bits & (1 << i) != 0);
            }
            if bits & (1 << 4) != 0 {
                agent.push_str("  routing-mode: native\n  ipv4-native-routing-cidr: 10.0.0.0/8\n  enable-well-known-identities: \"true\"\n");
            }
            if explicit {
                agent.push_str("  devices: eth0\n");
            }
            let name = format!("matrix-{}-{bits:02}", if explicit { "explicit" } else { "auto" });
            let text = format!(
                "name: {name}\nprofile: v1.14.4\nnode: {{ip: 192.168.10.2}}\ntopology:\n  links:\n    - {{name: eth0, kind: veth, addresses: [192.168.10.2/24]}}\n    - {{name: eth1, kind: veth, addresses: [192.168.20.2/24]}}\n  routes:\n    - {{dst: default, via: 192.168.10.1, dev: eth0}}\nagent:\n{agent}steps:\n  - start: {{}}\n"
            );
            let p = dir.join(format!("{name}.yaml"));
            std::fs::write(&p, text).expect("write matrix scenario");
            files.push(p);
        }
    }
    (files, left_out)
}

fn matrix(exe: &Path, runs: usize, table: &mut String) -> Value {
    let dir = tempfile::tempdir().expect("temporary dir");
    let wireguard = hostdp::sys::caps::probe(&hostdp::runner::cache_dir()).has("wireguard");
    let (files, left_out) = matrix_files(dir.path(), wireguard);
    let cache = tempfile::tempdir().expect("temporary dir");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dirs = [dir.path().to_path_buf()];
    // The first pass fills the cache (every feature set is another build).
    let cold = run_hostdp(exe, &["-j", &cpus.to_string()], &dirs, cache.path());
    let _ = writeln!(
        table,
        "flag matrix, {} of 128 runs ({left_out} with enable-wireguard skipped: no wireguard link here), cold cache -j {cpus}: {:.0} ms ({})",
        files.len(),
        cold.wall_ms,
        summary(&cold.record)
    );
    let mut out = json!({"scenarios": files.len(), "skipped_wireguard": left_out, "cold_parallel_ms": cold.wall_ms, "jobs_parallel": cpus,
        "clang_invocations_cold": cold.record.as_ref().map(|r| r.scenarios.iter().filter_map(|s| s.phases).map(|p| p.clang_invocations).sum::<u64>()),
        "status": summary(&cold.record),
        "not_passed": cold.record.as_ref().map(|r| r.scenarios.iter()
            .filter(|s| s.status != hostdp::model::record::Status::Pass)
            .map(|s| json!({"name": s.name, "status": s.status.as_str(), "reason": s.reason, "step_error": s.steps.first().and_then(|st| st.error.clone())}))
            .collect::<Vec<_>>()),
        "wireguard_note": "combinations with enable-wireguard need a wireguard link; on a kernel without one they are counted as skipped and not run"});
    for (label, jobs) in [("serial", 1usize), ("parallel", cpus)] {
        let v: Vec<Child> =
            (0..runs.min(3)).map(|_| run_hostdp(exe, &["-j", &jobs.to_string()], &dirs, cache.path())).collect();
        let wall = median(v.iter().map(|c| c.wall_ms).collect());
        let _ = writeln!(table, "flag matrix, warm cache, {label} (-j {jobs}): {wall:.0} ms median of {}", v.len());
        out[format!("{label}_ms")] = json!(wall);
        out[format!("{label}_status")] = summary(&v.last().and_then(|c| c.record.clone()));
    }
    out
}

/// The same work as the bench scenario, by hand with ip, tc and bpftool.
fn shell_script(obj: &Path, tag: &str) -> String {
    let node = format!("hostdp-bsh{tag}");
    let wire = format!("hostdp-bshw{tag}");
    // `ip netns exec` mounts a fresh /sys: pins must live on a bpffs elsewhere.
    let pin = format!("/run/hostdp-bsh{tag}");
    let devices = ["eth0", "eth1", "br0", "mv0"];
    let links = ["eth0", "eth1", "eth2", "br0", "mv0", "mv1", "cilium_host", "cilium_net"];
    let mut s = String::from("#!/bin/bash\nset -e\n");
    let _ = writeln!(s, "N={node}; W={wire}; OBJ={}; PIN={pin}", obj.display());
    s.push_str("trap 'set +e; ip netns del $N 2>/dev/null; ip netns del $W 2>/dev/null; umount $PIN 2>/dev/null; rmdir $PIN 2>/dev/null; true' EXIT\n");
    s.push_str("mkdir -p $PIN; mount -t bpf bpf $PIN\n");
    s.push_str("ip netns add $N; ip netns add $W\nip -n $N link set lo up\n");
    for v in ["eth0", "eth1", "eth2"] {
        let _ = writeln!(s, "ip -n $N link add {v} type veth peer name {v}-p netns $W");
    }
    s.push_str("ip -n $N link add br0 type bridge\nip -n $N link set eth2 master br0\n");
    s.push_str("ip -n $N link add mv0 link eth0 type macvlan mode bridge\nip -n $N link add mv1 link eth1 type macvlan mode bridge\n");
    for (l, a) in
        [("eth0", "192.168.10.2/24"), ("eth1", "192.168.20.2/24"), ("br0", "192.168.30.2/24"), ("mv0", "10.50.0.2/24")]
    {
        let _ = writeln!(s, "ip -n $N addr add {a} dev {l}");
    }
    for l in ["eth0", "eth1", "eth2", "br0", "mv0", "mv1"] {
        let _ = writeln!(s, "ip -n $N link set {l} up");
    }
    s.push_str("ip -n $N route add default via 192.168.10.1 dev eth0\n");
    // start, then restart: the host devices, the objects loaded, filters replaced, read back.
    let readback = {
        let mut r = String::new();
        for l in links {
            let _ = writeln!(r, "ip netns exec $N tc filter show dev {l} ingress >/dev/null; ip netns exec $N tc filter show dev {l} egress >/dev/null");
        }
        r.push_str("ip -n $N -d link show >/dev/null\n");
        r
    };
    for step in 0..2 {
        if step == 0 {
            s.push_str("ip -n $N link add cilium_host type veth peer name cilium_net\nip -n $N link set cilium_host up\nip -n $N link set cilium_net up\n");
        }
        let _ = writeln!(s, "rm -rf $PIN/p; bpftool prog loadall $OBJ $PIN/p");
        for d in devices.iter().chain(["cilium_host", "cilium_net"].iter()) {
            let _ = writeln!(s, "ip netns exec $N tc qdisc replace dev {d} clsact");
        }
        for d in devices {
            let _ = writeln!(s, "ip netns exec $N tc filter replace dev {d} ingress prio 1 handle 1 bpf da object-pinned $PIN/p/cil_from_netdev");
            let _ = writeln!(s, "ip netns exec $N tc filter replace dev {d} egress prio 1 handle 1 bpf da object-pinned $PIN/p/cil_to_netdev");
        }
        s.push_str("ip netns exec $N tc filter replace dev cilium_host ingress prio 1 handle 1 bpf da object-pinned $PIN/p/cil_to_host\n");
        s.push_str("ip netns exec $N tc filter replace dev cilium_host egress prio 1 handle 1 bpf da object-pinned $PIN/p/cil_from_host\n");
        s.push_str("ip netns exec $N tc filter replace dev cilium_net ingress prio 1 handle 1 bpf da object-pinned $PIN/p/cil_to_host\n");
        s.push_str(&readback);
    }
    // cleanup: Cilium's filters removed, host devices deleted, read back, teardown.
    for d in devices.iter().chain(["cilium_host", "cilium_net"].iter()) {
        let _ = writeln!(
            s,
            "ip netns exec $N tc filter del dev {d} ingress; ip netns exec $N tc filter del dev {d} egress"
        );
    }
    s.push_str("ip -n $N link del cilium_host\n");
    s.push_str(&readback.replace("dev cilium_host", "dev lo").replace("dev cilium_net", "dev lo"));
    s.push_str("ip netns del $N; ip netns del $W; umount $PIN; rmdir $PIN\n");
    s
}

/// The bench scenario beside the shell script doing the same work.
fn script(exe: &Path, runs: usize, table: &mut String) -> Value {
    let cache = tempfile::tempdir().expect("temporary dir");
    let file = bench_scenario();
    run_hostdp(exe, &["-j", "1"], std::slice::from_ref(&file), cache.path());
    let obj = std::fs::read_dir(cache.path().join("objects")).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("bpf_host-")))
    });
    let Some(obj) = obj else {
        let _ = writeln!(table, "shell script: no compiled bpf_host object in the cache");
        return Value::Null;
    };
    let dir = tempfile::tempdir().expect("temporary dir");
    let path = dir.path().join("bench-node.sh");
    std::fs::write(&path, shell_script(&obj, &std::process::id().to_string())).expect("write script");
    let mut sh = Vec::new();
    let mut hd = Vec::new();
    let mut failures = 0;
    for _ in 0..runs {
        // Each side starts on a settled kernel: namespaces are torn down asynchronously after
        // their last user is gone, and that work would otherwise land in the next measurement.
        settle();
        let (ms, code, _, err) = spawn_measured(
            Command::new("bash").arg(&path).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()),
        );
        if code != 0 {
            failures += 1;
            eprintln!("hostdp-bench: the shell script failed ({code}): {}", tail(&err));
        }
        sh.push(ms);
        settle();
        hd.push(run_hostdp(exe, &["-j", "1"], std::slice::from_ref(&file), cache.path()).wall_ms);
    }
    let (s, h) = (median(sh), median(hd));
    let _ = writeln!(
        table,
        "shell script {s:.0} ms vs hostdp {h:.1} ms: hostdp/script = {:.3} ({:.1}x faster)",
        h / s,
        s / h
    );
    json!({"script_ms": s, "hostdp_ms": h, "ratio_hostdp_over_script": h / s, "script_failures": failures, "settle_ms": SETTLE_MS,
           "script": path.file_name().map(|n| n.to_string_lossy().into_owned()), "script_text": std::fs::read_to_string(&path).ok()})
}

/// Waits for the kernel to finish what the previous run left it (namespace teardown).
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(SETTLE_MS));
}

/// The pause before each measured run of the script comparison.
const SETTLE_MS: u64 = 300;

/// Peak RSS of `hostdp run` over the local suite.
fn rss(exe: &Path, table: &mut String) -> Value {
    // wait4 reports the largest of the process and the children it waited for, so a run that
    // compiles counts clang's memory too: the first run fills the cache (and is reported as
    // such), the second measures hostdp itself.
    let cache = hostdp::runner::cache_dir();
    let first = run_hostdp(exe, &[], &[root().join("scenarios")], &cache);
    let clang: u64 = first
        .record
        .as_ref()
        .map(|r| r.scenarios.iter().filter_map(|s| s.phases).map(|p| p.clang_invocations).sum())
        .unwrap_or(0);
    let c = run_hostdp(exe, &[], &[root().join("scenarios")], &cache);
    let _ = writeln!(
        table,
        "local suite: {:.0} ms, peak RSS {:.1} MB ({}); the run before it, {clang} clang runs included: {:.0} ms, {:.1} MB",
        c.wall_ms,
        c.maxrss_mb,
        summary(&c.record),
        first.wall_ms,
        first.maxrss_mb
    );
    json!({"suite_ms": c.wall_ms, "peak_rss_mb": c.maxrss_mb, "exit": c.status, "status": summary(&c.record),
           "first_run": {"suite_ms": first.wall_ms, "peak_rss_mb_with_children": first.maxrss_mb, "clang_invocations": clang}})
}

fn scaling_file(dir: &Path, n: usize) -> PathBuf {
    let mut s = format!("name: scale-{n}\nprofile: v1.14.4\nnode: {{ip: 10.0.0.1}}\ntopology:\n  links:\n");
    let names: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    for (i, l) in names.iter().enumerate() {
        let _ = writeln!(s, "    - {{name: {l}, kind: veth, addresses: [10.{}.{}.1/24]}}", i / 250, i % 250);
    }
    let _ = write!(
        s,
        "agent:\n  devices: {}\nsteps:\n  - start: {{}}\n    expect:\n      devices: [{}]\n",
        names.join(" "),
        names.join(", ")
    );
    let p = dir.join(format!("scale-{n}.yaml"));
    std::fs::write(&p, s).expect("write scaling scenario");
    p
}

fn scaling(exe: &Path, sizes: &[usize], table: &mut String) -> Value {
    let dir = tempfile::tempdir().expect("temporary dir");
    let cache = tempfile::tempdir().expect("temporary dir");
    let mut rows = Vec::new();
    for &n in sizes {
        let f = scaling_file(dir.path(), n);
        run_hostdp(exe, &["-j", "1"], std::slice::from_ref(&f), cache.path());
        let c = run_hostdp(exe, &["-j", "1"], std::slice::from_ref(&f), cache.path());
        let p = first_phases(&c).unwrap_or_default();
        let start = p.config_and_devices + p.compile + p.load_and_attach;
        let _ = writeln!(
            table,
            "scaling {n:>5} links: start {start:>8.1} ms ({:.3} ms/link), topology {:.0} ms, readback {:.0} ms, teardown {:.0} ms, total {:.0} ms ({})",
            start / n as f64,
            p.namespaces_and_links,
            p.readback,
            p.teardown,
            c.wall_ms,
            summary(&c.record)
        );
        rows.push(json!({"links": n, "start_ms": start, "per_link_ms": start / n as f64, "phases": p, "process_ms": c.wall_ms, "status": summary(&c.record)}));
    }
    let per: Vec<f64> = rows.iter().filter_map(|r| r["per_link_ms"].as_f64()).collect();
    let linear = per.len() >= 2 && per.last().unwrap() / per[per.len() - 2] < 1.5;
    let _ = writeln!(table, "scaling linear (last per-link cost within 1.5x of the previous): {linear}");
    json!({"rows": rows, "linear": linear})
}

fn vm(exe: &Path, table: &mut String) -> Value {
    let cache = hostdp::runner::cache_dir();
    let one = run_hostdp(exe, &["--kernel", "debian-6.1"], &[bench_scenario()], &cache);
    let sc = scenario_ms(&one).unwrap_or(0.0);
    let boot = one.wall_ms - sc;
    let _ = writeln!(
        table,
        "VM debian-6.1: one scenario {:.1} s, of it boot and shutdown {:.1} s",
        one.wall_ms / 1000.0,
        boot / 1000.0
    );
    let suite = run_hostdp(exe, &["--kernel", "debian-6.1"], &[root().join("scenarios")], &cache);
    let _ = writeln!(table, "VM debian-6.1: whole suite {:.1} s ({})", suite.wall_ms / 1000.0, summary(&suite.record));
    // All 128 combinations, WireGuard included (the guest kernel has it), in one boot. The
    // files live in the checkout, which the guest sees; the cache is warm from the runs above.
    let dir = root().join("ci/.cache/bench-matrix");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create ci/.cache/bench-matrix");
    let (files, _) = matrix_files(&dir, true);
    let m = run_hostdp(exe, &["--kernel", "debian-6.1", "-j", "2"], std::slice::from_ref(&dir), &cache);
    let in_guest: f64 = m.record.as_ref().map(|r| r.scenarios.iter().map(|s| s.millis as f64).sum()).unwrap_or(0.0);
    let _ = writeln!(
        table,
        "VM debian-6.1: flag matrix, all {} runs, -j 2: {:.1} s with boot ({})",
        files.len(),
        m.wall_ms / 1000.0,
        summary(&m.record)
    );
    let mut phases = serde_json::Map::new();
    let all: Vec<Phases> = m.record.iter().flat_map(|r| r.scenarios.iter().filter_map(|s| s.phases)).collect();
    for (name, _) in Phases::default().named() {
        let sum: f64 = all.iter().map(|p| p.named().iter().find(|(n, _)| *n == name).map_or(0.0, |(_, v)| *v)).sum();
        phases.insert(name.into(), json!((sum / 10.0).round() / 100.0));
    }
    let clang: u64 = all.iter().map(|p| p.clang_invocations).sum();
    let _ = writeln!(
        table,
        "    in the guest, seconds summed over the runs: {} ; clang runs {clang}",
        Value::Object(phases.clone())
    );
    let _ = std::fs::remove_dir_all(&dir);
    json!({"matrix_phases_sum_s": phases, "matrix_clang_invocations": clang, "one_scenario_ms": one.wall_ms, "boot_and_shutdown_ms": boot, "suite_ms": suite.wall_ms, "suite_status": summary(&suite.record),
           "matrix_runs": files.len(), "matrix_ms": m.wall_ms, "matrix_scenario_ms_sum": in_guest, "matrix_status": summary(&m.record)})
}

/// Per VM kernel, one batch of the scenarios this kernel cannot host (what `cargo test` boots a
/// VM for), in one boot with `-j 2`: with an empty template cache (cold: the guest asks the host
/// to compile each template) and again with the cache that filled (warm).
fn vm_batches(exe: &Path, table: &mut String) -> Value {
    let files: Vec<PathBuf> = hostdp::testing::scenario_files(&root().join("scenarios"))
        .into_iter()
        .filter(|f| hostdp::testing::needs_vm(f))
        .collect();
    // The guest shares the cache read-write: a folder beside the usual one, not the host's /tmp.
    let cache = hostdp::runner::cache_dir();
    let base = cache.parent().map(Path::to_path_buf).unwrap_or(cache);
    let mut out = serde_json::Map::new();
    for k in hostdp::sys::vm::KNOWN_KERNELS {
        let cache = tempfile::Builder::new().prefix("bench-vm-cache-").tempdir_in(&base).expect("temporary cache");
        let cold = run_hostdp(exe, &["--kernel", k, "-j", "2"], &files, cache.path());
        let templates = std::fs::read_dir(cache.path().join("objects")).map(|d| d.count()).unwrap_or(0);
        let warm = run_hostdp(exe, &["--kernel", k, "-j", "2"], &files, cache.path());
        let compile_s = |c: &Child| -> f64 {
            c.record.iter().flat_map(|r| r.scenarios.iter().filter_map(|s| s.phases)).map(|p| p.compile).sum::<f64>()
                / 1000.0
        };
        let _ = writeln!(
            table,
            "VM {k}: batch of the {} scenarios this kernel cannot host, one boot, -j 2: cold {:.1} s ({templates} \
             templates compiled on the host; the guest waited {:.1} s for them), warm {:.1} s (compile {:.1} s) ({})",
            files.len(),
            cold.wall_ms / 1000.0,
            compile_s(&cold),
            warm.wall_ms / 1000.0,
            compile_s(&warm),
            summary(&warm.record)
        );
        out.insert(
            k.to_string(),
            json!({"files": files.len(), "cold_ms": cold.wall_ms, "warm_ms": warm.wall_ms, "templates": templates,
                   "cold_compile_s": compile_s(&cold), "warm_compile_s": compile_s(&warm),
                   "cold_status": summary(&cold.record), "warm_status": summary(&warm.record)}),
        );
    }
    Value::Object(out)
}

/// One part of the benchmark: its name and what runs it (writing its lines of the table).
type Part<'a> = (&'static str, &'a dyn Fn(&mut String) -> Value);

fn main() {
    let args = Args::parse();
    let exe = args.hostdp.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("hostdp")))
            .unwrap_or_else(|| PathBuf::from("hostdp"))
    });
    let want = |part: &str| {
        if args.only.is_empty() {
            !part.starts_with("vm") || args.vm
        } else {
            args.only.iter().any(|o| o == part)
        }
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut table = String::new();
    let mut out = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": hostdp::sys::caps::probe(&hostdp::runner::cache_dir()).kernel.clone(),
        "loadavg_before": load.trim(),
        "runs": args.runs,
    });
    let parts: [Part<'_>; 7] = [
        ("single", &|t| single(&exe, args.runs, t)),
        ("script", &|t| script(&exe, args.runs, t)),
        ("matrix", &|t| matrix(&exe, args.runs, t)),
        ("rss", &|t| rss(&exe, t)),
        ("scaling", &|t| scaling(&exe, &args.sizes, t)),
        ("vm", &|t| vm(&exe, t)),
        ("vmbatch", &|t| vm_batches(&exe, t)),
    ];
    for (name, f) in parts {
        if want(name) {
            let mut part = String::new();
            out[name] = f(&mut part);
            print!("{part}");
            table.push_str(&part);
        }
    }
    out["loadavg_after"] = json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    let _ = writeln!(table, "load average: before {} / after {}", out["loadavg_before"], out["loadavg_after"]);
    println!("load average: before {} / after {}", out["loadavg_before"], out["loadavg_after"]);
    if let Some(d) = args.output.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    std::fs::write(&args.output, serde_json::to_string_pretty(&out).unwrap_or_default()).expect("write the JSON");
    eprintln!("hostdp-bench: wrote {}", args.output.display());
}
