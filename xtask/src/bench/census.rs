//! The heap census's cost, for `cargo xtask bench`: the collector's CPU time and the bytes it
//! reads per census and per GiB of heap, on a ticker holding 1,500,000 objects in a Map (a heap of
//! some 250 MiB), for a census alone and for a census with a retainer search. The target's tick
//! gaps during a census are checked by `tests/retainers.rs` (`a_census_never_pauses_the_target`).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::root;

/// CPU time (user + system) of this process's waited-for children so far, in seconds.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills the one rusage we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Prints the census's cost table.
pub fn census_cost(leakprobe: &Path) -> anyhow::Result<()> {
    let mut node = Command::new("node")
        .arg(root().join("tests/fixtures/ticker-heap.js"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the ticker fixture")?;
    let result = (|| {
        let mut line = String::new();
        let mut stdout = BufReader::new(node.stdout.take().context("fixture stdout")?);
        stdout.read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "READY", "the ticker fixture did not start: {line}");
        // The fixture goes on printing its ticks: keep reading them, or its next write fails
        // (EPIPE) and it exits before the census.
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).for_each(drop));
        let pid = node.id().to_string();
        println!("\nHeap census cost (a 1,500,000-object Map, leakprobe census --json):");
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>10} {:>14} {:>14}",
            "what", "heap MiB", "CPU s", "wall ms", "MiB read", "CPU s/GiB heap", "read/GiB heap"
        );
        for (what, extra) in [("census", &[][..]), ("census + retainers", &["--retainers-of", "Entry"][..])] {
            let before = children_cpu_s();
            let mut args = vec!["census", "--pid", &pid, "--json"];
            args.extend_from_slice(extra);
            let out = Command::new(leakprobe).args(&args).output().context("running leakprobe census")?;
            let cpu = children_cpu_s() - before;
            anyhow::ensure!(
                out.status.success(),
                "leakprobe census: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("census JSON")?;
            let heap: u64 = v["isolates"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i["committed_bytes"].as_u64()).sum())
                .unwrap_or(0);
            let read =
                v["bytes_read"].as_u64().unwrap_or(0) + v["retainers"]["bytes_read"].as_u64().unwrap_or(0);
            let wall = v["elapsed_ms"].as_f64().unwrap_or(0.0)
                + v["retainers"]["elapsed_ms"].as_f64().unwrap_or(0.0);
            let gib = heap as f64 / (1u64 << 30) as f64;
            println!(
                "{what:<22} {:>9.1} {cpu:>9.2} {wall:>9.0} {:>10.1} {:>14.1} {:>13.1}x",
                heap as f64 / (1 << 20) as f64,
                read as f64 / (1 << 20) as f64,
                cpu / gib.max(1e-9),
                read as f64 / heap.max(1) as f64,
            );
        }
        Ok(())
    })();
    let _ = node.kill();
    let _ = node.wait();
    result
}
