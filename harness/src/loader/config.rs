//! Agent configuration: `cilium-config` ConfigMap keys and string values → typed settings, and
//! the settings upstream derives from them (NodePort after kube-proxy-replacement handling,
//! `AreDevicesRequired`, `DirectRoutingDeviceRequired`).

/// ConfigMap keys the profiles model. Scenario validation rejects any other key in `agent:`.
pub fn known_keys() -> &'static [&'static str] {
    &[
        "kube-proxy-replacement",
        "enable-node-port",
        "enable-host-firewall",
        "enable-bandwidth-manager",
        "enable-wireguard",
        "enable-high-scale-ipcache",
        "enable-l2-announcements",
        "devices",
        "direct-routing-device",
        "enable-host-legacy-routing",
        "enable-ipv4",
        "enable-ipv6",
        "enable-ipv6-ndp",
        "ipv6-mcast-device",
        "node-port-acceleration",
        "encrypt-node",
        "enable-endpoint-routes",
        "bpf-filter-priority",
        "vlan-bpf-bypass",
        "enable-envoy-config",
        "enable-ipsec",
        "enable-bpf-masquerade",
        "routing-mode",
        "tunnel",
        "node-port-mode",
        "enable-runtime-device-detection",
        "enable-tcx",
        "force-device-detection",
        "datapath-mode",
    ]
}

/// Checks one value's type (`"true"`/`"false"` for booleans, a number for priorities, ...).
/// Returns a message that says what is accepted.
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    // Minimal typing for scenario validation; the config phase may refine it per key.
    let boolean = key.starts_with("enable-") || matches!(key, "encrypt-node" | "force-device-detection");
    if boolean && value != "true" && value != "false" {
        return Err(format!("expected \"true\" or \"false\", found \"{value}\""));
    }
    if key == "bpf-filter-priority" && !value.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)) {
        return Err(format!("expected a number from 1 to 65535, found \"{value}\""));
    }
    Ok(())
}
