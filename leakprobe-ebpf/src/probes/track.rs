//! The allocation tracker every alloc/free family uses: pending (entry → return, per thread),
//! live (by address), and totals by allocation stack.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    maps::{HashMap, PerCpuHashMap},
};
use leakprobe_ebpf::{
    alloc::{LiveAlloc, Pending, StackTotals, NO_STACK},
    drops::DropReason,
};

use crate::{
    maps::count_drop,
    stacks::{user_stack, UserRegs},
};

/// One family's maps.
pub struct Tracker {
    pub pending: &'static HashMap<u32, Pending>,
    pub live: &'static HashMap<u64, LiveAlloc>,
    /// Per CPU, so that concurrent updates need no atomics; userspace sums the CPUs.
    pub by_stack: &'static PerCpuHashMap<i64, StackTotals>,
}

impl Tracker {
    /// At an allocation call's entry: remember its size and stack until it returns.
    #[inline(always)]
    pub fn enter<C: UserRegs>(&self, ctx: &C, size: u64) {
        let tid = bpf_get_current_pid_tgid() as u32;
        let pending = Pending { size, stack_id: user_stack(ctx) };
        if self.pending.insert(&tid, &pending, 0).is_err() {
            count_drop(DropReason::PendingFull);
        }
    }

    /// At the entry of an allocation call that is not followed (not sampled): the thread is
    /// marked as inside it, and its return records nothing.
    #[inline(always)]
    pub fn enter_unfollowed(&self) {
        let tid = bpf_get_current_pid_tgid() as u32;
        let pending = Pending { size: 0, stack_id: NO_STACK };
        if self.pending.insert(&tid, &pending, 0).is_err() {
            count_drop(DropReason::PendingFull);
        }
    }

    /// At its return with the allocated address (0 when it failed).
    #[inline(always)]
    pub fn exit(&self, addr: u64) {
        let tid = bpf_get_current_pid_tgid() as u32;
        // A return without an entry began before we attached: skip it.
        let Some(pending) = (unsafe { self.pending.get(&tid) }).copied() else {
            return;
        };
        let _ = self.pending.remove(&tid);
        if addr != 0 && pending.size != 0 {
            self.record(addr, pending.size, pending.stack_id);
        }
    }

    /// Records a live allocation and adds it to its stack's totals.
    #[inline(always)]
    pub fn record(&self, addr: u64, size: u64, stack_id: i64) {
        if self.live.insert(&addr, &LiveAlloc { size, stack_id }, 0).is_err() {
            count_drop(DropReason::LiveFull);
            return;
        }
        if let Some(totals) = self.totals(stack_id) {
            // SAFETY: this CPU's slot of a map value, valid while the program runs.
            unsafe {
                (*totals).alloc_bytes += size;
                (*totals).allocs += 1;
            }
        }
    }

    /// At a free of `addr`: returns the freed size when the allocation was tracked.
    #[inline(always)]
    pub fn free(&self, addr: u64) -> Option<u64> {
        let live = (unsafe { self.live.get(&addr) }).copied()?;
        let _ = self.live.remove(&addr);
        if let Some(totals) = self.totals(live.stack_id) {
            // SAFETY: as in `record`.
            unsafe {
                (*totals).free_bytes += live.size;
                (*totals).frees += 1;
            }
        }
        Some(live.size)
    }

    /// This CPU's totals of `stack_id`, created on first use.
    #[inline(always)]
    fn totals(&self, stack_id: i64) -> Option<*mut StackTotals> {
        if let Some(t) = self.by_stack.get_ptr_mut(&stack_id) {
            return Some(t);
        }
        let _ = self.by_stack.insert(&stack_id, &StackTotals::default(), BPF_NOEXIST as u64);
        let found = self.by_stack.get_ptr_mut(&stack_id);
        if found.is_none() {
            count_drop(DropReason::StackTotalsFull);
        }
        found
    }
}
