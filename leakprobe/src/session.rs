//! One profiling session against one process: load, attach, collect, report. The session
//! holds the loaded programs, the attached probes and every family's books; its parts are
//! [`options`] (what was asked), `collect` (the loop), `events` (the kernel's events, by kind)
//! and `assemble` (the report).

mod assemble;
mod collect;
mod events;
pub mod options;

pub use options::{agent_families, Options, AGENT_MAX_TRACKED};

use std::{
    collections::HashSet,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use leakprobe_ebpf::{stack::JsLayout, syscalls::CONFIG_TGID};
use tokio::io::unix::AsyncFd;

use crate::{
    books::{series::Thinned, tracker::Tracker},
    kernel::{
        attach,
        attach::FoundLinks,
        load::{self, take_map, KernelLog},
        stacks::StackMaps,
        status::ProbeStatus,
        table::Family,
    },
    memory::{
        census::CensusWatch,
        containers::Containers,
        external::ExternalState,
        faults::{FaultBooks, PageKinds},
        gc::{GcKind, GcStats},
        heap::HeapBooks,
        native::NativeState,
        rss,
        syscalls::Mappings,
    },
    process::target::Target,
    stacks::symbolize::Symbolizer,
    v8::{self, heap::reader::HeapReader, Metadata, MetadataError, ProcMem, Reader},
};

/// Which stacks a report judges and names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stacks {
    /// All of them: the final report (suspects, growing mappings, every stack's bytes, GC
    /// triggers, heap samples).
    All,
    /// The leak suspects only: all the refreshing live view shows.
    Suspects,
}

/// GC-triggering stacks listed in the report.
const TRIGGER_STACKS: usize = 50;

/// How long each GC trough is read, [`TROUGH_EVERY`] apart (or as often as the agent polls):
/// the ArrayBuffer sweeper frees what the GC released over the first hundred milliseconds or
/// so, while the program allocates again; the lowest reading is the trough.
const TROUGH_SPAN: Duration = Duration::from_millis(400);

/// How often a GC trough is read.
const TROUGH_EVERY: Duration = Duration::from_millis(25);

/// The readings after one main-thread mark-compact.
struct Trough {
    /// The GC's sequence number.
    seq: u32,
    /// When its last reading is due.
    until: Instant,
    /// Each figure's lowest reading so far (taken at the first).
    low: Option<rss::Sample>,
}

/// How often the event ring buffer is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Memory samples kept (thinned evenly beyond that).
const MEMORY_SAMPLES: usize = 512;

/// A live session: loaded programs, attached probes, and what has been collected so far.
/// One attached process: its probes, maps and books. The command drives it with
/// [`crate::commands::profile::run`]; the agent drives many through [`Session::attach`], [`Session::poll`] and [`Session::sample`].
pub struct Session {
    target: Target,
    // Dropping `Ebpf` detaches every probe; it lives as long as the session.
    ebpf: Ebpf,
    probes: Vec<ProbeStatus>,
    events: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    stack_maps: StackMaps,
    /// Stack ids already symbolized. An id is a hash of the stack's frames, the same in both
    /// stack maps, so each is named once whichever map holds it.
    named: HashSet<i64>,
    gc: GcStats,
    heap: HeapBooks,
    native: Option<NativeState>,
    mappings: Mappings,
    mapping_growth: Tracker,
    faults: FaultBooks,
    /// `--alloc-stacks`: the per-allocation probes are kept.
    alloc_stacks: bool,
    /// How long the opening burst lasts.
    burst: Duration,
    /// After it, one Buffer allocation in this many is followed (0: none).
    buffer_sampling: u64,
    /// Whether the end of the opening burst was said.
    burst_said: bool,
    // The programs that fire for every process read the target's pid from it: open for the
    // whole session.
    _target_config: Array<MapData, u32>,
    external: ExternalState,
    memory: Thinned<rss::Sample>,
    /// The target's `/proc/PID/status`, kept open.
    rss: rss::RssReader,
    suspects: Tracker,
    symbolizer: Symbolizer,
    /// `report.target.js_frames`.
    js_frames: String,
    started: Instant,
    started_wall: SystemTime,
    /// `started` on the kernel's monotonic clock (what `bpf_ktime_get_ns` returns).
    started_ns: u64,
    /// The per-allocation external probes' links, to detach once the allocator is known and
    /// the opening burst ([`Options::burst`]) is over (`None` with `--alloc-stacks`, or once detached).
    found_links: Option<FoundLinks>,
    /// A main-thread mark-compact ended and its trough is not read yet: its sequence number.
    trough_due: Option<u32>,
    /// The trough being read (see [`Trough`]).
    trough: Option<Trough>,
    /// Main-thread mark-compacts seen.
    mark_compacts: u32,
    /// Pauses (kind, seconds) not yet taken by the agent; `None` outside agent mode.
    pending_pauses: Option<Vec<(GcKind, f64)>>,
    /// Events read from the ring buffer.
    events_read: u64,
    /// The kernel programs' diagnostics, when `RUST_LOG` asks for them.
    kernel_log: Option<KernelLog>,
    /// Heap censuses after main-thread mark-compacts (`None` without the verdict).
    census: Option<CensusWatch>,
    /// The large arrays allocated since attach and what they hold (`None` without the verdict).
    containers: Option<Containers>,
    /// The verdict's rolling window (seconds; the agent's `--window`), if any.
    window: Option<f64>,
    /// Where the verdict's books start now (seconds since attach): 0, or the rolling window's
    /// start.
    judged_from: f64,
}

impl Session {
    /// Loads the programs and attaches them to `target` (the entry of the command and the agent).
    pub fn attach(target: Target, options: &Options) -> anyhow::Result<Self> {
        Self::start(target, options)
    }

    /// The process watched.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The probes and how their attach went.
    pub fn probes(&self) -> &[ProbeStatus] {
        &self.probes
    }

    /// Takes the pauses seen since the last call (agent mode), as (kind, seconds).
    pub fn take_pauses(&mut self) -> Vec<(GcKind, f64)> {
        self.pending_pauses.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Why node's external-memory counter cannot be read (through `/proc/PID/mem`), if so.
    pub fn external_counter_error(&self) -> Option<String> {
        self.external.report().counter_error
    }

    /// Events read from the kernel so far.
    pub fn events_read(&self) -> u64 {
        self.events_read
    }

    /// The latest RSS split, with growth rates over the samples kept.
    pub fn memory(&self) -> rss::MemoryReport {
        rss::MemoryReport::new(self.memory.items())
    }

    /// Events lost so far, by reason.
    pub fn drops(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.drop_counts()
    }

    fn start(target: Target, options: &Options) -> anyhow::Result<Self> {
        let families = &options.families;
        let (mut ebpf, kernel_log) = load::load(families, options.max_tracked)?;
        // Configure before attaching, so the first native allocation is sampled at the right rate.
        let native = match families.contains(&Family::Native) {
            true => Some(NativeState::new(
                take_map(&mut ebpf, "NATIVE_CONFIG")?,
                take_map(&mut ebpf, "NATIVE_BY_STACK")?,
                options.sample_rate,
            )?),
            false => None,
        };
        let mut target_config: Array<MapData, u32> = take_map(&mut ebpf, "TARGET_CONFIG")?;
        target_config.set(CONFIG_TGID, target.pid, 0)?;
        let pid = target.pid;
        // V8's layouts, read from the binary once: for naming JavaScript frames, and for the
        // heap readers (the census thread's and the containers'), opened here so that the
        // collection loop never stops to read the binary.
        let metadata = Metadata::from_elf(target.elf.bytes());
        let heap_probe = || match &metadata {
            Ok(m) => HeapReader::new(&target, m).map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("reading V8's layouts from {}: {e}", target.module_display)),
        };
        // The kernel's walk gets the layout of JavaScript frames before any probe is attached:
        // a stack taken without it has no function in its JavaScript frames, and the stack of a
        // growing array's first large store, taken in the first second, names its series.
        let js = (options.judge && options.v8_names).then(|| js_reader(&target, &metadata, &mut ebpf));
        let (probes, lookup, found_links) =
            attach::attach_all(&mut ebpf, &target, families, &options.attach_options())?;
        // Said once attached: a process that is not node gets its one-line error alone.
        let (js, js_frames) = match js {
            Some(Ok(reader)) => (Some(reader), "v8 metadata".to_string()),
            Some(Err(why)) => {
                eprintln!("leakprobe: JavaScript frames will not be named: {why}");
                (None, format!("unavailable: {why}"))
            }
            // Without the verdict no stack is reported: the kernel's walk keeps return addresses.
            None if !options.judge => (None, "unavailable: not used without the verdict".to_string()),
            None => (None, "perf map only (--no-v8-names)".to_string()),
        };
        // What each faulting address is, from V8's page headers in the target's memory.
        let page_kinds = PageKinds::new(ProcMem::open(target.pid).ok());
        let faults_attached = probes.iter().any(|p| p.family == Family::Faults && p.attached);
        let faults = FaultBooks::new(options.fault_period, page_kinds, faults_attached);
        let events: RingBuf<MapData> = take_map(&mut ebpf, "EVENTS")?;
        let events = watch(events).context("polling the event ring buffer")?;
        let drops = take_map(&mut ebpf, "DROPS")?;
        let stack_maps = StackMaps::take(&mut ebpf)?;
        let ext_by_stack: PerCpuHashMap<MapData, i64, _> = take_map(&mut ebpf, "EXT_BY_STACK")?;
        let ext_allocators: BpfHashMap<MapData, u64, u64> = take_map(&mut ebpf, "EXT_ALLOCATORS")?;
        let ext_config = take_map(&mut ebpf, "EXT_CONFIG")?;
        let external = ExternalState::new(&target, &lookup, ext_by_stack, ext_allocators, ext_config);
        let heap_large_objects = take_map(&mut ebpf, "HEAP_LO_BY_STACK")?;
        let heap_large_live = take_map(&mut ebpf, "HEAP_LO_LIVE")?;
        let heap_samples = take_map(&mut ebpf, "HEAP_SAMPLES")?;
        // Only when judging: without the verdict, the agent's memory and CPU stay small over days.
        let census = match !options.judge || !options.census {
            true => None,
            false => {
                Some(CensusWatch::start(heap_probe(), target.pid, options.census_budget, options.window)?)
            }
        };
        let containers = options.judge.then(|| Containers::new(heap_probe(), heap_large_live));
        let mut symbolizer = Symbolizer::new(target.pid, js);
        if options.judge {
            symbolizer.warm(&target.module_display);
        }
        let target_pid = target.pid;
        let mut session = Session {
            target,
            ebpf,
            probes,
            events,
            drops,
            stack_maps,
            named: HashSet::new(),
            gc: GcStats::default(),
            heap: HeapBooks::new(target_pid, Some(heap_large_objects), Some(heap_samples)),
            native,
            mappings: Mappings::default(),
            mapping_growth: Tracker::default(),
            faults,
            alloc_stacks: options.alloc_stacks,
            burst: options.burst,
            buffer_sampling: options.buffer_sampling,
            burst_said: false,
            _target_config: target_config,
            external,
            memory: Thinned::new(MEMORY_SAMPLES),
            rss: rss::RssReader::new(pid),
            suspects: Tracker::default(),
            symbolizer,
            js_frames,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            started_ns: monotonic_ns(),
            found_links: if options.alloc_stacks { None } else { Some(found_links) },
            trough_due: None,
            trough: None,
            mark_compacts: 0,
            pending_pauses: options.agent.then(Vec::new),
            events_read: 0,
            kernel_log,
            census,
            containers,
            window: options.window,
            judged_from: 0.0,
        };
        session.gc.skip_timeline = options.agent;
        session.sample();
        Ok(session)
    }

    /// Samples memory: RSS, external bytes, and outstanding bytes by stack. Once the target
    /// has exited, its last samples stand.
    pub fn sample(&mut self) {
        self.drain();
        let Some(rss) = self.rss.read() else {
            return;
        };
        let t = self.started.elapsed().as_secs_f64();
        self.external.sample(t, &mut self.suspects);
        self.heap.sample(t, &mut self.suspects);
        if let Some(native) = &mut self.native {
            native.sample(t, &mut self.suspects);
        }
        self.mappings.sample(t, &mut self.mapping_growth);
        self.faults.sample(t);
        if let Some(containers) = &mut self.containers {
            containers.sample(t);
        }
        self.name_new_stacks();
        self.memory.push(rss::Sample {
            trough: None,
            t_s: t,
            rss,
            v8_heap_bytes: self.heap.bytes(),
            v8_old_generation_bytes: self.heap.old_generation_bytes(),
            v8_worker_heaps_bytes: self.heap.worker_bytes(),
            external_bytes: self.external.bytes,
            native_bytes: self.native.as_ref().map(NativeState::bytes),
        });
    }
}

/// Gives the kernel's stack walk the layout of JavaScript frames from the binary's V8
/// metadata, and returns the reader that names them, or why JavaScript frames will not be
/// named (no usable metadata).
fn js_reader(
    target: &Target,
    metadata: &Result<Metadata, MetadataError>,
    ebpf: &mut Ebpf,
) -> Result<Reader<ProcMem>, String> {
    metadata
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|m| v8::Layout::new(m, target.node_major()))
        .map_err(|e| e.to_string())
        .and_then(|layout| {
            let mut config: Array<&mut MapData, JsLayout> =
                ebpf.map_mut("JS_LAYOUT").and_then(|m| Array::try_from(m).ok()).ok_or("no JS_LAYOUT map")?;
            config.set(0, layout.kernel(), 0).map_err(|e| format!("setting JS_LAYOUT: {e}"))?;
            let mem =
                ProcMem::open(target.pid).map_err(|e| format!("opening /proc/{}/mem: {e}", target.pid))?;
            Ok(Reader::new(layout, mem))
        })
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Registers an fd-owning object with the runtime for readability.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: both callers pass an object that owns its descriptor (a RingBuf's map fd, an
    // OwnedFd) for as long as the AsyncFd holds it, and always returns that same descriptor.
    Ok(unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }?)
}
