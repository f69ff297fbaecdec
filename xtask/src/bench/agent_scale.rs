//! The agent at 1, 10 and 100 idle node processes: how long it takes to watch them all, and
//! then, over a minute of steady state (one verdict of each process in it), the agent's own
//! CPU, its RSS, and the kernel memory of its programs and maps (the `memlock` the kernel
//! charges for each BPF object the agent holds open).

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    procfs::{cpu_seconds, rss_kib},
    tracer::stderr_lines,
};

/// The fleet sizes measured.
const SIZES: [usize; 3] = [1, 10, 100];
/// The steady-state minute measured after every process is watched.
const STEADY: Duration = Duration::from_secs(60);
/// The token on the idle processes' command lines the agent matches.
const TOKEN: &str = "--inspect-port=19398";

/// One fleet size's measurements.
struct Scale {
    targets: usize,
    attach_s: f64,
    cpu_share: f64,
    rss_mib: f64,
    kernel_mib: f64,
    bpf_objects: usize,
}

/// Runs the agent against [`SIZES`] idle node processes in turn and prints one table.
pub(super) fn agent_scale(leakprobe: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for n in SIZES {
        rows.push(one_size(leakprobe, n).with_context(|| format!("the agent at {n} processes"))?);
    }
    println!("\nAgent at scale: idle node processes, the verdict every 60 s (one run each; 2 cores shared)");
    println!(
        "{:>9} {:>10} {:>12} {:>9} {:>14} {:>12}",
        "processes", "attach s", "CPU % core", "RSS MiB", "kernel MiB", "BPF objects"
    );
    for r in &rows {
        println!(
            "{:>9} {:>10.1} {:>12.2} {:>9.1} {:>14.1} {:>12}",
            r.targets,
            r.attach_s,
            100.0 * r.cpu_share,
            r.rss_mib,
            r.kernel_mib,
            r.bpf_objects
        );
    }
    println!("(kernel MiB: the memlock the kernel charges for the agent's BPF programs and maps, read from /proc/PID/fdinfo)");
    Ok(())
}

fn one_size(leakprobe: &Path, n: usize) -> anyhow::Result<Scale> {
    let mut nodes: Vec<Child> = Vec::new();
    let result = (|| {
        for i in 0..n {
            nodes.push(
                Command::new("node")
                    .args([TOKEN, "-e", "setInterval(() => {}, 1000)", &format!("scale-{i}")])
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting an idle node process")?,
            );
        }
        let started = Instant::now();
        let mut agent = Command::new(leakprobe)
            .args(["agent", "--metrics", "127.0.0.1:0", &format!("--match={TOKEN} ")])
            .args(["--max-targets", &n.to_string(), "--judge-every", "60s", "--scan-every", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leakprobe agent")?;
        let measured = (|| {
            let lines = stderr_lines(&mut agent)?;
            let deadline = Instant::now() + Duration::from_secs(60 + 10 * n as u64);
            let mut watching = 0;
            while watching < n {
                let line = lines
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .with_context(|| format!("only {watching} of {n} processes watched in time"))?;
                watching += usize::from(line.contains("leakprobe agent: watching pid"));
            }
            let attach_s = started.elapsed().as_secs_f64();
            let cpu_before = cpu_seconds(agent.id())?;
            thread::sleep(STEADY);
            let cpu_share = (cpu_seconds(agent.id())? - cpu_before) / STEADY.as_secs_f64();
            let (kernel, objects) = bpf_memlock(agent.id());
            Ok::<_, anyhow::Error>(Scale {
                targets: n,
                attach_s,
                cpu_share,
                rss_mib: rss_kib(agent.id(), "RssAnon:").unwrap_or(0) as f64 / 1024.0,
                kernel_mib: kernel as f64 / (1 << 20) as f64,
                bpf_objects: objects,
            })
        })();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let _ = agent.wait();
        measured
    })();
    for mut node in nodes {
        let _ = node.kill();
        let _ = node.wait();
    }
    result
}

/// The memlock bytes of every BPF program and map `pid` holds open, and how many there are.
fn bpf_memlock(pid: u32) -> (u64, usize) {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return (0, 0) };
    let mut total = 0;
    let mut objects = 0;
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else { continue };
        if !(info.contains("map_type:") || info.contains("prog_type:")) {
            continue;
        }
        if let Some(bytes) =
            info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok())
        {
            total += bytes;
            objects += 1;
        }
    }
    (total, objects)
}
