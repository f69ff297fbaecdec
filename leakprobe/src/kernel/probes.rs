//! The probe table: every uprobe leakprobe can attach, in one place.
//!
//! Attaching walks [`PROBES`]; adding a probe is one entry here plus its kernel program.

use std::num::NonZeroU32;

use anyhow::Context as _;
use aya::{
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        PerfEvent, Program, ProgramError, TracePoint, UProbe,
    },
    Ebpf,
};
use serde::Serialize;

use std::path::PathBuf;

use crate::{
    error::Error,
    kernel::tracefs,
    process::insn,
    process::symbols::{Elf, Lookup, SymbolLocation},
    process::target::Target,
};

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
    fn callees(self) -> &'static [&'static str] {
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

/// The links of the `UntilFound` probes, by program: what [`detach_found`] detaches.
pub type FoundLinks = Vec<(&'static str, UProbeLinkId)>;

/// Detaches the `UntilFound` probes and marks their statuses.
///
/// Removing a uprobe waits for the kernel's RCU grace periods, which can take most of a second
/// on a busy machine: the links are dropped on a thread of their own, so sampling goes on.
pub fn detach_found(ebpf: &mut Ebpf, links: FoundLinks, statuses: &mut [ProbeStatus]) {
    let mut owned = Vec::new();
    for (name, id) in links {
        let program: Option<&mut UProbe> = ebpf.program_mut(name).and_then(|p| p.try_into().ok());
        match program.map(|p| p.take_link(id)) {
            Some(Ok(link)) => owned.push(link),
            Some(Err(e)) => log::warn!("detaching {name}: {e}"),
            None => log::warn!("detaching {name}: not a uprobe program"),
        }
    }
    std::thread::spawn(move || drop(owned));
    for def in PROBES.iter().filter(|d| d.attach == When::UntilFound) {
        for status in statuses.iter_mut().filter(|s| s.name == def.name && s.attached) {
            status.detached = Some(
                "after the opening burst, once node's ArrayBuffer allocator was found (--alloc-stacks keeps it)",
            );
        }
    }
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

/// What happened when a probe was attached; one per [`ProbeDef`], in `report.json`'s `probes[]`.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    /// [`ProbeDef::name`].
    pub name: &'static str,
    /// [`ProbeDef::family`].
    pub family: Family,
    /// [`ProbeDef::function`].
    pub function: &'static str,
    /// Whether at least one entry point is attached.
    pub attached: bool,
    /// Entry points attached (the function and its clones).
    pub locations: usize,
    /// Why it is not attached, or what failed for some of its locations.
    pub error: Option<String>,
    /// When it was detached during the run, if it was (see [`When::UntilFound`]).
    pub detached: Option<&'static str>,
}

/// Attaches every probe in [`PROBES`] to `target`. A probe whose symbols are missing is reported
/// in its status and the rest run; if none attaches, that is an error. Returns the statuses and
/// the symbol lookup (families use it to read their functions' code).
///
/// Only the families in `families` are attached, and a family only when every one of its probes
/// has a symbol: half a family (a GC entry without its return) would measure nothing.
pub fn attach_all(
    ebpf: &mut Ebpf,
    target: &Target,
    families: &[Family],
    options: &AttachOptions,
) -> anyhow::Result<(Vec<ProbeStatus>, Lookup, FoundLinks)> {
    let AttachOptions { alloc_stacks, native_view, fault_period } = *options;
    let node = Binary::new(target.module.clone(), target.module_display.clone(), &target.elf, Module::Node)?;
    if node.lookup.v8_symbols == 0 && target.node_version.is_none() {
        return Err(
            Error::NotNode { pid: target.pid, comm: target.comm.clone(), exe: target.exe.clone() }.into()
        );
    }
    let pid = NonZeroU32::new(target.pid).ok_or(Error::NoSuchProcess(target.pid))?;
    // libc is read only when a family that probes it was asked for.
    let libc_elf;
    let libc = match target.libc() {
        Some((path, display))
            if PROBES.iter().any(|d| d.module == Module::Libc && families.contains(&d.family)) =>
        {
            libc_elf = Elf::open(&path).with_context(|| format!("reading {display}"))?;
            Some(Binary::new(path, display, &libc_elf, Module::Libc)?)
        }
        _ => None,
    };
    let binary = |def: &ProbeDef| match def.module {
        Module::Node => Some(&node),
        Module::Libc => libc.as_ref(),
        Module::Tracepoint | Module::PageFaults => None,
    };
    let tracefs =
        if families.contains(&Family::Syscalls) { tracefs::ensure() } else { Err("not needed".into()) };
    let locations_of = |def: &ProbeDef| -> Vec<&SymbolLocation> {
        binary(def)
            .map(|b| def.symbols.iter().filter_map(|s| b.lookup.found.get(*s)).flatten().collect())
            .unwrap_or_default()
    };
    // Whether a probe's attach point exists: a symbol, or a tracepoint in tracefs.
    let available = |def: &ProbeDef| match def.module {
        Module::Tracepoint => tracefs.as_ref().is_ok_and(|dir| tracefs::has(dir, def.symbols[0])),
        Module::PageFaults => true,
        _ => !locations_of(def).is_empty(),
    };
    // Families with a probe whose attach point is missing: the first such function, for messages.
    let in_mode = |d: &&ProbeDef| match d.attach {
        When::AllocStacks => alloc_stacks,
        When::WithNative => native_view,
        When::Always | When::UntilFound | When::Unless(_) => true,
    };
    let incomplete = |family: Family| {
        PROBES.iter().filter(in_mode).find(|d| d.family == family && !available(d)).map(|d| d.function)
    };

    let mut statuses = Vec::with_capacity(PROBES.len());
    let mut found_links = FoundLinks::new();
    for def in PROBES.iter().filter(in_mode).filter(|d| families.contains(&d.family)) {
        let locations = locations_of(def);
        let mut status = ProbeStatus {
            name: def.name,
            family: def.family,
            function: def.function,
            attached: false,
            locations: 0,
            error: None,
            detached: None,
        };
        if !available(def) {
            status.error = Some(match (def.module, &tracefs) {
                (Module::Tracepoint, Err(e)) => format!("tracepoint unavailable: {e}"),
                (Module::Tracepoint, Ok(_)) => format!("tracepoint not found: {}", def.function),
                _ => format!("symbol not found: {}", def.function),
            });
            statuses.push(status);
            continue;
        }
        if let Some(missing) = incomplete(def.family) {
            status.error = Some(format!("not attached: its family lacks {missing}"));
            statuses.push(status);
            continue;
        }
        if def.module == Module::Tracepoint {
            attach_tracepoint(ebpf, def, &mut status)?;
            statuses.push(status);
            continue;
        }
        if def.module == Module::PageFaults {
            attach_page_faults(ebpf, def, fault_period, &mut status)?;
            statuses.push(status);
            continue;
        }
        if let When::Unless(other) = def.attach {
            if statuses.iter().any(|s| s.name == other && s.attached) {
                continue;
            }
        }
        let program = load_program(ebpf, def, "a uprobe", UProbe::load)?;
        let mut errors = Vec::new();
        let Some(module) = binary(def) else { continue };
        for location in locations {
            let points = attach_points(def, module, location);
            if points.is_empty() {
                errors.push(format!("{}: no call to its callee followed by an add found", location.name));
            }
            for (offset, cookie) in points {
                let point =
                    UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(offset), cookie };
                match program.attach(point, &module.path, UProbeScope::OneProcess(pid)) {
                    Ok(id) => {
                        status.locations += 1;
                        if def.attach == When::UntilFound {
                            found_links.push((def.program, id));
                        }
                    }
                    Err(e) => errors.push(format!("{}: {}", location.name, error_chain(&e))),
                }
            }
        }
        status.attached = status.locations > 0;
        if !errors.is_empty() {
            status.error = Some(errors.join("; "));
        }
        statuses.push(status);
    }

    if !target.alive() {
        return Err(Error::TargetGone(target.pid).into());
    }
    if !statuses.iter().any(|s| s.attached) {
        // One entry per missing function, naming the probes that needed it.
        let mut by_function: Vec<(&str, Vec<&str>)> = Vec::new();
        for s in
            statuses.iter().filter(|s| s.error.as_deref().is_some_and(|e| e.starts_with("symbol not found")))
        {
            match by_function.iter_mut().find(|(f, _)| *f == s.function) {
                Some((_, names)) => names.push(s.name),
                None => by_function.push((s.function, vec![s.name])),
            }
        }
        if by_function.is_empty() {
            // No symbol is missing: the probes failed to attach (permission, tracefs...).
            let reason =
                statuses.iter().find_map(|s| s.error.clone()).unwrap_or_else(|| "no probe asked for".into());
            let hint = crate::kernel::health::hint(&reason);
            return Err(Error::NoProbeAttached { pid: target.pid, reason, hint }.into());
        }
        let missing = by_function
            .iter()
            .map(|(f, names)| format!("{f} (probes {})", names.join(", ")))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::NoUsableProbes { binary: node.display.clone().into(), missing }.into());
    }
    Ok((statuses, node.lookup, found_links))
}

/// What decides which of a family's probes attach (see [`When`]).
#[derive(Clone, Copy, Debug)]
pub struct AttachOptions {
    /// `--alloc-stacks`.
    pub alloc_stacks: bool,
    /// `--native` or `--native-exact`.
    pub native_view: bool,
    /// Page faults per sample.
    pub fault_period: u64,
}

impl AttachOptions {
    /// From a session's options.
    pub fn of(options: &crate::session::Options) -> Self {
        Self {
            alloc_stacks: options.alloc_stacks,
            native_view: options.native_view,
            fault_period: options.fault_period,
        }
    }
}

/// A binary that probes attach to, with the symbols the probe table wants from it.
struct Binary<'a> {
    /// Path the kernel attaches by (through `/proc/PID/...`).
    path: PathBuf,
    /// Path as the process sees it.
    display: String,
    elf: &'a Elf,
    lookup: Lookup,
}

impl<'a> Binary<'a> {
    fn new(path: PathBuf, display: String, elf: &'a Elf, module: Module) -> anyhow::Result<Self> {
        let wanted: Vec<&str> = PROBES
            .iter()
            .filter(|d| d.module == module)
            .flat_map(|d| d.symbols.iter().chain(d.at.callees()).copied())
            .collect();
        let lookup = elf.lookup(&wanted).with_context(|| format!("reading symbols of {display}"))?;
        Ok(Self { path, display, elf, lookup })
    }
}

/// Where `def` attaches in the function at `location` of `module`: (file offset, cookie) pairs.
fn attach_points(def: &ProbeDef, module: &Binary<'_>, location: &SymbolLocation) -> Vec<(u64, Option<u64>)> {
    if def.at == At::Entry {
        return vec![(probe_offset(module.elf, location.file_offset), None)];
    }
    let start = location.file_offset as usize;
    let Some(code) = module.elf.bytes().get(start..start.saturating_add(location.size as usize)) else {
        return Vec::new();
    };
    let targets: Vec<u64> = def
        .at
        .callees()
        .iter()
        .filter_map(|c| module.lookup.found.get(*c))
        .flatten()
        .map(|l| l.address)
        .collect();
    insn::returns_from_calls_to(code, location.address, &targets)
        .into_iter()
        .filter_map(|after| {
            let added = insn::added_to_result(&code[after..])?;
            let cookie = leakprobe_ebpf::heap::summed_registers_cookie(&added)?;
            Some((location.file_offset + after as u64, Some(cookie)))
        })
        .collect()
}

/// Where a probe on the function at `file_offset` goes: its entry, or, when the entry is a
/// LOCK-prefixed instruction (which the kernel cannot probe), the instruction after it.
fn probe_offset(elf: &Elf, file_offset: u64) -> u64 {
    let code = elf.bytes().get(file_offset as usize..).unwrap_or_default();
    match insn::decode_locked_rmw(code) {
        Some(_) => file_offset + insn::LOCKED_RMW_LEN as u64,
        None => file_offset,
    }
}

/// Finds `def`'s program in the object as a `T` (`kind`, for messages) and loads it with `load`.
fn load_program<'e, T>(
    ebpf: &'e mut Ebpf,
    def: &ProbeDef,
    kind: &str,
    load: fn(&mut T) -> Result<(), ProgramError>,
) -> anyhow::Result<&'e mut T>
where
    &'e mut T: TryFrom<&'e mut Program, Error = ProgramError>,
{
    let program: &mut T = ebpf
        .program_mut(def.program)
        .with_context(|| format!("program {} missing from the eBPF object", def.program))?
        .try_into()
        .with_context(|| format!("program {} is not {kind}", def.program))?;
    load(program).map_err(|e| load_error(def, e))?;
    Ok(program)
}

/// Loads and attaches a tracepoint probe (`symbols[0]` is `category:name`).
fn attach_tracepoint(ebpf: &mut Ebpf, def: &ProbeDef, status: &mut ProbeStatus) -> anyhow::Result<()> {
    let (category, name) = def.symbols[0].split_once(':').context("tracepoint names are category:name")?;
    let program = load_program(ebpf, def, "a tracepoint", TracePoint::load)?;
    match program.attach(category, name) {
        Ok(_) => {
            status.attached = true;
            status.locations = 1;
        }
        Err(e) => status.error = Some(error_chain(&e)),
    }
    Ok(())
}

/// Loads the page-fault program and opens the sampled software event on every online CPU (for
/// every process: the program keeps the target's faults, including those of threads it starts
/// later).
fn attach_page_faults(
    ebpf: &mut Ebpf,
    def: &ProbeDef,
    period: u64,
    status: &mut ProbeStatus,
) -> anyhow::Result<()> {
    let program = load_program(ebpf, def, "a perf event program", PerfEvent::load)?;
    let cpus = match aya::util::online_cpus() {
        Ok(cpus) => cpus,
        Err((what, e)) => {
            status.error = Some(format!("{what}: {e}"));
            return Ok(());
        }
    };
    let mut errors = Vec::new();
    for cpu in cpus {
        let config = PerfEventConfig::Software(SoftwareEvent::PageFaults);
        let scope = PerfEventScope::AllProcessesOneCpu { cpu };
        match program.attach(config, scope, SamplePolicy::Period(period.max(1)), false) {
            Ok(_) => status.locations += 1,
            Err(e) => errors.push(format!("cpu {cpu}: {}", error_chain(&e))),
        }
    }
    status.attached = status.locations > 0;
    if !errors.is_empty() {
        status.error = Some(errors.join("; "));
    }
    Ok(())
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

fn load_error(def: &ProbeDef, e: ProgramError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("EPERM") || text.contains("ermission") {
        Error::Permission(format!("loading eBPF program {}", def.program)).into()
    } else {
        anyhow::Error::new(e).context(format!("loading eBPF program {}", def.program))
    }
}

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
