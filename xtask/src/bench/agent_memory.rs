//! The agent's own memory over a run with node processes coming and going.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::Context as _;

use super::{procfs::rss_kib, tracer::stderr_lines};
use crate::root;

/// Seconds the agent runs in its memory benchmark.
const AGENT_SECONDS: u64 = 90;
/// Node processes the agent watches at once in its memory benchmark.
const AGENT_TARGETS: usize = 4;

/// The agent's own memory over a run with churn: it watches [`AGENT_TARGETS`] node processes,
/// one of which is replaced every 10 s (attach and detach paths), while /metrics is scraped;
/// its RSS is sampled every 5 s. Bounded means the end is not above the early samples by more
/// than the noise of the allocator.
pub(super) fn agent_memory(leakprobe: &Path) -> anyhow::Result<()> {
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
