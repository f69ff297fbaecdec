//! What /proc (and the process CPU-time clock) says about a process or the machine: CPU seconds,
//! RSS, the libc mapped, the load average.

use std::fs;

use anyhow::Context as _;

/// The machine's load averages (/proc/loadavg): other tenants' work shows here.
pub(super) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// User and system CPU seconds `pid` has used, all its threads (also those that ended): the
/// process's CPU-time clock, in ns, which /proc/PID/stat shows as utime + stime in 10 ms ticks.
pub(super) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
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
pub(super) fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}

/// The path of the libc `pid` has mapped.
pub(super) fn libc_of(pid: u32) -> anyhow::Result<String> {
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
