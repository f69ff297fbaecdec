//! The tracers a mode attaches to the service: leakprobe, and the reference tracer (bpftrace in
//! the shape of libbpf-tools' memleak); attaching waits until their probes are live, stopping
//! is Ctrl-C's SIGINT.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _};

use super::{modes::Tracer, procfs::libc_of};

/// What the cost loop's report says.
pub(super) struct LoopReport {
    pub(super) external_allocations: u64,
    pub(super) drops: u64,
}

/// What watches the service for one mode's slot of a round.
pub(super) enum Watcher {
    Leakprobe(Leakprobe),
    Reference(Reference),
}

impl Watcher {
    /// Attaches `tracer` to `pid` and waits until its probes are live; `None` for the baseline.
    pub(super) fn attach(tracer: &Tracer, leakprobe: &Path, pid: u32) -> anyhow::Result<Option<Self>> {
        Ok(match tracer {
            Tracer::None => None,
            Tracer::Leakprobe(args) => Some(Self::Leakprobe(Leakprobe::attach(leakprobe, pid, args)?)),
            Tracer::Reference => Some(Self::Reference(Reference::attach(pid)?)),
        })
    }

    /// The tracer's process, whose CPU time is the tracer's own.
    pub(super) fn pid(&self) -> u32 {
        match self {
            Self::Leakprobe(l) => l.child.id(),
            Self::Reference(r) => r.child.id(),
        }
    }

    /// Detaches (SIGINT, as Ctrl-C) and waits for the tracer to exit.
    pub(super) fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Leakprobe(l) => l.stop(),
            Self::Reference(r) => r.stop(),
        }
    }
}

/// The reference tracer: what libbpf-tools' memleak does, as a bpftrace script. On every
/// malloc and calloc of the target, the entry probe keeps the size by thread and the return
/// probe files the address with its size and user stack; free forgets the address.
const REFERENCE_SCRIPT: &str = r#"
BEGIN { printf("attached\n"); }
uprobe:LIBC:malloc /pid == TARGET/ { @size[tid] = arg0; }
uprobe:LIBC:calloc /pid == TARGET/ { @size[tid] = arg0 * arg1; }
uretprobe:LIBC:malloc, uretprobe:LIBC:calloc /pid == TARGET && @size[tid]/ {
  @bytes[retval] = @size[tid];
  @stack[retval] = ustack;
  delete(@size[tid]);
}
uprobe:LIBC:free /pid == TARGET/ { delete(@bytes[arg0]); delete(@stack[arg0]); }
END { clear(@size); clear(@bytes); clear(@stack); }
"#;

/// The reference tracer attached to a process.
pub(super) struct Reference {
    child: Child,
}

impl Reference {
    /// Starts bpftrace with [`REFERENCE_SCRIPT`] on `pid`'s libc and waits for its BEGIN line
    /// (bpftrace runs BEGIN once every probe is attached).
    pub(super) fn attach(pid: u32) -> anyhow::Result<Self> {
        let libc = libc_of(pid)?;
        let script = REFERENCE_SCRIPT.replace("LIBC", &libc).replace("TARGET", &pid.to_string());
        let mut child = Command::new("bpftrace")
            .args(["-p", &pid.to_string(), "-e", &script])
            // Room for the outstanding allocations of a busy service (the default is 4096).
            .env("BPFTRACE_MAP_KEYS_MAX", "65536")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace (cargo xtask setup installs it)")?;
        let stdout = child.stdout.take().context("bpftrace's stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let reference = Self { child };
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.trim() == "attached" => return Ok(reference),
                Ok(_) => {}
                Err(_) => bail!("the reference tracer (bpftrace) did not attach within 60 s"),
            }
        }
    }

    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("bpftrace exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A leakprobe attached to a process for the length of one measurement.
pub(super) struct Leakprobe {
    child: Child,
    out: PathBuf,
}

impl Leakprobe {
    /// Starts leakprobe and waits until its probes are live and its opening burst is over.
    pub(super) fn attach<S: AsRef<str>>(leakprobe: &Path, pid: u32, args: &[S]) -> anyhow::Result<Self> {
        Self::start(leakprobe, pid, args, true)
    }

    /// Starts leakprobe and waits until its probes are live (its opening burst then runs).
    pub(super) fn attach_from_start<S: AsRef<str>>(
        leakprobe: &Path,
        pid: u32,
        args: &[S],
    ) -> anyhow::Result<Self> {
        Self::start(leakprobe, pid, args, false)
    }

    /// leakprobe's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start<S: AsRef<str>>(
        leakprobe: &Path,
        pid: u32,
        args: &[S],
        after_burst: bool,
    ) -> anyhow::Result<Self> {
        let out = std::env::temp_dir().join(format!("leakprobe-bench-{pid}-{}", std::process::id()));
        let mut child = Command::new(leakprobe)
            .args(["--pid", &pid.to_string(), "--interval", "1s", "--out"])
            .arg(&out)
            .args(args.iter().map(AsRef::as_ref))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leakprobe")?;
        let rx = stderr_lines(&mut child)?;
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains("attached") => break,
                Ok(line) if line.contains("error") => bail!("leakprobe: {line}"),
                Ok(_) => {}
                Err(_) => bail!("leakprobe did not attach within 60 s"),
            }
        }
        // The default mode's opening burst traces every Buffer allocation for its first
        // seconds; what it costs to stay attached is measured after it (the README gives the
        // burst's cost apart).
        if after_burst && !args.iter().any(|a| matches!(a.as_ref(), "--alloc-stacks" | "--burst")) {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                    Ok(line) if line.contains("opening burst over") => break,
                    Ok(_) => {}
                    Err(_) => bail!("leakprobe's opening burst did not end within 30 s"),
                }
            }
        }
        Ok(Self { child, out })
    }

    /// Stops leakprobe (SIGINT, as Ctrl-C) and waits for it to write its report and exit.
    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        let _ = std::fs::remove_dir_all(&self.out);
        if !status.success() {
            bail!("leakprobe exited with {status}");
        }
        Ok(())
    }

    /// Waits for leakprobe to end (its target exited) and reads its report.
    pub(super) fn report(mut self) -> anyhow::Result<LoopReport> {
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

impl Drop for Leakprobe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `child`'s piped stderr, read on a thread until it closes. The thread keeps
/// reading when nobody listens any more: a full pipe would block leakprobe's status lines.
pub(super) fn stderr_lines(child: &mut Child) -> anyhow::Result<mpsc::Receiver<String>> {
    let stderr = child.stderr.take().context("leakprobe's stderr is not piped")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}
