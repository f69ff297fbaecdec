//! The HTTP rounds: the service under a fixed offered rate (CPU per request) and saturated (wrk),
//! each tracer's slot between two baseline slots.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    bpf_stats::{owned_programs, program_names, ProgramStats},
    load,
    modes::{Mode, BASELINE},
    procfs::{cpu_seconds, load_average},
    stats::median,
    tracer::Watcher,
};
use crate::root;

/// Interleaved rounds of the HTTP measurement.
pub(super) const ROUNDS: usize = 5;
/// Seconds of saturated load (wrk) per mode and round.
pub(super) const LOAD_SECONDS: u32 = 3;
/// Seconds of the fixed offered rate per mode and round.
pub(super) const FIXED_SECONDS: u64 = 4;
/// The fixed offered rate, as a share of the warm-up's saturated rate.
pub(super) const FIXED_SHARE: f64 = 1.0 / 3.0;
/// Load at the fixed rate before each slot's measured seconds, baseline slots included (each
/// slot starts in the same state: the previous slot ended under saturation): after a tracer
/// attached, what it sets up once (the default mode detaches its Buffer probes at the service's
/// first ArrayBuffer allocation, which traps and stalls the service briefly) is not its steady
/// cost.
pub(super) const SETTLE: Duration = Duration::from_secs(2);
/// Keep-alive connections of the fixed-rate load.
pub(super) const FIXED_CONNECTIONS: usize = 4;

/// One mode's measurements in one round.
#[derive(Clone, Debug, Default)]
pub(super) struct Slot {
    /// CPU µs per request at the fixed rate: the service's (which includes the kernel's time in
    /// the tracer's probes, run in the service's threads) and the tracer's own process.
    pub(super) service_us: f64,
    pub(super) tracer_us: f64,
    /// The tracer's BPF programs at the fixed rate: run time (µs) and runs per request
    /// (bpf_stats; a uprobe's trap into the kernel is not in the run time).
    pub(super) programs_us: f64,
    pub(super) program_runs: f64,
    /// Requests completed of those offered at the fixed rate, and the p99 latency (µs).
    pub(super) completed: u64,
    pub(super) offered: u64,
    pub(super) p99_us: u64,
    /// Saturated requests per second.
    pub(super) saturated: f64,
    /// A tracer's slot: the mean CPU µs per request and saturated rate of the baseline slots
    /// just before and just after it.
    pub(super) base_cpu_us: f64,
    pub(super) base_saturated: f64,
}

impl Slot {
    pub(super) fn cpu_us(&self) -> f64 {
        self.service_us + self.tracer_us
    }
}

/// What the HTTP rounds measured.
pub(super) struct HttpRun {
    /// The offered rate of the fixed-rate phases.
    pub(super) rate: f64,
    /// Per mode (in [`MODES`] order), per round.
    pub(super) slots: Vec<Vec<Slot>>,
    /// Per mode: the run statistics of its tracer's programs, by name, over its slots.
    pub(super) programs: Vec<ProgramStats>,
    /// Per mode: seconds its tracer was attached.
    pub(super) attached_seconds: Vec<f64>,
}

/// Runs the interleaved rounds against the HTTP fixture.
pub(super) fn http_rounds(leakprobe: &Path, modes: &[Mode]) -> anyhow::Result<HttpRun> {
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
    pub(super) fn added_cpu_rounds(&self, i: usize) -> Vec<f64> {
        self.slots[i].iter().map(|s| s.cpu_us() / s.base_cpu_us - 1.0).collect()
    }

    /// Mode `i`'s added CPU per request: the median over rounds (the machine's speed drifts
    /// between rounds more than a cheap tracer costs).
    pub(super) fn added_cpu(&self, i: usize) -> f64 {
        median(&self.added_cpu_rounds(i))
    }

    /// Mode `i`'s saturated throughput loss against the baseline slots around each of its slots.
    pub(super) fn loss(&self, i: usize) -> f64 {
        1.0 - median(&self.slots[i].iter().map(|s| s.saturated / s.base_saturated).collect::<Vec<_>>())
    }

    /// The direct part of mode `i`'s cost: its process and its programs, against the baseline.
    pub(super) fn direct(&self, i: usize) -> f64 {
        median(
            &self.slots[i].iter().map(|s| (s.tracer_us + s.programs_us) / s.base_cpu_us).collect::<Vec<_>>(),
        )
    }
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
