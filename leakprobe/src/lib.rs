//! leakprobe: an eBPF memory profiler for running Node.js processes.
//!
//! The kernel programs live in the `leakprobe-ebpf` crate, with the types both sides share; this
//! crate loads them, attaches them to a target process through the probe table in
//! [`kernel::table`], and turns what they send into the live view and `report.json`. Its folders
//! are its layers, bottom-up: [`kernel`], [`process`], [`v8`], [`stacks`], [`books`], [`memory`],
//! [`verdict`], [`outputs`], [`session`], [`commands`].

/// Prints a status line on stderr. Unlike `eprintln!`, a closed stderr (`leakprobe ... 2>&1 |
/// head`) is not a panic: the line is dropped.
#[macro_export]
macro_rules! status {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod books;
pub mod commands;
pub mod error;
pub mod kernel;
pub mod memory;
pub mod outputs;
pub mod process;
pub mod session;
pub mod stacks;
pub mod v8;
pub mod verdict;
