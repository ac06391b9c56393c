//! A failing scenario says why (the selection rule, the plan op), and `hostdp run --suggest`
//! prints `expect:` blocks that, pasted into the file, make it pass.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::root_or_skip;

/// Wrong on purpose: eth1 (a veth without a default route) is expected as a device with
/// cil_from_netdev, and the restart is expected to change nothing.
const SCENARIO: &str = "\
name: suggest-veth
profile: v1.15
node: {ip: 192.168.62.2}
topology:
  links:
    - {name: eth0, kind: veth, addresses: [192.168.62.2/24]}
    - {name: eth1, kind: veth, addresses: [10.62.0.2/24]}
  routes:
    - {dst: default, via: 192.168.62.1, dev: eth0}
agent:
  kube-proxy-replacement: \"true\"
pods:
  - {name: web, labels: {app: web}}
steps:
  - start: {}
    expect:
      devices: [eth0, eth1]
      attachments:
        eth1: {ingress: [cil_from_netdev]}
  - restart: {agent: {kube-proxy-replacement: \"false\"}}
    expect:
      unchanged: true
  - cleanup: {}
    expect:
      attachments: {}
";

fn hostdp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hostdp")).args(args).env("HOSTDP_QUIET", "1").output().expect("run hostdp")
}

fn text(o: &Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The suggested blocks of `--suggest` output: (the step's line, the block's lines).
fn suggested(out: &str) -> Vec<(usize, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut lines = out.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.strip_prefix("# ").filter(|r| r.contains("the expect: block")) else { continue };
        let at = rest.find("(line ").expect("the step's line") + 6;
        let line: usize = rest[at..].split(')').next().unwrap().parse().unwrap();
        let mut block = Vec::new();
        while let Some(b) = lines.peek().filter(|b| b.starts_with("    ")) {
            block.push(b.to_string());
            lines.next();
        }
        blocks.push((line, block));
    }
    blocks
}

/// Pastes each block over the `expect:` block of the step at its line, as an author would.
fn paste(scenario: &str, blocks: &[(usize, Vec<String>)]) -> String {
    let mut lines: Vec<String> = scenario.lines().map(str::to_string).collect();
    let mut blocks = blocks.to_vec();
    blocks.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (line, block) in blocks {
        let start = (line..lines.len()).find(|i| lines[*i] == "    expect:").expect("the step has an expect block");
        let mut end = start + 1;
        while end < lines.len() && lines[end].starts_with("      ") {
            end += 1;
        }
        lines.splice(start..end, block);
    }
    lines.join("\n") + "\n"
}

#[test]
fn a_failure_says_why_and_the_suggested_blocks_make_it_pass() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("suggest-veth.yaml");
    std::fs::write(&file, SCENARIO).unwrap();
    let f = file.to_str().unwrap();

    let o = hostdp(&["run", "--format", "json", f]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mismatches = v["scenarios"][0]["steps"][0]["mismatches"].as_array().unwrap().clone();
    let why = |key: &str| -> Vec<String> {
        let m = mismatches.iter().find(|m| m["key"] == key).unwrap_or_else(|| panic!("no {key}: {mismatches:?}"));
        m["why"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(why("devices"), vec!["eth1: not selected (isSelectedDevice): veth without default route"]);
    let eth1 = why("attachments.eth1.ingress");
    assert!(eth1.iter().any(|w| w.contains("remove Cilium's netdev filters from eth1")), "{eth1:?}");
    assert!(eth1.iter().any(|w| w == "eth1: not selected (isSelectedDevice): veth without default route"), "{eth1:?}");
    let eth0 = why("attachments.eth0");
    assert!(eth0.iter().any(|w| w.contains("attach cil_from_netdev on eth0 ingress")), "{eth0:?}");
    let restart = &v["scenarios"][0]["steps"][1]["mismatches"][0];
    assert_eq!(restart["key"], "unchanged");
    let gone = restart["why"].as_array().unwrap();
    assert!(gone.iter().any(|w| w.as_str().unwrap().contains("remove Cilium's netdev filters from eth0")), "{gone:?}");
    assert!(gone.iter().any(|w| w.as_str().unwrap().contains("AreDevicesRequired is false")), "{gone:?}");

    let o = hostdp(&["run", "--suggest", f]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("why: eth1: not selected (isSelectedDevice): veth without default route"), "{out}");
    let blocks = suggested(&out);
    assert_eq!(blocks.iter().map(|b| b.0).collect::<Vec<_>>(), vec![15, 20], "{out}");
    assert!(blocks[0].1.contains(&"      devices: [eth0]".to_string()), "{out}");
    assert!(blocks[1].1.iter().any(|l| l.starts_with("      attachments:")), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), SCENARIO, "--suggest rewrote the file");

    let fixed = paste(SCENARIO, &blocks);
    std::fs::write(&file, &fixed).unwrap();
    let o = hostdp(&["run", f]);
    assert_eq!(o.status.code(), Some(0), "the pasted blocks do not pass:\n{fixed}\n{}", text(&o));
}

/// A reader that goes away (`hostdp check … | head -1`) ends the output, not the process with
/// a panic: the command exits with its own status.
#[test]
fn a_closed_pipe_is_no_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (args, status) in [(vec!["profiles"], 0), (vec!["check", "fixtures/broken"], 2)] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_hostdp"))
            .args(&args)
            .current_dir(&root)
            .stdout(writer.try_clone().expect("the pipe's writer"))
            .stderr(writer)
            .output()
            .expect("run hostdp");
        assert_eq!(out.status.code(), Some(status), "hostdp {args:?} into a closed pipe: {out:?}");
    }
}
