//! `hostdp run --suggest`: the `expect:` block that would match what a step observed, in the
//! scenario format, ready to paste over the step's own (the file is never rewritten).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::datapath::full_program_name;
use crate::observed::{Attachment, Hook};
use crate::record::StepRecord;
use crate::scenario::Expect;

/// The `expect:` block for `step`, indented by `indent` spaces (4 for a step of a top-level
/// `steps:` list). It has the keys the step's own expectation had (`unchanged: true` that did
/// not hold becomes the full `attachments`), and `error:` when the step failed with one.
pub fn expect_block(expect: &Expect, step: &StepRecord, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = format!("{pad}expect:\n");
    if let Some(e) = &step.error {
        let _ = writeln!(out, "{pad}  error: {}", scalar(e));
    }
    if expect.devices.is_some() {
        let mut d = step.devices.clone().unwrap_or_default();
        d.sort();
        let _ = writeln!(out, "{pad}  devices: {}", list(&d));
    }
    let unchanged_failed = step.mismatches.iter().any(|m| m.key == "unchanged");
    if expect.unchanged == Some(true) && !unchanged_failed {
        let _ = writeln!(out, "{pad}  unchanged: true");
    }
    if expect.attachments.is_some() || unchanged_failed {
        attachments(&mut out, &pad, &step.attachments);
    }
    if expect.regenerated.is_some() {
        let mut r = step.regenerated.clone();
        r.sort();
        let _ = writeln!(out, "{pad}  regenerated: {}", list(&r));
    }
    out
}

fn attachments(out: &mut String, pad: &str, atts: &[Attachment]) {
    // Device as a scenario names it → hook → programs in hook order.
    let mut by: BTreeMap<String, BTreeMap<Hook, Vec<&Attachment>>> = BTreeMap::new();
    for a in atts {
        let dev = a.endpoint.clone().unwrap_or_else(|| a.device.clone());
        by.entry(dev).or_default().entry(a.hook).or_default().push(a);
    }
    if by.is_empty() {
        let _ = writeln!(out, "{pad}  attachments: {{}}");
        return;
    }
    let _ = writeln!(out, "{pad}  attachments:");
    for (dev, hooks) in &by {
        let names = |h: Hook| -> Vec<String> {
            hooks
                .get(&h)
                .map(|v| v.iter().map(|a| full_program_name(&a.program).to_string()).collect())
                .unwrap_or_default()
        };
        let mut parts = vec![
            format!("ingress: {}", list(&names(Hook::Ingress))),
            format!("egress: {}", list(&names(Hook::Egress))),
        ];
        if let Some(x) = hooks.get(&Hook::Xdp).and_then(|v| v.first()) {
            let mode = x.mode.as_deref().map(|m| format!(", mode: {m}")).unwrap_or_default();
            parts.push(format!("xdp: {{program: {}{mode}}}", scalar(full_program_name(&x.program))));
        }
        let _ = writeln!(out, "{pad}    {}: {{{}}}", scalar(dev), parts.join(", "));
    }
}

fn list(v: &[String]) -> String {
    format!("[{}]", v.iter().map(|s| scalar(s)).collect::<Vec<_>>().join(", "))
}

/// A YAML scalar: plain when it is safe in flow context, else double-quoted (JSON escaping is
/// valid YAML).
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:".contains(c))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !s.ends_with(':')
        && !["true", "false", "yes", "no", "on", "off", "null", "y", "n"].contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::att;
    use crate::record::{Mismatch, Status};

    #[test]
    fn the_block_has_the_steps_keys_full_names_and_parses() {
        let mut pod = att("lxc0123456789ab", Hook::Ingress, "cil_from_contai");
        pod.endpoint = Some("pod:default/web".into());
        let step = StepRecord {
            action: "start".into(),
            line: 3,
            status: Status::Fail,
            error: None,
            devices: Some(vec!["eth0".into()]),
            regenerated: vec!["host".into()],
            attachments: vec![att("eth0", Hook::Ingress, "cil_from_netdev"), pod],
            mismatches: vec![Mismatch { key: "unchanged".into(), ..Default::default() }],
            policy_maps: vec![],
            traffic: None,
        };
        let expect = Expect { devices: Some(vec![]), unchanged: Some(true), ..Default::default() };
        let b = expect_block(&expect, &step, 4);
        assert_eq!(
            b,
            "    expect:\n      devices: [eth0]\n      attachments:\n        eth0: {ingress: [cil_from_netdev], egress: []}\n        pod:default/web: {ingress: [cil_from_container], egress: []}\n"
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&b).unwrap();
        assert_eq!(v["expect"]["attachments"]["pod:default/web"]["ingress"][0], "cil_from_container");
        assert_eq!(scalar("Invalid value: partial"), "\"Invalid value: partial\"");
        assert_eq!(scalar("true"), "\"true\"");
    }
}
