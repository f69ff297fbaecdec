//! Capturing user stacks: the frame-pointer walk behind every stack id.
//!
//! The kernel's own `bpf_get_stackid` keeps return addresses only. Interpreted JavaScript runs
//! inside V8's bytecode handlers, so every interpreted function would share one stack; and the
//! function a JIT frame belongs to cannot be recovered from its address once the code is gone.
//! This walk follows the same frame-pointer chain and also keeps, per frame, the
//! `SharedFunctionInfo` of the JavaScript function in it (read through the `JSFunction` slot V8
//! keeps below each JavaScript frame's frame pointer, validated by its map's instance type).
//! A stack taken on a libuv pool thread also keeps the stack that queued the work it runs.

use aya_ebpf::{
    bindings::{pt_regs, BPF_NOEXIST},
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_buf, bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::{PerfEventContext, ProbeContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use leakprobe_ebpf::{
    alloc::{MAX_STACKS, NO_STACK},
    drops::DropReason,
    stack::{mix, stack_id, JsLayout, NewStack, RawStack, HASH_START, MAX_FRAMES},
    threadpool::MAX_POOL_THREADS,
    EventKind,
};

use crate::maps::{count_drop, emit_now, GROW_AS_USED};

/// User stacks of allocations, shared by every family; ids are keys of the per-stack totals.
#[map]
pub static STACKS: HashMap<i64, RawStack> = HashMap::with_max_entries(MAX_STACKS, GROW_AS_USED);

/// User stacks of the heap's allocation samples, kept apart from [`STACKS`]: JIT code gives
/// the churn many distinct stacks, which must not crowd out (by filling the map) the stacks
/// that leak suspects are named by.
#[map]
pub static SAMPLE_STACKS: HashMap<i64, RawStack> = HashMap::with_max_entries(MAX_STACKS, GROW_AS_USED);

/// Where JavaScript frames keep their function (set by userspace from the binary's metadata).
#[map]
pub static JS_LAYOUT: Array<JsLayout> = Array::with_max_entries(1, 0);

/// Pool threads running queued work: thread id → the stack that queued it (kept by the
/// thread pool's probes, `probes/threadpool.rs`, through [`set_origin`]).
#[map]
static POOL_RUNNING: HashMap<u32, i64> = HashMap::with_max_entries(MAX_POOL_THREADS, GROW_AS_USED);

/// This thread now runs work queued from stack `origin` (`None`: from no known stack): the
/// stacks it takes until its next work go on with that one.
#[inline(always)]
pub fn set_origin(origin: Option<i64>) {
    let tid = bpf_get_current_pid_tgid() as u32;
    match origin {
        Some(stack) => {
            if POOL_RUNNING.insert(&tid, &stack, 0).is_err() {
                count_drop(DropReason::PendingFull);
            }
        }
        None => {
            let _ = POOL_RUNNING.remove(&tid);
        }
    }
}

/// The stack that queued the work this thread runs, or [`NO_STACK`].
#[inline(always)]
fn queued_by() -> i64 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: read-only lookup of a map value.
    unsafe { POOL_RUNNING.get(&tid) }.copied().unwrap_or(NO_STACK)
}

/// Per-CPU room to build a stack in (too big for the 512-byte program stack).
#[map]
static SCRATCH: PerCpuArray<RawStack> = PerCpuArray::with_max_entries(1, 0);

/// Words of stack above a probe's stack pointer searched for a saved frame pointer, when the
/// frame-pointer chain breaks at once.
const SCAN_WORDS: usize = 192;

/// How far apart (bytes) two frames, or a frame and a slot pointing to it, may be.
const MAX_FRAME_GAP: u64 = 1 << 20;

/// Per-CPU room for the searched words.
#[map]
static SCAN: PerCpuArray<[u64; SCAN_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// The user registers a walk starts from.
pub struct Regs {
    ip: u64,
    sp: u64,
    fp: u64,
    /// Stopped where the function has pushed nothing (its first instruction, or a frameless
    /// leaf): its caller's return address is at `sp`, and `fp` is still the caller's.
    at_entry: bool,
}

/// Program contexts a user stack can be taken from.
pub trait UserRegs: EbpfContext {
    /// The interrupted user registers.
    fn user_regs(&self) -> Option<Regs>;
}

impl UserRegs for ProbeContext {
    /// Every uprobe is placed on a function's entry.
    fn user_regs(&self) -> Option<Regs> {
        // SAFETY: `regs` is the context the kernel passed to the program.
        let r = unsafe { &*self.regs };
        Some(Regs { ip: r.rip, sp: r.rsp, fp: r.rbp, at_entry: true })
    }
}

impl UserRegs for TracePointContext {
    /// A syscall tracepoint: the registers saved at the syscall, inside libc's wrapper. glibc's
    /// wrappers (`mmap64`, `munmap`, `brk`) are leaves that push nothing, so as at a function's
    /// entry the caller's return address is at `sp` and `fp` is the caller's.
    fn user_regs(&self) -> Option<Regs> {
        syscall_regs()
    }
}

impl UserRegs for PerfEventContext {
    /// A sampled page fault: in user mode, the registers at the faulting instruction (inside a
    /// function that may have pushed its frame); in kernel mode (a syscall writing to user
    /// memory), the registers saved at the syscall, as for a syscall tracepoint.
    fn user_regs(&self) -> Option<Regs> {
        // SAFETY: the context the kernel passed to the program.
        let r = unsafe { &(*self.ctx).regs };
        if r.cs & 3 == 3 {
            return Some(Regs { ip: r.rip, sp: r.rsp, fp: r.rbp, at_entry: false });
        }
        syscall_regs()
    }
}

/// The current task's user registers saved at its syscall: glibc's wrappers are leaves that
/// push nothing, so as at a function's entry the caller's return address is at `sp`.
#[inline(always)]
fn syscall_regs() -> Option<Regs> {
    // SAFETY: BTF helpers on the current task; the result is read with probe_read_kernel.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    let r = unsafe { bpf_probe_read_kernel(regs) }.ok()?;
    Some(Regs { ip: r.rip, sp: r.rsp, fp: r.rbp, at_entry: true })
}

/// The user stack of the current thread in [`STACKS`], or [`NO_STACK`] (counted).
#[inline(always)]
pub fn user_stack<C: UserRegs>(ctx: &C) -> i64 {
    stack_in(ctx, &STACKS, false)
}

/// The user stack of the current thread in [`SAMPLE_STACKS`], or [`NO_STACK`] (counted).
#[inline(always)]
pub fn sampled_user_stack<C: UserRegs>(ctx: &C) -> i64 {
    stack_in(ctx, &SAMPLE_STACKS, true)
}

/// The user stack of the current thread in `map`, or [`NO_STACK`] (counted as `StackLost`).
#[inline(always)]
fn stack_in<C: UserRegs>(ctx: &C, map: &HashMap<i64, RawStack>, sampled: bool) -> i64 {
    match capture(ctx, map, sampled) {
        Some(id) => id,
        None => {
            debug!(ctx, "stack lost (stack map full, or registers unreadable)");
            count_drop(DropReason::StackLost);
            NO_STACK
        }
    }
}

#[inline(always)]
fn capture<C: UserRegs>(ctx: &C, map: &HashMap<i64, RawStack>, sampled: bool) -> Option<i64> {
    let regs = ctx.user_regs()?;
    let hash = walk(&regs);
    // SAFETY: this CPU's slot, which `walk` filled; only this program uses it while it runs.
    let stack = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    // Work a pool thread runs for a stack that queued it: the two are one stack.
    stack.origin = queued_by();
    let id = stack_id(mix(hash, stack.origin as u64));
    // SAFETY: read-only lookup of a map value.
    if unsafe { map.get(&id) }.is_none() {
        match map.insert(&id, stack, BPF_NOEXIST as u64) {
            Ok(()) => emit_now(NewStack { kind: EventKind::NewStack as u32, sampled: sampled as u32, id }),
            // Another CPU just stored the same stack.
            Err(-17) => {}
            Err(_) => return None,
        }
    }
    Some(id)
}

/// Fills this CPU's [`SCRATCH`] stack from `regs`, returning the hash of its frames.
#[inline(never)]
fn walk(regs: &Regs) -> u64 {
    let Some(stack) = SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot, only used while this program runs; the reference ends before
    // the steps take it again.
    let stack = unsafe { &mut *stack };
    stack.pcs[0] = regs.ip;
    stack.js[0] = 0;
    stack.len = 1;
    // The frame pointer whose saved return address and caller frame pointer are read next.
    let mut fp = regs.fp;
    // Broken at once: the probe is inside code that keeps no frame pointer (a syscall made in
    // glibc's malloc). Its callers' frame pointer is saved on the stack above it: the walk goes
    // on from there, and userspace marks where frames were skipped.
    stack.skipped = 0;
    let mut hash = mix(HASH_START, regs.ip);
    if !rising(fp) {
        fp = saved_frame_pointer(regs.sp);
        stack.skipped = if regs.at_entry { 2 } else { 1 };
        hash = mix(hash, stack.skipped);
    }
    let mut state = Walk { sp: regs.sp, at_entry: regs.at_entry as u64, fp, skipped: stack.skipped, hash };
    // bpf_loop: the verifier checks one frame's step once, not once per frame (the unrolled
    // walk took some 30 ms of system time to verify in each of the seven programs that walk
    // stacks, at every attach).
    // SAFETY: `walk_step` has the callback's signature; `state` outlives the call.
    unsafe {
        bpf_loop(MAX_FRAMES as u32 - 1, walk_step as *mut c_void, &mut state as *mut Walk as *mut c_void, 0)
    };
    state.hash
}

/// The state of [`walk`] between frames.
#[repr(C)]
struct Walk {
    /// The registers' stack pointer, and whether the probe is at a function's entry.
    sp: u64,
    at_entry: u64,
    /// The frame pointer whose saved caller frame pointer and return address are read next.
    fp: u64,
    /// As [`RawStack::skipped`].
    skipped: u64,
    /// The hash of the frames so far.
    hash: u64,
}

/// Frame `index + 1` of [`walk`]'s stack: 1 (stop) when the chain ends.
unsafe extern "C" fn walk_step(index: u64, state: *mut c_void) -> i64 {
    // SAFETY: the `Walk` that `walk` passes to bpf_loop.
    let w = unsafe { &mut *(state as *mut Walk) };
    let i = index as usize + 1;
    let (pc, owner) = if i == 1 && w.at_entry != 0 {
        // The probed function has not pushed a frame yet: its caller is at `sp` (and `fp` is
        // its caller's, unless the search replaced it).
        (read(w.sp), if w.skipped == 0 { w.fp } else { 0 })
    } else {
        if w.fp == 0 {
            return 1;
        }
        // The saved caller frame pointer, then the return address: one read.
        let Some([next, ret]) = read_pair(w.fp) else { return 1 };
        if next != 0 && next <= w.fp {
            // Frames lie at rising addresses; anything else is not a frame chain.
            return 1;
        }
        w.fp = next;
        (Some(ret), next)
    };
    let Some(pc) = pc.filter(|pc| *pc != 0) else { return 1 };
    let js = match (owner, JS_LAYOUT.get(0)) {
        (0, _) | (_, None) => 0,
        (owner, Some(layout)) => js_function(layout, owner),
    };
    let Some(stack) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's slot, which `walk` fills while this program runs.
    let stack = unsafe { &mut *stack };
    let (Some(pc_slot), Some(js_slot)) = (stack.pcs.get_mut(i), stack.js.get_mut(i)) else { return 1 };
    *pc_slot = pc;
    *js_slot = js;
    stack.len = i as u64 + 1;
    w.hash = mix(mix(w.hash, pc), js);
    0
}

/// Whether `fp` starts a frame chain: its saved caller frame pointer lies above it (or ends
/// the chain).
#[inline(always)]
fn rising(fp: u64) -> bool {
    fp != 0 && read_pair(fp).is_some_and(|[next, _]| rises(fp, next))
}

/// Whether `next`, the caller frame pointer saved at `fp`, continues a chain from it (or ends it).
#[inline(always)]
fn rises(fp: u64, next: u64) -> bool {
    next == 0 || (next > fp && next - fp < MAX_FRAME_GAP)
}

/// The saved caller frame pointer of a frame at `fp` that looks like one: that pointer rises
/// (or ends the chain), and the return address above it follows a call.
#[inline(always)]
fn frame_at(fp: u64) -> Option<u64> {
    let [next, ret] = read_pair(fp)?;
    (rises(fp, next) && after_call(ret)).then_some(next)
}

/// Whether the instruction before `ret` is a call, as before every return address: a direct
/// `call rel32`, or an indirect `call` (opcode `ff /2`) of 2, 3, 6 or 7 bytes.
#[inline(always)]
fn after_call(ret: u64) -> bool {
    let Some(word) = read(ret.wrapping_sub(8)) else { return false };
    // b(i): the byte i bytes before `ret`.
    let b = |i: u64| (word >> (64 - 8 * i)) as u8;
    let indirect = |i: u64| b(i) == 0xff && (b(i - 1) >> 3) & 7 == 2;
    ret > 0xffff && (b(5) == 0xe8 || indirect(2) || indirect(3) || indirect(6) || indirect(7))
}

/// A frame pointer saved in the [`SCAN_WORDS`] words above `sp`, or 0: a word pointing higher up
/// the stack, to a frame ([`frame_at`]) whose caller's frame also looks like one. (The first
/// such word is the frame pointer the code below saved on entry, or its callers' if it saved
/// none: either way a frame of the chain.)
#[inline(never)]
fn saved_frame_pointer(sp: u64) -> u64 {
    let Some(words) = SCAN.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot, used only while this program runs; viewed as bytes for the read,
    // which bpf_probe_read_user_buf checks (a fault is an error).
    let bytes = unsafe { core::slice::from_raw_parts_mut(words as *mut u8, SCAN_WORDS * 8) };
    if unsafe { bpf_probe_read_user_buf(sp as *const u8, bytes) }.is_err() {
        return 0;
    }
    let mut search = Search { sp, found: 0 };
    // bpf_loop: the verifier checks the step once, not once per word.
    // SAFETY: `search_step` has the callback's signature; `search` outlives the call.
    unsafe {
        bpf_loop(SCAN_WORDS as u32, search_step as *mut c_void, &mut search as *mut Search as *mut c_void, 0)
    };
    search.found
}

/// The state of [`saved_frame_pointer`]'s search.
#[repr(C)]
struct Search {
    /// Where the searched words start.
    sp: u64,
    /// The frame pointer found, or 0.
    found: u64,
}

/// One word of the search: 1 (stop) when it is a saved frame pointer.
unsafe extern "C" fn search_step(index: u64, search: *mut c_void) -> i64 {
    // SAFETY: the `Search` that `saved_frame_pointer` passes to bpf_loop.
    let search = unsafe { &mut *(search as *mut Search) };
    let Some(words) = SCAN.get_ptr(0) else { return 1 };
    // SAFETY: this CPU's slot, filled by `saved_frame_pointer`.
    let Some(&word) = (unsafe { &*words }).get(index as usize) else { return 1 };
    let slot = search.sp + 8 * index;
    if word <= slot || word - slot > MAX_FRAME_GAP || word & 7 != 0 {
        return 0;
    }
    // Two frames of a chain, each under a return address.
    if frame_at(word).is_some_and(|next| next == 0 || frame_at(next).is_some()) {
        search.found = word;
        return 1;
    }
    0
}

/// The tagged `SharedFunctionInfo` of the JavaScript function whose frame pointer is `fp`, or 0
/// when the frame holds no `JSFunction` (a C++ frame, or a V8 frame of another type).
#[inline(always)]
fn js_function(l: &JsLayout, fp: u64) -> u64 {
    if l.enabled == 0 {
        return 0;
    }
    let tagged = |word: u64| word & l.tag_mask == l.heap_tag;
    // The function slot and, right above it, the context (userspace checks they are adjacent).
    let Some([function, context]) = read_pair(fp.wrapping_add(l.fp_function as u64)) else {
        return 0;
    };
    // A typed frame's marker in the context slot is a Smi: such a frame may hold a function
    // it is about to call, not one it runs. C++ frames fail these checks almost always.
    if !tagged(context) || !tagged(function) {
        return 0;
    }
    let object = function - l.heap_tag;
    let Some(map) = read(object + l.map).filter(|w| tagged(*w)) else { return 0 };
    // SAFETY: a user-memory read of two bytes; failure is handled.
    let Ok(ty) = (unsafe { bpf_probe_read_user((map - l.heap_tag + l.instance_type) as *const u16) }) else {
        return 0;
    };
    if (ty as u64) < l.first_function_type || (ty as u64) > l.last_function_type {
        return 0;
    }
    read(object + l.shared).filter(|w| tagged(*w)).unwrap_or(0)
}

/// Two adjacent words of user memory.
#[inline(always)]
fn read_pair(addr: u64) -> Option<[u64; 2]> {
    // SAFETY: as in `read`.
    unsafe { bpf_probe_read_user(addr as *const [u64; 2]) }.ok()
}

/// One word of user memory.
#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address; a fault is an error, not a crash.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}
