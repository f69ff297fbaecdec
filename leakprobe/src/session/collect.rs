//! Collecting: the session's loop until a stop condition (its duration, a signal, the target's
//! exit), draining the kernel's events, reading GC troughs and refreshing the live view.

use std::{
    io::{IsTerminal as _, Write as _},
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use super::{options::Options, watch, Session, Stacks, Trough, DRAIN_EVERY, TROUGH_EVERY, TROUGH_SPAN};
use crate::{
    kernel::attach,
    memory::{native::NativeState, rss},
    outputs::{
        live::{self, CLEAR_SCREEN},
        report::StopReason,
    },
};

impl Session {
    /// Reads waiting events; after a full GC, samples too. Call often (every 100 ms or so).
    pub fn poll(&mut self) {
        self.drain();
        if let Some(kernel_log) = &mut self.kernel_log {
            kernel_log.flush();
        }
        self.detach_when_found();
        if let Some(seq) = self.trough_due.take() {
            // A full GC that came before the last one's trough was read ends that trough.
            if self.trough.is_some() {
                self.finish_trough();
            }
            // Each stack's series gets a point where its floor is, too.
            self.sample();
            let until = std::time::Instant::now() + TROUGH_SPAN;
            self.trough = Some(Trough { seq, until, low: None });
        }
        self.read_trough();
    }

    /// Whether a GC trough is being read (every [`TROUGH_EVERY`]).
    pub(super) fn reading_trough(&self) -> bool {
        self.trough.is_some()
    }

    /// One reading of the trough being read: RSS, external and the V8 heap, each kept at its
    /// lowest; once its span is over, the trough joins the memory samples, and what each stack's
    /// allocations still hold is sampled as the GC left it (the point a site's growth is read
    /// at, [`crate::books::tracker::Tracker::trough`]).
    pub(super) fn read_trough(&mut self) {
        let Some(trough) = &mut self.trough else { return };
        if let Some(rss) = self.rss.read() {
            let reading = rss::Sample {
                trough: Some(trough.seq),
                t_s: self.started.elapsed().as_secs_f64(),
                rss,
                v8_heap_bytes: self.heap.bytes(),
                v8_old_generation_bytes: self.heap.old_generation_bytes(),
                v8_worker_heaps_bytes: self.heap.worker_bytes(),
                external_bytes: self.external.read_bytes(),
                native_bytes: self.native.as_ref().map(NativeState::bytes),
            };
            trough.low = Some(trough.low.map_or(reading, |low| low.lowest(&reading)));
        }
        if std::time::Instant::now() >= trough.until {
            self.finish_trough();
        }
    }

    /// Ends the trough being read: its lowest readings join the memory samples, and each
    /// stack's allocations are sampled as the GC left them.
    fn finish_trough(&mut self) {
        let Some(trough) = self.trough.take() else { return };
        if let Some(low) = trough.low {
            self.memory.push(low);
        }
        let t = self.started.elapsed().as_secs_f64();
        self.external.sample_stacks(t, &mut self.suspects);
        self.heap.sample(t, &mut self.suspects);
        self.suspects.trough(t);
    }

    /// After the opening burst, has the kernel follow a sample of Buffer allocations
    /// (`--buffer-sampling`), or detaches the per-allocation probes as soon as node's allocator
    /// is known (checked every poll: until then, every ArrayBuffer allocation pays a uprobe
    /// trap).
    pub(super) fn detach_when_found(&mut self) {
        if self.found_links.is_none() {
            return;
        }
        if self.started.elapsed() < self.burst {
            // The burst: every poll, so that each stack's floor is read between GCs.
            let t = self.started.elapsed().as_secs_f64();
            self.external.sample_stacks(t, &mut self.suspects);
            return;
        }
        if self.buffer_sampling > 0 {
            self.found_links = None;
            match self.external.sample_from_now(self.buffer_sampling) {
                Ok(()) if self.burst.is_zero() => {}
                Ok(()) => status!(
                    "leakprobe: opening burst over: one Buffer allocation in {} is followed from now on",
                    self.buffer_sampling
                ),
                Err(e) => status!("leakprobe: {e:#}: every Buffer allocation is still followed"),
            }
            return;
        }
        let needed = self.external.needs_allocator_probes();
        if !self.burst.is_zero() && !std::mem::replace(&mut self.burst_said, true) {
            status!(
                "leakprobe: opening burst over: the per-allocation Buffer probes are detached{}",
                if needed { " once node's allocator is seen" } else { "" }
            );
        }
        if !needed {
            let links = self.found_links.take().unwrap_or_default();
            attach::detach_found(&mut self.ebpf, links, &mut self.probes);
            self.external.detached();
        }
    }

    /// Collects until a stop condition; returns which one.
    pub async fn collect(&mut self, options: &Options) -> anyhow::Result<StopReason> {
        let exited = pidfd(self.target.pid)?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval(options.interval);
        // The kernel does not wake us per event (see `emit` in leakprobe-ebpf): drain often.
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trough_tick = tokio::time::interval(TROUGH_EVERY);
        trough_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        let tty = std::io::stdout().is_terminal() && !options.json;

        loop {
            tokio::select! {
                ready = self.events.readable_mut() => {
                    let mut guard = ready.context("waiting for events")?;
                    guard.clear_ready();
                    self.drain();
                }
                // Right after a full GC is where each series' floor is: `poll` samples there
                // too, or the sawtooth of garbage awaiting the GC would read as noise in floors.
                _ = drain.tick() => self.poll(),
                _ = trough_tick.tick(), if self.reading_trough() => {
                    self.drain();
                    self.read_trough();
                }
                _ = tick.tick() => {
                    self.sample();
                    if !options.json {
                        self.show(tty, options);
                    }
                }
                _ = sigint.recv() => return Ok(StopReason::Signal),
                _ = sigterm.recv() => return Ok(StopReason::Signal),
                _ = exited.readable() => return Ok(StopReason::TargetExited),
                _ = sleep_until(deadline) => return Ok(StopReason::Duration),
            }
        }
    }

    /// Refreshes the live view.
    /// (A closed stdout drops the output rather than panicking.)
    pub(super) fn show(&mut self, tty: bool, options: &Options) {
        let mut stdout = std::io::stdout().lock();
        let _ = if tty {
            let report = self.report(StopReason::Duration, Stacks::Suspects);
            write!(
                stdout,
                "{CLEAR_SCREEN}{}\nrefreshing every {}; Ctrl-C stops{}\n",
                live::summary(&report),
                humantime::format_duration(options.interval),
                options.out.as_ref().map_or(String::new(), |d| format!(" and writes {}", d.display())),
            )
        } else {
            // The one-line view is read from the books: no report is built, no stack judged.
            let line = live::Line {
                t_s: self.started.elapsed().as_secs_f64(),
                pauses: &self.gc.pauses,
                memory: self.memory.items().last(),
                lost: self.drop_counts().values().sum(),
            };
            writeln!(stdout, "{}", live::line(&line))
        };
        let _ = stdout.flush();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A pidfd for `pid`: it polls readable when the process exits.
fn pidfd(pid: u32) -> anyhow::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Err(crate::error::Error::TargetGone(pid).into());
        }
        return Err(anyhow::Error::new(err).context(format!("pidfd_open({pid})")));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    watch(fd).context("polling the target's pidfd")
}
