//! Project tasks: `cargo xtask setup | layout | test | stress | soak | demo | bench | image`.
//!
//! Every task that needs the eBPF toolchain or node builds runs `setup` first, so each works on
//! a fresh machine (as root, which installing packages and loading eBPF programs both need).

mod bench;
mod demo;
mod image;
mod layout;
mod setup;
mod stress;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "leakprobe's build, test and demo tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: LLVM 22 dev files, bpf-linker, rust-src, bpftool, and
    /// the official node builds the tests run against. Idempotent.
    Setup,
    /// Check the crates' layout: no import circles between modules, no file over 600 lines
    /// without a `//! Size:` line saying why.
    Layout {
        /// The workspace to check (default: this one), e.g. an exported older commit.
        #[arg(long, value_name = "DIR")]
        workspace: Option<PathBuf>,
    },
    /// The layout check, setup, then formatting, clippy, unit tests and the integration tests (as root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        cargo_test_args: Vec<String>,
    },
    /// Setup, then run one integration test binary many times in a row beside a CPU load and
    /// report each test's passes (not in `test`: the retainer tests take about an hour 20 times).
    Stress {
        /// The test binary (a file of tests/ without `.rs`).
        #[arg(long, default_value = "retainers")]
        test: String,
        /// Rounds.
        #[arg(long, default_value_t = 20)]
        times: u32,
        /// Threads that spin beside the tests (the machine's load).
        #[arg(long, default_value_t = 1)]
        load: usize,
        /// Test name filters, as `cargo test` takes them.
        filters: Vec<String>,
    },
    /// Setup, then the slow suite (tests/slow_leaks.rs): slow leaks and healthy controls, each
    /// watched for a 10-minute window (not in `test`: about 25 minutes, three at a time).
    Soak {
        /// Tests run at once.
        #[arg(long, default_value_t = 3)]
        threads: usize,
        /// Test name filters, as `cargo test` takes them.
        filters: Vec<String>,
    },
    /// Setup, then measure what leakprobe costs a node process (ratios from one run).
    Bench {
        /// Compare only these modes with the baseline in the HTTP rounds, skipping the other
        /// sections and the targets: `NAME=ARGS` (leakprobe's arguments, split at spaces), or
        /// `reference` for the bpftrace reference tracer. Repeatable.
        #[arg(long = "mode", value_name = "NAME=ARGS")]
        modes: Vec<String>,
        /// Run only the fixed-work comparison of the first minute with steady state (about 16
        /// minutes).
        #[arg(long)]
        first_minute: bool,
        /// Run only the hour attached to a healthy service: leakprobe's own memory and CPU,
        /// minute by minute (about 62 minutes).
        #[arg(long)]
        hour: bool,
        /// Run only the agent at 1, 10 and 100 idle node processes: attach time, its CPU, RSS
        /// and kernel memory (about 8 minutes).
        #[arg(long)]
        agent_scale: bool,
    },
    /// Setup, then profile the bundled leaky node service under load for a while.
    Demo {
        /// How long leakprobe watches the service.
        #[arg(long, default_value = "20s")]
        duration: String,
    },
    /// Setup, then build the agent's container image with buildah, on a debootstrap'd Debian
    /// base, with no registry (localhost/leakprobe:0.1.0).
    Image {
        /// Put the debug binary in, as `cargo xtask test` does (localhost/leakprobe:test).
        #[arg(long)]
        debug: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().task {
        Task::Setup => setup::run(),
        Task::Layout { workspace } => layout::check(&workspace.unwrap_or_else(root)),
        Task::Test { cargo_test_args } => {
            // First, before the long setup: it needs no toolchain, and fails on a broken rule.
            layout::check(&root())?;
            setup::run()?;
            test(&cargo_test_args)
        }
        Task::Stress { test, times, load, filters } => {
            setup::run()?;
            stress::run(&stress::Stress { test: &test, times, load, filters: &filters })
        }
        Task::Soak { threads, filters } => {
            setup::run()?;
            cargo_test(
                Command::new("cargo")
                    .args(["test", "-p", "leakprobe", "--test", "slow_leaks", "--no-fail-fast", "--"])
                    .args(["--ignored", "--test-threads", &threads.to_string()])
                    .args(&filters)
                    .env("LEAKPROBE_NODE_CACHE", setup::node_cache()),
            )
        }
        Task::Bench { modes, first_minute, hour, agent_scale } => {
            setup::run()?;
            let only = [
                (first_minute, bench::Only::FirstMinute),
                (hour, bench::Only::Hour),
                (agent_scale, bench::Only::AgentScale),
            ];
            bench::run(&modes, &only.iter().filter(|(on, _)| *on).map(|(_, o)| *o).collect::<Vec<_>>())
        }
        Task::Demo { duration } => {
            setup::run()?;
            demo::run(&duration)
        }
        Task::Image { debug } => {
            setup::run()?;
            image::build(if debug { image::Profile::Test } else { image::Profile::Release }).map(drop)
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` if set (relative to the workspace root,
/// as cargo reads it), else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// Runs `cmd` in the workspace root, echoing it, and fails unless it succeeds.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    eprintln!("xtask: $ {}", display(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the integration tests load eBPF programs into the kernel: run `cargo xtask test` as root");
    }
    sh(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    sh(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--exclude",
        "leakprobe-ebpf",
        "--",
        "-D",
        "warnings",
    ]))?;
    // tests/container.rs runs the agent from this image's root filesystem.
    image::build(image::Profile::Test)?;
    cargo_test(
        Command::new("cargo")
            .args([
                "test",
                "--workspace",
                "--exclude",
                "leakprobe-ebpf",
                "--lib",
                "--bins",
                "--tests",
                "--no-fail-fast",
            ])
            .args(extra)
            .env("LEAKPROBE_NODE_CACHE", setup::node_cache()),
    )
}

/// Runs `cargo test`, echoing its output, and closes with the totals over every test binary.
fn cargo_test(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root()).stdout(Stdio::piped());
    eprintln!("xtask: $ {}", display(cmd));
    let mut child = cmd.spawn().with_context(|| format!("starting {}", display(cmd)))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

/// Reads `test result: ok. 9 passed; 0 failed; ...` into (passed, failed).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let number_before = |word: &str| -> Option<u64> {
        let end = rest.find(word)?;
        rest[..end].trim_end().rsplit(' ').next()?.parse().ok()
    };
    Some((number_before(" passed")?, number_before(" failed")?))
}

#[cfg(test)]
mod tests {
    use super::parse_test_result;

    #[test]
    fn reads_cargo_test_result_lines() {
        let line =
            "test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(parse_test_result(line), Some((9, 0)));
        let line = "test result: FAILED. 5 passed; 5 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_test_result(line), Some((5, 5)));
        assert_eq!(parse_test_result("test foo ... ok"), None);
    }
}
