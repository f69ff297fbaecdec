//! External memory, userspace half: what Buffers and ArrayBuffers hold outside the V8 heap.
//!
//! Two readings. The absolute one is node's own counter: `NodeArrayBufferAllocator` keeps the
//! bytes it has handed out in an atomic field (`process.memoryUsage().arrayBuffers` reads it).
//! Its offset differs between node versions (0x10 in 18–22, 0x8 in 24), so it is read from the
//! binary: `Free` decrements it first thing with `lock sub %reg, OFF(%rdi)`. The kernel half
//! records every allocator object it sees; their counters are read through `/proc/PID/mem`.
//! The second reading is by allocation stack, since attach, from the kernel's tracker.

use std::{fs::File, os::unix::fs::FileExt as _};

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap};
use leakprobe_ebpf::{
    alloc::StackTotals,
    external::{CONFIG_EVERY, CONFIG_RATE},
};
use serde::Serialize;

use crate::{
    books::suspect::Category,
    books::tracker::Tracker,
    kernel::table::EXT_FREE,
    memory::alloc::Tracked,
    process::insn::{self, LockedRmw, Op},
    process::symbols::Lookup,
    process::target::Target,
};

/// Finds `OFF` in the first instructions of `NodeArrayBufferAllocator::Free`, which start by
/// decrementing the counter: `lock sub %reg, OFF(%rdi)`.
pub fn usage_counter_offset(free_code: &[u8]) -> Option<u64> {
    (0..free_code.len()).find_map(|at| match insn::decode_locked_rmw(&free_code[at..]) {
        Some(LockedRmw { op: Op::Sub, base: insn::RDI, disp }) if disp > 0 => Some(disp as u64),
        _ => None,
    })
}

/// How often the allocator objects the kernel half recorded are listed again: a new one comes
/// with a new isolate (a worker), and listing a BPF hash map is two system calls per entry,
/// which a GC trough's readings (every 25 ms) would otherwise repeat.
const LIST_ALLOCATORS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads node's external-memory counters in the target.
pub struct ExternalCounter {
    mem: File,
    offset: u64,
    allocators: BpfHashMap<MapData, u64, u64>,
    /// The allocator objects as last listed, and when.
    listed: Vec<u64>,
    listed_at: std::time::Instant,
}

impl ExternalCounter {
    /// Prepares the reading, or says why it is unavailable (the by-stack view still works).
    pub fn new(
        target: &Target,
        lookup: &Lookup,
        allocators: BpfHashMap<MapData, u64, u64>,
    ) -> anyhow::Result<Self> {
        let free = EXT_FREE
            .iter()
            .find_map(|s| lookup.found.get(*s))
            .and_then(|locations| locations.first())
            .context("NodeArrayBufferAllocator::Free not found")?;
        let start = free.file_offset as usize;
        let code = target.elf.bytes().get(start..start + 64).context("Free lies outside the binary")?;
        let offset = usage_counter_offset(code)
            .context("the allocator's byte counter was not found in Free's code")?;
        let mem = File::open(format!("/proc/{}/mem", target.pid)).context("opening the target's memory")?;
        Ok(Self { mem, offset, allocators, listed: Vec::new(), listed_at: std::time::Instant::now() })
    }

    /// Sum of every known allocator's counter, or `None` before any allocator has been seen.
    pub fn read(&mut self) -> Option<u64> {
        // Listed at every reading until the first allocator is seen.
        if self.listed.is_empty() || self.listed_at.elapsed() >= LIST_ALLOCATORS_EVERY {
            self.listed = self.allocators.keys().flatten().collect();
            self.listed_at = std::time::Instant::now();
        }
        let mut total = None;
        for &ptr in &self.listed {
            let mut buf = [0u8; 8];
            if self.mem.read_exact_at(&mut buf, ptr + self.offset).is_ok() {
                *total.get_or_insert(0) += u64::from_ne_bytes(buf);
            }
        }
        total
    }

    /// Number of allocator objects seen (one per isolate that allocated).
    pub fn allocators(&self) -> usize {
        self.allocators.keys().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_counter_offset_in_each_versions_free() {
        // node 20: lock sub %rdx,0x10(%rdi)
        let node20 = [0x48, 0x85, 0xf6, 0x74, 0x0a, 0xf0, 0x48, 0x29, 0x57, 0x10, 0x48, 0x8b, 0x7f, 0x18];
        assert_eq!(usage_counter_offset(&node20), Some(0x10));
        // node 24: lock sub %rdx,0x8(%rdi)
        let node24 = [0xf0, 0x48, 0x29, 0x57, 0x08, 0x48, 0x8b, 0x7f, 0x10];
        assert_eq!(usage_counter_offset(&node24), Some(0x08));
        // lock sub %r8,0x10(%rdi): REX.R form.
        assert_eq!(usage_counter_offset(&[0xf0, 0x4c, 0x29, 0x47, 0x10]), Some(0x10));
        // Not rdi-based (rbx), an add, not disp8, or no lock: no match.
        assert_eq!(usage_counter_offset(&[0xf0, 0x48, 0x01, 0x57, 0x10]), None);
        assert_eq!(usage_counter_offset(&[0xf0, 0x48, 0x29, 0x53, 0x10]), None);
        assert_eq!(usage_counter_offset(&[0xf0, 0x48, 0x29, 0x97, 0x10, 0, 0, 0]), None);
        assert_eq!(usage_counter_offset(&[0x90, 0x48, 0x29, 0x57, 0x10]), None);
        assert_eq!(usage_counter_offset(&[]), None);
    }
}

/// After the opening burst, one Buffer allocation in this many is followed by stack (the
/// default of `--buffer-sampling`): a slow leak of 2 KiB Buffers, six a second, then gets a
/// sample every few seconds, while the stack walks (about 9 µs each) drop sixteenfold.
pub const DEFAULT_SAMPLE_EVERY: u64 = 16;
/// After the opening burst, Buffers of this many bytes or more are all followed, and smaller
/// ones at least in proportion to their bytes.
pub const SAMPLE_RATE_BYTES: u64 = 1 << 20;

/// Which Buffer allocations the kernel follows by stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Following {
    /// Every one (the opening burst; `--alloc-stacks` for the whole window).
    All,
    /// One in `every`, and large ones by their bytes ([`SAMPLE_RATE_BYTES`]), each counting
    /// for what it stands for (`leakprobe_ebpf::external::sampled`).
    Sampled {
        /// One allocation in this many.
        every: u64,
    },
    /// None: the per-allocation probes were detached after the opening burst.
    Detached,
}

/// External memory, as sampled during a session.
pub struct ExternalState {
    by_stack: Tracked,
    counter: Result<ExternalCounter, String>,
    /// What the kernel reads to decide which allocations it follows.
    config: Array<MapData, u64>,
    /// Latest absolute reading (node's counter), if available.
    pub bytes: Option<u64>,
    /// Which allocations are followed now.
    following: Following,
}

/// `report.external`.
#[derive(Debug, Serialize)]
pub struct ExternalReport {
    /// Bytes in Buffer/ArrayBuffer backing stores now (node's own counter, all isolates seen).
    pub bytes: Option<u64>,
    /// Why `bytes` is null, if it is.
    pub counter_error: Option<String>,
    /// Allocator objects seen (one per isolate that allocated since attach).
    pub allocators: usize,
    /// Which Buffer allocations were followed by stack after the opening burst: `all`
    /// (`--alloc-stacks`), `one in N` (`--buffer-sampling`), or `none` (detached).
    pub followed: String,
    /// Backing stores allocated since attach (bytes and count), and how many of those were
    /// freed; null unless the per-allocation probes followed all of them for the whole window
    /// (`--alloc-stacks`).
    pub allocated_bytes: Option<u64>,
    /// Allocations since attach.
    pub allocations: Option<u64>,
    /// Of the bytes allocated since attach, those freed again.
    pub freed_bytes: Option<u64>,
    /// Of the allocations since attach, those freed again.
    pub frees: Option<u64>,
}

impl ExternalState {
    /// Prepares sampling; a missing absolute counter is remembered, not fatal.
    pub fn new(
        target: &Target,
        lookup: &Lookup,
        by_stack: PerCpuHashMap<MapData, i64, StackTotals>,
        allocators: BpfHashMap<MapData, u64, u64>,
        config: Array<MapData, u64>,
    ) -> Self {
        let counter = ExternalCounter::new(target, lookup, allocators).map_err(|e| format!("{e:#}"));
        Self {
            by_stack: Tracked::new(Category::External, by_stack),
            counter,
            config,
            bytes: None,
            following: Following::All,
        }
    }

    /// Takes one sample: the absolute counter, and outstanding bytes by stack into `suspects`
    /// while the per-allocation probes are attached.
    pub fn sample(&mut self, t: f64, suspects: &mut Tracker) {
        self.read_bytes();
        self.sample_stacks(t, suspects);
    }

    /// Reads node's counter now (and keeps it as the latest reading).
    pub fn read_bytes(&mut self) -> Option<u64> {
        if let Ok(counter) = &mut self.counter {
            self.bytes = counter.read().or(self.bytes);
        }
        self.bytes
    }

    /// Adds outstanding bytes by stack to `suspects` (while the per-allocation probes are
    /// attached: once detached the kernel's totals stand still, and each stack's series ends
    /// where they were detached, so its floor is judged over the time they ran).
    pub fn sample_stacks(&mut self, t: f64, suspects: &mut Tracker) {
        if self.following != Following::Detached {
            self.by_stack.sample(t, suspects);
        }
    }

    /// From now on the kernel follows one allocation in `every` (and large ones by their
    /// bytes), each counting for what it stands for.
    pub fn sample_from_now(&mut self, every: u64) -> anyhow::Result<()> {
        self.config.set(CONFIG_RATE, SAMPLE_RATE_BYTES, 0).context("setting the Buffer sampling rate")?;
        self.config.set(CONFIG_EVERY, every, 0).context("setting the Buffer sampling rate")?;
        self.following = Following::Sampled { every };
        Ok(())
    }

    /// Whether the allocator probes still serve the default view: they are needed until an
    /// allocator is seen, and not at all when node's counter cannot be read.
    pub fn needs_allocator_probes(&self) -> bool {
        self.counter.as_ref().is_ok_and(|c| c.allocators() == 0)
    }

    /// The per-allocation probes were detached: counts since attach no longer mean anything.
    pub fn detached(&mut self) {
        self.following = Following::Detached;
    }

    /// The report section.
    pub fn report(&self) -> ExternalReport {
        let since_attach = &self.by_stack.since_attach;
        let counted = |n: u64| (self.following == Following::All).then_some(n);
        ExternalReport {
            followed: match self.following {
                Following::All => "all".into(),
                Following::Sampled { every } => format!("one in {every}"),
                Following::Detached => "none".into(),
            },
            bytes: self.bytes,
            counter_error: self.counter.as_ref().err().cloned(),
            allocators: self.counter.as_ref().map_or(0, ExternalCounter::allocators),
            allocated_bytes: counted(since_attach.alloc_bytes),
            allocations: counted(since_attach.allocs),
            freed_bytes: counted(since_attach.free_bytes),
            frees: counted(since_attach.frees),
        }
    }
}

#[cfg(test)]
mod sampling_tests {
    use leakprobe_ebpf::external::sampled;

    /// What allocations of `size` bytes count for, summed over draws spread evenly over all
    /// 32-bit values, per allocation: an unbiased rule gives `size` back.
    fn mean_weight(size: u64, every: u64, rate: u64) -> f64 {
        const DRAWS: u64 = 1 << 16;
        let total: u64 =
            (0..DRAWS).filter_map(|i| sampled(size, every, rate, ((i << 32) / DRAWS) as u32)).sum();
        total as f64 / DRAWS as f64
    }

    #[test]
    fn sampled_buffers_count_for_what_they_stand_for() {
        let rate = super::SAMPLE_RATE_BYTES;
        for size in [1, 2048, 64 * 1024, rate / 8, rate - 1, rate, 4 * rate] {
            let mean = mean_weight(size, 16, rate);
            assert!((mean - size as f64).abs() <= 0.01 * size as f64, "{size} B: {mean}");
        }
        // One in sixteen small ones; every large one; all of them when not sampling.
        let followed = |size, every| {
            (0..16u64).filter(|i| sampled(size, every, rate, (i << 28) as u32).is_some()).count()
        };
        assert_eq!(followed(2048, 16), 1);
        assert_eq!(followed(rate, 16), 16);
        assert_eq!(followed(2048, 1), 16);
        assert_eq!(followed(2048, 0), 16);
        // Half of those of half the rate, at twice their size.
        assert_eq!(followed(rate / 2, 16), 8);
        assert_eq!(sampled(rate / 2, 16, rate, 0), Some(rate));
        // By count alone.
        assert_eq!(sampled(2048, 16, 0, 0), Some(2048 * 16));
        assert_eq!(sampled(u64::MAX, 16, 0, 0), Some(u64::MAX));
    }
}
