//! `cargo xtask bench`: what leakprobe costs the process it watches, as ratios measured in one
//! run (these machines are shared and noisy, so absolute times mean little).
//!
//! 1. Request-rate loss of a node HTTP service under `wrk` on loopback: rounds of baseline,
//!    default probes, `--alloc-stacks` and `--native`, interleaved; the median over rounds of
//!    each mode's rate against the same round's baseline. Under the same load, the kernel-side cost of each program per hit and
//!    its hits per second (`kernel.bpf_stats_enabled`).
//! 2. Cost per probed allocation: a node loop of ArrayBuffer allocations (each one an allocate
//!    and, later, a free through node's allocator), timed inside node without and with
//!    leakprobe; and the events per second the collector kept up with, with its drop counters.
//! 3. The agent's own memory over a run with processes coming and going.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{root, sh};

/// Interleaved rounds of the HTTP measurement.
const ROUNDS: usize = 5;
/// Seconds of load per measurement.
const LOAD_SECONDS: u32 = 6;
/// Allocations in the cost loop.
const ALLOCATIONS: u64 = 1_000_000;

/// A mode: its name, leakprobe's extra arguments (`None`: leakprobe not attached) and the
/// loss target (issue 3), if the mode has one.
type Mode = (&'static str, Option<&'static [&'static str]>, Option<f64>);

/// The modes compared.
const MODES: [Mode; 4] = [
    ("baseline", None, None),
    ("default", Some(&[]), Some(0.01)),
    ("--alloc-stacks", Some(&["--alloc-stacks"]), None),
    ("--native", Some(&["--native"]), Some(0.15)),
];

/// Runs the benchmarks and prints the table.
pub fn run() -> anyhow::Result<()> {
    sh(Command::new("cargo").args(["build", "--release", "--package", "leakprobe"]))?;
    let leakprobe = root().join("target/release/leakprobe");

    println!(
        "\nleakprobe bench: {ROUNDS} interleaved rounds of {LOAD_SECONDS} s of wrk -t1 -c16 on loopback \
         (loss: median of each round's rate over that round's baseline)"
    );
    let previous = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    // Kernel-side time per program run (off by default: it costs a little per run).
    fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let measured = http_rates(&leakprobe);
    let _ = fs::write(BPF_STATS, previous.trim());
    let HttpRun { rates, programs, cpu } = measured?;
    println!("{:<16} {:>10} {:>8} {:>8}  verdict  leakprobe's CPU", "mode", "req/s", "loss", "target");
    for (i, (name, _, target)) in MODES.iter().enumerate() {
        let rate = median(&rates[i]);
        // Each round's rate against the baseline of the same round, then the median: the
        // machine's speed drifts between rounds more than leakprobe costs.
        let ratios: Vec<f64> = rates[i].iter().zip(&rates[0]).map(|(r, b)| r / b).collect();
        let loss = 1.0 - median(&ratios);
        let verdict = match target {
            None => "-",
            Some(t) if loss <= *t => "PASS",
            Some(_) => "MISS",
        };
        // Its userspace (and the symbolizer thread), as a share of one core over its rounds.
        let seconds = (ROUNDS as u32 * LOAD_SECONDS) as f64;
        println!(
            "{name:<16} {rate:>10.0} {:>7.1}% {:>8}  {verdict:<7}  {:>5.1}% of a core   (runs: {:?})",
            loss * 100.0,
            target.map_or("-".to_string(), |t| format!("{:.0}%", t * 100.0)),
            cpu[i] / seconds * 100.0,
            rates[i].iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }

    println!(
        "\nKernel-side cost under that load (bpf_stats: time inside the programs; each uprobe hit also \
         pays the trap into the kernel, a few µs, which this does not count):"
    );
    println!("{:<16} {:<22} {:>10} {:>9}", "mode", "program", "hits/s", "ns/hit");
    for (i, (name, _, _)) in MODES.iter().enumerate() {
        for (program, (time_ns, count)) in &programs[i] {
            let seconds = (ROUNDS as u32 * LOAD_SECONDS) as f64;
            println!(
                "{name:<16} {program:<22} {:>10.0} {:>9.0}",
                *count as f64 / seconds,
                *time_ns as f64 / (*count).max(1) as f64
            );
        }
    }

    println!("\nCost per probed allocation ({ALLOCATIONS} ArrayBuffers of 1 KiB, allocate + free):");
    let plain = alloc_loop(&leakprobe, None)?;
    for (name, args) in [("--alloc-stacks", &["--alloc-stacks"][..]), ("--native", &["--native"][..])] {
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
    agent_memory(&leakprobe)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `kernel.bpf_stats_enabled`.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// What the HTTP rounds measured, by mode (in [`MODES`] order).
struct HttpRun {
    /// Requests per second, per round.
    rates: Vec<Vec<f64>>,
    /// leakprobe's programs' run statistics over the rounds.
    programs: Vec<ProgramStats>,
    /// leakprobe's CPU seconds over the rounds.
    cpu: Vec<f64>,
}

/// Per program name: (total run time in ns, runs).
type ProgramStats = BTreeMap<String, (u64, u64)>;

/// Run statistics of every loaded BPF program, by id: (name, run time ns, runs).
fn programs() -> anyhow::Result<HashMap<u64, (String, u64, u64)>> {
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().context("running bpftool")?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    Ok(list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let field = |k: &str| p[k].as_u64().unwrap_or(0);
                    Some((
                        p["id"].as_u64()?,
                        (p["name"].as_str()?.to_string(), field("run_time_ns"), field("run_cnt")),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Requests per second of each mode, per round, and the run statistics of each mode's
/// programs over its rounds.
fn http_rates(leakprobe: &Path) -> anyhow::Result<HttpRun> {
    let mut service = Command::new("node")
        .arg(root().join("tests/fixtures/http-service.js"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the HTTP fixture")?;
    let result = (|| {
        let mut line = String::new();
        BufReader::new(service.stdout.take().context("fixture stdout")?).read_line(&mut line)?;
        let url = line.trim().strip_prefix("READY ").context("the HTTP fixture did not start")?.to_string();
        // Warm up the JIT before measuring.
        wrk(&url, 3)?;
        let mut rates = vec![Vec::new(); MODES.len()];
        let mut stats = vec![ProgramStats::new(); MODES.len()];
        let mut cpu = vec![0.0; MODES.len()];
        for _ in 0..ROUNDS {
            for (i, (_, args, _)) in MODES.iter().enumerate() {
                let before = programs()?;
                let watcher = match args {
                    Some(args) => Some(Watcher::attach(leakprobe, service.id(), args)?),
                    None => None,
                };
                rates[i].push(wrk(&url, LOAD_SECONDS)?);
                if let Some(w) = watcher {
                    // leakprobe's programs: those loaded since `before`.
                    for (id, (name, time_ns, count)) in programs()? {
                        if !before.contains_key(&id) && count > 0 {
                            let entry = stats[i].entry(name).or_default();
                            entry.0 += time_ns;
                            entry.1 += count;
                        }
                    }
                    cpu[i] += w.stop()?;
                }
            }
        }
        Ok(HttpRun { rates, programs: stats, cpu })
    })();
    let _ = service.kill();
    let _ = service.wait();
    result
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
        Some(args) => Some(Watcher::attach(leakprobe, node.id(), args)?),
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

/// A leakprobe attached to a process for the length of one measurement.
struct Watcher {
    child: Child,
    out: PathBuf,
    /// CPU seconds leakprobe had used when its probes went live (attaching is not measured).
    cpu_at_attach: f64,
}

impl Watcher {
    /// Starts leakprobe and waits until its probes are live.
    fn attach(leakprobe: &Path, pid: u32, args: &[&str]) -> anyhow::Result<Self> {
        let out = std::env::temp_dir().join(format!("leakprobe-bench-{pid}-{}", std::process::id()));
        let mut child = Command::new(leakprobe)
            .args(["--pid", &pid.to_string(), "--interval", "1s", "--out"])
            .arg(&out)
            .args(args)
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
        let cpu_at_attach = cpu_seconds(child.id()).unwrap_or(0.0);
        Ok(Self { child, out, cpu_at_attach })
    }

    /// Stops leakprobe (SIGINT, as Ctrl-C) and waits for it; returns the CPU seconds it used
    /// since its probes went live.
    fn stop(mut self) -> anyhow::Result<f64> {
        let cpu = cpu_seconds(self.child.id()).unwrap_or(0.0) - self.cpu_at_attach;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("leakprobe exited with {status}");
        }
        Ok(cpu)
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

/// User and system CPU seconds `pid` has used (all its threads).
fn cpu_seconds(pid: u32) -> Option<f64> {
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
