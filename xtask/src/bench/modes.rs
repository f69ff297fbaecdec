//! The modes the HTTP rounds compare: what watches the service in each, and their order.

use anyhow::bail;

/// What watches the service in a mode.
#[derive(Clone)]
pub(super) enum Tracer {
    /// Nothing: the baseline.
    None,
    /// leakprobe with these extra arguments.
    Leakprobe(Vec<String>),
    /// The reference tracer (bpftrace, memleak's shape).
    Reference,
}

/// A mode: its name in the tables, and its tracer.
pub(super) type Mode = (String, Tracer);

/// The modes compared, in the order each round runs them.
pub(super) fn standard_modes() -> Vec<Mode> {
    let leakprobe = |args: &[&str]| Tracer::Leakprobe(args.iter().map(|a| a.to_string()).collect());
    vec![
        ("baseline".into(), Tracer::None),
        ("default".into(), leakprobe(&[])),
        ("--native".into(), leakprobe(&["--native"])),
        ("reference".into(), Tracer::Reference),
        // The default mode without its heap census: what the census's reads cost the service.
        ("--no-census".into(), leakprobe(&["--no-census"])),
        // Nothing attached, measured as a tracer is: what the method reads when there is no cost.
        (CONTROL.into(), Tracer::None),
    ]
}

/// The control mode's name: a slot with nothing attached, bracketed and compared like a
/// tracer's, so each run shows the added CPU its method reads where there is none.
pub(super) const CONTROL: &str = "control";

/// Modes given on the command line (`NAME=ARGS`, ARGS split at spaces, `reference` for the
/// reference tracer, `control` for nothing attached), after the baseline.
pub(super) fn custom_modes(specs: &[String]) -> anyhow::Result<Vec<Mode>> {
    let mut modes = vec![("baseline".to_string(), Tracer::None)];
    for spec in specs {
        let (name, args) = spec.split_once('=').unwrap_or((spec.as_str(), ""));
        if name.is_empty() {
            bail!("a bench mode needs a name: --mode NAME=ARGS, got {spec:?}");
        }
        let tracer = match (name, args) {
            ("reference", "") => Tracer::Reference,
            (CONTROL, "") => Tracer::None,
            _ => Tracer::Leakprobe(args.split_whitespace().map(str::to_string).collect()),
        };
        modes.push((name.to_string(), tracer));
    }
    Ok(modes)
}
pub(super) const BASELINE: usize = 0;
pub(super) const DEFAULT: usize = 1;
pub(super) const NATIVE: usize = 2;
pub(super) const REFERENCE: usize = 3;
pub(super) const CONTROL_MODE: usize = 5;
