//! Upstream behaviour profiles as data: a profile is a release, and what the rules may ask of it
//! is which named upstream changes it has. Each [`Change`] is one row of [`CHANGES`]: the release
//! that brought it, the release that took it away again (if one did) and where upstream made
//! it. Rules ask `profile.has(Change::X)`; only this file orders releases, so adding a release
//! is adding a [`Profile`] and the rows that name it.

use std::fmt::Write as _;

use serde::Serialize;

/// An upstream release the profiles are read at. Ordered by version; only this module compares
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Release(u16, u16, u16);

/// An upstream behaviour profile: which release's rules the loader follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Profile {
    /// Cilium v1.14.4.
    V1_14_4,
    /// Cilium v1.15.x (read at v1.15.7).
    V1_15,
    /// Cilium v1.16.x (read at v1.16.0 and v1.16.8).
    V1_16,
    /// Cilium v1.17.3 and later (read at v1.17.3 and v1.17.10). v1.17.0-v1.17.2 differ: their
    /// `AreDevicesRequired` has `EnableIPSecEncryptedOverlay` instead of `EnableIPSec`, and their
    /// WireGuard reload returns early as v1.16's does (no detach of `cil_to_wireguard` or of
    /// `cil_from_netdev` on `cilium_wg0`, nothing of v1.18's `cil_from_wireguard` removed).
    /// Neither is modelled separately.
    V1_17,
    /// Cilium v1.18.x (read at v1.18.10).
    V1_18,
    /// Cilium v1.19.x (read at v1.19.4).
    V1_19,
}

/// One profile's facts: its name in scenario files, the release it stands for, and the patch
/// release its rules were read at.
struct ProfileInfo {
    profile: Profile,
    name: &'static str,
    release: Release,
    read_at: &'static str,
}

const PROFILES: [ProfileInfo; 6] = [
    ProfileInfo { profile: Profile::V1_14_4, name: "v1.14.4", release: V1_14_4, read_at: "v1.14.4" },
    ProfileInfo { profile: Profile::V1_15, name: "v1.15", release: V1_15, read_at: "v1.15.7" },
    ProfileInfo { profile: Profile::V1_16, name: "v1.16", release: V1_16, read_at: "v1.16.0, v1.16.8" },
    ProfileInfo { profile: Profile::V1_17, name: "v1.17", release: V1_17_3, read_at: "v1.17.3, v1.17.10" },
    ProfileInfo { profile: Profile::V1_18, name: "v1.18", release: V1_18, read_at: "v1.18.10" },
    ProfileInfo { profile: Profile::V1_19, name: "v1.19", release: V1_19, read_at: "v1.19.4" },
];

impl Profile {
    /// Every profile, oldest first.
    pub const ALL: [Profile; 6] =
        [Profile::V1_14_4, Profile::V1_15, Profile::V1_16, Profile::V1_17, Profile::V1_18, Profile::V1_19];

    fn info(self) -> &'static ProfileInfo {
        PROFILES.iter().find(|p| p.profile == self).expect("every profile has a row")
    }

    /// Parses a profile name as written in scenario files.
    pub fn parse(s: &str) -> Option<Profile> {
        PROFILES.iter().find(|p| p.name == s).map(|p| p.profile)
    }

    /// The name scenario files use (`v1.14.4`, `v1.15`, ..., `v1.19`).
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// The patch release(s) this profile's rules were read at.
    pub fn read_at(self) -> &'static str {
        self.info().read_at
    }

    /// The profile of a Cilium release given as its image tag (`1.16.8`, `v1.16.8`,
    /// `quay.io/cilium/cilium:v1.16.8@sha256:...`), with a note when the release is one the
    /// profile was not read at and is known, or may be, to differ. An unknown or unsupported
    /// release is an error that lists the supported ones.
    pub fn from_version(tag: &str) -> Result<(Profile, Option<String>), String> {
        let t = tag.rsplit('/').next().unwrap_or(tag);
        let t = t.split('@').next().unwrap_or(t);
        let t = t.rsplit_once(':').map_or(t, |(_, v)| v);
        let t = t.strip_prefix('v').unwrap_or(t);
        let core = t.split(['-', '+']).next().unwrap_or(t);
        let nums: Vec<Option<u16>> = core.split('.').map(|x| x.parse().ok()).collect();
        let supported =
            "1.14.4, 1.15.x, 1.16.x, 1.17.x, 1.18.x, 1.19.x (profiles v1.14.4, v1.15, v1.16, v1.17, v1.18, v1.19)";
        let unsupported = || format!("unknown or unsupported Cilium version {tag:?}: give one of {supported}");
        let [Some(major), Some(minor), Some(patch)] = nums[..] else { return Err(unsupported()) };
        let (profile, note) = match (major, minor, patch) {
            (1, 14, 4) => (Profile::V1_14_4, None),
            (1, 14, p) => {
                (Profile::V1_14_4, Some(format!("profile v1.14.4 was read at v1.14.4 only; v1.14.{p} may differ")))
            }
            (1, 15, 7) => (Profile::V1_15, None),
            (1, 15, p) => (Profile::V1_15, Some(format!("profile v1.15 was read at v1.15.7; v1.15.{p} may differ"))),
            (1, 16, _) => (Profile::V1_16, None),
            (1, 17, p) if p < 3 => (
                Profile::V1_17,
                Some(format!(
                    "profile v1.17 is read at v1.17.3 and later; v1.17.{p} differs: its AreDevicesRequired has \
                     EnableIPSecEncryptedOverlay instead of EnableIPSec, and its WireGuard reload returns early as \
                     v1.16's does (no detach of cil_to_wireguard or of cil_from_netdev on cilium_wg0)"
                )),
            ),
            (1, 17, _) => (Profile::V1_17, None),
            (1, 18, 10) => (Profile::V1_18, None),
            (1, 18, p) => (Profile::V1_18, Some(format!("profile v1.18 was read at v1.18.10; v1.18.{p} may differ"))),
            (1, 19, 4) => (Profile::V1_19, None),
            (1, 19, p) => (Profile::V1_19, Some(format!("profile v1.19 was read at v1.19.4; v1.19.{p} may differ"))),
            _ => return Err(unsupported()),
        };
        Ok((profile, note))
    }

    /// Profiles the loader implements (scenario validation rejects the others).
    pub fn implemented() -> &'static [Profile] {
        &Profile::ALL
    }

    /// Whether this profile's release has `change`: it came in this release or earlier, and
    /// was not taken away again by this release.
    pub fn has(self, change: Change) -> bool {
        let row = change.row();
        let r = self.info().release;
        row.since <= r && row.until.is_none_or(|u| r < u)
    }

    /// The changes this profile's release brought or took away, against the profile before it.
    pub fn changes(self) -> impl Iterator<Item = (&'static ChangeRow, bool)> {
        let prev = Profile::ALL.iter().take_while(|p| **p != self).last().copied();
        CHANGES.iter().filter_map(move |row| {
            let now = self.has(row.change);
            let before = prev.is_some_and(|p| p.has(row.change));
            (now != before && prev.is_some()).then_some((row, now))
        })
    }
}

/// A named upstream change the rules consult. The row in [`CHANGES`] says when it came, when it
/// went, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// `AreDevicesRequired` includes `EnableBandwidthManager`.
    BandwidthManagerRequiresDevices,
    /// `AreDevicesRequired` includes `ForceDeviceRequired`.
    ForceDeviceRequired,
    /// The deprecated `tunnel` key is gone: a ConfigMap entry is ignored.
    TunnelKeyRemoved,
    /// DSR with Geneve dispatch makes the agent keep a `cilium_geneve` device whatever
    /// `tunnel-protocol` says (v1.14.4 `Reinitialize` hands init.sh "geneve").
    DsrGeneveForcesGeneveDevice,
    /// Device selection by the statedb devices controller (`DevicesController`), replacing
    /// `DeviceManager.Detect`.
    DevicesController,
    /// v1.15's controller-era `Detect` only selects when devices are required, and fails on a
    /// wildcard that matches nothing.
    DetectOnlyWhenRequired,
    /// IPoIB devices are excluded from auto-detection.
    IpoibExcluded,
    /// List-valued keys are split on commas first (hive configuration).
    ListsSplitOnCommas,
    /// Only `true` and `false` are accepted for `kube-proxy-replacement`.
    KprOnlyTrueFalse,
    /// `enable-envoy-config` turns NodePort on ("L7 LB only works with bpf node port").
    EnvoyConfigEnablesNodePort,
    /// IPsec refuses BPF NodePort at start-up.
    IpsecRefusesNodePort,
    /// `bpf-lb-acceleration` / `node-port-acceleration` accepts `best-effort`.
    BestEffortAcceleration,
    /// `finishKubeProxyReplacementInit` appends `cilium_wg0` to the devices with NodePort,
    /// WireGuard and encrypt-node.
    WireguardAppendedToDevices,
    /// BPF host routing needs `kube-proxy-replacement=true` (`strict` no longer counts).
    HostRoutingNeedsKprTrue,
    /// The encapsulation device is made in Go (`setupTunnelDevice`: create, then delete the
    /// other) instead of init.sh (delete, then create).
    TunnelDeviceInGo,
    /// init.sh's device-state flush and its removal of `bpf_host` filters from links that are
    /// no longer devices.
    InitShDeviceCleanup,
    /// `attachTCProgram`/`attachSKBProgram`: tc programs are attached through a helper that
    /// knows tcx pins (v1.15 unpins a newer release's tcx link).
    SkbProgramHelper,
    /// tcx attachment (`enable-tcx`), with tc as the fall-back, pins under
    /// `cilium/devices/<dev>/links`; a tcx attach removes the legacy filters of its hook.
    Tcx,
    /// `--force-device-detection`.
    ForceDeviceDetection,
    /// `removeObsoleteNetdevPrograms` after the host datapath reload.
    RemoveObsoleteNetdevPrograms,
    /// Obsolete-program removal also removes the device's bpffs folder.
    RemoveObsoleteDeviceDir,
    /// An unused egress hook is cleared with `detachSKBProgram` (pin and filters) instead of a
    /// flush.
    DetachSkbProgram,
    /// bpf_host on `cilium_wg0` ingress is decided by the loader
    /// (`NeedBPFHostOnWireGuardDevice`), not by the device list.
    WireguardIngressInLoader,
    /// `bpf_wireguard.c`'s `cil_to_wireguard` on `cilium_wg0` egress (`reinitializeWireguard`).
    WireguardEgressProgram,
    /// `reinitializeWireguard` runs whenever WireGuard is on (so `cilium_wg0` must exist) and
    /// detaches what is not needed: `cil_to_wireguard` from egress, and `cil_from_netdev` from
    /// ingress when bpf_host is not needed there.
    WireguardDetachesUnneeded,
    /// v1.17.3's removal of what v1.18 leaves on `cilium_wg0` ingress: `cil_from_wireguard` is
    /// detached right after `cil_from_netdev` is attached, or with it when bpf_host is not needed.
    WireguardRemovesV118Ingress,
    /// `bpf_wireguard.c`'s `cil_from_wireguard` on `cilium_wg0` ingress replaces bpf_host there,
    /// attached by `replaceWireguardDatapath` under `NeedIngressOnWireGuardDevice`.
    WireguardIngressProgram,
    /// v1.18's clean-up of v1.17's `cil_from_netdev` on `cilium_wg0` ingress, run unconditionally
    /// after `cil_from_wireguard` is attached.
    WireguardRemovesV117Netdev,
    /// `cil_from_wireguard` is attached to `cilium_wg0` ingress whenever WireGuard is on.
    WireguardIngressAlways,
    /// `cilium cleanup` also removes Cilium's bpffs folder, which unpins its tcx links.
    CleanupRemovesBpffs,
    /// The device reloader always runs: runtime device detection is on whatever the flag says.
    DeviceReloaderAlwaysOn,
    /// `maybeUnloadObsoleteXDPPrograms` keeps a device's XDP program when its attach mode is the
    /// configured one (v1.14.4 tests `IFLA_XDP_FLAGS`, which a link dump never carries, so it
    /// detaches every XDP program on a link whose name lacks "cilium").
    XdpKeepsMatchingMode,
    /// `cil_xdp_entry` is attached as a bpf_link pinned at `cilium/devices/<dev>/links/`
    /// (netlink only when the kernel refuses the link with EBUSY); the obsolete sweep unpins it.
    XdpBpfLink,
    /// `best-effort` acceleration: a device whose XDP attach fails is skipped with a log line.
    BestEffortSkipsDevice,
    /// `DeviceManager.Listen`: at run time a device is only added by a new route that makes it
    /// viable (any family, any table) and only removed when its link is deleted.
    ListenRuntimeDevices,
    /// BPF masquerade without its prerequisites refuses start-up instead of falling back to
    /// iptables masquerading.
    BpfMasqueradeChecksFatal,
    /// BPF masquerade's remote-node-identity and socket-LB prerequisites are gone (NodePort
    /// and masquerade interfaces remain).
    BpfMasqueradeOnlyNeedsNodePort,
    /// `enable-ipv6-ndp` needs `ipv6-mcast-device`: no auto-detection escape.
    NdpNeedsMcastDevice,
    /// `finishKubeProxyReplacementInit` returns early whenever NodePort is off (WireGuard alone no
    /// longer reaches the XDP mode and the host-routing checks).
    KprInitNeedsNodePort,
    /// The XDP cell sets the XDP mode straight from `bpf-lb-acceleration`, NodePort or not.
    XdpModeFromAcceleration,
    /// `AreDevicesRequired` includes `EnableIPSec` (v1.17.3; v1.17.0-v1.17.2 have
    /// `EnableIPSecEncryptedOverlay` as v1.16 does).
    IpsecRequiresDevices,
    /// High-scale ipcache is gone: `enable-high-scale-ipcache` left in a ConfigMap is ignored.
    HighScaleIpcacheRemoved,
    /// The kpr cell refuses any `kube-proxy-replacement` but `true`/`false` with its own message.
    KprCellMessage,
    /// `kube-proxy-replacement` is a Go bool flag (`strconv.ParseBool`).
    KprGoBool,
    /// `enable-node-port` is gone (ignored when left in a ConfigMap): NodePort follows
    /// kube-proxy-replacement.
    NodePortKeyRemoved,
    /// `AreDevicesRequired` includes `EnableBPFMasquerade`.
    BpfMasqueradeRequiresDevices,
    /// The `--devices` filter is checked first: a listed device is selected without an address
    /// and while down; `!name` entries exclude.
    UserDevicesFirst,
    /// BPF masquerade no longer needs NodePort; it refuses to start with both masquerade
    /// families off instead.
    BpfMasqueradeWithoutNodePort,
}

/// One row of the change table.
#[derive(Debug)]
pub struct ChangeRow {
    pub change: Change,
    /// A short name for the table.
    pub name: &'static str,
    since: Release,
    until: Option<Release>,
    /// Where upstream made it: commit, PR, or the file and function at the release commit.
    pub upstream: &'static str,
}

const V1_14_4: Release = Release(1, 14, 4);
const V1_15: Release = Release(1, 15, 0);
const V1_16: Release = Release(1, 16, 0);
/// v1.17.3: the v1.17 profile (IPsec requires devices, the WireGuard detaches).
const V1_17: Release = Release(1, 17, 0);
const V1_17_3: Release = Release(1, 17, 3);
const V1_18: Release = Release(1, 18, 0);
const V1_19: Release = Release(1, 19, 0);
/// Older than every profile: a behaviour every profile starts with.
const BEFORE: Release = Release(1, 0, 0);

const fn row(
    change: Change,
    name: &'static str,
    since: Release,
    until: Option<Release>,
    upstream: &'static str,
) -> ChangeRow {
    ChangeRow { change, name, since, until, upstream }
}

/// The change table: every upstream change the rules consult, oldest first.
pub const CHANGES: &[ChangeRow] = &[
    row(
        Change::BandwidthManagerRequiresDevices,
        "bandwidth manager requires devices",
        BEFORE,
        Some(V1_15),
        "PR #18717 added it; 32fbb7f186 \"bandwidth: move to datapath, cellify\" dropped it",
    ),
    row(
        Change::DsrGeneveForcesGeneveDevice,
        "DSR-Geneve forces cilium_geneve",
        BEFORE,
        Some(V1_15),
        "v1.14.4 pkg/datapath/loader/base.go Reinitialize (encapProto); v1.15 pkg/datapath/tunnel newConfig",
    ),
    row(
        Change::EnvoyConfigEnablesNodePort,
        "envoy config enables NodePort",
        BEFORE,
        Some(V1_16),
        "v1.14.4 daemon/cmd/kube_proxy_replacement.go initKubeProxyReplacementOptions; gone in v1.16",
    ),
    row(
        Change::IpsecRefusesNodePort,
        "IPsec refuses BPF NodePort",
        BEFORE,
        Some(V1_16),
        "v1.14.4/v1.15 kube_proxy_replacement.go initKubeProxyReplacementOptions; gone in v1.16",
    ),
    row(
        Change::WireguardAppendedToDevices,
        "cilium_wg0 appended to devices",
        BEFORE,
        Some(V1_16),
        "v1.14.4 kube_proxy_replacement.go finishKubeProxyReplacementInit (AppendDevice); v1.16 loader decides",
    ),
    row(
        Change::InitShDeviceCleanup,
        "init.sh device-state flush",
        BEFORE,
        Some(V1_15),
        "v1.14.4 bpf/init.sh; init.sh gone in v1.15 (loader in Go)",
    ),
    row(
        Change::ForceDeviceRequired,
        "ForceDeviceRequired",
        V1_15,
        None,
        "48a1c96cc7 \"Add option to force BPF attachment to native device\"",
    ),
    row(
        Change::TunnelKeyRemoved,
        "tunnel key removed",
        V1_15,
        None,
        "v1.15 pkg/option/config.go: the deprecated --tunnel flag is gone",
    ),
    row(
        Change::DevicesController,
        "devices controller",
        V1_15,
        None,
        "03ad61b6b3 (DevicesController); v1.15 pkg/datapath/linux/devices_controller.go",
    ),
    row(
        Change::DetectOnlyWhenRequired,
        "detect only when devices are required",
        V1_15,
        Some(V1_16),
        "b55ca78259 \"datapath/linux: select devices only if required\" (#27276); 5d1521bdf3 removed the gate",
    ),
    row(
        Change::ListenRuntimeDevices,
        "runtime devices from routes (Listen)",
        BEFORE,
        Some(V1_15),
        "v1.14.4 pkg/datapath/linux/devices.go (*DeviceManager).Listen L322-419, updateDevicesFromRoutes L279-318",
    ),
    row(
        Change::XdpKeepsMatchingMode,
        "obsolete XDP sweep keeps the matching mode",
        V1_15,
        None,
        "v1.15.7 pkg/datapath/loader/xdp.go maybeUnloadObsoleteXDPPrograms L80-94 (AttachMode); v1.14.4 xdp.go L34-67 tests Flags",
    ),
    row(
        Change::XdpBpfLink,
        "XDP as a pinned bpf_link",
        V1_15,
        None,
        "v1.15.7 pkg/datapath/loader/xdp.go attachXDPProgram L184-263, DetachXDP L269-291",
    ),
    row(
        Change::BestEffortSkipsDevice,
        "best-effort skips a device refusing XDP",
        V1_15,
        None,
        "v1.15.7 pkg/datapath/loader/base.go reinitializeXDPLocked L326-331",
    ),
    row(
        Change::BpfMasqueradeChecksFatal,
        "BPF masquerade prerequisites fatal",
        V1_15,
        None,
        "v1.15.7 daemon/cmd/daemon.go newDaemon L746-766; v1.14.4 falls back to iptables",
    ),
    row(
        Change::BestEffortAcceleration,
        "best-effort XDP acceleration",
        V1_15,
        None,
        "v1.15.7 daemon/cmd/kube_proxy_replacement.go; pkg/datapath/loader/base.go L327-329",
    ),
    row(
        Change::TunnelDeviceInGo,
        "tunnel device made in Go",
        V1_15,
        None,
        "v1.15 pkg/datapath/loader/base.go setupTunnelDevice",
    ),
    row(
        Change::SkbProgramHelper,
        "attachTCProgram / attachSKBProgram",
        V1_15,
        None,
        "v1.15 pkg/datapath/loader/tc.go attachTCProgram; v1.16 attachSKBProgram",
    ),
    row(
        Change::RemoveObsoleteNetdevPrograms,
        "remove obsolete netdev programs",
        V1_15,
        None,
        "v1.15 pkg/datapath/loader/loader.go removeObsoleteNetdevPrograms",
    ),
    row(
        Change::ListsSplitOnCommas,
        "lists split on commas",
        V1_16,
        None,
        "v1.16 hive configuration (pkg/hive cell config, StringSlice decoding)",
    ),
    row(
        Change::KprOnlyTrueFalse,
        "kube-proxy-replacement true or false only",
        V1_16,
        None,
        "v1.16 daemon/cmd/kube_proxy_replacement.go initKubeProxyReplacementOptions",
    ),
    row(
        Change::HostRoutingNeedsKprTrue,
        "BPF host routing needs KPR true",
        V1_16,
        None,
        "v1.16 daemon/cmd/kube_proxy_replacement.go finishKubeProxyReplacementInit",
    ),
    row(
        Change::IpoibExcluded,
        "IPoIB excluded",
        V1_16,
        None,
        "v1.16 pkg/datapath/linux/devices_controller.go isSelectedDevice",
    ),
    row(
        Change::BpfMasqueradeOnlyNeedsNodePort,
        "BPF masquerade needs only NodePort",
        V1_16,
        None,
        "v1.16.8 daemon/cmd/daemon.go newDaemon L680-695",
    ),
    row(
        Change::NdpNeedsMcastDevice,
        "IPv6 NDP needs ipv6-mcast-device",
        V1_16,
        None,
        "v1.16.8 pkg/option/config.go (*DaemonConfig).Validate L2837-2839",
    ),
    row(
        Change::KprInitNeedsNodePort,
        "KPR init returns early without NodePort",
        V1_16,
        None,
        "7897ab9334; v1.16.8 daemon/cmd/kube_proxy_replacement.go finishKubeProxyReplacementInit L347-351",
    ),
    row(
        Change::XdpModeFromAcceleration,
        "XDP mode from bpf-lb-acceleration without NodePort",
        V1_17,
        None,
        "df8d59691f; v1.17.10 pkg/datapath/xdp/cell.go L36-49",
    ),
    row(
        Change::IpsecRequiresDevices,
        "IPsec requires devices",
        V1_17_3,
        None,
        "3000c80e48 / a8c19d8d7c \"ipsec,config: require devices when IPsec is enabled\"; v1.17.10 pkg/option/config.go AreDevicesRequired L2383-2387",
    ),
    row(
        Change::HighScaleIpcacheRemoved,
        "high-scale ipcache removed",
        V1_18,
        None,
        "0addb32f4b \"Remove deprecated high-scale ipcache code\"; v1.18.10 pkg/option/config.go validateConfigMap skips unknown keys",
    ),
    row(
        Change::KprCellMessage,
        "kpr cell refuses kube-proxy-replacement values",
        V1_18,
        Some(V1_19),
        "v1.18.10 pkg/kpr/kpr.go NewKPRConfig L73-76",
    ),
    row(
        Change::KprGoBool,
        "kube-proxy-replacement is a Go bool",
        V1_19,
        None,
        "v1.19.4 pkg/kpr/kpr.go Flags L29-33; pkg/option/config.go validateConfigMapFlag L3408-3412",
    ),
    row(
        Change::NodePortKeyRemoved,
        "enable-node-port removed",
        V1_19,
        None,
        "31eecce183 \"agent: Remove deprecated EnableNodePort\"; v1.19.4 pkg/option/config.go AreDevicesRequired L1961-1964",
    ),
    row(
        Change::BpfMasqueradeRequiresDevices,
        "BPF masquerade requires devices",
        V1_19,
        None,
        "v1.19.4 pkg/option/config.go AreDevicesRequired L1961-1964",
    ),
    row(
        Change::UserDevicesFirst,
        "user-listed devices first, exclusions",
        V1_19,
        None,
        "6d5900a0d7, 31748fcda0; v1.19.4 pkg/datapath/linux/devices_controller.go isSelectedDevice L625-633",
    ),
    row(
        Change::BpfMasqueradeWithoutNodePort,
        "BPF masquerade without NodePort",
        V1_19,
        None,
        "v1.19.4 daemon/cmd/daemon.go L113-133 (masquerade interfaces, route source, both families off)",
    ),
    row(Change::Tcx, "tcx attachment", V1_16, None, "v1.16 pkg/datapath/loader/tcx.go attachSKBProgram (enable-tcx)"),
    row(Change::ForceDeviceDetection, "--force-device-detection", V1_16, None, "ce59386785 (fixes #32721)"),
    row(
        Change::RemoveObsoleteDeviceDir,
        "obsolete removal deletes bpffs dir",
        V1_16,
        None,
        "v1.16 pkg/datapath/loader/loader.go removeObsoleteNetdevPrograms",
    ),
    row(
        Change::DetachSkbProgram,
        "detachSKBProgram for unused hooks",
        V1_16,
        None,
        "v1.16 pkg/datapath/loader/tc.go detachSKBProgram",
    ),
    row(
        Change::WireguardIngressInLoader,
        "bpf_host on cilium_wg0 decided by the loader",
        V1_16,
        Some(V1_18),
        "f928ca2860 (NeedBPFHostOnWireGuardDevice); v1.16.8 pkg/option/config.go",
    ),
    row(
        Change::WireguardEgressProgram,
        "cil_to_wireguard on cilium_wg0",
        V1_16,
        None,
        "v1.16 pkg/datapath/loader/base.go reinitializeWireguard, loader.go replaceWireguardDatapath",
    ),
    row(
        Change::WireguardDetachesUnneeded,
        "WireGuard reload detaches unneeded programs",
        V1_17_3,
        None,
        "2d35849d3d \"wireguard: always detach bpf programs when not needed\" (upstream 570f056631); v1.17.10 pkg/datapath/loader/base.go reinitializeWireguard L305-326, loader.go replaceWireguardDatapath L652-668",
    ),
    row(
        Change::WireguardRemovesV118Ingress,
        "v1.17 removes v1.18's cil_from_wireguard",
        V1_17_3,
        Some(V1_18),
        "f77b43f2f3 \"wireguard: backport removal logic for v1.18 cil_from_wireguard\"; v1.17.10 pkg/datapath/loader/loader.go attachNetworkDevices L463-473, replaceWireguardDatapath L670-679",
    ),
    row(
        Change::WireguardIngressProgram,
        "cil_from_wireguard on cilium_wg0 ingress",
        V1_18,
        None,
        "f928ca2860, 0c584e7605 \"wireguard:bpf:feature: move from cil_from_netdev to cil_from_wireguard\"; v1.18.10 pkg/option/config.go NeedIngressOnWireGuardDevice L2150-2175, pkg/datapath/loader/loader.go replaceWireguardDatapath L792-806",
    ),
    row(
        Change::WireguardRemovesV117Netdev,
        "v1.18 removes v1.17's cil_from_netdev on cilium_wg0",
        V1_18,
        Some(V1_19),
        "v1.18.10 pkg/datapath/loader/loader.go replaceWireguardDatapath L807-815 (\"Cleanup previous cil_from_netdev from v1.17\"); gone in v1.19.4 wireguard.go",
    ),
    row(
        Change::WireguardIngressAlways,
        "cil_from_wireguard always on cilium_wg0",
        V1_19,
        None,
        "74be227cdc \"bpf: set skb mark on traffic decrytped by wireguard\"; v1.19.4 pkg/datapath/loader/wireguard.go replaceWireguardDatapath L84-89",
    ),
    row(
        Change::CleanupRemovesBpffs,
        "cleanup removes the bpffs folder",
        V1_16,
        None,
        "v1.16 cilium-dbg/cmd/cleanup.go removeCiliumBPFFS",
    ),
    row(
        Change::DeviceReloaderAlwaysOn,
        "device reloader always on",
        V1_16,
        None,
        "v1.16 pkg/datapath/loader device-reloader.go (enable-runtime-device-detection deprecated)",
    ),
];

impl Change {
    /// This change's row of [`CHANGES`].
    pub fn row(self) -> &'static ChangeRow {
        CHANGES.iter().find(|r| r.change == self).expect("every change has a row")
    }
}

impl ChangeRow {
    /// The first profile that has this change, or `None` when every profile has it.
    pub fn since_profile(&self) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.has(self.change)).filter(|p| *p != Profile::ALL[0] || self.since > BEFORE)
    }

    /// The first profile that no longer has it.
    pub fn until_profile(&self) -> Option<Profile> {
        let first = Profile::ALL.iter().position(|p| p.has(self.change))?;
        Profile::ALL[first..].iter().copied().find(|p| !p.has(self.change))
    }
}

/// The change table as markdown: per profile, what changed against the profile before it,
/// then every row with where it came from (`hostdp profiles`).
pub fn render_table() -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| profile | read at | changes against the profile before |");
    let _ = writeln!(out, "|---|---|---|");
    for p in Profile::ALL {
        let list: Vec<String> =
            p.changes().map(|(row, on)| format!("{} {}", if on { "+" } else { "−" }, row.name)).collect();
        let cell = if list.is_empty() { "(the baseline)".to_string() } else { list.join("; ") };
        let _ = writeln!(out, "| `{}` | {} | {} |", p.as_str(), p.read_at(), cell);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| change | from | until | upstream |");
    let _ = writeln!(out, "|---|---|---|---|");
    for row in CHANGES {
        let from = row.since_profile().map_or("(before v1.14.4)".to_string(), |p| p.as_str().to_string());
        let until = row.until_profile().map_or(String::new(), |p| p.as_str().to_string());
        let _ = writeln!(out, "| {} | {} | {} | {} |", row.name, from, until, row.upstream);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_profiles_with_notes() {
        assert_eq!(Profile::from_version("1.16.8").unwrap(), (Profile::V1_16, None));
        assert_eq!(Profile::from_version("quay.io/cilium/cilium:v1.16.8@sha256:ab").unwrap().0, Profile::V1_16);
        assert_eq!(Profile::from_version("v1.14.4").unwrap(), (Profile::V1_14_4, None));
        let (p, note) = Profile::from_version("1.17.1").unwrap();
        assert_eq!(p, Profile::V1_17);
        assert!(note.unwrap().contains("v1.17.3 and later"));
        assert_eq!(Profile::from_version("1.17.3").unwrap(), (Profile::V1_17, None));
        for bad in ["1.13.0", "1.20.1", "latest", "1.16", ""] {
            let e = Profile::from_version(bad).unwrap_err();
            assert!(e.contains("1.14.4, 1.15.x"), "{e}");
        }
    }

    #[test]
    fn every_change_has_exactly_one_row() {
        for row in CHANGES {
            assert_eq!(CHANGES.iter().filter(|r| r.change == row.change).count(), 1, "{}", row.name);
        }
    }

    #[test]
    fn a_change_applies_from_since_until_until() {
        assert!(Profile::V1_14_4.has(Change::BandwidthManagerRequiresDevices));
        assert!(!Profile::V1_15.has(Change::BandwidthManagerRequiresDevices));
        assert!(Profile::V1_15.has(Change::DetectOnlyWhenRequired));
        assert!(!Profile::V1_16.has(Change::DetectOnlyWhenRequired));
        assert!(!Profile::V1_14_4.has(Change::DetectOnlyWhenRequired));
        assert!(Profile::V1_16.has(Change::Tcx));
    }

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(Profile::parse(p.as_str()), Some(p));
        }
        assert_eq!(Profile::parse("v1.13"), None);
    }

    #[test]
    fn the_table_lists_what_each_release_changed() {
        let t = render_table();
        assert!(t.contains("| `v1.15` | v1.15.7 |"), "{t}");
        assert!(t.contains("− bandwidth manager requires devices"), "{t}");
        assert!(t.contains("| tcx attachment | v1.16 |"), "{t}");
    }
}
