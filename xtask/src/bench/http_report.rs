//! The HTTP rounds' tables, and the verdicts on issue 11's targets.

use super::{
    http::{HttpRun, Slot},
    modes::{Mode, BASELINE, CONTROL_MODE, DEFAULT, NATIVE, REFERENCE},
    stats::{median, spread},
};

/// Issue 11's targets.
const DEFAULT_MAX_ADDED_CPU: f64 = 0.01;
const NATIVE_MAX_LOSS: f64 = 0.15;
const NATIVE_VS_REFERENCE: f64 = 5.0;

/// Prints the HTTP tables: CPU per request at the fixed rate, and saturated throughput.
pub(super) fn print_http(run: &HttpRun, modes: &[Mode]) {
    println!(
        "\nAt the fixed rate: CPU per request (service + tracer), median (min…max) over rounds; added: median \
         of each slot's ratio to the baseline slots around it (per round in brackets); of which the tracer's own process, \
         and its BPF programs' run time (bpf_stats) and runs per request:"
    );
    println!(
        "{:<10} {:>24} {:>9}  {:<36} {:>10} {:>11} {:>9} {:>8}",
        "mode",
        "CPU µs/req (min…max)",
        "added",
        "(per round)",
        "tracer µs",
        "programs µs",
        "runs/req",
        "p99 ms"
    );
    for (i, (name, _)) in modes.iter().enumerate() {
        let slots = &run.slots[i];
        let cpu: Vec<f64> = slots.iter().map(Slot::cpu_us).collect();
        let (lo, hi) = spread(&cpu);
        let med = |f: fn(&Slot) -> f64| median(&slots.iter().map(f).collect::<Vec<_>>());
        let (added, rounds) = if i == BASELINE {
            ("-".to_string(), String::new())
        } else {
            (pct(run.added_cpu(i)), rounds(&run.added_cpu_rounds(i)))
        };
        println!(
            "{name:<10} {:>9.1} ({lo:>5.1}…{hi:>6.1}) {added:>9}  {rounds:<36} {:>10.2} {:>11.2} {:>9.1} {:>8.1}",
            median(&cpu),
            med(|s| s.tracer_us),
            med(|s| s.programs_us),
            med(|s| s.program_runs),
            med(|s| s.p99_us as f64) / 1e3,
        );
    }
    let short: Vec<String> = modes
        .iter()
        .zip(&run.slots)
        .filter_map(|((name, _), slots)| {
            let (offered, completed) =
                slots.iter().fold((0, 0), |(o, c), s| (o + s.offered, c + s.completed));
            (completed * 100 < offered * 99).then(|| format!("{name} completed {completed} of {offered}"))
        })
        .collect();
    if !short.is_empty() {
        println!(
            "(the service fell behind {:.0} req/s: {}; CPU per request is then measured at saturation)",
            run.rate,
            short.join(", ")
        );
    }

    println!("\nSaturated (wrk -t1 -c16): requests per second, median and per round; loss: median of each slot's rate against the baseline slots around it:");
    println!("{:<10} {:>10} {:>8}  (per round)", "mode", "req/s", "loss");
    for (i, (name, _)) in modes.iter().enumerate() {
        let saturated: Vec<f64> = run.slots[i].iter().map(|s| s.saturated).collect();
        let lost = if i == BASELINE { "-".to_string() } else { pct(run.loss(i)) };
        println!(
            "{name:<10} {:>10.0} {lost:>8}  {:?}",
            median(&saturated),
            saturated.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }
}

/// Prints the verdicts on issue 11's targets (the standard modes only).
pub(super) fn print_targets(run: &HttpRun) {
    let base = &run.slots[BASELINE];
    println!("\nTargets (issue 11), medians of each slot's ratio to the baseline slots around it:");
    let verdict = |pass: bool| if pass { "PASS" } else { "MISS" };
    let default_cpu = run.added_cpu(DEFAULT);
    // How far apart two measures of the same thing land here: the baseline's rounds.
    let (lo, hi) = spread(&base.iter().map(Slot::cpu_us).collect::<Vec<_>>());
    println!(
        "  default adds ≤ {:.0}% CPU per request: {} → {}  (its process and programs alone: {}; \
         the control, nothing attached, read {} {}; the baseline's own rounds spread over {:.0}%)",
        DEFAULT_MAX_ADDED_CPU * 100.0,
        pct(default_cpu),
        verdict(default_cpu <= DEFAULT_MAX_ADDED_CPU),
        pct(run.direct(DEFAULT)),
        pct(run.added_cpu(CONTROL_MODE)),
        rounds(&run.added_cpu_rounds(CONTROL_MODE)),
        (hi / lo - 1.0) * 100.0
    );
    let (native, reference) = (run.loss(NATIVE), run.loss(REFERENCE));
    println!(
        "  --native costs ≤ {:.0}% throughput: {} → {}",
        NATIVE_MAX_LOSS * 100.0,
        pct(native),
        verdict(native <= NATIVE_MAX_LOSS)
    );
    let times =
        if native > 0.0 { format!("{:.1}×", reference / native) } else { "∞ (no loss measured)".into() };
    println!(
        "  --native slows the service ≥ {NATIVE_VS_REFERENCE:.0}× less than the reference tracer: \
         throughput loss {} vs {} = {times} → {}",
        pct(native),
        pct(reference),
        verdict(native * NATIVE_VS_REFERENCE <= reference)
    );
    println!(
        "  (CPU per request at the fixed rate: --native {}, reference {})",
        pct(run.added_cpu(NATIVE)),
        pct(run.added_cpu(REFERENCE))
    );
}

/// Prints each tracer's programs: runs per second and time per run.
pub(super) fn print_programs(run: &HttpRun, modes: &[Mode]) {
    println!(
        "\nKernel-side cost of each tracer's programs over its slots (bpf_stats: time inside the programs; \
         each uprobe hit also pays the trap into the kernel, which this does not count: 16 µs a hit on this \
         project's VM, see the README):"
    );
    println!("{:<10} {:<26} {:>10} {:>9}", "mode", "program", "runs/s", "ns/run");
    for (i, (name, _)) in modes.iter().enumerate() {
        for (program, (time_ns, count)) in &run.programs[i] {
            println!(
                "{name:<10} {program:<26} {:>10.0} {:>9.0}",
                *count as f64 / run.attached_seconds[i].max(1.0),
                *time_ns as f64 / (*count).max(1) as f64
            );
        }
    }
}

/// Per-round ratios as signed whole percentages, `[+1 -2 …]`.
fn rounds(ratios: &[f64]) -> String {
    let each: Vec<String> = ratios.iter().map(|r| format!("{:+.0}", r * 100.0)).collect();
    format!("[{}]", each.join(" "))
}

/// A ratio as a signed percentage.
fn pct(ratio: f64) -> String {
    format!("{:+.1}%", ratio * 100.0)
}
