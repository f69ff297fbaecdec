//! Allocation tracking shared by every family that follows allocations to their frees
//! (external, native, syscalls): what the kernel keeps per live allocation and per stack.

use crate::user_pod;

/// An allocation whose call has entered but not yet returned its address (keyed by thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Requested bytes.
    pub size: u64,
    /// Stack id in the `STACKS` map, or [`NO_STACK`].
    pub stack_id: i64,
}

/// A live allocation (keyed by address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAlloc {
    /// Bytes.
    pub size: u64,
    /// Stack id in the `STACKS` map, or [`NO_STACK`].
    pub stack_id: i64,
}

/// Totals since attach for one allocation stack (keyed by stack id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    /// Bytes allocated from this stack.
    pub alloc_bytes: u64,
    /// Allocations from this stack.
    pub allocs: u64,
    /// Of those, bytes freed again.
    pub free_bytes: u64,
    /// Of those, allocations freed again.
    pub frees: u64,
}

user_pod!(Pending, LiveAlloc, StackTotals);

/// Stack id used when the stack could not be captured (counted as a `StackLost` drop).
pub const NO_STACK: i64 = -1;

/// Entries in the shared `STACKS` map.
pub const MAX_STACKS: u32 = 8192;
/// Live allocations tracked per family before `LiveFull` drops.
pub const MAX_LIVE: u32 = 131_072;
/// Distinct stacks per family before `StackTotalsFull` drops.
pub const MAX_STACK_TOTALS: u32 = 16_384;
/// Threads inside an allocation call at once, per family.
pub const MAX_PENDING: u32 = 4096;
