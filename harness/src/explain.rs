//! `hostdp explain`: which devices a profile's loader would select on a namespace's real links,
//! and what it would attach there, beside what is attached now. Read-only.

use std::fmt::Write as _;
use std::path::Path;

use hostdp_model::config::{AgentConfig, ConfigError};
use hostdp_model::profile::Profile;
use hostdp_model::{datapath, devices};

/// Errors of `hostdp explain`.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Config(#[from] hostdp_model::scenario::ScenarioError),
    #[error("unknown profile {0:?}: give v1.14.4, v1.15, v1.16, v1.17, v1.18 or v1.19")]
    Profile(String),
    #[error("configuration: {0}")]
    Agent(#[from] ConfigError),
    #[error(transparent)]
    Netns(#[from] crate::sys::netns::NetnsError),
    #[error("read links and routes: {0}")]
    Netlink(#[from] crate::sys::netlink::NetlinkError),
    #[error(transparent)]
    Inspect(#[from] crate::sys::inspect::InspectError),
}

/// `hostdp explain`: which devices a profile's loader would select on a namespace's real links
/// and what it would attach there, beside what is attached now. Read-only. The Kubernetes node
/// IP is taken to be the first global address of the device that holds the default route.
pub fn explain(config: &Path, profile: &str, netns: Option<&str>) -> Result<String, ExplainError> {
    let profile = Profile::parse(profile).ok_or_else(|| ExplainError::Profile(profile.to_string()))?;
    let (map, ignored) = hostdp_model::scenario::load_config_map(config)?;
    let cfg = AgentConfig::from_map(&map, profile)?;
    let read = || -> Result<_, crate::sys::netlink::NetlinkError> {
        let nl = crate::sys::netlink::Rtnl::open()?;
        Ok((nl.links()?, nl.routes()?, crate::sys::inspect::inspect_with(&nl)))
    };
    let (links, routes, now) = match netns {
        Some(n) => crate::sys::netns::Netns::open(n)?.run(read)??,
        None => read()?,
    };
    let now = now?;
    let node_ip = routes
        .iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .filter_map(|r| r.oif)
        .filter_map(|i| links.iter().find(|l| l.index == i))
        .flat_map(|l| l.addresses.iter())
        .map(|a| a.addr())
        .find(|a| devices::is_global_unicast(*a));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "profile {}; node IP taken as {}",
        profile.as_str(),
        node_ip.map_or("none".into(), |i| i.to_string())
    );
    if !ignored.is_empty() {
        let _ = writeln!(out, "ConfigMap keys the profile does not model (ignored): {}", ignored.join(", "));
    }
    match hostdp_model::startup::start(&cfg, profile, &links, &routes, node_ip) {
        Err(e) => {
            let _ = writeln!(out, "the agent would refuse to start: {e}");
        }
        Ok(st) => {
            let _ = writeln!(out, "devices required (AreDevicesRequired): {}", st.settings.are_devices_required());
            let _ = writeln!(out, "selected devices: [{}]", st.selection.devices.join(", "));
            for l in &links {
                if st.selection.devices.contains(&l.name) {
                    continue;
                }
                let why = devices::not_selected_reason(&st.settings, l, &links, &routes);
                let _ = writeln!(
                    out,
                    "  not selected: {} ({})",
                    l.name,
                    why.unwrap_or("no global address or default route, or detection did not run")
                );
            }
            match datapath::plan(&st.settings, &st.selection, &links) {
                Ok(plan) => {
                    let _ = writeln!(out, "would do:");
                    for op in &plan.ops {
                        let _ = writeln!(out, "  {}", describe(op));
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "the datapath reload would fail: {e}");
                }
            }
        }
    }
    let _ = writeln!(out, "attached now:");
    if now.is_empty() {
        let _ = writeln!(out, "  nothing");
    }
    for a in &now {
        let _ = writeln!(out, "  {:<16} {:<8} {}", a.device, a.hook.as_str(), hostdp_model::record::fmt_att(a));
    }
    Ok(out)
}

fn describe(op: &datapath::Op) -> String {
    use datapath::Op;
    match op {
        Op::CreateHostDevices => "create cilium_host / cilium_net".into(),
        Op::EnsureEncapDevice { device, kind, port } => {
            format!("create {device} if missing ({} external, dstport {port}), up", kind.as_str())
        }
        Op::DeleteLink { device } => format!("delete {device} if present"),
        Op::AttachTc { device, hook, program, priority, .. } => {
            format!(
                "attach {} on {device} {} (tc filter {}-{device}, pref {priority}, handle 1)",
                program.symbol,
                hook.as_str(),
                program.symbol
            )
        }
        Op::FlushTc { device, hook } => format!("remove every {} filter of {device}", hook.as_str()),
        Op::RemoveObsoleteTc { device } => format!("remove Cilium's old filters from {device} (no longer a device)"),
        Op::RemoveCiliumFilters { device } => format!("remove Cilium's filters from {device}"),
        Op::AttachXdp { device, program, mode, link_dir, best_effort } => format!(
            "attach {} on {device} xdp ({mode:?}{}{})",
            program.symbol,
            if link_dir.is_some() { ", pinned bpf_link" } else { ", netlink" },
            if *best_effort { ", best-effort" } else { "" }
        ),
        Op::DetachXdp { device, keep: Some(m), .. } => {
            format!("detach any XDP program from {device} unless it runs in {m:?} mode")
        }
        Op::DetachXdp { device, keep: None, .. } => format!("detach any XDP program from {device}"),
        Op::AttachSkb { device, hook, program, priority, pin_dir, tcx, .. } => {
            let s = program.symbol;
            let tc = format!("tc filter {s}-{device}, pref {priority}, handle 1");
            if *tcx {
                format!(
                    "attach {s} on {device} {} (tcx link pinned at {pin_dir}/{s}; {tc} where the kernel has no tcx)",
                    hook.as_str()
                )
            } else {
                format!("attach {s} on {device} {} ({tc}; unpin {pin_dir}/{s})", hook.as_str())
            }
        }
        Op::DetachSkb { device, hook, symbol, pin_dir } => {
            format!("unpin {pin_dir}/{symbol} and remove every {} filter of {device}", hook.as_str())
        }
        Op::RemoveObsoleteNetdev { device, device_dir } => match device_dir {
            Some(d) => format!("remove {d} and Cilium's netdev filters from {device} (no longer a device)"),
            None => format!("remove Cilium's netdev filters from {device} (no longer a device)"),
        },
    }
}
