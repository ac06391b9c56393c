//! The inspector is not its own judge: after a step, what `inspect` read through netlink and the
//! bpf syscall is compared with what iproute2's `tc filter show` and `bpftool net show` print
//! for the same namespace. Used by the scenario tests (and `HOSTDP_CROSSCHECK=1`); it spawns
//! those tools, so it is a verification aid, not part of a normal run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::sys::netns::Netns;
use hostdp_model::observed::{Attachment, Hook, Mechanism};

static FORCED: AtomicBool = AtomicBool::new(false);

/// Turns the cross-check on for this process (the scenario tests do).
pub fn enable() {
    FORCED.store(true, Ordering::Relaxed);
}

/// The programs the cross-check starts.
pub const TOOLS: &[&str] = &["tc", "bpftool"];

/// A command for tool `name`: from `HOSTDP_TOOL_DIR` when a VM guest staged one there (started
/// through the loader copied beside it, with that folder as the library path), else from PATH.
fn command(name: &str) -> Command {
    static LOADER: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    let staged = LOADER.get_or_init(|| {
        let dir = crate::paths::get().tool_dir.clone()?;
        let loader = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ld-linux")))?;
        Some((dir, loader))
    });
    match staged {
        Some((dir, loader)) if dir.join(name).is_file() => {
            let mut c = Command::new(loader);
            c.arg("--library-path").arg(dir).arg(dir.join(name));
            c
        }
        _ => Command::new(name),
    }
}

/// Whether steps are cross-checked: [`enable`]d, or `HOSTDP_CROSSCHECK=1`.
pub fn enabled() -> bool {
    FORCED.load(Ordering::Relaxed) || crate::paths::get().crosscheck
}

/// `run_cnt` of each program of `ids`, as `bpftool prog show` prints it (0 where it prints
/// none: statistics off, or the program never ran). Programs are global objects: no namespace.
pub fn run_counts(ids: &BTreeSet<u32>) -> Result<BTreeMap<u32, u64>, String> {
    let out = command("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .map_err(|e| format!("crosscheck: run bpftool prog show: {e}"))?;
    if !out.status.success() {
        return Err(format!("crosscheck: bpftool prog show failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let all: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("crosscheck: bpftool prog show printed no JSON: {e}"))?;
    let mut counts: BTreeMap<u32, u64> = ids.iter().map(|id| (*id, 0)).collect();
    for p in all.as_array().into_iter().flatten() {
        let id = p["id"].as_u64().unwrap_or(0) as u32;
        if let Some(c) = counts.get_mut(&id) {
            *c = p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok(counts)
}

/// A traffic step's figures against the kernel's run counts: the counter reads were bracketed
/// by the `bpftool` reads, so each program ran at least as often as it counted packets (all,
/// marked or not) and at least as often as it saw the step's packets. Returns the
/// disagreements.
pub fn compare_runs(
    programs: &[(String, u32, u64, u64)],
    runs_before: &BTreeMap<u32, u64>,
    runs_after: &BTreeMap<u32, u64>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (what, id, counted, marked) in programs {
        let ran = runs_after.get(id).copied().unwrap_or(0).saturating_sub(runs_before.get(id).copied().unwrap_or(0));
        if ran < *counted || ran < *marked {
            out.push(format!(
                "{what} (id {id}): bpftool prog show run_cnt grew by {ran}, its counters by {counted} ({marked} of the step's packets)"
            ));
        }
    }
    out
}

/// One filter as both sides describe it: device, hook, filter name, priority, handle, prog id.
type TcKey = (String, Hook, String, u16, u32, u32);

/// Compares the inspector's tc and XDP view of `ns` with iproute2's and bpftool's; returns the
/// differences (empty when they agree). tcx links are not compared: bpftool before 7.3 cannot
/// list them and `tc filter show` never does.
pub fn compare(ns: &Netns, devices: &[String], atts: &[Attachment]) -> Vec<String> {
    let mut out = Vec::new();
    // iproute2: every filter of every device and direction.
    let from_tc = match tc_filters(ns, devices) {
        Ok(f) => f,
        Err(e) => {
            out.push(e);
            BTreeSet::new()
        }
    };
    let from_inspect: BTreeSet<TcKey> = atts
        .iter()
        .filter(|a| a.mechanism == Mechanism::Tc)
        .map(|a| {
            (
                a.device.clone(),
                a.hook,
                a.filter.clone().unwrap_or_default(),
                a.priority.unwrap_or(0),
                a.handle.unwrap_or(0),
                a.prog_id,
            )
        })
        .collect();
    let filter = |d: &TcKey| format!("{} {} {} pref {} handle {:#x} id {}", d.0, d.1.as_str(), d.2, d.3, d.4, d.5);
    for d in from_tc.difference(&from_inspect) {
        out.push(format!("tc filter show lists {}, inspect does not", filter(d)));
    }
    for d in from_inspect.difference(&from_tc) {
        out.push(format!("inspect lists {}, tc filter show does not", filter(d)));
    }
    // bpftool: tc (clsact) filters by name and id, and XDP programs by id and mode.
    match tool(ns, &["bpftool", "-j", "net", "show"], "") {
        Err(e) => out.push(e),
        Ok(text) => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let first = v.as_array().and_then(|a| a.first()).cloned().unwrap_or_default();
            let mut from_bpftool = BTreeSet::new();
            for t in first.get("tc").and_then(|x| x.as_array()).into_iter().flatten() {
                let kind = t["kind"].as_str().unwrap_or_default();
                let hook = match kind {
                    "clsact/ingress" => "ingress",
                    "clsact/egress" => "egress",
                    _ => continue,
                };
                from_bpftool.insert(format!(
                    "{} {hook} {} id {}",
                    t["devname"].as_str().unwrap_or_default(),
                    t["name"].as_str().unwrap_or_default(),
                    t["id"].as_u64().unwrap_or_default()
                ));
            }
            for x in first.get("xdp").and_then(|x| x.as_array()).into_iter().flatten() {
                let mode = match x["mode"].as_str().unwrap_or_default() {
                    "driver" => "native",
                    m => m,
                };
                from_bpftool.insert(format!(
                    "{} xdp {mode} id {}",
                    x["devname"].as_str().unwrap_or_default(),
                    x["id"].as_u64().unwrap_or_default()
                ));
            }
            let mut from_inspect = BTreeSet::new();
            for a in atts {
                match a.mechanism {
                    Mechanism::Tc => {
                        from_inspect.insert(format!(
                            "{} {} {} id {}",
                            a.device,
                            a.hook.as_str(),
                            a.filter.clone().unwrap_or_default(),
                            a.prog_id
                        ));
                    }
                    Mechanism::Xdp => {
                        from_inspect.insert(format!(
                            "{} xdp {} id {}",
                            a.device,
                            a.mode.clone().unwrap_or_default(),
                            a.prog_id
                        ));
                    }
                    Mechanism::Tcx => {}
                }
            }
            for d in from_bpftool.difference(&from_inspect) {
                out.push(format!("bpftool net show lists {d}, inspect does not"));
            }
            for d in from_inspect.difference(&from_bpftool) {
                out.push(format!("inspect lists {d}, bpftool net show does not"));
            }
        }
    }
    out
}

/// Runs a tool inside `ns`, with `input` on its standard input: spawned from a thread that
/// entered it (one process, where `ip netns exec` would be two and a mount namespace).
fn tool(ns: &Netns, args: &[&str], input: &str) -> Result<String, String> {
    let run = || -> std::io::Result<std::process::Output> {
        let mut child = command(args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // A few kilobytes at most: they fit the pipe, so writing before reading cannot block.
        let written = child.stdin.take().map(|mut i| i.write_all(input.as_bytes()));
        let out = child.wait_with_output()?;
        written.transpose()?;
        Ok(out)
    };
    let out = ns
        .run(run)
        .map_err(|e| format!("crosscheck: enter {}: {e}", ns.name()))?
        .map_err(|e| format!("crosscheck: run {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("crosscheck: {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every filter of `devices` in `ns`, both directions, from one `tc -json -batch` process: it
/// prints one JSON list per command, in order. (A `tc` per device and direction cost a VM
/// scenario a minute and more under TCG, where each process start is slow.)
fn tc_filters(ns: &Netns, devices: &[String]) -> Result<BTreeSet<TcKey>, String> {
    let mut script = String::new();
    let mut order = Vec::new();
    for dev in devices {
        for hook in [Hook::Ingress, Hook::Egress] {
            script.push_str(&format!("filter show dev {dev} {}\n", hook.as_str()));
            order.push((dev, hook));
        }
    }
    let out = tool(ns, &["tc", "-json", "-batch", "-"], &script)?;
    let lists: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("crosscheck: tc -json filter show printed no JSON: {e}"))?;
    if lists.len() != order.len() {
        return Err(format!(
            "crosscheck: tc printed {} filter lists for {} devices and directions",
            lists.len(),
            order.len()
        ));
    }
    Ok(order.into_iter().zip(&lists).flat_map(|((dev, hook), list)| parse_tc(dev, hook, list)).collect())
}

/// The filters of one `tc -json filter show dev D DIR` list: the entries with a handle.
fn parse_tc(dev: &str, hook: Hook, list: &serde_json::Value) -> Vec<TcKey> {
    let mut v = Vec::new();
    for f in list.as_array().into_iter().flatten() {
        let opts = &f["options"];
        let Some(handle) = opts["handle"].as_str() else { continue };
        let Ok(handle) = u32::from_str_radix(handle.trim_start_matches("0x"), 16) else { continue };
        let name = opts["bpf_name"].as_str().unwrap_or_default();
        let pref = f["pref"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
        let id = opts["prog"]["id"].as_u64().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        v.push((dev.to_string(), hook, name.to_string(), pref, handle, id));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iproute2_filter_lists() {
        let text = r#"[{"protocol":"all","pref":1,"kind":"bpf","chain":0},{"protocol":"all","pref":1,"kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"cil_from_netdev-bond0.212","direct-action":true,"not_in_hw":true,"prog":{"id":41,"name":"cil_from_netdev","tag":"0123456789abcdef","jited":1}}}]"#;
        let v = parse_tc("bond0.212", Hook::Ingress, &serde_json::from_str(text).unwrap());
        assert_eq!(v, vec![("bond0.212".into(), Hook::Ingress, "cil_from_netdev-bond0.212".into(), 1, 1, 41)]);
    }
}
