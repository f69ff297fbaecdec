//! The probe table: every probe leakprobe can attach, in one place ([`PROBES`]).
//!
//! Attaching walks the table ([`crate::kernel::attach`]); adding a probe is one entry here plus
//! its kernel program.

use serde::Serialize;

/// Which family a probe belongs to (the module name on both sides).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// GC pauses.
    Gc,
    /// ArrayBuffer/Buffer backing stores.
    External,
    /// V8 heap pages.
    Heap,
    /// libc's malloc family (opt-in, sampled).
    Native,
    /// mmap, munmap and brk of the target.
    Syscalls,
    /// libuv's thread pool: which stack queued the work a pool thread runs.
    Threadpool,
    /// Sampled page faults: first touches of memory, by stack.
    Faults,
}

impl Family {
    /// Every family attached by default.
    pub const DEFAULT: [Family; 6] =
        [Family::Gc, Family::Heap, Family::External, Family::Syscalls, Family::Threadpool, Family::Faults];
    /// What `--native` adds: libc's allocator, and the thread pool (where much native memory is
    /// allocated, on threads whose stacks hold no JavaScript).
    pub const NATIVE: [Family; 2] = [Family::Native, Family::Threadpool];

    /// `families` with the [`Family::NATIVE`] ones added.
    pub fn with_native(mut families: Vec<Family>) -> Vec<Family> {
        for family in Family::NATIVE {
            if !families.contains(&family) {
                families.push(family);
            }
        }
        families
    }
}

/// Which binary of the target a probe's function lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    /// The node executable, or the libnode.so it maps.
    Node,
    /// The C library the process maps.
    Libc,
    /// A kernel tracepoint; the probe's `symbols` hold it as `category:name`.
    Tracepoint,
    /// The page-fault software event, opened on every CPU and sampled (not a function).
    PageFaults,
}

/// One uprobe or uretprobe.
pub struct ProbeDef {
    /// Name shown to users and in `report.json`.
    pub name: &'static str,
    /// Probe family.
    pub family: Family,
    /// The binary holding the function.
    pub module: Module,
    /// The kernel program (its function name in leakprobe-ebpf).
    pub program: &'static str,
    /// The C++ function, for messages. Whether the probe fires at its entry or its return is the
    /// kernel program's type (`#[uprobe]` or `#[uretprobe]`).
    pub function: &'static str,
    /// Mangled names: alternatives across node versions, or several functions that share the
    /// program. Each one found is attached, with its `.constprop` clones.
    pub symbols: &'static [&'static str],
    /// When the probe is attached: its cost decides.
    pub attach: When,
    /// Where in the function it fires.
    pub at: At,
}

/// Where in its function a probe fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// At the entry (a uretprobe: at the return).
    Entry,
    /// Right after each direct call in the function to one of these functions (mangled names),
    /// where the code goes on to add other registers to the call's result (rax) and return it:
    /// the attach cookie names those registers. Where no such site is found, the probe is not
    /// attached (a [`When::Unless`] probe can stand in).
    AfterCallAdding(&'static [&'static str]),
}

impl At {
    /// The functions whose calls place the probe (none at an entry).
    pub fn callees(self) -> &'static [&'static str] {
        match self {
            At::Entry => &[],
            At::AfterCallAdding(callees) => callees,
        }
    }
}

/// When a probe is attached. Every probe hit traps into the kernel (a few microseconds, mostly
/// the trap itself), so probes that fire on every allocation are not attached by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Whenever its family is: it fires rarely (per GC, per heap page, per mmap), or its family
    /// is opt-in for its cost (native).
    Always,
    /// Only with `--alloc-stacks`: it fires on every allocation, or about every few KiB of them.
    AllocStacks,
    /// Attached until it has found what the default view needs (node's ArrayBuffer allocator),
    /// then detached; kept with `--alloc-stacks`.
    UntilFound,
    /// Only with the native view (`--native`, `--native-exact`): it fires on every fs call.
    WithNative,
    /// Only where the named probe did not attach (it comes earlier in the table): a fallback.
    Unless(&'static str),
}

/// `v8::internal::Heap::PerformGarbageCollection`, node 20+ and node 18 (extra GCCallbackFlags).
const PERFORM_GC: &[&str] = &[
    "_ZN2v88internal4Heap24PerformGarbageCollectionENS0_16GarbageCollectorENS0_23GarbageCollectionReasonEPKc",
    "_ZN2v88internal4Heap24PerformGarbageCollectionENS0_16GarbageCollectorENS0_23GarbageCollectionReasonEPKcNS_15GCCallbackFlagsE",
];

/// `node::NodeArrayBufferAllocator::Allocate` and `AllocateUninitialized`.
const EXT_ALLOCATE: &[&str] = &[
    "_ZN4node24NodeArrayBufferAllocator8AllocateEm",
    "_ZN4node24NodeArrayBufferAllocator21AllocateUninitializedEm",
];

/// `node::NodeArrayBufferAllocator::Free(void*, size_t)`.
pub const EXT_FREE: &[&str] = &["_ZN4node24NodeArrayBufferAllocator4FreeEPvm"];

const HEAP_ALLOCATE_PAGE: &[&str] =
    &["_ZN2v88internal15MemoryAllocator12AllocatePageENS1_14AllocationModeEPNS0_5SpaceENS0_13ExecutabilityE"];
const HEAP_ALLOCATE_LARGE_PAGE: &[&str] =
    &["_ZN2v88internal15MemoryAllocator17AllocateLargePageEPNS0_16LargeObjectSpaceEmNS0_13ExecutabilityE"];
/// Node 20+, node 18 (no AllocationSpace argument); the chunk size is the second argument in both.
const HEAP_ALLOCATE_ALIGNED: &[&str] = &[
    "_ZN2v88internal15MemoryAllocator21AllocateAlignedMemoryEmmmNS0_15AllocationSpaceENS0_13ExecutabilityEPvPNS0_13VirtualMemoryE",
    "_ZN2v88internal15MemoryAllocator21AllocateAlignedMemoryEmmmNS0_13ExecutabilityEPvPNS0_13VirtualMemoryE",
];
/// Node 22+ (page metadata), node 18–20 (memory chunk).
const HEAP_FREE: &[&str] = &[
    "_ZN2v88internal15MemoryAllocator4FreeENS1_8FreeModeEPNS0_19MutablePageMetadataE",
    "_ZN2v88internal15MemoryAllocator4FreeENS1_8FreeModeEPNS0_11MemoryChunkE",
];
/// Node 22+, node 18–20.
const HEAP_PARTIAL_FREE: &[&str] = &[
    "_ZN2v88internal15MemoryAllocator17PartialFreeMemoryEPNS0_19MemoryChunkMetadataEmmm",
    "_ZN2v88internal15MemoryAllocator17PartialFreeMemoryEPNS0_16BasicMemoryChunkEmmm",
];
/// JIT code's slow allocation paths, young and old generation.
const HEAP_SLOW_ALLOCATE: &[&str] = &[
    "_ZN2v88internal33Runtime_AllocateInYoungGenerationEiPmPNS0_7IsolateE",
    "_ZN2v88internal31Runtime_AllocateInOldGenerationEiPmPNS0_7IsolateE",
];
const HEAP_COMMITTED: &[&str] = &["_ZN2v88internal4Heap15CommittedMemoryEv"];
/// What `Heap::CommittedMemory` calls for the old generation's part: the clone node 20+ calls
/// (named outright: a `.part` clone is no entry of the function in general), and node 18's
/// function.
const HEAP_OLD_GENERATION: &[&str] = &[
    "_ZN2v88internal4Heap28CommittedOldGenerationMemoryEv.part.0",
    "_ZN2v88internal4Heap28CommittedOldGenerationMemoryEv",
];
const ISOLATE_HEAP_STATS: &[&str] = &["_ZN2v87Isolate17GetHeapStatisticsEPNS_14HeapStatisticsE"];

const MALLOC: &[&str] = &["malloc"];
const CALLOC: &[&str] = &["calloc"];
const REALLOC: &[&str] = &["realloc"];
const ALIGNED_ALLOC: &[&str] = &["aligned_alloc", "memalign"];
const POSIX_MEMALIGN: &[&str] = &["posix_memalign"];
const FREE: &[&str] = &["free"];
/// libuv's `uv_queue_work` (node's zlib, crypto and addons' work).
const POOL_QUEUE_WORK: &[&str] = &["uv_queue_work"];
/// libuv's internal `uv__work_submit` (fs, dns and random work).
const POOL_SUBMIT: &[&str] = &["uv__work_submit"];
/// libuv's work function for `uv_queue_work`'s work, which a pool thread calls to run it.
const POOL_WORK: &[&str] = &["uv__queue_work"];
/// libuv's other work functions: fs, dns and random work.
const POOL_WORK_FS: &[&str] =
    &["uv__fs_work", "uv__getaddrinfo_work", "uv__getnameinfo_work", "uv__random_work"];
/// The perf software event the `page_faults` program is attached to.
const PAGE_FAULTS: &[&str] = &["software:page-faults"];
/// Every function whose return gives the allocated block.
const RETURNS_BLOCK: &[&str] = &["malloc", "calloc", "realloc", "aligned_alloc", "memalign"];

/// A syscall tracepoint probe (the program has the tracepoint's name).
macro_rules! syscall_tracepoint {
    ($name:literal) => {
        ProbeDef {
            name: $name,
            family: Family::Syscalls,
            module: Module::Tracepoint,
            program: $name,
            function: concat!("syscalls:", $name),
            symbols: &[concat!("syscalls:", $name)],
            attach: When::Always,
            at: At::Entry,
        }
    };
}

/// Every probe leakprobe knows.
pub static PROBES: &[ProbeDef] = &[
    ProbeDef {
        name: "gc_start",
        module: Module::Node,
        family: Family::Gc,
        program: "gc_start",
        function: "v8::internal::Heap::PerformGarbageCollection",
        symbols: PERFORM_GC,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "gc_end",
        module: Module::Node,
        family: Family::Gc,
        program: "gc_end",
        function: "v8::internal::Heap::PerformGarbageCollection",
        symbols: PERFORM_GC,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "ext_alloc",
        module: Module::Node,
        family: Family::External,
        program: "ext_alloc",
        function: "node::NodeArrayBufferAllocator::Allocate{,Uninitialized}",
        symbols: EXT_ALLOCATE,
        attach: When::UntilFound,
        at: At::Entry,
    },
    ProbeDef {
        name: "ext_alloc_ret",
        module: Module::Node,
        family: Family::External,
        program: "ext_alloc_ret",
        function: "node::NodeArrayBufferAllocator::Allocate{,Uninitialized}",
        symbols: EXT_ALLOCATE,
        attach: When::UntilFound,
        at: At::Entry,
    },
    ProbeDef {
        name: "ext_free",
        module: Module::Node,
        family: Family::External,
        program: "ext_free",
        function: "node::NodeArrayBufferAllocator::Free",
        symbols: EXT_FREE,
        attach: When::UntilFound,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_page_ret",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_page_ret",
        function: "v8::internal::MemoryAllocator::AllocatePage",
        symbols: HEAP_ALLOCATE_PAGE,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_aligned",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_aligned",
        function: "v8::internal::MemoryAllocator::AllocateAlignedMemory",
        symbols: HEAP_ALLOCATE_ALIGNED,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_large",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_large",
        function: "v8::internal::MemoryAllocator::AllocateLargePage",
        symbols: HEAP_ALLOCATE_LARGE_PAGE,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_large_ret",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_large_ret",
        function: "v8::internal::MemoryAllocator::AllocateLargePage",
        symbols: HEAP_ALLOCATE_LARGE_PAGE,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_free",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_free",
        function: "v8::internal::MemoryAllocator::Free",
        symbols: HEAP_FREE,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_partial_free",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_partial_free",
        function: "v8::internal::MemoryAllocator::PartialFreeMemory",
        symbols: HEAP_PARTIAL_FREE,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_sample",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_sample",
        function: "v8::internal::Runtime_AllocateIn{Young,Old}Generation",
        symbols: HEAP_SLOW_ALLOCATE,
        attach: When::AllocStacks,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_committed_split",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_committed_split",
        function: "v8::internal::Heap::CommittedMemory",
        symbols: HEAP_COMMITTED,
        attach: When::Always,
        at: At::AfterCallAdding(HEAP_OLD_GENERATION),
    },
    ProbeDef {
        name: "heap_committed_ret",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_committed_ret",
        function: "v8::internal::Heap::CommittedMemory",
        symbols: HEAP_COMMITTED,
        attach: When::Unless("heap_committed_split"),
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_stats_enter",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_stats_enter",
        function: "v8::Isolate::GetHeapStatistics",
        symbols: ISOLATE_HEAP_STATS,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "heap_stats_exit",
        module: Module::Node,
        family: Family::Heap,
        program: "heap_stats_exit",
        function: "v8::Isolate::GetHeapStatistics",
        symbols: ISOLATE_HEAP_STATS,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "native_malloc",
        family: Family::Native,
        module: Module::Libc,
        program: "native_malloc",
        function: "malloc",
        symbols: MALLOC,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "native_calloc",
        family: Family::Native,
        module: Module::Libc,
        program: "native_calloc",
        function: "calloc",
        symbols: CALLOC,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "native_realloc",
        family: Family::Native,
        module: Module::Libc,
        program: "native_realloc",
        function: "realloc",
        symbols: REALLOC,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "native_aligned_alloc",
        family: Family::Native,
        module: Module::Libc,
        program: "native_aligned_alloc",
        function: "aligned_alloc",
        symbols: ALIGNED_ALLOC,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "native_posix_memalign",
        family: Family::Native,
        module: Module::Libc,
        program: "native_posix_memalign",
        function: "posix_memalign",
        symbols: POSIX_MEMALIGN,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "native_alloc_ret",
        family: Family::Native,
        module: Module::Libc,
        program: "native_alloc_ret",
        function: "malloc, calloc, realloc, aligned_alloc",
        symbols: RETURNS_BLOCK,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "native_posix_memalign_ret",
        family: Family::Native,
        module: Module::Libc,
        program: "native_posix_memalign_ret",
        function: "posix_memalign",
        symbols: POSIX_MEMALIGN,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "native_free",
        family: Family::Native,
        module: Module::Libc,
        program: "native_free",
        function: "free",
        symbols: FREE,
        attach: When::Always,
        at: At::Entry,
    },
    // Node's own pool work (zlib, crypto, addons) is queued once per call: attached by
    // default, so memory first touched on a pool thread names the JavaScript that queued it.
    ProbeDef {
        name: "pool_queue_work",
        family: Family::Threadpool,
        module: Module::Node,
        program: "pool_queue_work",
        function: "uv_queue_work",
        symbols: POOL_QUEUE_WORK,
        attach: When::Always,
        at: At::Entry,
    },
    ProbeDef {
        name: "pool_work",
        family: Family::Threadpool,
        module: Module::Node,
        program: "pool_work",
        function: "uv__queue_work",
        symbols: POOL_WORK,
        attach: When::Always,
        at: At::Entry,
    },
    // fs, dns and random work: they fire on every fs call, too often for the default view.
    ProbeDef {
        name: "pool_submit",
        family: Family::Threadpool,
        module: Module::Node,
        program: "pool_submit",
        function: "uv__work_submit",
        symbols: POOL_SUBMIT,
        attach: When::WithNative,
        at: At::Entry,
    },
    ProbeDef {
        name: "pool_work_fs",
        family: Family::Threadpool,
        module: Module::Node,
        program: "pool_work_fs",
        function: "uv__fs_work, uv__getaddrinfo_work, ... (libuv's other work functions)",
        symbols: POOL_WORK_FS,
        attach: When::WithNative,
        at: At::Entry,
    },
    ProbeDef {
        name: "page_faults",
        family: Family::Faults,
        module: Module::PageFaults,
        program: "page_faults",
        function: "software event page-faults (sampled, every CPU)",
        symbols: PAGE_FAULTS,
        attach: When::Always,
        at: At::Entry,
    },
    syscall_tracepoint!("sys_enter_mmap"),
    syscall_tracepoint!("sys_exit_mmap"),
    syscall_tracepoint!("sys_enter_munmap"),
    syscall_tracepoint!("sys_enter_brk"),
    syscall_tracepoint!("sys_exit_brk"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_names_a_distinct_program_and_at_least_one_symbol() {
        let mut programs: Vec<_> = PROBES.iter().map(|p| p.program).collect();
        programs.sort();
        programs.dedup();
        assert_eq!(programs.len(), PROBES.len());
        assert!(PROBES.iter().all(|p| !p.symbols.is_empty()));
    }
}
