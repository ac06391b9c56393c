//! `hostdp explain`: a live node's verdict, whether what is attached is what the profile's
//! agent would leave (read-only).

use std::path::PathBuf;

use super::Format;
use crate::explain::{explain, table, ExplainArgs};

/// Arguments of `hostdp explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `cilium-config` ConfigMap as `kubectl get cm -n kube-system cilium-config -o yaml`
    /// prints it; `-` reads it from standard input.
    #[arg(long)]
    pub config: PathBuf,
    /// The profile (v1.14.4, v1.15, v1.16, v1.17, v1.18, v1.19; default v1.14.4 unless
    /// --version is given).
    #[arg(long)]
    pub profile: Option<String>,
    /// The Cilium release or image tag (`1.16.8`, `quay.io/cilium/cilium:v1.16.8`): its profile.
    #[arg(long)]
    pub version: Option<String>,
    /// The network namespace to read (`ip netns` name); default: the root namespace.
    #[arg(long)]
    pub netns: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `hostdp explain`: 0 match, 1 differs, 2 invalid input, 4 the kernel could not be read,
/// 5 the agent would refuse to start.
pub fn exec(args: Args) -> i32 {
    let a = ExplainArgs { config: args.config, profile: args.profile, version: args.version, netns: args.netns };
    match explain(&a) {
        Ok(report) => {
            if args.format == Format::Json {
                outln!("{}", serde_json::to_string_pretty(&report).expect("serialise the report"));
            } else {
                out!("{}", table(&report));
            }
            if let Some(r) = report.refusal.as_deref().filter(|_| args.format == Format::Json) {
                errln!("hostdp explain: the agent would refuse to start: {r}");
            }
            report.verdict.status()
        }
        Err(e) => {
            errln!("hostdp explain: {e}");
            e.status()
        }
    }
}
