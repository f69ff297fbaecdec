//! libuv's thread pool (see `leakprobe_ebpf::threadpool`): where queued work came from.
//!
//! x86-64 arguments: `uv_queue_work(loop, req, work_cb, after_work_cb)` (node's own work:
//! zlib, crypto, addons), `uv__work_submit(loop, w, kind, work, done)` (fs, dns, random; it is
//! inlined into `uv_queue_work`, hence both), and the pool's work functions `uv__queue_work(w)`,
//! `uv__fs_work(w)`, ... which a pool thread calls to run `w`.

use aya_ebpf::{
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use leakprobe_ebpf::{
    alloc::NO_STACK,
    drops::DropReason,
    threadpool::{MAX_QUEUED, WORK_REQ_OFFSET},
};

use crate::{
    maps::{count_drop, GROW_AS_USED},
    stacks::{set_origin, user_stack},
};

/// Work queued and not yet started: its `struct uv__work` → the stack that queued it.
#[map]
static POOL_QUEUED: HashMap<u64, i64> = HashMap::with_max_entries(MAX_QUEUED, GROW_AS_USED);

#[inline(always)]
fn queued(ctx: &ProbeContext, work: u64) {
    let stack = user_stack(ctx);
    if work != 0 && stack != NO_STACK && POOL_QUEUED.insert(&work, &stack, 0).is_err() {
        count_drop(DropReason::QueuedFull);
    }
}

/// Entry of `uv_queue_work(loop, req, ...)`.
#[uprobe]
pub fn pool_queue_work(ctx: ProbeContext) -> u32 {
    let req: u64 = ctx.arg(1).unwrap_or(0);
    queued(&ctx, if req == 0 { 0 } else { req + WORK_REQ_OFFSET });
    0
}

/// Entry of `uv__work_submit(loop, w, ...)`.
#[uprobe]
pub fn pool_submit(ctx: ProbeContext) -> u32 {
    queued(&ctx, ctx.arg(1).unwrap_or(0));
    0
}

/// Entry of a work function `(w)`: this thread now runs `w`, until it starts the next one. (A
/// pool thread does nothing else between two pieces of work: it takes the next from the
/// queue. fs work also runs on the calling thread for synchronous calls, never queued: such
/// a thread is left with no origin.)
#[uprobe]
pub fn pool_work(ctx: ProbeContext) -> u32 {
    runs(ctx.arg(0).unwrap_or(0));
    0
}

/// Entry of fs, dns and random work functions `(w)` (with native memory only: they fire on
/// every fs call). Their own program, so the default view can leave them out.
#[uprobe]
pub fn pool_work_fs(ctx: ProbeContext) -> u32 {
    runs(ctx.arg(0).unwrap_or(0));
    0
}

/// This pool thread now runs `work`: its origin is the stack that queued it, if known.
#[inline(always)]
fn runs(work: u64) {
    // SAFETY: read-only lookup of a map value.
    let origin = unsafe { POOL_QUEUED.get(&work) }.copied();
    if origin.is_some() {
        let _ = POOL_QUEUED.remove(&work);
    }
    set_origin(origin);
}
