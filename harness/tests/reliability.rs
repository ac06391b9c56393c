//! Reliability and safety (root): whatever way a run ends — pass, fail, panic, SIGKILL, SIGINT —
//! the machine is left as it was (leak ledger before and after), a rerun or `hostdp gc` removes
//! a dead run's leftovers and nothing of a live run, scenario steps naming the machine's own
//! links act only inside the node namespace, and a program the verifier refuses surfaces as a
//! scenario error carrying the verifier's words.
//!
//! The tests share the machine-wide ledger, so they take turns (one lock).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hostdp::sys::ledger::{self, Snapshot};

/// How long the ledger waits for the kernel to free a deleted namespace's programs.
const SETTLE: Duration = Duration::from_secs(15);

fn turn() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root (network namespaces, bpf)");
        false
    }
}

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn hostdp() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hostdp"));
    c.current_dir(project()).env("HOSTDP_QUIET", "1").env_remove("HOSTDP_FAULT");
    c
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = hostdp();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run hostdp")
}

/// `hostdp ledger ARGS FILE`, with `env`.
fn ledger_cmd(args: &[&str], file: &Path, env: &[(&str, &str)]) -> Output {
    let mut all = vec!["ledger"];
    all.extend_from_slice(args);
    all.push(file.to_str().unwrap());
    run(&all, env)
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The ledger must come back to `before`; prints the difference otherwise.
fn assert_clean(before: &Snapshot, what: &str) {
    let d = ledger::diff_settled(before, SETTLE);
    assert!(d.is_empty(), "{what}: the machine differs from before:\n{d}");
}

/// A multi-step scenario on a veth (this kernel hosts it), slow enough to be caught mid-run.
const LONG: &str = "\
name: reliab-long
profile: v1.14.4
node: {ip: 192.168.61.2}
topology:
  links:
    - {name: eth0, kind: veth, addresses: [192.168.61.2/24]}
  routes:
    - {dst: default, via: 192.168.61.1, dev: eth0}
agent:
  enable-node-port: \"true\"
pods:
  - {name: a, labels: {app: a}}
steps:
  - start: {}
  - restart: {agent: {enable-node-port: \"false\"}}
  - restart: {agent: {enable-node-port: \"true\"}}
  - add-pod: {name: b, labels: {app: b}}
  - cleanup: {}
  - start: {}
  - restart: {agent: {enable-node-port: \"false\"}}
  - restart: {agent: {enable-node-port: \"true\"}}
  - cleanup: {}
  - start: {}
";

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// Names under /run/netns and /run/hostdp owned by `pid`.
fn owned_by(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = hostdp::sys::netns::list_named();
    v.extend(
        std::fs::read_dir(hostdp::sys::topology::RUN_ROOT)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path().display().to_string()).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    v.retain(|n| ledger::owner_in(n) == Some(pid));
    v
}

/// Starts `hostdp run FILE` and returns once the run is mid-scenario: its node namespace and
/// bpffs exist and the agent has had a moment to attach.
fn start_and_catch_mid_run(file: &Path) -> Child {
    let mut child = hostdp()
        .arg("run")
        .arg(file)
        .env("HOSTDP_FAULT", "sleep-after-each-step:1000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    loop {
        let names = owned_by(pid);
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&format!("hostdp-{pid}-")) && l.contains("bpffs"));
        if names.iter().any(|n| n.ends_with("-node")) && mounted {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("hostdp run ended ({st:?}) before it could be caught mid-run");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "hostdp run built no node in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(400));
    child
}

fn base36(mut n: u64) -> String {
    let d = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut v = Vec::new();
    loop {
        v.push(d[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    v.reverse();
    String::from_utf8(v).unwrap()
}

/// A namespace named exactly like one of a live run: owner `pid` (alive) with its real start
/// time. Deleted (and the process killed) on drop.
struct LiveDecoy {
    owner: Child,
    name: String,
}

impl LiveDecoy {
    fn new() -> LiveDecoy {
        let owner = Command::new("sleep").arg("300").spawn().unwrap();
        let pid = owner.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let start: u64 = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(19).unwrap().parse().unwrap();
        let name = format!("hostdp-{pid}-{}-0123456789abcdef-0-node", base36(start));
        hostdp::sys::netns::Netns::create(&name).unwrap();
        LiveDecoy { owner, name }
    }

    fn exists(&self) -> bool {
        hostdp::sys::netns::list_named().contains(&self.name)
    }
}

impl Drop for LiveDecoy {
    fn drop(&mut self) {
        let _ = hostdp::sys::netns::delete_named(&self.name);
        let _ = self.owner.kill();
        let _ = self.owner.wait();
    }
}

#[test]
fn ledger_round_trips_and_sees_a_namespace() {
    if !root() {
        return;
    }
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("before.json");
    let o = ledger_cmd(&["save"], &file, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let name = format!("hostdp-t{}-ledger", std::process::id());
    hostdp::sys::netns::Netns::create(&name).unwrap();
    let o = ledger_cmd(&["diff", "--wait", "0"], &file, &[]);
    let _ = hostdp::sys::netns::delete_named(&name);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("+ netns {name}")), "{out}");
    let o = ledger_cmd(&["diff"], &file, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A VM call's folder left in the temporary folder is a leak; another live run's is not.
#[test]
fn ledger_sees_a_vm_folder_left_behind() {
    if !root() {
        return;
    }
    let _t = turn();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("before.json");
    let env = [("TMPDIR", tmp.path().to_str().unwrap())];
    let o = ledger_cmd(&["save"], &file, &env);
    assert!(o.status.success(), "{}", text(&o));
    // No process has that pid (above the kernel's pid_max); the sleep is another live run.
    let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let dead = tmp.path().join("hostdp-vm999999999-left");
    let live = tmp.path().join(format!("hostdp-vm{}-running", other.id()));
    std::fs::create_dir(&dead).unwrap();
    std::fs::create_dir(&live).unwrap();
    let o = ledger_cmd(&["diff", "--wait", "0"], &file, &env);
    let _ = other.kill();
    let _ = other.wait();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(out.contains(&format!("+ scratch {}", dead.display())), "{out}");
    assert!(!out.contains(&live.display().to_string()), "{out}");
    std::fs::remove_dir(&dead).unwrap();
    std::fs::remove_dir(&live).unwrap();
    let o = ledger_cmd(&["diff"], &file, &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn pass_fail_and_panic_leave_nothing_behind() {
    if !root() {
        return;
    }
    let _t = turn();
    let before = ledger::snapshot();
    let dir = tempfile::tempdir().unwrap();

    // (a) a passing scenario
    let o = run(&["run", "scenarios/restart-feature-off.yaml"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_clean(&before, "after a passing run");

    // (b) a failing one: the expectation is wrong on purpose
    let good = std::fs::read_to_string(project().join("scenarios/restart-feature-off.yaml")).unwrap();
    let bad = good
        .replacen("devices: [eth0]", "devices: [cilium_net]", 1)
        .replace("name: restart-feature-off", "name: reliab-failing");
    let failing = write(dir.path(), "failing.yaml", &bad);
    let o = run(&["run", failing.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("expected: [cilium_net]"), "{}", text(&o));
    assert_clean(&before, "after a failing run");

    // (c) a panic after the first step acted (programs attached, read-back not done)
    let o = run(&["run", "scenarios/restart-feature-off.yaml"], &[("HOSTDP_FAULT", "panic-after-step:1")]);
    assert_eq!(o.status.code(), Some(101), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("injected panic after step 1"), "{}", text(&o));
    assert_clean(&before, "after a panic mid-scenario");
}

#[test]
fn sigkill_leftovers_are_collected_and_live_runs_kept() {
    if !root() {
        return;
    }
    let _t = turn();
    let before = ledger::snapshot();
    let dir = tempfile::tempdir().unwrap();
    let long = write(dir.path(), "long.yaml", LONG);
    let decoy = LiveDecoy::new();

    for collector in ["rerun", "gc"] {
        let mut child = start_and_catch_mid_run(&long);
        let pid = child.id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        let st = child.wait().unwrap();
        assert_eq!(st.signal(), Some(9), "the run was killed ({st:?})");
        let left = owned_by(pid);
        assert!(!left.is_empty(), "a killed run leaves its namespaces (otherwise this test proves nothing)");
        let d = ledger::diff(&before, &ledger::snapshot());
        assert!(!d.is_empty(), "the ledger sees what the killed run left");

        let o = match collector {
            "rerun" => run(&["run", "scenarios/restart-feature-off.yaml"], &[]),
            _ => run(&["gc"], &[]),
        };
        assert_eq!(o.status.code(), Some(0), "{collector}: {}", text(&o));
        assert!(owned_by(pid).is_empty(), "{collector} left {:?}", owned_by(pid));
        assert!(decoy.exists(), "{collector} removed {}, a live run's namespace", decoy.name);
        if collector == "gc" {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(left.iter().all(|n| out.contains(n.as_str())), "gc output names what it removed:\n{out}");
            assert!(!out.contains(&decoy.name), "{out}");
        }
        // The decoy is another live run's: foreign to the ledger, so only the dead run counts.
        assert_clean(&before, &format!("after SIGKILL and {collector}"));
    }
    drop(decoy);
    assert_clean(&before, "after removing the decoy");
}

#[test]
fn sigint_mid_run_exits_130_and_removes_everything() {
    if !root() {
        return;
    }
    let _t = turn();
    let before = ledger::snapshot();
    let dir = tempfile::tempdir().unwrap();
    let long = write(dir.path(), "long.yaml", LONG);
    let child = start_and_catch_mid_run(&long);
    let pid = child.id();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted by signal"), "{}", text(&o));
    assert!(owned_by(pid).is_empty(), "left {:?}", owned_by(pid));
    assert_clean(&before, "after SIGINT");
}

/// The machine's own links, by name: a scenario naming them (as its own links, or as foreign
/// targets) must act inside its node namespace only.
fn machine_links() -> Vec<hostdp::model::observed::LinkInfo> {
    hostdp::sys::netlink::Rtnl::open().and_then(|nl| nl.links()).expect("list this namespace's links")
}

#[test]
fn steps_naming_the_machines_links_stay_in_the_node() {
    if !root() {
        return;
    }
    let _t = turn();
    let links = machine_links();
    // The real NIC: the first non-loopback link that is up (eth0 here; whatever it is named).
    let nic = links
        .iter()
        .find(|l| !l.loopback && l.up)
        .or_else(|| links.iter().find(|l| !l.loopback))
        .map(|l| l.name.clone());
    let nic = nic.unwrap_or_else(|| "eth0".into());
    let before = ledger::snapshot();
    let dir = tempfile::tempdir().unwrap();

    // A node whose link carries the NIC's name: the agent selects it, foreign programs go on it
    // and on lo, it is set down and deleted, everything is cleaned up; all in the node.
    let body = format!(
        "name: reliab-containment\nprofile: v1.14.4\nnode: {{ip: 192.168.62.2}}\ntopology:\n  links:\n    - {{name: {nic}, kind: veth, addresses: [192.168.62.2/24]}}\n  routes:\n    - {{dst: default, via: 192.168.62.1, dev: {nic}}}\nagent:\n  enable-node-port: \"true\"\n  devices: {nic}\nsteps:\n  - start: {{}}\n    expect:\n      devices: [{nic}]\n  - foreign: {{device: {nic}, direction: ingress, program: foreign_tc}}\n  - foreign: {{device: {nic}, direction: xdp, program: foreign_xdp}}\n  - link: {{set: {{name: {nic}, up: false}}}}\n  - cleanup: {{}}\n  - link: {{delete: {nic}}}\n  - start: {{}}\n"
    );
    let f = write(dir.path(), "containment.yaml", &body);
    let o = run(&["run", "--format", "json", f.to_str().unwrap()], &[]);
    assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{}", text(&o));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    // The foreign programs went onto the node's link of that name (read back in the node).
    let steps = rec["scenarios"][0]["steps"].as_array().unwrap();
    assert!(steps.len() >= 3, "{}", text(&o));
    let on_node: Vec<String> = steps[2]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["device"] == nic.as_str())
        .map(|a| a["program"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(on_node.contains(&"foreign_tc".to_string()) && on_node.contains(&"foreign_xdp".to_string()), "{on_node:?}");
    assert_clean(&before, "after a scenario acting on a link named like the machine's NIC");

    // Names of links that exist only in the machine's namespace are refused before anything runs.
    let only_here = links.iter().find(|l| !l.loopback).map(|l| l.name.clone()).unwrap_or_else(|| "eth0".into());
    for (what, step) in [
        ("delete", format!("link: {{delete: {only_here}}}")),
        ("set", format!("link: {{set: {{name: {only_here}, up: false}}}}")),
        ("foreign on lo", "foreign: {device: lo, direction: ingress, program: foreign_tc}".to_string()),
        ("foreign", format!("foreign: {{device: {only_here}, direction: egress, program: foreign_tc}}")),
    ] {
        let body = format!(
            "name: reliab-refused\nprofile: v1.14.4\ntopology:\n  links:\n    - {{name: veth-x, kind: veth}}\nsteps:\n  - start: {{}}\n  - {step}\n"
        );
        let f = write(dir.path(), "refused.yaml", &body);
        let o = run(&["run", f.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
    }
    assert_clean(&before, "after refused scenarios");
}

/// Below the validator: the library's own calls, given a link name of the machine's
/// namespace, act in the node namespace (where it does not exist) and fail there.
#[test]
fn library_calls_with_machine_link_names_fail_inside_the_node() {
    if !root() {
        return;
    }
    let _t = turn();
    let links = machine_links();
    let names: Vec<String> = links.iter().filter(|l| !l.loopback).map(|l| l.name.clone()).collect();
    let before = ledger::snapshot();
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "lib.yaml",
        "name: reliab-lib\nprofile: v1.14.4\ntopology:\n  links:\n    - {name: veth-x, kind: veth}\nsteps:\n  - stop: {}\n",
    );
    let sc = hostdp::model::scenario::load(&f).unwrap();
    {
        let mut node = hostdp::sys::topology::Node::build(&sc, &hostdp::sys::topology::RunId::for_tests()).unwrap();
        let compiler = std::sync::Arc::new(hostdp::sys::compile::Compiler::new(
            hostdp::sys::compile::default_bpf_dir(),
            hostdp::runner::cache_dir(),
        ));
        let ctx = hostdp::sys::attach::AttachContext {
            compiler,
            defines: Default::default(),
            bpffs: None,
            kernel_tcx: false,
        };
        for n in &names {
            let e = hostdp::sys::attach::foreign(
                node.netns(),
                &ctx,
                n,
                hostdp::model::observed::Hook::Ingress,
                "foreign_tc",
                None,
            );
            let msg = e.expect_err("a machine-only link is absent from the node").to_string();
            assert!(msg.contains("does not exist in namespace"), "{msg}");
            assert!(node.delete_link(n).is_err(), "delete {n} must fail in the node");
            assert!(node.set_link_up(n, false).is_err(), "set {n} down must fail in the node");
        }
        // lo exists in every namespace: the node's own lo gets it.
        hostdp::sys::attach::foreign(
            node.netns(),
            &ctx,
            "lo",
            hostdp::model::observed::Hook::Egress,
            "foreign_tc",
            None,
        )
        .unwrap();
        let atts = hostdp::sys::inspect::inspect_netns(node.netns()).unwrap();
        assert!(atts.iter().any(|a| a.device == "lo" && a.program == "foreign_tc"), "{atts:?}");
        assert!(!hostdp::sys::inspect::inspect_current().unwrap().iter().any(|a| a.program == "foreign_tc"));
    }
    assert_clean(&before, "after library calls naming the machine's links");
}

/// A bpf/ folder whose foreign.c the verifier refuses.
fn broken_bpf_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = project().join("bpf");
    for e in std::fs::read_dir(&src).unwrap().filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            std::fs::create_dir_all(d.path().join(e.file_name())).unwrap();
            for f in std::fs::read_dir(&p).unwrap().filter_map(Result::ok) {
                std::fs::copy(f.path(), d.path().join(e.file_name()).join(f.file_name())).unwrap();
            }
        } else {
            std::fs::copy(&p, d.path().join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(project().join("fixtures/bpf/verifier_reject.c"), d.path().join("foreign.c")).unwrap();
    d
}

#[test]
fn verifier_refusal_is_a_scenario_error_with_the_verifiers_words() {
    if !root() {
        return;
    }
    let _t = turn();
    let before = ledger::snapshot();
    let bpf = broken_bpf_dir();
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "refused.yaml",
        "name: reliab-verifier\nprofile: v1.14.4\ntopology:\n  links:\n    - {name: eth0, kind: veth}\nsteps:\n  - foreign: {device: eth0, direction: ingress, program: foreign_tc}\n",
    );
    let o = run(&["run", "--format", "json", f.to_str().unwrap()], &[("HOSTDP_BPF_DIR", bpf.path().to_str().unwrap())]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let sc = &rec["scenarios"][0];
    assert_eq!(sc["status"], "error", "{sc}");
    let reason = sc["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("verifier refused"), "{reason}");
    assert!(reason.contains("invalid access to packet"), "the verifier's own words: {reason}");
    assert!(reason.lines().count() <= 12, "only the log's last lines: {reason}");
    assert_clean(&before, "after a refused program");
}

/// The record minus what legitimately differs between runs: program and map ids, tags, timings, the
/// kernel's name.
fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for k in ["prog_id", "map_id", "tag", "millis", "kernel", "phases"] {
                m.remove(k);
            }
            m.values_mut().for_each(redact);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Scenarios run at once do not see each other: the local suite's records are the same, run
/// one at a time and eight at a time.
#[test]
fn parallel_runs_match_serial_runs() {
    if !root() {
        return;
    }
    let _t = turn();
    let before = ledger::snapshot();
    let mut records = Vec::new();
    // One serial run, then one with eight at once: the record must not depend on the order or
    // the overlap (each run is the whole local suite, ten seconds or more, most of it the
    // kernel's RCU waits). The scenario tests and the VM batches run several at once as well.
    for (round, jobs) in ["1", "8"].into_iter().enumerate() {
        let o = run(&["run", "--format", "json", "--allow-skips", "-j", jobs, "scenarios/"], &[]);
        assert_eq!(o.status.code(), Some(0), "round {round}, -j {jobs}: {}", text(&o));
        let mut rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        redact(&mut rec);
        records.push((format!("round {round}, -j {jobs}"), serde_json::to_string_pretty(&rec).unwrap()));
    }
    let (first_name, first) = &records[0];
    for (name, r) in &records[1..] {
        if r != first {
            let diff: Vec<String> = first
                .lines()
                .zip(r.lines())
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .take(10)
                .map(|(i, (a, b))| format!("line {}: {first_name}: {a} | {name}: {b}", i + 1))
                .collect();
            panic!("{name} differs from {first_name}:\n{}", diff.join("\n"));
        }
    }
    assert_clean(&before, "after the parallel runs");
}

/// A namespace built by hand with `ip` (not by a scenario), removed on drop.
struct HandBuilt {
    name: String,
}

impl HandBuilt {
    fn new(tag: &str) -> HandBuilt {
        let name = format!("hostdp-t{}-{tag}", std::process::id());
        let ip = |args: &str| {
            let o = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
            assert!(o.status.success(), "ip {args}: {}", String::from_utf8_lossy(&o.stderr));
        };
        ip(&format!("netns add {name}"));
        let hb = HandBuilt { name: name.clone() };
        ip(&format!("-n {name} link add eth0 type veth peer name eth0-p"));
        ip(&format!("-n {name} addr add 192.168.77.2/24 dev eth0"));
        for l in ["lo", "eth0", "eth0-p"] {
            ip(&format!("-n {name} link set {l} up"));
        }
        ip(&format!("-n {name} route add default via 192.168.77.1 dev eth0"));
        hb
    }
}

impl Drop for HandBuilt {
    fn drop(&mut self) {
        let _ = hostdp::sys::netns::delete_named(&self.name);
    }
}

fn attach_context() -> hostdp::sys::attach::AttachContext {
    use hostdp::sys::compile::{default_bpf_dir, Compiler};
    hostdp::sys::attach::AttachContext {
        compiler: std::sync::Arc::new(Compiler::new(default_bpf_dir(), hostdp::runner::cache_dir())),
        defines: Default::default(),
        bpffs: None,
        kernel_tcx: false,
    }
}

const CILIUM_CONFIG: &str = "\
apiVersion: v1
data:
  kube-proxy-replacement: \"KPR\"
  cluster-name: default
kind: ConfigMap
metadata:
  creationTimestamp: \"2026-11-01T10:00:00Z\"
  name: cilium-config
  namespace: kube-system
  resourceVersion: \"1234\"
";

/// `hostdp explain` on a namespace built by hand, with another tool's tc filter on eth0 egress:
/// v1.16 (tcx) would remove it (exit 1, named), a refused configuration exits 5, an unknown
/// version 2; the agent's own result under v1.14.4 matches (exit 0). The namespace's links and
/// attachments and the machine's ledger are the same before and after every `explain`.
#[test]
fn explain_judges_a_hand_built_namespace_and_changes_nothing() {
    if !root() {
        return;
    }
    use hostdp::model::observed::Hook;
    let _t = turn();
    let node = HandBuilt::new("explain");
    let ns = hostdp::sys::netns::Netns::open(&node.name).unwrap();
    let ctx = attach_context();
    hostdp::sys::attach::foreign(&ns, &ctx, "eth0", Hook::Egress, "foreign_tc", None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cm = |kpr: &str| write(dir.path(), &format!("cm-{kpr}.yaml"), &CILIUM_CONFIG.replace("KPR", kpr));
    let (cm_true, cm_partial, cm_strict) = (cm("true"), cm("partial"), cm("strict"));
    let before = ns.run(ledger::snapshot).unwrap();
    let explain = |cfg: &Path, extra: &[&str]| {
        let mut args = vec!["explain", "--netns", &node.name, "--config", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&args, &[])
    };

    // v1.16 with tcx: the foreign egress filter goes when cil_to_netdev's tcx link comes.
    let o = explain(&cm_true, &["--version", "1.16.8", "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "differs");
    assert_eq!(v["profile"], "v1.16");
    let foreign: Vec<&serde_json::Value> =
        v["differences"].as_array().unwrap().iter().filter(|d| d["kind"] == "foreign").collect();
    assert_eq!(foreign.len(), 1, "{}", text(&o));
    assert_eq!(
        (&foreign[0]["device"], &foreign[0]["hook"], &foreign[0]["program"], &foreign[0]["action"]),
        (&"eth0".into(), &"egress".into(), &"foreign_tc".into(), &"removed".into())
    );
    let op = foreign[0]["op"].as_u64().unwrap() as usize;
    assert!(v["plan"][op - 1].as_str().unwrap().starts_with("attach cil_to_netdev on eth0 egress (tcx"), "{v}");
    assert!(v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["name"] == "eth0-p" && d["why"].as_str().unwrap().contains("veth without default route")));

    // The same as text, the ConfigMap from standard input.
    let mut c = hostdp();
    c.args(["explain", "--netns", &node.name, "--config", "-", "--version", "v1.16.8"]);
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), std::fs::read(&cm_true).unwrap().as_slice()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = "foreign    foreign_tc on eth0 egress (tc pref 100): another tool's program, the agent would remove it";
    assert!(out.contains(line), "{out}");

    // Refused, invalid, and a release the profile was not read at.
    let o = explain(&cm_partial, &["--version", "1.16.8"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("the agent would refuse to start"), "{}", text(&o));
    let o = explain(&cm_true, &["--version", "1.13.2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1.14.4, 1.15.x, 1.16.x"), "{}", text(&o));
    let o = explain(&cm_true, &["--version", "1.17.1", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["profile"], "v1.17");
    assert!(v["notes"][0].as_str().unwrap().contains("v1.17.3 and later"), "{v}");

    let d = ns.run(|| ledger::diff_settled(&before, SETTLE)).unwrap();
    assert!(d.is_empty(), "explain changed the machine:\n{d}");

    // What v1.14.4's agent does, done by the test: then explain finds a match (the foreign
    // filter at pref 100 stays beside cil_to_netdev at pref 1).
    let links = ns.run(|| hostdp::sys::netlink::Rtnl::open()?.links()).unwrap().unwrap();
    let routes = ns.run(|| hostdp::sys::netlink::Rtnl::open()?.routes()).unwrap().unwrap();
    let p = hostdp::model::profile::Profile::V1_14_4;
    let map = [("kube-proxy-replacement".to_string(), "strict".to_string())].into_iter().collect();
    let cfg = hostdp::model::config::AgentConfig::from_map(&map, p).unwrap();
    let st = hostdp::model::startup::start(&cfg, p, &links, &routes, Some("192.168.77.2".parse().unwrap())).unwrap();
    let plan = hostdp::model::datapath::plan(&st.settings, &st.selection, &links).unwrap();
    let ctx = hostdp::sys::attach::AttachContext { defines: plan.defines.clone(), ..attach_context() };
    hostdp::sys::attach::execute(&ns, &ctx, &plan.ops).unwrap();
    let o = explain(&cm_strict, &["--version", "1.14.4"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verdict: match"), "{}", text(&o));
}
