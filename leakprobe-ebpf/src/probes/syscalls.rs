//! Memory syscalls of the target: `syscalls:sys_{enter,exit}_mmap`, `sys_enter_munmap`,
//! `sys_{enter,exit}_brk`. Tracepoint records start with 8 bytes of common fields and the
//! syscall number (padded to 16); the arguments follow as 8-byte slots, and `ret` on exit.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use leakprobe_ebpf::{
    alloc::MAX_PENDING,
    syscalls::{op, MapEvent, MapPending},
    EventKind,
};

use crate::maps::{count_drop, emit, target_thread, GROW_AS_USED};
use crate::stacks::user_stack;
use leakprobe_ebpf::drops::DropReason;

#[map]
static MAP_PENDING: HashMap<u32, MapPending> = HashMap::with_max_entries(MAX_PENDING, GROW_AS_USED);

/// Offset of the first syscall argument (and of `ret` in exit records).
const ARG0: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn send(op: u32, tid: u32, pending: &MapPending, addr: u64) {
    emit(MapEvent {
        kind: EventKind::Map as u32,
        op,
        tid,
        flags: pending.flags as u32,
        stack_id: pending.stack_id,
        addr,
        len: pending.len,
    });
}

/// A syscall's return value, or `None` for an error (`-4095..=-1`).
#[inline(always)]
fn ok_ret(ctx: &TracePointContext) -> Option<u64> {
    let ret = arg(ctx, 0);
    (ret < (-4095i64) as u64).then_some(ret)
}

/// `mmap(addr, len, prot, flags, fd, off)` entry.
#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    if let Some(tid) = target_thread() {
        let pending = MapPending { len: arg(&ctx, 1), stack_id: user_stack(&ctx), flags: arg(&ctx, 3) };
        if MAP_PENDING.insert(&tid, &pending, 0).is_err() {
            count_drop(DropReason::PendingFull);
        }
    }
    0
}

/// `mmap` return: the mapping's address.
#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    let Some(pending) = (unsafe { MAP_PENDING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = MAP_PENDING.remove(&tid);
    if let Some(addr) = ok_ret(&ctx) {
        send(op::MMAP, tid, &pending, addr);
    }
    0
}

/// `munmap(addr, len)` entry.
#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    if let Some(tid) = target_thread() {
        let pending = MapPending { len: arg(&ctx, 1), stack_id: leakprobe_ebpf::alloc::NO_STACK, flags: 0 };
        send(op::MUNMAP, tid, &pending, arg(&ctx, 0));
    }
    0
}

/// `brk(addr)` entry: remember the caller's stack.
#[tracepoint]
pub fn sys_enter_brk(ctx: TracePointContext) -> u32 {
    if let Some(tid) = target_thread() {
        let pending = MapPending { len: 0, stack_id: user_stack(&ctx), flags: 0 };
        if MAP_PENDING.insert(&tid, &pending, 0).is_err() {
            count_drop(DropReason::PendingFull);
        }
    }
    0
}

/// `brk` return: the new program break.
#[tracepoint]
pub fn sys_exit_brk(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    let Some(pending) = (unsafe { MAP_PENDING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = MAP_PENDING.remove(&tid);
    if let Some(brk) = ok_ret(&ctx) {
        send(op::BRK, tid, &pending, brk);
    }
    0
}
