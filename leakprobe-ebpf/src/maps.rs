//! Maps shared by every probe family: the event ring buffer and the drop counters.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use leakprobe_ebpf::{
    drops::DropReason,
    syscalls::{CONFIG_SLOTS, CONFIG_TGID},
};

/// The flags of every hash map: entries are allocated as they are inserted, not when the map is
/// created. A preallocated map costs its full size in kernel memory from the first second
/// (34.7 MiB for an idle process with these maps, each process watched by the agent); without
/// it, what a process costs grows with what is tracked of it. (Allowed in every program type
/// since Linux 6.1, whose hash maps allocate from per-CPU caches, NMI context included.)
pub const GROW_AS_USED: u32 = BPF_F_NO_PREALLOC;

/// The target's tgid (set by userspace): programs that fire for every process (syscall
/// tracepoints, per-CPU perf events) keep only the target's events.
#[map]
pub static TARGET_CONFIG: Array<u32> = Array::with_max_entries(CONFIG_SLOTS, 0);

/// The calling thread, if it belongs to the target.
#[inline(always)]
pub fn target_thread() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let target = TARGET_CONFIG.get(CONFIG_TGID).copied().unwrap_or(0);
    (target != 0 && (pid_tgid >> 32) as u32 == target).then_some(pid_tgid as u32)
}

/// Events for userspace (GC pauses). 1 MiB holds about 26,000 GC events.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Size of [`EVENTS`].
const EVENTS_BYTES: u32 = 1 << 20;

/// Per-CPU counters of lost events, indexed by [`DropReason`].
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// Counts one lost event.
#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(slot) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Bytes waiting in [`EVENTS`] past which a submit wakes userspace early.
const WAKEUP_BYTES: u64 = EVENTS_BYTES as u64 / 4;

/// Writes `value` into the ring buffer, or counts a `RingbufFull` drop.
///
/// Events are not urgent: waking userspace for each one (hundreds of GCs a second on a busy
/// server) would cost the target more than the probes do. Userspace drains the buffer on a
/// short timer; a submit wakes it only when the buffer is a quarter full.
#[inline(always)]
pub fn emit<T: 'static>(value: T) {
    submit(value, false)
}

/// [`emit`] for an event userspace must act on at once: it wakes userspace. (A stack seen for
/// the first time: what its compiled frames ran can only be read while V8 keeps that code.)
#[inline(always)]
pub fn emit_now<T: 'static>(value: T) {
    submit(value, true)
}

#[inline(always)]
fn submit<T: 'static>(value: T, wake: bool) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(value);
            let flags = match wake || EVENTS.query(BPF_RB_AVAIL_DATA as u64) > WAKEUP_BYTES {
                true => 0,
                false => BPF_RB_NO_WAKEUP as u64,
            };
            entry.submit(flags);
        }
        None => count_drop(DropReason::RingbufFull),
    }
}
