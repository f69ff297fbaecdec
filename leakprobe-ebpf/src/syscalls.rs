//! Memory syscalls: `mmap`, `munmap` and `brk` of the target, from the `syscalls` tracepoints.
//! The kernel sends each call (with the caller's stack) through the ring buffer; userspace
//! keeps the interval books, since `munmap` may cut a mapping anywhere.

use crate::user_pod;

/// One memory syscall of the target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEvent {
    /// [`crate::EventKind::Map`].
    pub kind: u32,
    /// One of [`op`].
    pub op: u32,
    /// Calling thread.
    pub tid: u32,
    /// `mmap` flags (`MAP_ANONYMOUS`, `MAP_SHARED`, ...), 0 for the other calls.
    pub flags: u32,
    /// Caller's stack id, or `alloc::NO_STACK`.
    pub stack_id: i64,
    /// `mmap`: the mapping's address; `munmap`: the start unmapped; `brk`: the new break.
    pub addr: u64,
    /// `mmap`/`munmap`: length in bytes; `brk`: 0.
    pub len: u64,
}

/// A call between its entry and its return (keyed by thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapPending {
    /// Requested length.
    pub len: u64,
    /// Caller's stack id.
    pub stack_id: i64,
    /// `mmap` flags.
    pub flags: u64,
}

user_pod!(MapEvent, MapPending);

/// Memory syscalls.
pub mod op {
    /// A successful `mmap`.
    pub const MMAP: u32 = 1;
    /// `munmap`.
    pub const MUNMAP: u32 = 2;
    /// A `brk` that returned the break in `addr`.
    pub const BRK: u32 = 3;
}

/// Index of the target's tgid in the `TARGET_CONFIG` array (tracepoints and per-CPU perf
/// events fire for every process; the programs keep only the target's).
pub const CONFIG_TGID: u32 = 0;
/// Slots in `TARGET_CONFIG`.
pub const CONFIG_SLOTS: u32 = 1;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u32 = 0x20;
