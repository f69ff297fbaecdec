//! The kernel's stack maps: the frames of a stack id, as the kernel captured them.

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    Ebpf,
};
use leakprobe_ebpf::{
    alloc::NO_STACK,
    stack::{RawStack, SKIPPED_PC},
};

use crate::{kernel::load::take_map, stacks::frame::RawFrame};

/// A stack map: stack id → the frames the kernel captured.
type StackMap = BpfHashMap<MapData, i64, RawStack>;

/// The kernel's two stack maps.
pub struct StackMaps {
    /// Stacks of allocations (and of the work queued to libuv's thread pool).
    stacks: StackMap,
    /// Stacks of the heap's allocation samples.
    samples: StackMap,
}

impl StackMaps {
    /// Takes the two stack maps out of the object.
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Ok(StackMaps { stacks: take_map(ebpf, "STACKS")?, samples: take_map(ebpf, "SAMPLE_STACKS")? })
    }

    /// Frames of stack `id` (of the samples' map when `sampled`), innermost first; empty when
    /// lost. Where the kernel's walk skipped frames stands a frame at [`SKIPPED_PC`]. A stack
    /// taken on a libuv pool thread goes on, past [`RawFrame::QUEUED`], with the stack that
    /// queued the work the thread ran.
    pub fn frames(&self, sampled: bool, id: i64) -> Vec<RawFrame> {
        let raw = |map: &StackMap, id| map.get(&id, 0).ok();
        let Some(stack) = raw(if sampled { &self.samples } else { &self.stacks }, id) else {
            return Vec::new();
        };
        let mut frames: Vec<RawFrame> = stack.frames().map(|(pc, js)| RawFrame { pc, js }).collect();
        if stack.skipped != 0 {
            frames.insert((stack.skipped as usize).min(frames.len()), RawFrame::native(SKIPPED_PC));
        }
        if let Some(origin) = (stack.origin != NO_STACK).then(|| raw(&self.stacks, stack.origin)).flatten() {
            frames.push(RawFrame::QUEUED);
            frames.extend(origin.frames().map(|(pc, js)| RawFrame { pc, js }));
        }
        frames
    }
}
