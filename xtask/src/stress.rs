//! `cargo xtask stress`: runs one integration test binary many times in a row beside a CPU
//! load, and reports each test's passes: a flaky test shows here before CI meets it. Not part
//! of `cargo xtask test` (20 rounds of the retainer tests take about an hour).

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::{display, root, setup};

/// What to stress.
pub struct Stress<'a> {
    /// The integration test binary (a file of `tests/`, without `.rs`).
    pub test: &'a str,
    /// Rounds.
    pub times: u32,
    /// Threads that spin beside the tests.
    pub load: usize,
    /// `cargo test` filters (test names).
    pub filters: &'a [String],
}

/// Runs the rounds and fails unless every test passed every round. Each failing round's output
/// is kept in `target/stress/`.
pub fn run(s: &Stress<'_>) -> anyhow::Result<()> {
    let logs = root().join("target/stress");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..s.load)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || spin(&stop))
        })
        .collect();
    let result = rounds(s, &logs);
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
    let tally = result?;
    let mut failed = 0;
    println!("{:<60} passed", "test");
    for (name, (passed, runs)) in &tally {
        println!("{name:<60} {passed}/{runs}");
        failed += runs - passed;
    }
    if failed > 0 {
        bail!("{failed} failed runs over {} rounds (their output is in {})", s.times, logs.display());
    }
    println!("stress: every test of {} passed {} rounds beside {} spinning threads", s.test, s.times, s.load);
    Ok(())
}

/// Each test's (passes, runs).
type Tally = BTreeMap<String, (u32, u32)>;

fn rounds(s: &Stress<'_>, logs: &std::path::Path) -> anyhow::Result<Tally> {
    let mut tally = Tally::new();
    for round in 1..=s.times {
        let started = Instant::now();
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root())
            .args(["test", "-p", "leakprobe", "--test", s.test, "--"])
            .args(s.filters)
            .env("LEAKPROBE_NODE_CACHE", setup::node_cache())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.output().with_context(|| format!("starting {}", display(&cmd)))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let results = test_results(&stdout);
        if results.is_empty() {
            bail!("{} ran no test:\n{}", display(&cmd), String::from_utf8_lossy(&out.stderr));
        }
        let failures: Vec<&str> = results.iter().filter(|(_, ok)| !ok).map(|(n, _)| n.as_str()).collect();
        for (name, ok) in &results {
            let entry = tally.entry(name.clone()).or_default();
            entry.0 += u32::from(*ok);
            entry.1 += 1;
        }
        if !failures.is_empty() {
            let log = logs.join(format!("{}-round{round}.log", s.test));
            std::fs::write(&log, format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))?;
        }
        println!(
            "round {round}/{}: {} tests, {} failed{} ({:.0} s)",
            s.times,
            results.len(),
            failures.len(),
            match failures.is_empty() {
                true => String::new(),
                false => format!(": {}", failures.join(", ")),
            },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(tally)
}

/// `test NAME ... ok` / `test NAME ... FAILED` lines: (name, passed).
fn test_results(stdout: &str) -> Vec<(String, bool)> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("test ")?;
            let (name, outcome) = rest.rsplit_once(" ... ")?;
            match outcome.trim() {
                "ok" => Some((name.to_string(), true)),
                "FAILED" => Some((name.to_string(), false)),
                _ => None,
            }
        })
        .collect()
}

/// Keeps one core busy until `stop`: arithmetic and a little memory traffic.
fn spin(stop: &AtomicBool) {
    let mut scratch = vec![0u64; 1 << 16];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while !stop.load(Ordering::Relaxed) {
        for slot in scratch.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *slot = slot.wrapping_add(x);
        }
        std::hint::black_box(&scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::test_results;

    #[test]
    fn reads_each_tests_outcome() {
        let out = "running 3 tests\ntest node24_set ... ok\ntest system_node_array ... FAILED\n\
                   test a ... ignored\ntest result: FAILED. 1 passed; 1 failed";
        assert_eq!(
            test_results(out),
            vec![("node24_set".to_string(), true), ("system_node_array".to_string(), false)]
        );
    }
}
