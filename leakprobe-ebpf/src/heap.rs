//! V8 heap pages: what the `heap` kernel programs send to userspace.
//!
//! V8 commits its heap in pages through `v8::internal::MemoryAllocator`: `AllocatePage`
//! (regular 256 KiB pages, pooled or not), `AllocateLargePage` (one object per page, sized by the
//! nested `AllocateAlignedMemory`), `Free` and `PartialFreeMemory`. And at every GC, V8 itself
//! asks `Heap::CommittedMemory()`, whose return value is exactly `process.memoryUsage().heapTotal`.
//! Userspace keeps the books: the latest reading plus the pages allocated and freed since.
//! These events are rare (one per 256 KiB page), so they travel through the ring buffer.

use crate::user_pod;

/// One heap page event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapEvent {
    /// [`crate::EventKind::Heap`].
    pub kind: u32,
    /// What happened: one of [`op`].
    pub op: u32,
    /// Thread.
    pub tid: u32,
    /// Padding (zero).
    pub _pad: u32,
    /// The page (chunk) pointer, where the operation has one (a reading: its old generation).
    pub ptr: u64,
    /// Bytes, where the operation has a size.
    pub size: u64,
}

user_pod!(HeapEvent);

/// Heap operations.
pub mod op {
    /// `AllocatePage` returned `ptr` (a regular page).
    pub const PAGE_ALLOC: u32 = 1;
    /// `AllocateAlignedMemory` was asked for `size` bytes (precedes `LARGE_ALLOC` on its thread).
    pub const ALIGNED_SIZE: u32 = 2;
    /// `AllocateLargePage` returned `ptr`.
    pub const LARGE_ALLOC: u32 = 3;
    /// `Free` of page `ptr`.
    pub const FREE: u32 = 4;
    /// `PartialFreeMemory` of `size` bytes of page `ptr`.
    pub const PARTIAL_FREE: u32 = 5;
    /// `Heap::CommittedMemory()` returned `size`, outside `Isolate::GetHeapStatistics`; `ptr`
    /// holds the old generation's part of it (`Heap::CommittedOldGenerationMemory()`, called
    /// inside), or 0 where that was not seen. The rest is the young generation, which V8
    /// resizes under churn.
    pub const READING: u32 = 6;
}
