//! The `leakprobe` command.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use leakprobe::{
    commands::agent::{self, AgentOptions},
    commands::census::{self, CensusOptions},
    commands::profile,
    kernel::table::Family,
    outputs::report,
    process::discover,
    session::Options,
};

/// eBPF memory profiler for running Node.js processes: attaches without a restart.
#[derive(Debug, Parser)]
#[command(
    name = "leakprobe",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    profile: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch every node process on the host and serve Prometheus metrics (for a DaemonSet).
    Agent(AgentArgs),
    /// Re-render the flamegraphs and pprof profiles of an incident folder from its report.json
    /// (no target, no root needed).
    Render(RenderArgs),
    /// Count the objects in a node process's V8 heaps by type, read from its memory without
    /// stopping it (one census; old generation only).
    Census(CensusArgs),
}

/// `leakprobe census --pid N`.
#[derive(Debug, clap::Args)]
struct CensusArgs {
    /// Process id of the node process.
    #[arg(long)]
    pid: u32,
    /// Types listed per isolate.
    #[arg(long, default_value_t = 25)]
    top: usize,
    /// Print the census as JSON (every type) instead of the table.
    #[arg(long)]
    json: bool,
    /// Stop after reading this many bytes of the heap (e.g. 512MiB, 4GiB).
    #[arg(long, value_parser = parse_bytes, default_value = "4GiB")]
    max_bytes: u64,
    /// Stop after this long.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    max_time: Duration,
    /// Take a second census this long after the first (e.g. 10s) and show which types grew.
    #[arg(long, value_parser = parse_duration)]
    again_after: Option<Duration>,
    /// Find what holds the objects of this type (constructor, function or label; repeatable).
    /// With --again-after, the fastest-growing types are searched too.
    #[arg(long = "retainers-of")]
    retainers_of: Vec<String>,
}

/// `leakprobe render DIR`.
#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// Folder holding report.json (written by --out); the SVGs and .pb.gz files go next to it.
    dir: PathBuf,
}

/// `leakprobe agent`.
#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// Address for /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics: std::net::SocketAddr,
    /// Watch processes whose name (comm) or command line matches this regex.
    #[arg(long = "match", default_value = discover::DEFAULT_PATTERN, value_parser = parse_regex)]
    pattern: regex::Regex,
    /// Also follow libc's malloc family in every process (sampled; costs more).
    #[arg(long)]
    native: bool,
    /// How often memory is sampled.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    interval: Duration,
    /// How often /proc is scanned for new node processes.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    scan_every: Duration,
    /// Most processes watched at once (each costs the kernel its own programs and maps: about
    /// 3.3 MiB while it idles, growing with what is tracked of it).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_targets: u32,
    /// How often each process is judged: what grows, the suspects, the heap census's growing
    /// types and their holders, as metrics.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    judge_every: Duration,
    /// The verdict's window: each process is judged on about its last WINDOW (what it did
    /// earlier is forgotten, so that days of history do not blunt what grows now). The heap
    /// census reads growth over half a window to one and a half.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    window: Duration,
    /// Memory and GC metrics only: no verdict, no stacks named, no heap census.
    #[arg(long)]
    no_verdict: bool,
    /// The heap censuses' CPU budget, as a percentage of the CPU time each process used since
    /// the agent attached (three times as much of its first minute's).
    #[arg(long, value_name = "PERCENT", default_value_t = 100.0 * leakprobe::memory::census::DEFAULT_BUDGET, value_parser = parse_percent)]
    census_budget: f64,
}

/// `leakprobe --pid PID`: one process.
#[derive(Debug, clap::Args)]
struct Args {
    /// Process id of the node process to profile.
    #[arg(long, required = true)]
    pid: Option<u32>,
    /// Stop after this long (e.g. 60s, 5m); default: until Ctrl-C or the target exits.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Refresh interval of the live view.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    interval: Duration,
    /// Write report.json and summary.txt into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the final report as JSON on stdout (no live view).
    #[arg(long)]
    json: bool,
    /// Probe families to attach (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Family::DEFAULT)]
    probes: Vec<Family>,
    /// The native growth view: native memory's growth is in the default view (page faults,
    /// with node's own thread-pool work named by the JavaScript that queued it); this also
    /// names fs, dns and random pool work (two traps per fs call). No per-malloc trap.
    #[arg(long)]
    native: bool,
    /// The exact native mode, for short windows: every malloc, calloc, realloc and free traps
    /// into the kernel (libc's allocator by stack, sampled by bytes). It costs the target about
    /// 70% of its throughput under load: run it for 30 s, not for hours.
    #[arg(long)]
    native_exact: bool,
    /// With --native-exact: sample about one allocation per this many bytes (e.g. 512KiB, 64KiB, 4096).
    #[arg(long, value_parser = parse_bytes, default_value = "512KiB")]
    sample_rate: u64,
    /// Keep the probes that fire on every allocation: Buffer/ArrayBuffer backing stores by stack
    /// (external leak suspects) and JS heap allocation sampling. They cost the target a few
    /// microseconds per allocation; without them, leakprobe shows which memory grows, not where.
    #[arg(long)]
    alloc_stacks: bool,
    /// Do not read V8's objects in the target to name JavaScript frames; name them only from
    /// the perf map the target writes when started with --perf-basic-prof.
    #[arg(long)]
    no_v8_names: bool,
    /// Live allocations each family tracks at once (V8's large objects: at most 32,768); more
    /// are counted as lost (`live_full`). Each entry in use costs the kernel about 100 bytes.
    #[arg(long, default_value_t = leakprobe_ebpf::alloc::MAX_LIVE, value_parser = clap::value_parser!(u32).range(1..))]
    max_tracked: u32,
    /// Sample one page fault in this many (the default mode's growth attribution: each
    /// sample walks the stack, about 10 µs; a process growing 16 MiB/s faults 4,096 times a
    /// second).
    #[arg(long, default_value_t = leakprobe_ebpf::faults::DEFAULT_PERIOD, value_parser = clap::value_parser!(u64).range(1..))]
    fault_period: u64,
    /// How long, after attaching, every Buffer allocation and free is traced by stack (the
    /// opening burst), so that the sites whose Buffers survive the GCs stand apart from the
    /// churn; it costs what --alloc-stacks does, for that long. 0 turns it off.
    #[arg(long, value_parser = parse_burst, default_value = "5s")]
    burst: Duration,
    /// After the opening burst, follow one Buffer allocation in N by stack (and large ones by
    /// their bytes, one per MiB), each counting for what it stands for: a slow leak of Buffers
    /// beside heavy churn gets its line. Each Buffer still pays the probes' traps (about 4 µs
    /// for its allocation and free); 0 detaches them after the burst.
    #[arg(long, value_name = "N", default_value_t = leakprobe::memory::external::DEFAULT_SAMPLE_EVERY, value_parser = clap::value_parser!(u64).range(0..=1 << 31))]
    buffer_sampling: u64,
    /// Take no heap census (by default one is read from the target's memory after an early
    /// mark-compact and again later: growing types and who holds them).
    #[arg(long)]
    no_census: bool,
    /// The heap censuses' CPU budget, as a percentage of the CPU time the target used since
    /// attach (three times as much of its first minute's): a census is taken at a mark-compact
    /// only when it fits.
    #[arg(long, value_name = "PERCENT", default_value_t = 100.0 * leakprobe::memory::census::DEFAULT_BUDGET, value_parser = parse_percent)]
    census_budget: f64,
}

/// A percentage above 0 and at most 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().trim_end_matches('%').parse().map_err(|_| format!("invalid percentage {s:?}"))?;
    match v > 0.0 && v <= 100.0 {
        true => Ok(v),
        false => Err(format!("{s} is not a percentage between 0 (excluded) and 100")),
    }
}

/// Accepts a byte count with an optional KiB/MiB/GiB (or K/M/G) suffix.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size {s:?}: use bytes, KiB, MiB or GiB")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("invalid size {s:?}")),
        Some(bytes) => Ok(bytes),
    }
}

/// Accepts `humantime` durations (`500ms`, `60s`, `2m`) and plain seconds (`60`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("invalid duration {s:?}")),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?,
    };
    if d.is_zero() {
        return Err("duration must be greater than zero".into());
    }
    Ok(d)
}

/// A duration that may be zero (`0` turns a feature off).
fn parse_burst(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("invalid regex: {e}"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    // One worker thread serves the agent's /metrics while its loop (on this thread) attaches.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            leakprobe::status!("leakprobe: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match (cli.command, cli.profile.pid) {
        (Some(Command::Agent(a)), _) => runtime.block_on(agent::run(AgentOptions {
            metrics: a.metrics,
            pattern: a.pattern,
            native: a.native,
            interval: a.interval,
            scan_every: a.scan_every,
            max_targets: a.max_targets as usize,
            judge_every: (!a.no_verdict).then_some(a.judge_every),
            census_budget: a.census_budget / 100.0,
            window: a.window,
        })),
        (Some(Command::Census(c)), _) => census::run(&CensusOptions {
            pid: c.pid,
            top: c.top,
            json: c.json,
            limits: leakprobe::v8::heap::census::Limits { max_bytes: c.max_bytes, max_time: c.max_time },
            again_after: c.again_after,
            retainers_of: c.retainers_of,
        }),
        (Some(Command::Render(r)), _) => report::render_dir(&r.dir).map(|written| {
            for path in written {
                leakprobe::status!("leakprobe: wrote {}", path.display());
            }
        }),
        (None, Some(pid)) => runtime.block_on(profile::run(options(pid, cli.profile))).map(drop),
        // clap requires --pid without a subcommand.
        (None, None) => Err(anyhow::anyhow!("--pid is required")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its context chain.
            leakprobe::status!("leakprobe: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn options(pid: u32, args: Args) -> Options {
    Options {
        pid,
        duration: args.duration,
        interval: args.interval,
        out: args.out,
        json: args.json,
        families: match args.native_exact {
            true => Family::with_native(args.probes),
            false => args.probes,
        },
        native_view: args.native || args.native_exact,
        sample_rate: args.sample_rate,
        max_tracked: args.max_tracked,
        alloc_stacks: args.alloc_stacks,
        v8_names: !args.no_v8_names,
        agent: false,
        judge: true,
        fault_period: args.fault_period,
        burst: args.burst,
        buffer_sampling: args.buffer_sampling,
        census: !args.no_census,
        census_budget: args.census_budget / 100.0,
        window: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_seconds_and_units() {
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("NaN").is_err());
    }

    #[test]
    fn sizes_accept_units() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_bytes("64k").unwrap(), 64 * 1024);
        assert_eq!(parse_bytes("2 MiB").unwrap(), 2 << 20);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999G").is_err());
    }
}
