//! Cost per probed allocation: a node loop of ArrayBuffer allocations, timed inside node without
//! and with leakprobe, and the events per second the collector kept up with.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{ChildStdin, Command, Stdio},
};

use anyhow::{bail, Context as _};

use super::tracer::{Leakprobe, LoopReport};
use crate::root;

/// Allocations in the cost loop.
const ALLOCATIONS: u64 = 1_000_000;

/// Prints the cost per allocation of the modes that trace each allocation.
pub(super) fn costs(leakprobe: &Path) -> anyhow::Result<()> {
    println!("\nCost per probed allocation ({ALLOCATIONS} ArrayBuffers of 1 KiB, allocate + free):");
    let plain = alloc_loop(leakprobe, None)?;
    for (name, args) in [
        ("--alloc-stacks", &["--alloc-stacks"][..]),
        ("--native-exact", &["--native-exact", "--burst", "0"][..]),
    ] {
        let (ns, report) = alloc_loop(leakprobe, Some(args))?;
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
