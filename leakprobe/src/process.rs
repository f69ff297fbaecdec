//! The process: finding node processes and the one to profile, where it runs (cgroups), its
//! binaries' symbols and code, and the perf map its JIT may write.

pub mod cgroup;
pub mod discover;
pub mod insn;
pub mod perfmap;
pub mod symbols;
pub mod target;
