//! The first minute apart from steady state (issue 20): what the default mode costs from the
//! second it attaches, on a fixed amount of work (no network, so no load generator's scatter).
//!
//! The target is the leak suite's service (`tests/fixtures/suite/buffer-cache.js`: a JSON API's
//! churn and a Buffer cache that is never evicted) serving a fixed number of requests per
//! second, well below saturation, started fresh for each slot. A slot watches it for
//! [`SLOT_S`] seconds after its warm-up: a baseline slot with nothing attached, a default slot
//! with leakprobe attached at the slot's start, and a control slot with nothing attached,
//! measured as the default slot is (the method's own reading of no cost), and a slot with the
//! default mode less its Buffer sampling after the opening burst (`--buffer-sampling 0`: what
//! that sampling costs is the difference). The slots run as B D B S B C B: each of D, S and C is
//! compared with the mean of the two baselines around it.
//!
//! Over the slot's first [`FIRST_S`] seconds and over the rest (steady state), what leakprobe
//! costs is its own process's CPU time (in the first minute, from its start: loading its
//! programs and reading the target's symbols included) plus what the target's CPU time per request rose over
//! the baselines', as a share of the baselines' CPU for the same requests.

use std::{
    path::Path,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{procfs::cpu_seconds, suite_service::SuiteService, tracer::Leakprobe};

/// Seconds watched per slot.
const SLOT_S: u64 = 120;
/// The first part of a slot, reported apart.
const FIRST_S: u64 = 60;
/// Requests per 5 ms tick (the suite's default is 8).
const REQUESTS_PER_TICK: &str = "24";

/// What one slot measured, over its first minute and over the rest.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Target CPU seconds and requests served, first minute and steady state.
    target_cpu: [f64; 2],
    requests: [f64; 2],
    /// leakprobe's own CPU seconds (0 when nothing is attached).
    leakprobe_cpu: [f64; 2],
}

/// What a slot attaches.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Baseline,
    Default,
    /// The default mode with `--buffer-sampling 0`.
    NoBufferSampling,
    Control,
}

/// Runs the slots and prints the table.
pub(super) fn first_minute(leakprobe: &Path) -> anyhow::Result<()> {
    println!(
        "\nFirst minute and steady state (fixed work: the suite's buffer-cache service at {} requests per 5 ms, fresh per slot; {SLOT_S} s slots B D B S B C B, S: --buffer-sampling 0):",
        REQUESTS_PER_TICK
    );
    let order = [
        Kind::Baseline,
        Kind::Default,
        Kind::Baseline,
        Kind::NoBufferSampling,
        Kind::Baseline,
        Kind::Control,
        Kind::Baseline,
    ];
    let mut slots = Vec::new();
    for kind in order {
        slots.push(slot(leakprobe, kind)?);
    }
    let per_request = |s: &Slot, part: usize| s.target_cpu[part] / s.requests[part].max(1.0);
    println!(
        "{:<32} {:>24} {:>14} {:>12} {:>14} {:>9}",
        "slot", "target CPU ms/1k req", "leakprobe s", "its share", "target added", "total"
    );
    for (i, kind) in order.iter().enumerate() {
        if *kind == Kind::Baseline {
            continue;
        }
        let (before, after) = (&slots[i - 1], &slots[i + 1]);
        let name = match kind {
            Kind::Default => "default",
            Kind::NoBufferSampling => "no Buffer sampling",
            _ => "control",
        };
        for (part, label) in ["first 60 s", "steady state"].iter().enumerate() {
            let base = (per_request(before, part) + per_request(after, part)) / 2.0;
            let s = &slots[i];
            // The baselines' CPU for the requests this slot served.
            let base_cpu = (base * s.requests[part]).max(1e-9);
            let own = s.leakprobe_cpu[part] / base_cpu;
            let added = (per_request(s, part) - base) * s.requests[part] / base_cpu;
            println!(
                "{:<32} {:>11.1} vs {:>9.1} {:>14.2} {:>11.1}% {:>+13.1}% {:>8.1}%",
                format!("{name}, {label}"),
                per_request(s, part) * 1e6,
                base * 1e6,
                s.leakprobe_cpu[part],
                100.0 * own,
                100.0 * added,
                100.0 * (own + added)
            );
        }
    }
    println!(
        "(targets, issue 20: total first 60 s <= 3%, steady state <= 1%; shares of the baselines' CPU for the same requests; the control slot is the method's noise)"
    );
    Ok(())
}

/// One slot: a fresh service, warmed up, watched for [`SLOT_S`] s with `kind` attached.
fn slot(leakprobe: &Path, kind: Kind) -> anyhow::Result<Slot> {
    let node = SuiteService::start(
        "buffer-cache.js",
        &[
            ("REQUESTS_PER_TICK", REQUESTS_PER_TICK.to_string()),
            ("WARMUP_SECONDS", "5".to_string()),
            ("SUITE_SECONDS", (SLOT_S + 15).to_string()),
        ],
    )?;
    let rx = &node.lines;
    let pid = node.pid();
    let attached = match kind {
        Kind::Default => Some(Leakprobe::attach_from_start(leakprobe, pid, &[] as &[&str])?),
        Kind::NoBufferSampling => {
            Some(Leakprobe::attach_from_start(leakprobe, pid, &["--buffer-sampling", "0"])?)
        }
        Kind::Baseline | Kind::Control => None,
    };
    // The requests served so far, from the service's latest `MEM` line.
    let mut requests = 0.0;
    let mut latest = |rx: &mpsc::Receiver<String>| {
        for line in rx.try_iter() {
            if let Some(v) =
                line.strip_prefix("MEM ").and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            {
                requests = v["requests"].as_f64().unwrap_or(requests);
            }
        }
        requests
    };
    // leakprobe's from its start: loading its programs and reading the target's symbols are
    // part of what the first minute costs.
    let own = |attached: &Option<Leakprobe>, mark: u64| match (attached, mark) {
        (Some(l), m) if m > 0 => cpu_seconds(l.pid()),
        _ => Ok(0.0),
    };
    let start = Instant::now();
    let marks = [0, FIRST_S, SLOT_S];
    let mut readings = Vec::new();
    for mark in marks {
        thread::sleep(Duration::from_secs(mark).saturating_sub(start.elapsed()));
        // The MEM lines come once a second: wait for the one after the mark.
        thread::sleep(Duration::from_millis(1050));
        readings.push((cpu_seconds(pid)?, latest(rx), own(&attached, mark)?));
    }
    if let Some(l) = attached {
        l.stop()?;
    }
    let mut slot = Slot::default();
    for part in 0..2 {
        let (a, b) = (readings[part], readings[part + 1]);
        slot.target_cpu[part] = b.0 - a.0;
        slot.requests[part] = b.1 - a.1;
        slot.leakprobe_cpu[part] = b.2 - a.2;
    }
    if matches!(kind, Kind::Default | Kind::NoBufferSampling) && slot.leakprobe_cpu[0] == 0.0 {
        bail!("leakprobe's CPU time could not be read");
    }
    Ok(slot)
}
