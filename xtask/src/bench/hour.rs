//! One hour attached (issue 20): whether leakprobe's own memory and CPU stay flat while the
//! default mode watches a healthy service for an hour.
//!
//! The target is the leak suite's high-churn service (`tests/fixtures/suite/high-churn.js`: a
//! JSON API's churn and nothing kept), at its default rate. leakprobe runs in the default mode
//! for [`MINUTES`] minutes; once a minute this reads its resident memory and the CPU time it and
//! the target used in that minute. Printed: each ten minutes' row, and the last ten minutes
//! against the first ten after the first minute (the first minute is what `--first-minute`
//! measures).

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    procfs::{cpu_seconds, rss_kib},
    suite_service::SuiteService,
    tracer::Leakprobe,
};

/// Minutes attached.
const MINUTES: u64 = 60;

/// One minute's reading: leakprobe's RSS (KiB) at its end, and the CPU seconds leakprobe and
/// the target used during it.
#[derive(Clone, Copy, Debug)]
struct Minute {
    rss_kib: u64,
    own_cpu_s: f64,
    target_cpu_s: f64,
}

/// Runs the hour and prints its table.
pub(super) fn hour(leakprobe: &Path) -> anyhow::Result<()> {
    println!("\nOne hour attached (the suite's high-churn service, default mode, {MINUTES} min):");
    let node = SuiteService::start(
        "high-churn.js",
        &[("WARMUP_SECONDS", "5".to_string()), ("SUITE_SECONDS", (MINUTES * 60 + 120).to_string())],
    )?;
    let pid = node.pid();
    let attached =
        Leakprobe::attach_from_start(leakprobe, pid, &["--duration", &format!("{}m", MINUTES + 1)])?;
    let start = Instant::now();
    let mut minutes = Vec::new();
    let (mut own, mut target) = (cpu_seconds(attached.pid())?, cpu_seconds(pid)?);
    for m in 1..=MINUTES {
        thread::sleep(Duration::from_secs(60 * m).saturating_sub(start.elapsed()));
        let (own_now, target_now) = (cpu_seconds(attached.pid())?, cpu_seconds(pid)?);
        let rss_kib = rss_kib(attached.pid(), "VmRSS:").context("leakprobe's RSS")?;
        minutes.push(Minute { rss_kib, own_cpu_s: own_now - own, target_cpu_s: target_now - target });
        (own, target) = (own_now, target_now);
    }
    attached.stop()?;
    print_hour(&minutes);
    Ok(())
}

/// Every tenth minute's row, and the last ten minutes against minutes 2 to 11.
fn print_hour(minutes: &[Minute]) {
    println!("{:>8} {:>16} {:>18} {:>14}", "minute", "leakprobe RSS MiB", "leakprobe CPU s/min", "its share");
    for (i, m) in minutes.iter().enumerate().filter(|(i, _)| i % 10 == 0 || *i + 1 == minutes.len()) {
        println!(
            "{:>8} {:>16.1} {:>18.2} {:>13.1}%",
            i + 1,
            m.rss_kib as f64 / 1024.0,
            m.own_cpu_s,
            100.0 * m.own_cpu_s / m.target_cpu_s.max(1e-9)
        );
    }
    let span = |from: usize| -> Option<(f64, f64)> {
        let part = minutes.get(from..from + 10)?;
        let own: f64 = part.iter().map(|m| m.own_cpu_s).sum();
        let target: f64 = part.iter().map(|m| m.target_cpu_s).sum();
        Some((own / target.max(1e-9), part.last()?.rss_kib as f64 / 1024.0))
    };
    if let (Some(early), Some(late)) = (span(1), span(minutes.len().saturating_sub(10))) {
        println!(
            "minutes 2-11: {:.1}% of the target's CPU, {:.1} MiB; last ten: {:.1}%, {:.1} MiB ({:+.1} MiB)",
            100.0 * early.0,
            early.1,
            100.0 * late.0,
            late.1,
            late.1 - early.1
        );
    }
}
