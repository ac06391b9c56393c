//! The agent's start-up up to the datapath (`newDaemon`): derive the settings, detect the
//! devices, finish the kube-proxy-replacement init, then the masquerade, egress gateway and "no
//! device" checks. Above [`crate::config`] and [`crate::devices`], which it joins.

use std::net::IpAddr;

use serde::Serialize;

use crate::config::{
    refused, Acceleration, AgentConfig, ConfigError, KubeProxyReplacement, Settings, XdpMode, WIREGUARD_DEVICE,
};
use crate::devices::{self, Selection};
use crate::observed::{LinkInfo, RouteInfo};
use crate::profile::{Change, Profile};

impl Settings {
    /// `finishKubeProxyReplacementInit` (daemon/cmd/kube_proxy_replacement.go), run after
    /// device detection: NodePort off (and host legacy routing on) when neither NodePort nor
    /// WireGuard is on; otherwise `cilium_wg0` joins the devices for NodePort + WireGuard +
    /// encrypt-node, the BPF host routing fall-backs, the XDP mode from the acceleration, and
    /// every device must exist.
    pub fn finish_kpr_init(&mut self, sel: &mut Selection, links: &[LinkInfo]) -> Result<(), ConfigError> {
        let wrap = |m: String| refused(format!("failed to finalise LB initialization: {m}"));
        let wireguard_goes_on = self.enable_wireguard && !self.profile.has(Change::KprInitNeedsNodePort);
        if !(self.enable_node_port || wireguard_goes_on) {
            self.disable_node_port();
            if self.profile.has(Change::XdpModeFromAcceleration) {
                self.xdp_mode = self.xdp_mode_of_acceleration();
            }
            return Ok(());
        }
        // `AppendDevice(cilium_wg0)`; v1.16 decides this in the loader instead.
        if self.enable_node_port
            && self.enable_wireguard
            && self.encrypt_node
            && self.profile.has(Change::WireguardAppendedToDevices)
        {
            sel.devices.push(WIREGUARD_DEVICE.to_string());
        }
        if !self.enable_host_legacy_routing {
            use KubeProxyReplacement as K;
            let reason = if self.enable_ipsec {
                Some("BPF host routing is incompatible with enable-ipsec.")
            } else if self.iptables_masquerading_enabled() {
                Some("BPF host routing requires enable-bpf-masquerade.")
            } else if !matches!(self.kube_proxy_replacement, K::Strict | K::True)
                || (self.profile.has(Change::HostRoutingNeedsKprTrue) && self.kube_proxy_replacement != K::True)
            {
                Some("BPF host routing requires kube-proxy-replacement=true.")
            } else {
                None
            };
            if let Some(r) = reason {
                self.enable_host_legacy_routing = true;
                self.warnings
                    .push(format!("{r} Falling back to legacy host routing (enable-host-legacy-routing=true)."));
            }
        }
        self.xdp_mode = self.xdp_mode_of_acceleration();
        for dev in &sel.devices {
            if !links.iter().any(|l| &l.name == dev) {
                return Err(wrap(format!("Cannot retrieve {dev} link: Link not found")));
            }
            if dev.contains(['=', ';']) {
                return Err(wrap(format!("{dev} link name contains '=' or ';' character which is not allowed")));
            }
        }
        Ok(())
    }

    /// The XDP mode the acceleration asks for.
    fn xdp_mode_of_acceleration(&self) -> Option<XdpMode> {
        match self.node_port_acceleration {
            Acceleration::Disabled => None,
            Acceleration::Native | Acceleration::BestEffort => Some(XdpMode::Native),
            Acceleration::Generic => Some(XdpMode::Generic),
        }
    }
}

/// The agent after start-up: effective settings and the selected devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Startup {
    pub settings: Settings,
    pub selection: Selection,
}

/// The whole start-up sequence of `newDaemon` up to the datapath: derive the settings, detect
/// devices on these links and routes (`node_ip` is the Kubernetes node IP; when given, k8s
/// counts as enabled), finish the kube-proxy-replacement init, then the masquerade, egress
/// gateway and "no device" checks. `cilium_wg0` must already be among `links` when WireGuard is
/// on (the real agent creates it; here the topology declares it).
pub fn start(
    cfg: &AgentConfig,
    profile: Profile,
    links: &[LinkInfo],
    routes: &[RouteInfo],
    node_ip: Option<IpAddr>,
) -> Result<Startup, ConfigError> {
    let mut s = Settings::derive(cfg, profile)?;
    if s.enable_wireguard && !links.iter().any(|l| l.name == WIREGUARD_DEVICE) {
        return Err(refused(format!(
            "failed to initialize wireguard agent: link {WIREGUARD_DEVICE} does not exist (the \
             harness expects the topology to declare it, kind wireguard)"
        )));
    }
    let mut selection = match devices::select(&s, links, routes, node_ip) {
        Ok(sel) => sel,
        Err(e) if s.are_devices_required() => {
            return Err(refused(format!("failed to detect devices: {e}")));
        }
        Err(e) => {
            s.warnings.push(format!("failed to detect devices, disabling BPF NodePort: {e}"));
            s.disable_node_port();
            devices::selection_after_failure(&s, links, routes)
        }
    };
    s.finish_kpr_init(&mut selection, links)?;
    s.masquerade_checks()?;
    if selection.devices.is_empty() {
        if s.enable_host_firewall {
            return Err(refused(
                "Host firewall's external facing device could not be determined. Use --devices to specify.",
            ));
        }
        if s.enable_high_scale_ipcache {
            return Err(refused(
                "External facing device for high-scale IPcache could not be determined. Use --devices to specify.",
            ));
        }
    }
    Ok(Startup { settings: s, selection })
}

impl Settings {
    /// newDaemon after `finishKubeProxyReplacementInit`: BPF masquerade falls back to iptables
    /// when its prerequisites are missing; the egress gateway refuses to start without it.
    fn masquerade_checks(&mut self) -> Result<(), ConfigError> {
        if self.profile.has(Change::BpfMasqueradeWithoutNodePort) {
            if self.enable_bpf_masquerade && !self.masquerading_enabled() {
                return Err(refused(
                    "BPF masquerade requires (--enable-ipv4-masquerade=\"true\" or \
                     --enable-ipv6-masquerade=\"true\")",
                ));
            }
        } else if self.masquerading_enabled() && self.enable_bpf_masquerade {
            let err = if !self.enable_node_port {
                Some("BPF masquerade requires NodePort (--enable-node-port=\"true\")")
            } else if !self.profile.has(Change::BpfMasqueradeOnlyNeedsNodePort) && !self.enable_remote_node_identity {
                Some("BPF masquerade requires remote node identities (--enable-remote-node-identity=\"true\")")
            } else if !self.profile.has(Change::BpfMasqueradeOnlyNeedsNodePort)
                && self.tunneling_enabled()
                && !self.enable_socket_lb
            {
                Some("BPF masquerade requires socket-LB (--bpf-lb-sock=\"false\")")
            } else {
                None
            };
            if let Some(e) = err {
                if self.profile.has(Change::BpfMasqueradeChecksFatal) {
                    return Err(refused(format!("unable to initialize BPF masquerade support: {e}")));
                }
                self.enable_bpf_masquerade = false;
                self.warnings.push(format!("{e}: Falling back to iptables-based masquerading."));
                self.enable_host_legacy_routing = true;
            }
        }
        if self.enable_ipv4_egress_gateway && !self.enable_remote_node_identity {
            return Err(refused(
                "egress gateway requires remote node identities (--enable-remote-node-identity=\"true\").",
            ));
        }
        if self.masquerading_enabled() && self.enable_bpf_masquerade {
        } else if self.enable_ipv4_egress_gateway {
            return Err(refused(
                "egress gateway requires --enable-ipv4-masquerade=\"true\" and --enable-bpf-masquerade=\"true\"",
            ));
        } else if !self.masquerading_enabled() && self.enable_bpf_masquerade {
            self.enable_bpf_masquerade = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{base, cfg, derive, refused_msg};
    use crate::devices::tu::*;

    #[test]
    fn finish_appends_wireguard_and_sets_xdp() {
        let links = vec![lo(), link(2, "eth0", "veth"), link(3, WIREGUARD_DEVICE, "wireguard")];
        let mut s = derive(&[
            ("kube-proxy-replacement", "true"),
            ("enable-wireguard", "true"),
            ("encrypt-node", "true"),
            ("node-port-acceleration", "native"),
            ("routing-mode", "native"),
            ("ipv4-native-routing-cidr", "10.0.0.0/8"),
        ])
        .unwrap();
        let mut sel = Selection { devices: names(&["eth0"]), ..Selection::default() };
        s.finish_kpr_init(&mut sel, &links).unwrap();
        assert_eq!(sel.devices, names(&["eth0", WIREGUARD_DEVICE]));
        assert_eq!(s.xdp_mode, Some(XdpMode::Native));
        // iptables masquerading (the default) forces legacy host routing.
        assert!(s.enable_host_legacy_routing);

        // Neither NodePort nor WireGuard: disableNodePort, nothing appended.
        let mut s = base();
        let mut sel = Selection { devices: names(&["eth0"]), ..Selection::default() };
        s.finish_kpr_init(&mut sel, &links).unwrap();
        assert!(s.enable_host_legacy_routing && !s.enable_node_port);
        assert_eq!(sel.devices, names(&["eth0"]));

        // NodePort: every device must exist.
        let mut s = derive(&[("enable-node-port", "true")]).unwrap();
        let mut sel = Selection { devices: names(&["eth9"]), ..Selection::default() };
        let m = refused_msg(s.finish_kpr_init(&mut sel, &links));
        assert!(m.contains("Cannot retrieve eth9 link"), "{m}");
    }

    #[test]
    fn masquerade_and_egress_gateway() {
        let (links, routes) = seed();
        let ip = Some("10.212.0.10".parse().unwrap());
        let st = start(&cfg(&[("enable-bpf-masquerade", "true")]), Profile::V1_14_4, &links, &routes, ip).unwrap();
        assert!(!st.settings.enable_bpf_masquerade);
        assert!(st.settings.warnings.iter().any(|w| w.contains("BPF masquerade requires NodePort")));
        let m =
            refused_msg(start(&cfg(&[("enable-ipv4-egress-gateway", "true")]), Profile::V1_14_4, &links, &routes, ip));
        assert!(m.contains(
            "egress gateway requires --enable-ipv4-masquerade=\"true\" and --enable-bpf-masquerade=\"true\""
        ));
        let both = cfg(&[("enable-ipv4-egress-gateway", "true"), ("enable-bpf-masquerade", "true")]);
        assert!(start(&both, Profile::V1_14_4, &links, &routes, ip).is_err(), "BPF masquerade fell back: no NodePort");
        let ok = cfg(&[
            ("enable-ipv4-egress-gateway", "true"),
            ("enable-bpf-masquerade", "true"),
            ("kube-proxy-replacement", "true"),
        ]);
        let st = start(&ok, Profile::V1_14_4, &links, &routes, ip).unwrap();
        assert!(st.settings.enable_bpf_masquerade);
    }

    #[test]
    fn host_firewall_without_device_is_refused() {
        // Nothing viable on the node and no node IP: detection succeeds with no device.
        let links = vec![lo()];
        let c = cfg(&[("enable-host-firewall", "true"), ("enable-host-legacy-routing", "true")]);
        let m = refused_msg(start(&c, Profile::V1_14_4, &links, &[], None));
        assert!(m.contains("Host firewall's external facing device could not be determined. Use --devices to specify."));
        // With BPF host routing on, detection itself fails first (devices are required).
        let c = cfg(&[("enable-host-firewall", "true")]);
        let m = refused_msg(start(&c, Profile::V1_14_4, &links, &[], None));
        assert!(m.contains("failed to detect devices: unable to determine direct routing device"), "{m}");
    }

    #[test]
    fn detect_failure_without_required_devices_disables_node_port() {
        // No device requirement, no node IP, BPF host routing on: DR detection fails, logged.
        let (links, routes) = seed();
        let st = start(&cfg(&[]), Profile::V1_14_4, &links, &routes, None).unwrap();
        assert!(st.selection.devices.is_empty());
        assert!(st.settings.warnings.iter().any(|w| w.contains("failed to detect devices, disabling BPF NodePort")));
        // The node IP not found on any link, with k8s on.
        let st = start(&cfg(&[]), Profile::V1_14_4, &links, &routes, Some("10.9.9.9".parse().unwrap())).unwrap();
        assert!(st.settings.warnings.iter().any(|w| w.contains("k8s is enabled, but still failed to find node IP")));
        let m = refused_msg(start(
            &cfg(&[("enable-node-port", "true")]),
            Profile::V1_14_4,
            &links,
            &routes,
            Some("10.9.9.9".parse().unwrap()),
        ));
        assert!(m.contains("failed to detect devices: k8s is enabled, but still failed to find node IP"));
    }

    #[test]
    fn comma_separated_devices_are_one_name_in_v1_14_4() {
        let (links, routes) = seed();
        let c = cfg(&[("devices", "bond0,bond0.212"), ("enable-node-port", "true")]);
        let m = refused_msg(start(&c, Profile::V1_14_4, &links, &routes, None));
        assert!(m.contains("Cannot retrieve bond0,bond0.212 link: Link not found"), "{m}");
    }

    #[test]
    fn ipv6_ndp_needs_a_multicast_device_when_nothing_is_detected() {
        let m = refused_msg(derive(&[
            ("enable-ipv6", "true"),
            ("enable-ipv6-ndp", "true"),
            ("kube-proxy-replacement", "disabled"),
        ]));
        assert!(m.contains("IPv6NDP cannot be enabled without ipv6-mcast-device"), "{m}");
        assert!(derive(&[
            ("enable-ipv6", "true"),
            ("enable-ipv6-ndp", "true"),
            ("kube-proxy-replacement", "disabled"),
            ("ipv6-mcast-device", "eth0"),
        ])
        .is_ok());
    }

    #[test]
    fn wireguard_needs_its_device() {
        let (links, routes) = seed();
        let m = refused_msg(start(&cfg(&[("enable-wireguard", "true")]), Profile::V1_14_4, &links, &routes, None));
        assert!(m.contains("cilium_wg0"));
    }
}
