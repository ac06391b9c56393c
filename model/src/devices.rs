//! Device selection (`Detect`): explicit, wildcard, route-based auto-detection, and the
//! direct-routing / IPv6-multicast device.
//!
//! v1.14.4 follows `pkg/datapath/linux/devices.go (*DeviceManager).Detect`; v1.15 and v1.16
//! follow the devices controller's `isSelectedDevice` (pkg/datapath/linux/devices_controller.go)
//! behind their own gates. Everything is computed from snapshots of links and routes.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Serialize;

use crate::config::Settings;
use crate::observed::{LinkInfo, RouteInfo};
use crate::profile::Change;

/// Name prefixes auto-detection never selects (`excludedDevicePrefixes`).
pub const EXCLUDED_PREFIXES: [&str; 5] = ["cilium_", "lo", "lxc", "cni", "docker"];

/// `defaults.HostDevice`: carries the node's IPv6 too, so the node-IP lookup skips it.
const HOST_DEVICE: &str = "cilium_host";

/// The devices the agent ended up with (`option.Config.GetDevices()`), and the direct-routing
/// and IPv6 multicast devices it settled on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// Sorted by detection; `finish_kpr_init` may append `cilium_wg0` (v1.14.4/v1.15), as
    /// upstream's `AppendDevice` does.
    pub devices: Vec<String>,
    pub direct_routing_device: Option<String>,
    pub ipv6_mcast_device: Option<String>,
}

/// Why detection failed; the messages are upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("device wildcard expansion failed to detect devices. Please verify --{option} option.")]
    WildcardExpansion { option: String },
    #[error("k8s is enabled, but still failed to find node IP: K8s node device not found")]
    NodeIpNotFound,
    #[error("unable to determine direct routing device. Use --direct-routing-device to specify it")]
    DirectRoutingDevice,
    #[error("unable to determine Multicast device. Use --ipv6-mcast-device to specify it")]
    MulticastDevice,
    /// v1.15: a `--devices` entry matched nothing in the devices table.
    #[error("No device found matching {devices:?}")]
    NoMatch { devices: Vec<String> },
}

/// `expandDeviceWildcards`: entries ending in `+` match every link whose name has that prefix
/// (no other check); other entries are kept verbatim even if no such link exists. Sorted,
/// deduplicated; an empty result for a non-empty input is an error.
pub fn expand_wildcards(entries: &[String], links: &[LinkInfo], option: &str) -> Result<Vec<String>, DeviceError> {
    let mut out = BTreeSet::new();
    for e in entries {
        if e.ends_with('+') {
            let prefix = e.trim_end_matches('+');
            out.extend(links.iter().filter(|l| l.name.starts_with(prefix)).map(|l| l.name.clone()));
        } else {
            out.insert(e.clone());
        }
    }
    if !entries.is_empty() && out.is_empty() {
        return Err(DeviceError::WildcardExpansion { option: option.to_string() });
    }
    Ok(out.into_iter().collect())
}

/// Go's `net.IP.IsGlobalUnicast`: RFC 1918 and ULA count; loopback, link-local, multicast,
/// unspecified and the IPv4 broadcast address do not.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_link_local() || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_global_unicast(IpAddr::V4(v4));
            }
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_unicast_link_local())
        }
    }
}

fn is_default(r: &RouteInfo) -> bool {
    r.dst.prefix_len() == 0 && r.dst.addr().is_unspecified()
}

fn by_index(links: &[LinkInfo], index: u32) -> Option<&LinkInfo> {
    links.iter().find(|l| l.index == index)
}

/// v1.14.4 `isViableDevice` for auto-detection (the `--devices` filter is empty then).
/// `l3_dev_ok` is the kernel's support for L3 devices (assumed when BPF host routing is on).
pub fn is_viable_device(l3_dev_ok: bool, has_default_route: bool, link: &LinkInfo, links: &[LinkInfo]) -> bool {
    not_viable_reason(l3_dev_ok, has_default_route, link, links).is_none()
}

/// Why `isViableDevice` rejects a link, or `None` when it accepts it.
pub fn not_viable_reason(
    l3_dev_ok: bool,
    has_default_route: bool,
    link: &LinkInfo,
    links: &[LinkInfo],
) -> Option<&'static str> {
    if EXCLUDED_PREFIXES.iter().any(|p| link.name.starts_with(p)) {
        return Some("excluded name prefix");
    }
    if link.slave || link.loopback {
        return Some("IFF_SLAVE or IFF_LOOPBACK set");
    }
    if !l3_dev_ok && link.mac.is_none() {
        return Some("L3 device without L3 device support");
    }
    match link.kind.as_str() {
        "veth" if !has_default_route => return Some("veth without a default route"),
        "bridge" | "openvswitch" => return Some("bridge-like device"),
        _ => {}
    }
    if let Some(master) = link.master_index.and_then(|m| by_index(links, m)) {
        match master.kind.as_str() {
            "bridge" | "openvswitch" => return Some("attached to a bridge"),
            "bond" | "team" => return Some("bonded device"),
            _ => {}
        }
    }
    None
}

/// v1.14.4 `updateDevicesFromRoutes`: the links with a default or global-unicast route of the
/// enabled families, in any table, that are viable.
fn devices_from_routes(settings: &Settings, links: &[LinkInfo], routes: &[RouteInfo]) -> BTreeSet<String> {
    let (v4, v6) = match (settings.enable_ipv4, settings.enable_ipv6) {
        (true, false) => (true, false),
        (false, true) => (false, true),
        _ => (true, true),
    };
    // Per output link: has it a default route?
    let mut candidates: Vec<(u32, bool)> = Vec::new();
    for r in routes {
        let Some(oif) = r.oif else { continue };
        let family_ok = if r.dst.addr().is_ipv4() { v4 } else { v6 };
        if !family_ok {
            continue;
        }
        let default = is_default(r);
        if !default && !is_global_unicast(r.dst.addr()) {
            continue;
        }
        match candidates.iter_mut().find(|(i, _)| *i == oif) {
            Some((_, d)) => *d |= default,
            None => candidates.push((oif, default)),
        }
    }
    let l3_dev_ok = true;
    candidates
        .into_iter()
        .filter_map(|(i, d)| by_index(links, i).map(|l| (l, d)))
        .filter(|(l, d)| is_viable_device(l3_dev_ok, *d, l, links))
        .map(|(l, _)| l.name.clone())
        .collect()
}

/// v1.14.4 `(*DeviceManager).Listen` after a change of the node's links or routes: `current`
/// keeps every device whose link still exists (only `RTM_DELLINK` removes one; a link that goes
/// down keeps its place), and gains every link that a route of any family and any table makes
/// viable (`updateDevicesFromRoutes` per route: only a default route counts as one for a veth),
/// filtered by `--devices`. Sorted.
pub fn listen_update(settings: &Settings, current: &[String], links: &[LinkInfo], routes: &[RouteInfo]) -> Vec<String> {
    let mut out: BTreeSet<String> = current.iter().filter(|d| links.iter().any(|l| &l.name == *d)).cloned().collect();
    let l3_dev_ok = true;
    for r in routes {
        let Some(link) = r.oif.and_then(|i| by_index(links, i)) else { continue };
        let default = is_default(r);
        if !default && !is_global_unicast(r.dst.addr()) {
            continue;
        }
        if out.contains(&link.name) || !filter_match(&settings.devices, &link.name) {
            continue;
        }
        if is_viable_device(l3_dev_ok, default, link, links) {
            out.insert(link.name.clone());
        }
    }
    out.into_iter().collect()
}

/// `findK8SNodeIPLink`: the first link (by ifindex) holding the node IP, skipping cilium_host.
fn node_ip_link(links: &[LinkInfo], node_ip: Option<IpAddr>) -> Option<&LinkInfo> {
    let ip = node_ip?;
    let mut sorted: Vec<&LinkInfo> = links.iter().collect();
    sorted.sort_by_key(|l| l.index);
    sorted.into_iter().find(|l| l.name != HOST_DEVICE && l.addresses.iter().any(|a| a.addr() == ip))
}

/// The device selection of the profile: `Detect(k8sEnabled)` with k8s enabled iff `node_ip` is
/// given. `settings` are those at detection time (before `finish_kpr_init`).
pub fn select(
    settings: &Settings,
    links: &[LinkInfo],
    routes: &[RouteInfo],
    node_ip: Option<IpAddr>,
) -> Result<Selection, DeviceError> {
    if settings.profile.has(Change::DevicesController) {
        select_controller(settings, links, routes, node_ip)
    } else {
        select_v1_14(settings, links, routes, node_ip)
    }
}

fn select_v1_14(
    settings: &Settings,
    links: &[LinkInfo],
    routes: &[RouteInfo],
    node_ip: Option<IpAddr>,
) -> Result<Selection, DeviceError> {
    let configured = expand_wildcards(&settings.devices, links, "devices")?;
    let mut drd = match &settings.direct_routing_device {
        Some(d) => Some(expand_wildcards(std::slice::from_ref(d), links, "direct-routing-device")?.remove(0)),
        None => None,
    };
    let mut devices: BTreeSet<String> = if configured.is_empty() && settings.are_devices_required() {
        devices_from_routes(settings, links, routes)
    } else {
        configured.into_iter().collect()
    };

    let mut detect_drd = settings.direct_routing_device_required();
    if detect_drd {
        if let Some(d) = &drd {
            devices.insert(d.clone());
            detect_drd = false;
        }
    }
    let mut mcast = settings.ipv6_mcast_device.clone();
    let mut detect_mcast = settings.enable_ipv6_ndp;
    if let Some(m) = &mcast {
        devices.insert(m.clone());
        detect_mcast = false;
    }
    if detect_drd || detect_mcast {
        let node_link = node_ip_link(links, node_ip);
        match node_link {
            Some(l) => {
                devices.insert(l.name.clone());
            }
            None if node_ip.is_some() => return Err(DeviceError::NodeIpNotFound),
            None => {}
        }
        if detect_drd {
            drd = if devices.len() == 1 {
                devices.iter().next().cloned()
            } else if let Some(l) = node_link {
                Some(l.name.clone())
            } else {
                return Err(DeviceError::DirectRoutingDevice);
            };
        }
        if detect_mcast {
            match node_link {
                Some(l) if l.multicast => mcast = Some(l.name.clone()),
                _ => return Err(DeviceError::MulticastDevice),
            }
        }
    }
    Ok(Selection { devices: devices.into_iter().collect(), direct_routing_device: drd, ipv6_mcast_device: mcast })
}

/// What `GetDevices()` holds after `Detect` failed (the agent goes on when devices are not
/// required). v1.14.4: the expanded `--devices` if expansion succeeded, else the raw entries.
/// v1.15: the selected devices (set before the direct-routing lookup), or the raw entries when
/// a wildcard matched nothing. v1.16: the selected devices, which the loader uses regardless.
pub fn selection_after_failure(settings: &Settings, links: &[LinkInfo], routes: &[RouteInfo]) -> Selection {
    if settings.profile.has(Change::DevicesController) {
        let names = controller_selected(settings, links, routes);
        let wildcard = settings.devices.iter().any(|d| d.ends_with('+'));
        let devices = if settings.profile.has(Change::DetectOnlyWhenRequired) && names.is_empty() && wildcard {
            settings.devices.clone()
        } else {
            names
        };
        return Selection { devices, ..Selection::default() };
    }
    let (devices, drd) = match expand_wildcards(&settings.devices, links, "devices") {
        Ok(d) => {
            let drd = settings.direct_routing_device.as_ref().map(|x| {
                expand_wildcards(std::slice::from_ref(x), links, "direct-routing-device")
                    .map(|mut v| v.remove(0))
                    .unwrap_or_else(|_| x.clone())
            });
            (d, drd)
        }
        Err(_) => (settings.devices.clone(), settings.direct_routing_device.clone()),
    };
    Selection { devices, direct_routing_device: drd, ipv6_mcast_device: settings.ipv6_mcast_device.clone() }
}

/// The devices controller's user filter (`deviceFilter.match`, v1.15+): any entry matching,
/// `+` entries by prefix.
fn filter_match(filter: &[String], name: &str) -> bool {
    filter.is_empty()
        || filter.iter().any(|e| match e.strip_suffix('+') {
            Some(_) => name.starts_with(e.trim_end_matches('+')),
            None => e == name,
        })
}

/// v1.19 `DeviceFilter.Match`: the first entry matching `name` (`+` by prefix, `!` reversing),
/// as whether it excludes; `None` when no entry matches.
fn filter_entry_match(filter: &[String], name: &str) -> Option<bool> {
    filter.iter().find_map(|e| {
        let (reverse, e) = match e.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, e.as_str()),
        };
        let matched = match e.strip_suffix('+') {
            Some(prefix) => name.starts_with(prefix),
            None => e == name,
        };
        matched.then_some(reverse)
    })
}

fn has_default_route_in_main(link: &LinkInfo, routes: &[RouteInfo]) -> bool {
    routes.iter().any(|r| r.oif == Some(link.index) && r.table == 254 && is_default(r))
}

/// v1.15.7 / v1.16 `isSelectedDevice` (devices_controller.go), in upstream's order.
pub fn controller_reason(settings: &Settings, link: &LinkInfo, routes: &[RouteInfo]) -> Option<&'static str> {
    if link.name.is_empty() {
        return Some("link name not known");
    }
    if settings.profile.has(Change::UserDevicesFirst) && !settings.devices.is_empty() {
        // v1.19: the user's choice first (no address or UP needed); `!name` excludes.
        if let Some(exclude) = filter_entry_match(&settings.devices, &link.name) {
            return exclude.then_some("excluded by user filter");
        }
        if !settings.force_device_detection {
            return Some("not matching user filter");
        }
    }
    if link.addresses.is_empty() {
        return Some("device has no addresses");
    }
    if !link.up {
        return Some("device is down");
    }
    if !settings.devices.is_empty() && !settings.profile.has(Change::UserDevicesFirst) {
        if filter_match(&settings.devices, &link.name) {
            return None;
        }
        if !settings.force_device_detection {
            return Some("not matching user filter");
        }
    }
    if link.slave || link.loopback {
        return Some("IFF_SLAVE or IFF_LOOPBACK set");
    }
    if link.master_index.is_some() {
        return Some("bridged or bonded to another device");
    }
    if EXCLUDED_PREFIXES.iter().any(|p| link.name.starts_with(p)) {
        return Some("excluded name prefix");
    }
    match link.kind.as_str() {
        "veth" if settings.devices.is_empty() && !has_default_route_in_main(link, routes) => {
            return Some("veth without default route");
        }
        "bridge" | "openvswitch" => return Some("bridge-like device, use --devices to add"),
        "ipoib" if settings.profile.has(Change::IpoibExcluded) => {
            return Some("IPoIB device, use --devices to override")
        }
        _ => {}
    }
    let global = routes.iter().any(|r| r.oif == Some(link.index) && !is_default(r) && is_global_unicast(r.dst.addr()));
    if !global {
        return Some("no global unicast routes");
    }
    None
}

/// The devices table's selected devices, sorted by name.
/// Why the profile's device selection passes over `link` when it auto-detects (`None`: it
/// would not), for `explain` and failure messages: v1.14.4 `isViableDevice`, the devices
/// controller's `isSelectedDevice` from v1.15.
pub fn not_selected_reason(
    settings: &Settings,
    link: &LinkInfo,
    links: &[LinkInfo],
    routes: &[RouteInfo],
) -> Option<&'static str> {
    if settings.profile.has(Change::DevicesController) {
        controller_reason(settings, link, routes)
    } else {
        let has_default = routes.iter().any(|r| r.oif == Some(link.index) && is_default(r));
        not_viable_reason(true, has_default, link, links)
    }
}

/// Why the profile's device selection took the link `name` or left it out, in words, for
/// failure messages and `explain`: the configured `devices`, the direct-routing or node-IP
/// device, or the rule that decided (v1.14.4 `isViableDevice`, the devices controller's
/// `isSelectedDevice` from v1.15), or that detection did not run at all.
pub fn why(
    settings: &Settings,
    sel: &Selection,
    name: &str,
    links: &[LinkInfo],
    routes: &[RouteInfo],
    node_ip: Option<IpAddr>,
) -> String {
    let controller = settings.profile.has(Change::DevicesController);
    let rule = if controller { "isSelectedDevice" } else { "isViableDevice" };
    let listed = !settings.devices.is_empty() && filter_match(&settings.devices, name);
    let node_link = node_ip_link(links, node_ip).filter(|l| l.name == name);
    if sel.devices.iter().any(|d| d == name) {
        if name == crate::config::WIREGUARD_DEVICE {
            return "selected: cilium_wg0 is appended by the kube-proxy-replacement init (WireGuard)".into();
        }
        if listed {
            return format!("selected: listed in devices ({})", settings.devices.join(","));
        }
        if settings.direct_routing_device.as_deref() == Some(name) {
            return "selected: it is the direct-routing-device".into();
        }
        if settings.ipv6_mcast_device.as_deref() == Some(name) {
            return "selected: it is the ipv6-mcast-device".into();
        }
        if controller {
            return format!("selected ({rule}): up, with addresses and a global unicast route");
        }
        let by_routes = settings.devices.is_empty()
            && settings.are_devices_required()
            && devices_from_routes(settings, links, routes).contains(name);
        if let (Some(l), false) = (node_link, by_routes) {
            let ip = node_ip.map(|i| i.to_string()).unwrap_or_default();
            return format!(
                "selected: {} holds the node IP {ip} (direct-routing / multicast device detection)",
                l.name
            );
        }
        return format!("selected ({rule}): a default or global unicast route goes through it");
    }
    let Some(link) = links.iter().find(|l| l.name == name) else {
        return format!("not selected: there is no link {name}");
    };
    if !settings.devices.is_empty() && !listed && (!controller || !settings.force_device_detection) {
        return format!("not selected: not listed in devices ({})", settings.devices.join(","));
    }
    let detection_skipped = settings.devices.is_empty()
        && !settings.are_devices_required()
        && (!controller || settings.profile.has(Change::DetectOnlyWhenRequired));
    if detection_skipped {
        return "not selected: devices is empty and no enabled feature needs devices (AreDevicesRequired is false), \
                so auto-detection did not run"
            .into();
    }
    match not_selected_reason(settings, link, links, routes) {
        Some(r) => format!("not selected ({rule}): {r}"),
        None if controller => format!("not selected: {rule} accepts it, but the selection failed"),
        None => "not selected: no default or global unicast route goes through it".into(),
    }
}

fn controller_selected(settings: &Settings, links: &[LinkInfo], routes: &[RouteInfo]) -> Vec<String> {
    let mut names: Vec<String> =
        links.iter().filter(|l| controller_reason(settings, l, routes).is_none()).map(|l| l.name.clone()).collect();
    names.sort();
    names
}

/// v1.15/v1.16 `Detect`: the devices table's selected devices (behind v1.15's gate), and the
/// direct-routing / multicast device chosen among them (the node-IP device only with k8s).
fn select_controller(
    settings: &Settings,
    links: &[LinkInfo],
    routes: &[RouteInfo],
    node_ip: Option<IpAddr>,
) -> Result<Selection, DeviceError> {
    if settings.profile.has(Change::DetectOnlyWhenRequired)
        && settings.devices.is_empty()
        && !settings.are_devices_required()
    {
        return Ok(Selection {
            direct_routing_device: settings.direct_routing_device.clone(),
            ipv6_mcast_device: settings.ipv6_mcast_device.clone(),
            ..Selection::default()
        });
    }
    let names = controller_selected(settings, links, routes);
    let wildcard = settings.devices.iter().any(|d| d.ends_with('+'));
    if settings.profile.has(Change::DetectOnlyWhenRequired) && names.is_empty() && wildcard {
        return Err(DeviceError::NoMatch { devices: settings.devices.clone() });
    }
    let selected: Vec<LinkInfo> = links.iter().filter(|l| names.contains(&l.name)).cloned().collect();
    let node_link = node_ip_link(&selected, node_ip);
    let mut drd = settings.direct_routing_device.clone();
    if settings.direct_routing_device_required() {
        let filter: Vec<String> =
            drd.as_deref().map(|d| d.split(',').map(str::to_string).collect()).unwrap_or_default();
        let mut by_index = selected.clone();
        by_index.sort_by_key(|l| l.index);
        drd = if !filter.is_empty() {
            by_index.iter().find(|l| filter_match(&filter, &l.name)).map(|l| l.name.clone())
        } else if selected.len() == 1 {
            Some(selected[0].name.clone())
        } else {
            node_link.map(|l| l.name.clone())
        };
        if drd.is_none() {
            return Err(DeviceError::DirectRoutingDevice);
        }
    }
    let mut mcast = settings.ipv6_mcast_device.clone();
    if settings.enable_ipv6_ndp && mcast.is_none() {
        match node_link {
            Some(l) if l.multicast => mcast = Some(l.name.clone()),
            _ => return Err(DeviceError::MulticastDevice),
        }
    }
    Ok(Selection { devices: names, direct_routing_device: drd, ipv6_mcast_device: mcast })
}

/// Link and route snapshots for the rules' unit tests.
#[cfg(test)]
pub(crate) mod tu {
    use super::*;
    use ipnet::IpNet;

    pub fn link(index: u32, name: &str, kind: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            kind: kind.into(),
            up: true,
            slave: false,
            loopback: false,
            multicast: true,
            master_index: None,
            parent_index: None,
            vlan_id: None,
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            mtu: 1500,
            addresses: vec![],
        }
    }

    pub fn lo() -> LinkInfo {
        let mut l = link(1, "lo", "");
        l.loopback = true;
        l.multicast = false;
        l.mac = None;
        l.addresses = vec!["127.0.0.1/8".parse().unwrap()];
        l
    }

    pub trait With {
        fn addr(self, a: &str) -> Self;
        fn master(self, m: u32) -> Self;
        fn slave_of(self, m: u32) -> Self;
        fn vlan(self, parent: u32, id: u16) -> Self;
        fn down(self) -> Self;
    }

    impl With for LinkInfo {
        fn addr(mut self, a: &str) -> Self {
            self.addresses.push(a.parse().unwrap());
            self
        }
        fn master(mut self, m: u32) -> Self {
            self.master_index = Some(m);
            self
        }
        fn slave_of(mut self, m: u32) -> Self {
            self.master_index = Some(m);
            self.slave = true;
            self
        }
        fn vlan(mut self, parent: u32, id: u16) -> Self {
            self.parent_index = Some(parent);
            self.vlan_id = Some(id);
            self
        }
        fn down(mut self) -> Self {
            self.up = false;
            self
        }
    }

    pub fn route(dst: &str, table: u32, oif: u32) -> RouteInfo {
        let dst = if dst == "default" { "0.0.0.0/0" } else { dst };
        RouteInfo { dst: dst.parse().unwrap(), gateway: None, table, oif: Some(oif) }
    }

    pub fn default_via(gw: &str, oif: u32) -> RouteInfo {
        let gw: IpAddr = gw.parse().unwrap();
        let dst = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        RouteInfo { dst: dst.parse().unwrap(), gateway: Some(gw), table: 254, oif: Some(oif) }
    }

    /// The routes the kernel adds for the addresses of up links: a local-table host route and a
    /// main-table prefix route each.
    pub fn kernel_routes(links: &[LinkInfo]) -> Vec<RouteInfo> {
        let mut out = Vec::new();
        for l in links.iter().filter(|l| l.up) {
            for a in &l.addresses {
                let host = IpNet::new(a.addr(), a.max_prefix_len()).unwrap();
                out.push(RouteInfo { dst: host, gateway: None, table: 255, oif: Some(l.index) });
                out.push(RouteInfo { dst: a.trunc(), gateway: None, table: 254, oif: Some(l.index) });
            }
        }
        out
    }

    pub fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The seed article's node: bond0 over two veth slaves, bond0.212 holding the node IP and
    /// the default route.
    pub fn seed() -> (Vec<LinkInfo>, Vec<RouteInfo>) {
        let links = vec![
            lo(),
            link(2, "eth0", "veth").slave_of(4),
            link(3, "eth1", "veth").slave_of(4),
            link(4, "bond0", "bond"),
            link(5, "bond0.212", "vlan").vlan(4, 212).addr("10.212.0.10/24"),
        ];
        let mut routes = kernel_routes(&links);
        routes.push(default_via("10.212.0.1", 5));
        (links, routes)
    }
}

#[cfg(test)]
mod tests {
    use super::tu::*;
    use super::*;
    use crate::config::{AgentConfig, Settings};
    use crate::profile::Profile;
    use std::collections::BTreeMap;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::derive(&AgentConfig::from_map(&m, Profile::V1_14_4).unwrap(), Profile::V1_14_4).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const NP: [(&str, &str); 1] = [("enable-node-port", "true")];

    #[test]
    fn listen_adds_on_routes_and_removes_on_delete_only() {
        use crate::config::tests::derive;
        let s = derive(&[("kube-proxy-replacement", "true")]).unwrap();
        let mut links = vec![lo(), link(2, "eth0", "veth"), link(3, "eth1", "veth"), link(4, "dummy0", "dummy")];
        let mut routes = vec![default_via("10.0.0.1", 2), route("10.20.0.0/24", 254, 3), route("fd00:30::/64", 254, 4)];
        // eth1: a veth without a default route stays out; dummy0's IPv6 route brings it in.
        assert_eq!(listen_update(&s, &names(&["eth0"]), &links, &routes), names(&["dummy0", "eth0"]));
        routes.push(route("0.0.0.0/0", 100, 3));
        assert_eq!(listen_update(&s, &names(&["eth0"]), &links, &routes), names(&["dummy0", "eth0", "eth1"]));
        // A device whose routes went (link down) stays; a deleted link goes.
        routes.retain(|r| r.oif != Some(4));
        assert_eq!(listen_update(&s, &names(&["dummy0", "eth0"]), &links, &routes), names(&["dummy0", "eth0", "eth1"]));
        links.retain(|l| l.name != "dummy0");
        assert_eq!(listen_update(&s, &names(&["dummy0", "eth0"]), &links, &routes), names(&["eth0", "eth1"]));
    }

    #[test]
    fn seed_topology_selects_the_node_ip_vlan() {
        let (links, routes) = seed();
        let s = settings(&[
            ("kube-proxy-replacement", "partial"),
            ("enable-node-port", "false"),
            ("enable-host-firewall", "false"),
        ]);
        assert!(!s.are_devices_required());
        let sel = select(&s, &links, &routes, ip("10.212.0.10")).unwrap();
        assert_eq!(sel.devices, names(&["bond0.212"]));
        assert_eq!(sel.direct_routing_device.as_deref(), Some("bond0.212"));
        let s = settings(&[("kube-proxy-replacement", "partial"), ("enable-host-legacy-routing", "true")]);
        let sel = select(&s, &links, &routes, ip("10.212.0.10")).unwrap();
        assert!(sel.devices.is_empty());
        // With NodePort the route-based detection finds the same single device: the bond has
        // no address, its slaves are slaves.
        let sel = select(&settings(&NP), &links, &routes, ip("10.212.0.10")).unwrap();
        assert_eq!(sel.devices, names(&["bond0.212"]));
    }

    #[test]
    fn explicit_devices_are_verbatim() {
        let (links, routes) = seed();
        let s = settings(&[("devices", "bond0 eth0 nosuch0"), ("enable-host-legacy-routing", "true")]);
        let sel = select(&s, &links, &routes, ip("10.212.0.10")).unwrap();
        assert_eq!(sel.devices, names(&["bond0", "eth0", "nosuch0"]));
        // DR detection adds the node-IP device to the explicit list.
        let s = settings(&[("devices", "bond0"), ("enable-node-port", "true")]);
        let sel = select(&s, &links, &routes, ip("10.212.0.10")).unwrap();
        assert_eq!(sel.devices, names(&["bond0", "bond0.212"]));
        assert_eq!(sel.direct_routing_device.as_deref(), Some("bond0.212"));
        // An explicit direct-routing device joins the list instead.
        let s = settings(&[("devices", "bond0"), ("enable-node-port", "true"), ("direct-routing-device", "eth+")]);
        let sel = select(&s, &links, &routes, ip("10.212.0.10")).unwrap();
        assert_eq!(sel.devices, names(&["bond0", "eth0"]));
        assert_eq!(sel.direct_routing_device.as_deref(), Some("eth0"));
    }

    #[test]
    fn wildcards_match_every_link_by_prefix() {
        let (links, routes) = seed();
        let legacy = ("enable-host-legacy-routing", "true");
        let sel = select(&settings(&[("devices", "bond+"), legacy]), &links, &routes, None).unwrap();
        assert_eq!(sel.devices, names(&["bond0", "bond0.212"]));
        let sel = select(&settings(&[("devices", "eth+"), legacy]), &links, &routes, None).unwrap();
        assert_eq!(sel.devices, names(&["eth0", "eth1"]), "slaves included");
        let e = select(&settings(&[("devices", "none+"), legacy]), &links, &routes, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "device wildcard expansion failed to detect devices. Please verify --devices option."
        );
        let e = select(&settings(&[("direct-routing-device", "none+"), legacy]), &links, &routes, None).unwrap_err();
        assert!(e.to_string().contains("--direct-routing-device"));
    }

    #[test]
    fn upstream_expand_devices() {
        // TestExpandDevices / TestExpandDirectRoutingDevice.
        let links = vec![
            link(2, "dummy0", "dummy"),
            link(3, "dummy1", "dummy"),
            link(4, "other0", "dummy"),
            link(5, "other1", "dummy"),
            link(6, "unmatched", "dummy"),
        ];
        let got =
            expand_wildcards(&names(&["dummy+", "missing+", "other0+", "dum+", "other0", "other1"]), &links, "devices");
        assert_eq!(got.unwrap(), names(&["dummy0", "dummy1", "other0", "other1"]));
        assert!(expand_wildcards(&names(&["none+"]), &links, "devices").is_err());
        assert_eq!(expand_wildcards(&names(&["dummy+"]), &links, "direct-routing-device").unwrap()[0], "dummy0");
        assert!(expand_wildcards(&[], &links, "devices").unwrap().is_empty());
    }

    #[test]
    fn veth_needs_a_default_route_in_any_table() {
        let links =
            vec![lo(), link(2, "veth0", "veth").addr("192.168.4.1/24"), link(3, "eth0", "dummy").addr("10.0.0.2/24")];
        let mut routes = kernel_routes(&links);
        let s = settings(&NP);
        let sel = select(&s, &links, &routes, ip("10.0.0.2")).unwrap();
        assert_eq!(sel.devices, names(&["eth0"]));
        let mut r = default_via("192.168.4.254", 2);
        r.table = 11;
        routes.push(r);
        let sel = select(&s, &links, &routes, ip("10.0.0.2")).unwrap();
        assert_eq!(sel.devices, names(&["eth0", "veth0"]));
    }

    #[test]
    fn bridges_and_their_ports_are_excluded() {
        let links = vec![
            lo(),
            link(2, "br0", "bridge").addr("192.168.5.1/24"),
            link(3, "eth0", "dummy").addr("192.168.3.1/24").master(2),
            link(4, "eth1", "dummy").addr("10.0.0.2/24"),
            link(5, "ovs0", "openvswitch").addr("10.1.0.2/24"),
            link(6, "team0", "team"),
            link(7, "eth2", "dummy").addr("10.2.0.2/24").master(6),
        ];
        let routes = kernel_routes(&links);
        let sel = select(&settings(&NP), &links, &routes, ip("10.0.0.2")).unwrap();
        assert_eq!(sel.devices, names(&["eth1"]));
        assert_eq!(not_viable_reason(true, false, &links[2], &links), Some("attached to a bridge"));
        assert_eq!(not_viable_reason(true, false, &links[6], &links), Some("bonded device"));
    }

    #[test]
    fn excluded_prefixes_and_flags() {
        let mut links = vec![lo(), link(2, "eth0", "dummy").addr("10.0.0.2/24")];
        for (i, n) in ["cilium_foo", "lxc12ab", "cni0", "docker0", "loop1"].iter().enumerate() {
            links.push(link(10 + i as u32, n, "dummy").addr(&format!("10.{}.0.1/24", 10 + i)));
        }
        let mut l3 = link(20, "wg1", "wireguard").addr("10.20.0.1/24");
        l3.mac = None;
        links.push(l3);
        let routes = kernel_routes(&links);
        let sel = select(&settings(&NP), &links, &routes, ip("10.0.0.2")).unwrap();
        assert_eq!(sel.devices, names(&["eth0", "wg1"]), "L3 devices are fine with L3 support");
        let wg1 = links.last().unwrap();
        assert_eq!(not_viable_reason(false, false, wg1, &links), Some("L3 device without L3 device support"));
    }

    #[test]
    fn route_family_follows_enabled_families() {
        let links =
            vec![lo(), link(2, "eth0", "dummy").addr("10.0.0.2/24"), link(3, "eth1", "dummy").addr("2001:db8::2/64")];
        let routes = kernel_routes(&links);
        let sel = select(&settings(&NP), &links, &routes, ip("10.0.0.2")).unwrap();
        assert_eq!(sel.devices, names(&["eth0"]));
        let s = settings(&[
            ("enable-node-port", "true"),
            ("enable-ipv6", "true"),
            ("ipv6-native-routing-cidr", "fd00::/8"),
        ]);
        let sel = select(&s, &links, &routes, ip("10.0.0.2")).unwrap();
        assert_eq!(sel.devices, names(&["eth0", "eth1"]));
        // Link-local only: not global unicast.
        assert!(!is_global_unicast("fe80::1".parse().unwrap()));
        assert!(!is_global_unicast("169.254.1.1".parse().unwrap()));
        assert!(is_global_unicast("fd00::1".parse().unwrap()));
        assert!(is_global_unicast("192.168.1.0".parse().unwrap()));
    }

    #[test]
    fn ipv6_ndp_multicast_device() {
        let mut links = vec![lo(), link(2, "eth0", "dummy").addr("2001:db8::face/64")];
        let routes = kernel_routes(&links);
        let s =
            settings(&[("enable-ipv6", "true"), ("enable-ipv6-ndp", "true"), ("enable-host-legacy-routing", "true")]);
        let sel = select(&s, &links, &routes, ip("2001:db8::face")).unwrap();
        assert_eq!(sel.devices, names(&["eth0"]));
        assert_eq!(sel.ipv6_mcast_device.as_deref(), Some("eth0"));
        assert_eq!(sel.direct_routing_device, None);
        links[1].multicast = false;
        let e = select(&s, &links, &routes, ip("2001:db8::face")).unwrap_err();
        assert_eq!(e, DeviceError::MulticastDevice);
        // cilium_host carrying the same address is skipped.
        let mut host = link(9, "cilium_host", "veth").addr("2001:db8::face/128");
        host.index = 1;
        links[0].index = 0;
        links[1].multicast = true;
        links.push(host);
        let sel = select(&s, &links, &routes, ip("2001:db8::face")).unwrap();
        assert_eq!(sel.ipv6_mcast_device.as_deref(), Some("eth0"));
    }

    /// pkg/datapath/linux/devices_test.go TestDetect, step by step, on snapshots.
    #[test]
    fn upstream_test_detect() {
        let base = [("enable-host-legacy-routing", "true")];
        let mut s = settings(&base);
        let mut links = vec![lo()];
        // 1. No devices, nothing to detect.
        let sel = select(&s, &links, &kernel_routes(&links), None).unwrap();
        assert!(sel.devices.is_empty());
        // 2. NodePort: detection is performed.
        s.enable_node_port = true;
        links.push(link(2, "dummy0", "dummy").addr("192.168.0.1/24"));
        let sel = select(&s, &links, &kernel_routes(&links), ip("192.168.0.1")).unwrap();
        assert_eq!(sel.devices, names(&["dummy0"]));
        assert_eq!(sel.direct_routing_device.as_deref(), Some("dummy0"));
        // 3. Manually specified devices, no detection.
        links.push(link(3, "dummy1", "dummy").addr("192.168.1.1/24"));
        s.devices = names(&["dummy0"]);
        let sel = select(&s, &links, &kernel_routes(&links), ip("192.168.0.1")).unwrap();
        assert_eq!(sel.devices, names(&["dummy0"]));
        assert_eq!(sel.direct_routing_device.as_deref(), Some("dummy0"));
        s.devices.clear();
        // 4. Native routing: all devices, DR = the node-IP device; dummy3 has no routes.
        links.push(link(4, "dummy2", "dummy").addr("192.168.2.1/24"));
        links.push(link(5, "dummy3", "dummy").addr("192.168.3.1/24"));
        let routes_no_d3 = |links: &[LinkInfo]| -> Vec<RouteInfo> {
            kernel_routes(links).into_iter().filter(|r| r.oif != Some(5)).collect()
        };
        s.routing_mode = crate::config::RoutingMode::Native;
        let sel = select(&s, &links, &routes_no_d3(&links), ip("192.168.1.1")).unwrap();
        assert_eq!(sel.devices, names(&["dummy0", "dummy1", "dummy2"]));
        assert_eq!(sel.direct_routing_device.as_deref(), Some("dummy1"));
        // 5. Tunnel routing with XDP: same.
        s.routing_mode = crate::config::RoutingMode::Tunnel;
        s.node_port_acceleration = crate::config::Acceleration::Native;
        let sel = select(&s, &links, &routes_no_d3(&links), ip("192.168.1.1")).unwrap();
        assert_eq!(sel.devices, names(&["dummy0", "dummy1", "dummy2"]));
        assert_eq!(sel.direct_routing_device.as_deref(), Some("dummy1"));
        s.node_port_acceleration = crate::config::Acceleration::Disabled;
        s.routing_mode = crate::config::RoutingMode::Native;
        // 6. IPv6 node IP on an excluded-prefix device, NDP on.
        s.enable_ipv6 = true;
        s.enable_ipv6_ndp = true;
        links.push(link(6, "cilium_foo", "dummy").addr("2001:db8::face/64"));
        let sel = select(&s, &links, &routes_no_d3(&links), ip("2001:db8::face")).unwrap();
        assert_eq!(sel.devices, names(&["cilium_foo", "dummy0", "dummy1", "dummy2"]));
        assert_eq!(sel.direct_routing_device.as_deref(), Some("cilium_foo"));
        assert_eq!(sel.ipv6_mcast_device.as_deref(), Some("cilium_foo"));
        // 7. veth0 only with a default route.
        links.push(link(7, "veth0", "veth").addr("192.168.4.1/24"));
        links.push(link(8, "veth0_", "veth"));
        let node = ip("2001:db8::face");
        let sel = select(&s, &links, &routes_no_d3(&links), node).unwrap();
        assert_eq!(sel.devices, names(&["cilium_foo", "dummy0", "dummy1", "dummy2"]));
        let mut extra = vec![default_via("192.168.4.254", 7)];
        let routes = |links: &[LinkInfo], extra: &[RouteInfo]| -> Vec<RouteInfo> {
            let mut r = routes_no_d3(links);
            r.extend(extra.iter().cloned());
            r
        };
        let sel = select(&s, &links, &routes(&links, &extra), node).unwrap();
        assert_eq!(sel.devices, names(&["cilium_foo", "dummy0", "dummy1", "dummy2", "veth0"]));
        // 8. dummy3 with a route only in table 11.
        extra.push(route("192.168.3.0/24", 11, 5));
        let sel = select(&s, &links, &routes(&links, &extra), node).unwrap();
        assert_eq!(sel.devices, names(&["cilium_foo", "dummy0", "dummy1", "dummy2", "dummy3", "veth0"]));
        // 9. Bridges are skipped, and so are their ports.
        links.push(link(9, "br0", "bridge").addr("192.168.5.1/24"));
        let sel = select(&s, &links, &routes(&links, &extra), node).unwrap();
        assert_eq!(sel.devices, names(&["cilium_foo", "dummy0", "dummy1", "dummy2", "dummy3", "veth0"]));
        links[4].master_index = Some(9);
        let sel = select(&s, &links, &routes(&links, &extra), node).unwrap();
        assert_eq!(sel.devices, names(&["cilium_foo", "dummy0", "dummy1", "dummy2", "veth0"]));
        // 10. Bond devices are kept, bond slaves skipped.
        links.push(link(10, "bond0", "bond").addr("192.168.6.1/24"));
        links[3] = links[3].clone().slave_of(10).down();
        let sel = select(&s, &links, &routes(&links, &extra), node).unwrap();
        assert_eq!(sel.devices, names(&["bond0", "cilium_foo", "dummy0", "dummy1", "veth0"]));
    }
}
