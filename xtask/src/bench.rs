//! `cargo xtask bench`: what leakprobe costs the process it watches, as ratios measured in one
//! run (these machines are shared and noisy, so absolute times mean little).
//!
//! 1. Request-rate loss of a node HTTP service under `wrk` on loopback: rounds of baseline,
//!    default probes and `--native`, interleaved; the median of each mode against baseline.
//! 2. Cost per probed allocation: a node loop of ArrayBuffer allocations (each one an allocate
//!    and, later, a free through node's allocator), timed inside node without and with
//!    leakprobe; and the events per second the collector kept up with, with its drop counters.

use std::{
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
const ROUNDS: usize = 3;
/// Seconds of load per measurement.
const LOAD_SECONDS: u32 = 8;
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
        "\nleakprobe bench: {ROUNDS} interleaved rounds of {LOAD_SECONDS} s of wrk -t1 -c16 on loopback"
    );
    let rates = http_rates(&leakprobe)?;
    let baseline = median(&rates[0]);
    println!("{:<16} {:>10} {:>8} {:>8}  verdict", "mode", "req/s", "loss", "target");
    for (i, (name, _, target)) in MODES.iter().enumerate() {
        let rate = median(&rates[i]);
        let loss = 1.0 - rate / baseline;
        let verdict = match target {
            None => "-",
            Some(t) if loss <= *t => "PASS",
            Some(_) => "MISS",
        };
        println!(
            "{name:<16} {rate:>10.0} {:>7.1}% {:>8}  {verdict}   (runs: {:?})",
            loss * 100.0,
            target.map_or("-".to_string(), |t| format!("{:.0}%", t * 100.0)),
            rates[i].iter().map(|r| r.round()).collect::<Vec<_>>()
        );
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
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Requests per second of each mode, per round.
fn http_rates(leakprobe: &Path) -> anyhow::Result<Vec<Vec<f64>>> {
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
        for _ in 0..ROUNDS {
            for (i, (_, args, _)) in MODES.iter().enumerate() {
                let watcher = match args {
                    Some(args) => Some(Watcher::attach(leakprobe, service.id(), args)?),
                    None => None,
                };
                rates[i].push(wrk(&url, LOAD_SECONDS)?);
                if let Some(w) = watcher {
                    w.stop()?;
                }
            }
        }
        Ok(rates)
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
        let stderr = child.stderr.take().context("leakprobe stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep reading after attach even though nobody listens: a full pipe would block
                // leakprobe's status lines.
                let _ = tx.send(line);
            }
        });
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains("attached") => break,
                Ok(line) if line.contains("error") => bail!("leakprobe: {line}"),
                Ok(_) => {}
                Err(_) => bail!("leakprobe did not attach within 60 s"),
            }
        }
        Ok(Self { child, out })
    }

    /// Stops leakprobe (SIGINT, as Ctrl-C) and waits for it.
    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
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
