//! A suite service (tests/fixtures/suite/) started for a measurement: spawned with its
//! environment, told to go, and warmed up; its stdout lines read on a thread (so that it never
//! blocks on a full pipe), killed when dropped.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::root;

/// A running suite service, past its warm-up.
pub(super) struct SuiteService {
    child: Child,
    /// Its stdout lines since `WARM` (its `MEM` lines, once a second).
    pub(super) lines: mpsc::Receiver<String>,
}

impl SuiteService {
    /// Starts `tests/fixtures/suite/<fixture>` with `env` and waits for its `WARM` line.
    pub(super) fn start(fixture: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut child = Command::new("node")
            .arg(root().join("tests/fixtures/suite").join(fixture))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the suite service {fixture}"))?;
        let stdout = child.stdout.take().context("service stdout")?;
        let (tx, lines) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut service = Self { child, lines };
        service.wait_for("READY")?;
        service.child.stdin.as_mut().context("service stdin")?.write_all(b"go\n")?;
        service.wait_for("WARM")?;
        Ok(service)
    }

    /// The service's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_for(&self, what: &str) -> anyhow::Result<()> {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with(what) => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("the suite service did not print {what}"),
            }
        }
    }
}

impl Drop for SuiteService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
