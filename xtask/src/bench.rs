//! `cargo xtask bench`: what leakprobe costs the process it watches, as ratios measured in one
//! run (these machines are shared and noisy, so absolute times mean little).
//!
//! 1. A node HTTP service on loopback, in interleaved rounds of these modes: baseline (nothing
//!    attached), leakprobe's default mode, `--native`, a reference tracer of the shape of
//!    libbpf-tools' memleak (a bpftrace script: malloc and calloc uprobes and uretprobes with
//!    user stacks, and free), attached to the same process, the default mode without its census,
//!    and a control (nothing attached, measured as a tracer is: the method's own reading of no
//!    cost). In each round, each mode gets:
//!    - 2 s at the fixed rate below, not measured (the same start for every slot);
//!    - a fixed offered rate below saturation (a third of the warm-up's saturated rate, open
//!      loop, `load.rs`), over which the CPU time of the service and of the tracer is read
//!      (`clock_getcpuclockid`: the thread group's time in ns, the same clock as utime + stime
//!      in /proc/PID/stat without its 10 ms ticks), per request completed. Below saturation the
//!      service does the same work in every mode, so CPU per request is what a tracer adds, even
//!      when the machine's other tenants change the rate the service could reach;
//!    - saturated throughput under `wrk -t1 -c16`.
//!
//!    Each tracer's slot is bracketed by baseline slots (B D B N B R B D ...), and its CPU per
//!    request and rate are compared with the mean of the two around it; the median over rounds
//!    is reported with the spread, beside the targets of issue 11 (verdicts
//!    are printed; a missed target does not fail the bench). The direct part of a tracer's cost
//!    is shown apart: its own process, and the run time of its BPF programs (found by its file
//!    descriptors; `kernel.bpf_stats_enabled`), per request and per program.
//! 2. Cost per probed allocation: a node loop of ArrayBuffer allocations (each one an allocate
//!    and, later, a free through node's allocator), timed inside node without and with
//!    leakprobe; and the events per second the collector kept up with, with its drop counters.
//! 3. The agent's own memory over a run with processes coming and going.

mod load;

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{root, sh};

/// Interleaved rounds of the HTTP measurement.
const ROUNDS: usize = 5;
/// Seconds of saturated load (wrk) per mode and round.
const LOAD_SECONDS: u32 = 3;
/// Seconds of the fixed offered rate per mode and round.
const FIXED_SECONDS: u64 = 4;
/// The fixed offered rate, as a share of the warm-up's saturated rate.
const FIXED_SHARE: f64 = 1.0 / 3.0;
/// Load at the fixed rate before each slot's measured seconds, baseline slots included (each
/// slot starts in the same state: the previous slot ended under saturation): after a tracer
/// attached, what it sets up once (the default mode detaches its Buffer probes at the service's
/// first ArrayBuffer allocation, which traps and stalls the service briefly) is not its steady
/// cost.
const SETTLE: Duration = Duration::from_secs(2);
/// Keep-alive connections of the fixed-rate load.
const FIXED_CONNECTIONS: usize = 4;
/// Allocations in the cost loop.
const ALLOCATIONS: u64 = 1_000_000;

/// What watches the service in a mode.
#[derive(Clone)]
enum Tracer {
    /// Nothing: the baseline.
    None,
    /// leakprobe with these extra arguments.
    Leakprobe(Vec<String>),
    /// The reference tracer (bpftrace, memleak's shape).
    Reference,
}

/// A mode: its name in the tables, and its tracer.
type Mode = (String, Tracer);

/// The modes compared, in the order each round runs them.
fn standard_modes() -> Vec<Mode> {
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
const CONTROL: &str = "control";

/// Modes given on the command line (`NAME=ARGS`, ARGS split at spaces, `reference` for the
/// reference tracer, `control` for nothing attached), after the baseline.
fn custom_modes(specs: &[String]) -> anyhow::Result<Vec<Mode>> {
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
const BASELINE: usize = 0;
const DEFAULT: usize = 1;
const NATIVE: usize = 2;
const REFERENCE: usize = 3;
const CONTROL_MODE: usize = 5;

/// Issue 11's targets.
const DEFAULT_MAX_ADDED_CPU: f64 = 0.01;
const NATIVE_MAX_LOSS: f64 = 0.15;
const NATIVE_VS_REFERENCE: f64 = 5.0;

/// Runs the benchmarks and prints the tables. With `modes` (`NAME=ARGS`), only the HTTP rounds
/// run, with the baseline and those modes, and no targets are judged.
pub fn run(modes: &[String]) -> anyhow::Result<()> {
    sh(Command::new("cargo").args(["build", "--release", "--package", "leakprobe"]))?;
    let leakprobe = root().join("target/release/leakprobe");
    println!("\nleakprobe bench; machine load before: {}", load_average());

    let custom = !modes.is_empty();
    let modes = if custom { custom_modes(modes)? } else { standard_modes() };
    let previous = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    // Kernel-side time per program run (off by default: it costs a little per run).
    fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let measured = http_rounds(&leakprobe, &modes);
    let _ = fs::write(BPF_STATS, previous.trim());
    let run = measured?;
    print_http(&run, &modes);
    if custom {
        print_programs(&run, &modes);
        return Ok(());
    }
    print_targets(&run);
    print_programs(&run, &modes);

    println!("\nCost per probed allocation ({ALLOCATIONS} ArrayBuffers of 1 KiB, allocate + free):");
    let plain = alloc_loop(&leakprobe, None)?;
    for (name, args) in [
        ("--alloc-stacks", &["--alloc-stacks"][..]),
        ("--native-exact", &["--native-exact", "--burst", "0"][..]),
    ] {
        let (ns, report) = alloc_loop(&leakprobe, Some(args))?;
        let events = report.external_allocations;
        println!(
            "{name:<16} {:>8.0} ns/allocation more than without ({:.0} vs {:.0} ns); {:.0} allocations/s tracked, drops {}",
            (ns - plain.0) / ALLOCATIONS as f64,
            ns / ALLOCATIONS as f64,
            plain.0 / ALLOCATIONS as f64,
            events as f64 / (ns / 1e9),
            report.drops
        );
    }
    println!("(the cost is dominated by the uprobe trap into the kernel on entry and return)");
    crate::bench_census::census_cost(&leakprobe)?;
    agent_memory(&leakprobe)?;
    println!("\nmachine load after: {}", load_average());
    Ok(())
}

/// The machine's load averages (/proc/loadavg): other tenants' work shows here.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// (min, max) of `values`.
fn spread(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

/// `kernel.bpf_stats_enabled`.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One mode's measurements in one round.
#[derive(Clone, Debug, Default)]
struct Slot {
    /// CPU µs per request at the fixed rate: the service's (which includes the kernel's time in
    /// the tracer's probes, run in the service's threads) and the tracer's own process.
    service_us: f64,
    tracer_us: f64,
    /// The tracer's BPF programs at the fixed rate: run time (µs) and runs per request
    /// (bpf_stats; a uprobe's trap into the kernel is not in the run time).
    programs_us: f64,
    program_runs: f64,
    /// Requests completed of those offered at the fixed rate, and the p99 latency (µs).
    completed: u64,
    offered: u64,
    p99_us: u64,
    /// Saturated requests per second.
    saturated: f64,
    /// A tracer's slot: the mean CPU µs per request and saturated rate of the baseline slots
    /// just before and just after it.
    base_cpu_us: f64,
    base_saturated: f64,
}

impl Slot {
    fn cpu_us(&self) -> f64 {
        self.service_us + self.tracer_us
    }
}

/// What the HTTP rounds measured.
struct HttpRun {
    /// The offered rate of the fixed-rate phases.
    rate: f64,
    /// Per mode (in [`MODES`] order), per round.
    slots: Vec<Vec<Slot>>,
    /// Per mode: the run statistics of its tracer's programs, by name, over its slots.
    programs: Vec<ProgramStats>,
    /// Per mode: seconds its tracer was attached.
    attached_seconds: Vec<f64>,
}

/// Per program name: (total run time in ns, runs).
type ProgramStats = BTreeMap<String, (u64, u64)>;

/// Names of the loaded BPF programs, by id (bpftool).
fn program_names() -> anyhow::Result<HashMap<u64, String>> {
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().context("running bpftool")?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    Ok(list
        .as_array()
        .map(|a| {
            a.iter().filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_string()))).collect()
        })
        .unwrap_or_default())
}

/// The BPF programs `pid` holds (its file descriptors' /proc fdinfo), by id: (run time in ns,
/// runs). Only the tracer's own programs: other tenants of the machine load theirs too.
fn owned_programs(pid: Option<u32>) -> BTreeMap<u64, (u64, u64)> {
    let mut owned = BTreeMap::new();
    let Some(pid) = pid else { return owned };
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return owned };
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else { continue };
        let field = |key: &str| {
            info.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        // Program fds have run statistics; link fds name a program id without them.
        if let (Some(id), Some(time_ns), Some(runs)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            owned.insert(id, (time_ns, runs));
        }
    }
    owned
}

/// Runs the interleaved rounds against the HTTP fixture.
fn http_rounds(leakprobe: &Path, modes: &[Mode]) -> anyhow::Result<HttpRun> {
    let mut service = Command::new("node")
        .arg(root().join("tests/fixtures/http-service.js"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the HTTP fixture")?;
    let result = (|| {
        let mut line = String::new();
        BufReader::new(service.stdout.take().context("fixture stdout")?).read_line(&mut line)?;
        let url = line.trim().strip_prefix("READY ").context("the HTTP fixture did not start")?.to_string();
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("the HTTP fixture's address {url:?}"))?;
        // Warm up the JIT, and find the rate the fixed-rate phases offer.
        wrk(&url, 3)?;
        let saturated = wrk(&url, 3)?;
        let rate = (saturated * FIXED_SHARE).round().max(100.0);
        println!(
            "{ROUNDS} rounds of {}, each slot between two baseline slots; a slot: {} s at the fixed \
             rate not measured (after attach), then {FIXED_SECONDS} s at a fixed {rate:.0} req/s ({:.0}% of the warm-up's \
             {saturated:.0} req/s, open loop, {FIXED_CONNECTIONS} connections), then {LOAD_SECONDS} s of wrk -t1 -c16",
            modes.iter().skip(1).map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", "),
            SETTLE.as_secs(),
            FIXED_SHARE * 100.0
        );
        let mut slots = vec![Vec::new(); modes.len()];
        let mut stats = vec![ProgramStats::new(); modes.len()];
        let mut attached_seconds = vec![0.0; modes.len()];
        // Every tracer's slot is bracketed by baseline slots (B D B N B R B D ...) and compared
        // with their mean: the other tenants' load drifts less over one slot than over a round.
        let baseline = || measure(&url, addr, rate, service.id(), None).context("a baseline slot");
        slots[BASELINE].push(baseline()?);
        for round in 0..ROUNDS {
            for (i, (name, tracer)) in modes.iter().enumerate().skip(1) {
                let watcher = Watcher::attach(tracer, leakprobe, service.id())
                    .with_context(|| format!("round {}, {name}", round + 1))?;
                let attached = Instant::now();
                let slot = measure(&url, addr, rate, service.id(), watcher.as_ref());
                if let Some(w) = watcher {
                    // The tracer's programs over its whole slot, by name.
                    let names = program_names()?;
                    for (id, (time_ns, runs)) in owned_programs(Some(w.pid())) {
                        let program = names.get(&id).cloned().unwrap_or_else(|| format!("id {id}"));
                        let entry = stats[i].entry(program).or_default();
                        entry.0 += time_ns;
                        entry.1 += runs;
                    }
                    attached_seconds[i] += attached.elapsed().as_secs_f64();
                    w.stop().with_context(|| format!("round {}, stopping {name}", round + 1))?;
                }
                let mut slot = slot.with_context(|| format!("round {}, {name}", round + 1))?;
                let after = baseline()?;
                let before = slots[BASELINE].last().context("no baseline slot")?;
                slot.base_cpu_us = (before.cpu_us() + after.cpu_us()) / 2.0;
                slot.base_saturated = (before.saturated + after.saturated) / 2.0;
                slots[BASELINE].push(after);
                slots[i].push(slot);
            }
            eprintln!("xtask: bench round {}/{ROUNDS} done (load {})", round + 1, load_average());
        }
        Ok(HttpRun { rate, slots, programs: stats, attached_seconds })
    })();
    let _ = service.kill();
    let _ = service.wait();
    result
}

/// One mode's slot in a round: the fixed rate with CPU time (after [`SETTLE`] at that rate,
/// not measured: what attaching set up settles first, under the same load), then saturation.
fn measure(
    url: &str,
    addr: SocketAddr,
    rate: f64,
    service: u32,
    watcher: Option<&Watcher>,
) -> anyhow::Result<Slot> {
    let tracer = watcher.map(|w| w.pid());
    let cpu = |pid: Option<u32>| pid.map_or(Ok(0.0), cpu_seconds);
    let programs = |pid: Option<u32>| {
        owned_programs(pid).values().fold((0u64, 0u64), |(t, r), (time_ns, runs)| (t + time_ns, r + runs))
    };
    load::offer(addr, "/", rate, SETTLE, FIXED_CONNECTIONS).context("settling at the fixed rate")?;
    let (service0, tracer0, programs0) = (cpu_seconds(service)?, cpu(tracer)?, programs(tracer));
    let outcome = load::offer(addr, "/", rate, Duration::from_secs(FIXED_SECONDS), FIXED_CONNECTIONS)?;
    let (service1, tracer1, programs1) = (cpu_seconds(service)?, cpu(tracer)?, programs(tracer));
    if outcome.completed == 0 {
        bail!("no request completed at the fixed rate");
    }
    let per_request = |value: f64| value / outcome.completed as f64;
    let saturated = wrk(url, LOAD_SECONDS)?;
    Ok(Slot {
        service_us: per_request((service1 - service0) * 1e6),
        tracer_us: per_request((tracer1 - tracer0) * 1e6),
        programs_us: per_request(programs1.0.saturating_sub(programs0.0) as f64 / 1e3),
        program_runs: per_request(programs1.1.saturating_sub(programs0.1) as f64),
        completed: outcome.completed,
        offered: outcome.offered,
        p99_us: outcome.latency_us(0.99),
        saturated,
        ..Slot::default()
    })
}

/// Prints the HTTP tables and the verdicts on issue 11's targets.
impl HttpRun {
    /// Each of mode `i`'s slots' CPU per request against the baseline slots around it, minus 1.
    fn added_cpu_rounds(&self, i: usize) -> Vec<f64> {
        self.slots[i].iter().map(|s| s.cpu_us() / s.base_cpu_us - 1.0).collect()
    }

    /// Mode `i`'s added CPU per request: the median over rounds (the machine's speed drifts
    /// between rounds more than a cheap tracer costs).
    fn added_cpu(&self, i: usize) -> f64 {
        median(&self.added_cpu_rounds(i))
    }

    /// Mode `i`'s saturated throughput loss against the baseline slots around each of its slots.
    fn loss(&self, i: usize) -> f64 {
        1.0 - median(&self.slots[i].iter().map(|s| s.saturated / s.base_saturated).collect::<Vec<_>>())
    }

    /// The direct part of mode `i`'s cost: its process and its programs, against the baseline.
    fn direct(&self, i: usize) -> f64 {
        median(
            &self.slots[i].iter().map(|s| (s.tracer_us + s.programs_us) / s.base_cpu_us).collect::<Vec<_>>(),
        )
    }
}

/// Prints the HTTP tables: CPU per request at the fixed rate, and saturated throughput.
fn print_http(run: &HttpRun, modes: &[Mode]) {
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
fn print_targets(run: &HttpRun) {
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
fn print_programs(run: &HttpRun, modes: &[Mode]) {
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

/// Runs wrk for `seconds` against `url` and returns its requests per second.
fn wrk(url: &str, seconds: u32) -> anyhow::Result<f64> {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{seconds}s"), url])
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

/// What the cost loop's report says.
struct LoopReport {
    external_allocations: u64,
    drops: u64,
}

/// Runs the allocation loop, under leakprobe with `args` when given; returns the loop's time
/// in ns and, under leakprobe, its report.
fn alloc_loop(leakprobe: &Path, args: Option<&[&str]>) -> anyhow::Result<(f64, LoopReport)> {
    let mut node = Command::new("node")
        .arg(root().join("tests/fixtures/alloc-loop.js"))
        .env("N", ALLOCATIONS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the allocation loop")?;
    let mut stdin: ChildStdin = node.stdin.take().context("loop stdin")?;
    let mut lines = BufReader::new(node.stdout.take().context("loop stdout")?).lines();
    let ready = lines.next().transpose()?.unwrap_or_default();
    if ready.trim() != "READY" {
        bail!("the allocation loop did not start: {ready:?}");
    }
    let watcher = match args {
        Some(args) => Some(Leakprobe::attach(leakprobe, node.id(), args)?),
        None => None,
    };
    writeln!(stdin, "go")?;
    let done = lines.next().transpose()?.unwrap_or_default();
    let ns: f64 = done
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected loop output {done:?}"))?;
    let _ = node.wait();
    let report = match watcher {
        Some(w) => w.report()?,
        None => LoopReport { external_allocations: 0, drops: 0 },
    };
    Ok((ns, report))
}

/// What watches the service for one mode's slot of a round.
enum Watcher {
    Leakprobe(Leakprobe),
    Reference(Reference),
}

impl Watcher {
    /// Attaches `tracer` to `pid` and waits until its probes are live; `None` for the baseline.
    fn attach(tracer: &Tracer, leakprobe: &Path, pid: u32) -> anyhow::Result<Option<Self>> {
        Ok(match tracer {
            Tracer::None => None,
            Tracer::Leakprobe(args) => Some(Self::Leakprobe(Leakprobe::attach(leakprobe, pid, args)?)),
            Tracer::Reference => Some(Self::Reference(Reference::attach(pid)?)),
        })
    }

    /// The tracer's process, whose CPU time is the tracer's own.
    fn pid(&self) -> u32 {
        match self {
            Self::Leakprobe(l) => l.child.id(),
            Self::Reference(r) => r.child.id(),
        }
    }

    /// Detaches (SIGINT, as Ctrl-C) and waits for the tracer to exit.
    fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Leakprobe(l) => l.stop(),
            Self::Reference(r) => r.stop(),
        }
    }
}

/// The reference tracer: what libbpf-tools' memleak does, as a bpftrace script. On every
/// malloc and calloc of the target, the entry probe keeps the size by thread and the return
/// probe files the address with its size and user stack; free forgets the address.
const REFERENCE_SCRIPT: &str = r#"
BEGIN { printf("attached\n"); }
uprobe:LIBC:malloc /pid == TARGET/ { @size[tid] = arg0; }
uprobe:LIBC:calloc /pid == TARGET/ { @size[tid] = arg0 * arg1; }
uretprobe:LIBC:malloc, uretprobe:LIBC:calloc /pid == TARGET && @size[tid]/ {
  @bytes[retval] = @size[tid];
  @stack[retval] = ustack;
  delete(@size[tid]);
}
uprobe:LIBC:free /pid == TARGET/ { delete(@bytes[arg0]); delete(@stack[arg0]); }
END { clear(@size); clear(@bytes); clear(@stack); }
"#;

/// The reference tracer attached to a process.
struct Reference {
    child: Child,
}

impl Reference {
    /// Starts bpftrace with [`REFERENCE_SCRIPT`] on `pid`'s libc and waits for its BEGIN line
    /// (bpftrace runs BEGIN once every probe is attached).
    fn attach(pid: u32) -> anyhow::Result<Self> {
        let libc = libc_of(pid)?;
        let script = REFERENCE_SCRIPT.replace("LIBC", &libc).replace("TARGET", &pid.to_string());
        let mut child = Command::new("bpftrace")
            .args(["-p", &pid.to_string(), "-e", &script])
            // Room for the outstanding allocations of a busy service (the default is 4096).
            .env("BPFTRACE_MAP_KEYS_MAX", "65536")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace (cargo xtask setup installs it)")?;
        let stdout = child.stdout.take().context("bpftrace's stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let reference = Self { child };
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.trim() == "attached" => return Ok(reference),
                Ok(_) => {}
                Err(_) => bail!("the reference tracer (bpftrace) did not attach within 60 s"),
            }
        }
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("bpftrace exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of the libc `pid` has mapped.
fn libc_of(pid: u32) -> anyhow::Result<String> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| {
            path.rsplit('/').next().is_some_and(|f| f.starts_with("libc.so") || f.starts_with("libc-"))
        })
        .map(str::to_string)
        .with_context(|| format!("process {pid} has no libc mapped"))
}

/// A leakprobe attached to a process for the length of one measurement.
struct Leakprobe {
    child: Child,
    out: PathBuf,
}

impl Leakprobe {
    /// Starts leakprobe and waits until its probes are live.
    fn attach<S: AsRef<str>>(leakprobe: &Path, pid: u32, args: &[S]) -> anyhow::Result<Self> {
        let out = std::env::temp_dir().join(format!("leakprobe-bench-{pid}-{}", std::process::id()));
        let mut child = Command::new(leakprobe)
            .args(["--pid", &pid.to_string(), "--interval", "1s", "--out"])
            .arg(&out)
            .args(args.iter().map(AsRef::as_ref))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leakprobe")?;
        let rx = stderr_lines(&mut child)?;
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains("attached") => break,
                Ok(line) if line.contains("error") => bail!("leakprobe: {line}"),
                Ok(_) => {}
                Err(_) => bail!("leakprobe did not attach within 60 s"),
            }
        }
        // The default mode's opening burst traces every Buffer allocation for its first
        // seconds; what it costs to stay attached is measured after it (the README gives the
        // burst's cost apart).
        if !args.iter().any(|a| matches!(a.as_ref(), "--alloc-stacks" | "--burst")) {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                    Ok(line) if line.contains("opening burst over") => break,
                    Ok(_) => {}
                    Err(_) => bail!("leakprobe's opening burst did not end within 30 s"),
                }
            }
        }
        Ok(Self { child, out })
    }

    /// Stops leakprobe (SIGINT, as Ctrl-C) and waits for it to write its report and exit.
    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        let _ = std::fs::remove_dir_all(&self.out);
        if !status.success() {
            bail!("leakprobe exited with {status}");
        }
        Ok(())
    }

    /// Waits for leakprobe to end (its target exited) and reads its report.
    fn report(mut self) -> anyhow::Result<LoopReport> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("leakprobe exited with {status}");
        }
        let text =
            std::fs::read_to_string(self.out.join("report.json")).context("reading the bench report")?;
        let _ = std::fs::remove_dir_all(&self.out);
        let report: serde_json::Value = serde_json::from_str(&text).context("parsing the bench report")?;
        let drops = report["drops"].as_object().map_or(0, |d| d.values().filter_map(|v| v.as_u64()).sum());
        let external_allocations = report["external"]["allocations"].as_u64().unwrap_or(0);
        Ok(LoopReport { external_allocations, drops })
    }
}

impl Drop for Leakprobe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds the agent runs in its memory benchmark.
const AGENT_SECONDS: u64 = 90;
/// Node processes the agent watches at once in its memory benchmark.
const AGENT_TARGETS: usize = 4;

/// The agent's own memory over a run with churn: it watches [`AGENT_TARGETS`] node processes,
/// one of which is replaced every 10 s (attach and detach paths), while /metrics is scraped;
/// its RSS is sampled every 5 s. Bounded means the end is not above the early samples by more
/// than the noise of the allocator.
pub fn agent_memory(leakprobe: &Path) -> anyhow::Result<()> {
    let member = |i: usize| -> anyhow::Result<Child> {
        let mut child = Command::new("node")
            .arg("--inspect-port=19399")
            .arg(root().join("tests/fixtures/fleet-member.js"))
            .arg(format!("bench-member-{i}"))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a fleet member")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("member stdout")?).read_line(&mut line)?;
        Ok(child)
    };
    let mut members: Vec<Child> = (0..AGENT_TARGETS).map(member).collect::<anyhow::Result<_>>()?;
    let mut agent = Command::new(leakprobe)
        .args(["agent", "--metrics", "127.0.0.1:0", r"--match=--inspect-port=19399 .*fleet-member\.js"])
        .args(["--interval", "1s", "--scan-every", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting leakprobe agent")?;
    let rx = stderr_lines(&mut agent)?;
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).context("the agent did not start")?;
        if let Some(addr) = line.split("http://").nth(1) {
            break addr.trim().to_string();
        }
    };
    let result = (|| {
        let mut rss = Vec::new();
        let mut file = Vec::new();
        let mut next_member = AGENT_TARGETS;
        for t in (5..=AGENT_SECONDS).step_by(5) {
            thread::sleep(Duration::from_secs(5));
            let _ = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", &format!("http://{addr}/metrics")])
                .status();
            if t % 10 == 0 && t < AGENT_SECONDS {
                let mut old = members.remove(0);
                let _ = old.kill();
                let _ = old.wait();
                members.push(member(next_member)?);
                next_member += 1;
            }
            rss.push((t, rss_kib(agent.id(), "RssAnon:").context("reading the agent's RSS")?));
            file.push(rss_kib(agent.id(), "RssFile:").unwrap_or(0));
        }
        Ok::<_, anyhow::Error>((rss, file, next_member))
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    for mut m in members {
        let _ = m.kill();
        let _ = m.wait();
    }
    let (rss, file, started) = result?;
    let early = rss.iter().take(3).map(|r| r.1).max().unwrap_or(0);
    let max = rss.iter().map(|r| r.1).max().unwrap_or(0);
    let last = rss.last().map_or(0, |r| r.1);
    println!(
        "\nAgent memory: {AGENT_TARGETS} node processes watched, {} started over {AGENT_SECONDS} s (one replaced every 10 s), /metrics scraped every 5 s",
        started
    );
    let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
    println!("Anonymous RSS (MiB) every 5 s: {:?}", rss.iter().map(|r| mib(r.1)).collect::<Vec<_>>());
    println!(
        "File-backed RSS (MiB), the node binaries mapped for their symbols (shared page cache): {:?}",
        file.iter().map(|k| mib(*k)).collect::<Vec<_>>()
    );
    println!(
        "anonymous RSS: early max {:.1} MiB, overall max {:.1} MiB, end {:.1} MiB: end/early = {:.2}",
        early as f64 / 1024.0,
        max as f64 / 1024.0,
        last as f64 / 1024.0,
        last as f64 / early.max(1) as f64
    );
    Ok(())
}

/// The lines of `child`'s piped stderr, read on a thread until it closes. The thread keeps
/// reading when nobody listens any more: a full pipe would block leakprobe's status lines.
fn stderr_lines(child: &mut Child) -> anyhow::Result<mpsc::Receiver<String>> {
    let stderr = child.stderr.take().context("leakprobe's stderr is not piped")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}

/// User and system CPU seconds `pid` has used, all its threads (also those that ended): the
/// process's CPU-time clock, in ns, which /proc/PID/stat shows as utime + stime in 10 ms ticks.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain libc calls with valid out-pointers.
    let ok = unsafe {
        libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) == 0
            && libc::clock_gettime(clock, &mut now) == 0
    };
    if ok {
        return Ok(now.tv_sec as f64 + now.tv_nsec as f64 / 1e9);
    }
    stat_cpu_seconds(pid).with_context(|| format!("reading the CPU time of process {pid}"))
}

/// utime + stime from /proc/PID/stat, in seconds.
fn stat_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the name: utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: plain libc call.
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// A `/proc/PID/status` field of `pid` (`RssAnon:`, `RssFile:`), in KiB.
fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}
