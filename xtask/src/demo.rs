//! `cargo xtask demo`: leakprobe on the bundled leaky service, under load, as a user would run it.
//!
//! Starts `tests/fixtures/leaky-service.js` on a loopback port, drives requests at it from a
//! thread (bounded in time, loopback only), and runs the release build of leakprobe against it
//! with a live view, writing the incident folder to `target/demo-incident`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{root, sh, target_dir};

/// The demo's census budget (percent of the target's CPU since attach, three times that of its
/// first minute).
const DEMO_CENSUS_BUDGET: &str = "4";

/// Runs the demo for `duration` (a leakprobe `--duration` value).
pub fn run(duration: &str) -> anyhow::Result<()> {
    sh(Command::new("cargo").args(["build", "--release", "--package", "leakprobe"]))?;
    let leakprobe = target_dir().join("release/leakprobe");
    let out = root().join("target/demo-incident");

    let mut service = Command::new("node")
        .arg(root().join("tests/fixtures/leaky-service.js"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the leaky service with `node`")?;
    let mut ready = String::new();
    BufReader::new(service.stdout.take().context("service stdout")?).read_line(&mut ready)?;
    let Some(addr) = ready.split("http://").nth(1).and_then(|s| s.split('/').next()).map(str::to_string)
    else {
        let _ = service.kill();
        bail!("the leaky service did not start: {ready:?}");
    };
    eprintln!("xtask: leaky service pid {} on {addr}", service.id());

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent, addr) = (stop.clone(), sent.clone(), addr.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if get(&addr).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };

    let result = sh(Command::new(&leakprobe)
        .arg("--pid")
        .arg(service.id().to_string())
        // The default mode, as a user first runs it, with a larger census budget: the demo's
        // heap grows some 30 MiB/s, a census of it takes about a second, and by default the
        // censuses take at most 3% of the target's CPU in its first minute (a 20 s window of
        // this service would get none).
        .args(["--duration", duration, "--interval", "1s", "--census-budget", DEMO_CENSUS_BUDGET, "--out"])
        .arg(&out));
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let _ = service.kill();
    let _ = service.wait();
    result?;
    eprintln!(
        "xtask: {} requests sent; incident folder: {} (report.json, summary.txt, flamegraph SVGs, pprof profiles)",
        sent.load(Ordering::Relaxed),
        out.display()
    );
    Ok(())
}

/// One HTTP/1.0 GET on loopback, reading the whole response.
fn get(addr: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /invoice HTTP/1.0\r\nHost: demo\r\n\r\n")?;
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink)?;
    Ok(())
}
