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
    /// inside), or 0 where the reading was taken at the return, not split. The rest is the young
    /// generation, which V8 resizes under churn.
    pub const READING: u32 = 6;
}

/// Words in x86-64's `struct pt_regs` (r15 … ss), as a uprobe's context holds them.
pub const PT_REGS_WORDS: usize = 21;
/// rax's word in `pt_regs`.
pub const PT_REGS_RAX: usize = 10;

/// The word of `pt_regs` that holds general register `register` (x86's numbering: 0 = rax …
/// 15 = r15), except rsp (saved apart, and never a reading's register).
pub const fn pt_regs_word(register: u8) -> Option<usize> {
    const WORDS: [usize; 16] = [10, 11, 12, 5, PT_REGS_WORDS, 4, 13, 14, 9, 8, 7, 6, 3, 2, 1, 0];
    if register as usize >= WORDS.len() || WORDS[register as usize] >= PT_REGS_WORDS {
        return None;
    }
    Some(WORDS[register as usize])
}

/// Registers a [`op::READING`] sums, at most.
pub const MAX_SUMMED: usize = 3;

/// The attach cookie naming `registers` to sum (at most [`MAX_SUMMED`]): byte `i` is the `i`th
/// one's `pt_regs` word plus one (0 ends the list).
pub fn summed_registers_cookie(registers: &[u8]) -> Option<u64> {
    if registers.is_empty() || registers.len() > MAX_SUMMED {
        return None;
    }
    registers
        .iter()
        .enumerate()
        .try_fold(0u64, |cookie, (i, &r)| Some(cookie | ((pt_regs_word(r)? as u64 + 1) << (8 * i))))
}
