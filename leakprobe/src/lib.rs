//! leakprobe: an eBPF memory profiler for running Node.js processes.
//!
//! The kernel programs live in the `leakprobe-ebpf` crate, with the types both sides share; this
//! crate loads them, attaches them to a target process through the probe table in [`probes`],
//! and turns what they send into the live view and `report.json`.

/// Prints a status line on stderr. Unlike `eprintln!`, a closed stderr (`leakprobe ... 2>&1 |
/// head`) is not a panic: the line is dropped.
#[macro_export]
macro_rules! status {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod agent;
pub mod alloc;
pub mod census;
pub mod census_watch;
pub mod cgroup;
pub mod discover;
pub mod error;
pub mod external;
pub mod faults;
pub mod gc;
pub mod health;
pub mod heap;
pub mod insn;
pub mod memory;
pub mod native;
pub mod outputs;
pub mod perfmap;
pub mod privilege;
pub mod probes;
pub mod session;
pub mod symbolize;
pub mod symbols;
pub mod syscalls;
pub mod target;
pub mod tracefs;
pub mod v8;
pub mod verdict;
