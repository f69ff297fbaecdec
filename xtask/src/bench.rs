//! `cargo xtask bench`: what leakprobe costs the process it watches, as ratios measured in one
//! run (these machines are shared and noisy, so absolute times mean little).
//!
//! 1. A node HTTP service on loopback, in interleaved rounds of these modes: baseline (nothing
//!    attached), leakprobe's default mode, `--native`, a reference tracer of the shape of
//!    libbpf-tools' memleak (a bpftrace script: malloc and calloc uprobes and uretprobes with
//!    user stacks, and free), attached to the same process, the default mode without its census,
//!    and a control (nothing attached, measured as a tracer is: the method's own reading of no
//!    cost). In each round, each mode gets:
//!    - 2 s at the fixed rate below, not measured (the same start for every slot);
//!    - a fixed offered rate below saturation (a third of the warm-up's saturated rate, open
//!      loop, `load.rs`), over which the CPU time of the service and of the tracer is read
//!      (`clock_getcpuclockid`: the thread group's time in ns, the same clock as utime + stime
//!      in /proc/PID/stat without its 10 ms ticks), per request completed. Below saturation the
//!      service does the same work in every mode, so CPU per request is what a tracer adds, even
//!      when the machine's other tenants change the rate the service could reach;
//!    - saturated throughput under `wrk -t1 -c16`.
//!
//!    Each tracer's slot is bracketed by baseline slots (B D B N B R B D ...), and its CPU per
//!    request and rate are compared with the mean of the two around it; the median over rounds
//!    is reported with the spread, beside the targets of issue 11 (verdicts
//!    are printed; a missed target does not fail the bench). The direct part of a tracer's cost
//!    is shown apart: its own process, and the run time of its BPF programs (found by its file
//!    descriptors; `kernel.bpf_stats_enabled`), per request and per program.
//! 2. Cost per probed allocation: a node loop of ArrayBuffer allocations (each one an allocate
//!    and, later, a free through node's allocator), timed inside node without and with
//!    leakprobe; and the events per second the collector kept up with, with its drop counters.
//! 3. The agent's own memory over a run with processes coming and going.
//! 4. The first minute apart from steady state, on a fixed amount of work (`first_minute`).
//! 5. One hour attached: leakprobe's own memory and CPU over an hour (`hour`; only with `--hour`,
//!    as it takes the hour).
//! 6. The agent at 1, 10 and 100 idle node processes: attach time, its CPU, RSS and kernel
//!    memory (`agent_scale`; only with `--agent-scale`).
//!
//! Its parts: `modes` (what each mode attaches), `http` (the rounds) and `http_report` (their
//! tables and the verdicts), `load` (the open-loop generator), `tracer` (attaching and stopping
//! leakprobe and the reference tracer), `bpf_stats` (the programs' run statistics), `procfs`
//! (CPU seconds, RSS, the load average), `stats` (median and spread), `suite_service` (a suite
//! service started and warmed up for 4. and 5.), `alloc_loop` (2.),
//! `census` (the heap census's cost) and `agent_memory` (3.).

mod agent_memory;
mod agent_scale;
mod alloc_loop;
mod bpf_stats;
mod census;
mod first_minute;
mod hour;
mod http;
mod http_report;
mod load;
mod modes;
mod procfs;
mod stats;
mod suite_service;
mod tracer;

use std::{fs, process::Command};

use anyhow::Context as _;

use self::{
    agent_memory::agent_memory,
    bpf_stats::BPF_STATS,
    http::http_rounds,
    http_report::{print_http, print_programs, print_targets},
    modes::{custom_modes, standard_modes},
    procfs::load_average,
};
use crate::{sh, target_dir};

/// A section run on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Only {
    /// The fixed-work slots (4.).
    FirstMinute,
    /// The hour attached (5.).
    Hour,
    /// The agent at scale (6.).
    AgentScale,
}

/// Runs the benchmarks and prints the tables. With `modes` (`NAME=ARGS`), only the HTTP rounds
/// run, with the baseline and those modes, and no targets are judged; with `only`, only those
/// sections.
pub fn run(modes: &[String], only: &[Only]) -> anyhow::Result<()> {
    sh(Command::new("cargo").args(["build", "--release", "--package", "leakprobe"]))?;
    let leakprobe = target_dir().join("release/leakprobe");
    println!("\nleakprobe bench; machine load before: {}", load_average());
    if !only.is_empty() {
        for section in only {
            match section {
                Only::FirstMinute => first_minute::first_minute(&leakprobe)?,
                Only::Hour => hour::hour(&leakprobe)?,
                Only::AgentScale => agent_scale::agent_scale(&leakprobe)?,
            }
        }
        println!("\nmachine load after: {}", load_average());
        return Ok(());
    }

    let custom = !modes.is_empty();
    let modes = if custom { custom_modes(modes)? } else { standard_modes() };
    let previous = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    // Kernel-side time per program run (off by default: it costs a little per run).
    fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let measured = http_rounds(&leakprobe, &modes);
    let _ = fs::write(BPF_STATS, previous.trim());
    let run = measured?;
    print_http(&run, &modes);
    if custom {
        print_programs(&run, &modes);
        return Ok(());
    }
    print_targets(&run);
    print_programs(&run, &modes);
    alloc_loop::costs(&leakprobe)?;
    census::census_cost(&leakprobe)?;
    agent_memory(&leakprobe)?;
    first_minute::first_minute(&leakprobe)?;
    println!("\nmachine load after: {}", load_average());
    Ok(())
}
