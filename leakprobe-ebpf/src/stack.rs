//! User stacks as the kernel side captures them: a frame-pointer walk that keeps, for every
//! frame, the return address and — for V8's JavaScript frames — the function's
//! `SharedFunctionInfo`, so that interpreted frames (whose return addresses all lie in the same
//! bytecode handlers) stay apart and can be named after the fact.

use crate::user_pod;

/// Frames kept per stack, innermost first; deeper frames are cut off.
pub const MAX_FRAMES: usize = 64;

/// One captured stack (the value of the `STACKS` and `SAMPLE_STACKS` maps, keyed by its id: a
/// hash of its frames, so equal stacks share an id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawStack {
    /// Frames filled, from index 0.
    pub len: u64,
    /// Instruction addresses: the probed address first, then return addresses.
    pub pcs: [u64; MAX_FRAMES],
    /// For each frame, the tagged `SharedFunctionInfo` pointer of the JavaScript function
    /// running in it, or 0 for a frame that is not a JavaScript one.
    pub js: [u64; MAX_FRAMES],
    /// For a stack taken on a libuv pool thread while it ran queued work: the id (in `STACKS`)
    /// of the stack that queued the work; else `alloc::NO_STACK`. Part of the stack's id.
    pub origin: i64,
    /// When the frame-pointer chain was broken at the probe (code without frame pointers, such
    /// as glibc's allocator internals) and went on from a frame pointer found saved above it on
    /// the stack: the index of the first frame read from there, where frames were skipped.
    /// Else 0.
    pub skipped: u64,
}

/// The address userspace gives the frame that stands for frames the walk skipped
/// ([`RawStack::skipped`]). No user code lives at this address.
pub const SKIPPED_PC: u64 = u64::MAX - 1;

/// A stack seen for the first time, so that userspace names it while the code and objects its
/// frames point to are still there (V8 frees compiled code it replaces).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewStack {
    /// [`crate::EventKind::NewStack`].
    pub kind: u32,
    /// 1 when the stack is in `SAMPLE_STACKS`, 0 in `STACKS`.
    pub sampled: u32,
    /// Its id.
    pub id: i64,
}

/// What the kernel needs to find a JavaScript frame's function: taken from the target binary's
/// V8 postmortem metadata (`v8dbg_*`) by userspace. The `JS_LAYOUT` array's one entry; while
/// `enabled` is 0 (no metadata), stacks carry return addresses only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsLayout {
    /// 1 when the fields below are valid.
    pub enabled: u64,
    /// Offset from a JavaScript frame's frame pointer to its `JSFunction` slot (`off_fp_function`).
    pub fp_function: i64,
    /// Offset from a frame pointer to the slot holding a JavaScript frame's context or, in
    /// V8's other frames (entry, exit, internal, stub), a Smi marker of the frame's type. The
    /// kernel reads it with the function slot: it must be `fp_function + 8`.
    pub fp_context_or_type: i64,
    /// `HeapObjectTagMask`.
    pub tag_mask: u64,
    /// `HeapObjectTag`: tagged pointers to heap objects are the address plus this.
    pub heap_tag: u64,
    /// Offset of `HeapObject::map`.
    pub map: u64,
    /// Offset of `Map::instance_type` (a `u16`).
    pub instance_type: u64,
    /// Offset of `JSFunction::shared`.
    pub shared: u64,
    /// `FirstJSFunctionType`.
    pub first_function_type: u64,
    /// `LastJSFunctionType`.
    pub last_function_type: u64,
}

user_pod!(NewStack, RawStack, JsLayout);

impl RawStack {
    /// The filled frames as (instruction address, tagged `SharedFunctionInfo` or 0).
    pub fn frames(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let len = (self.len as usize).min(MAX_FRAMES);
        self.pcs[..len].iter().copied().zip(self.js[..len].iter().copied())
    }
}

/// The id of a stack with frames `(pc, js)`: FNV-1a over their words, made non-negative so it
/// never equals `alloc::NO_STACK`.
#[inline(always)]
pub fn mix(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3)
}

/// FNV-1a's starting value for [`mix`].
pub const HASH_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The stack id of a finished hash.
#[inline(always)]
pub const fn stack_id(hash: u64) -> i64 {
    (hash >> 1) as i64
}
