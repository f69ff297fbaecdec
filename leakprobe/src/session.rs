//! One profiling session against one process: load, attach, collect, report.

use std::{
    collections::HashSet,
    io::{IsTerminal as _, Write as _},
    os::fd::{FromRawFd as _, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf, EbpfLoader,
};
use leakprobe_ebpf::{
    alloc::NO_STACK,
    drops::DropReason,
    faults::FaultEvent,
    gc::GcEvent,
    heap::HeapEvent,
    stack::{JsLayout, NewStack, RawStack, SKIPPED_PC},
    syscalls::{MapEvent, CONFIG_TGID},
    EventKind,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    books::series::Thinned,
    books::suspect::Source,
    books::tracker::Tracker,
    kernel::attach::{self, AttachOptions, FoundLinks},
    kernel::privilege,
    kernel::status::{self, ProbeStatus},
    kernel::table::Family,
    memory::census::CensusWatch,
    memory::containers::Containers,
    memory::external::ExternalState,
    memory::faults::{FaultBooks, PageKinds},
    memory::gc::{GcKind, GcStats},
    memory::heap::HeapBooks,
    memory::native::NativeState,
    memory::rss,
    memory::syscalls::Mappings,
    outputs::live,
    outputs::report::{GcReport, Report, StopReason, TargetInfo, TriggerStack, Window, SCHEMA_VERSION},
    process::target::Target,
    stacks::frame::RawFrame,
    stacks::symbolize::Symbolizer,
    v8::heap::reader::HeapReader,
    v8::{self, Metadata, MetadataError, ProcMem, Reader},
    verdict,
};

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Process to profile.
    pub pid: u32,
    /// Stop after this long; `None` runs until Ctrl-C, SIGTERM or the target's exit.
    pub duration: Option<Duration>,
    /// How often memory is sampled and the live view refreshes.
    pub interval: Duration,
    /// Directory for `report.json` and `summary.txt`.
    pub out: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the human summary.
    pub json: bool,
    /// Probe families to attach.
    pub families: Vec<Family>,
    /// Native allocations' sampling rate in bytes (with the native family).
    pub sample_rate: u64,
    /// Live allocations each family can track at once (beyond: `drops.live_full`).
    pub max_tracked: u32,
    /// Keep the per-allocation probes (external by stack, heap allocation sampling).
    pub alloc_stacks: bool,
    /// Name JavaScript frames by reading V8's objects (else only from the target's perf map).
    pub v8_names: bool,
    /// Run for the host-wide agent: no GC timeline (memory stays bounded over days), and each
    /// pause is handed to [`Session::take_pauses`] for the metrics instead.
    pub fleet: bool,
    /// Page faults per sample (the `faults` family).
    pub fault_period: u64,
    /// `--native` (or `--native-exact`): also name fs, dns and random thread-pool work.
    pub native_view: bool,
    /// Take heap censuses after mark-compacts (`--no-census` turns them off).
    pub census: bool,
    /// How long the default mode traces every Buffer/ArrayBuffer allocation after attaching
    /// (the opening burst; zero: not at all): long enough for several GCs, so that the sites
    /// whose Buffers survive them stand apart from the churn. Then the per-allocation probes
    /// are detached.
    pub burst: Duration,
}

impl Options {
    /// What decides which of a family's probes attach.
    pub fn attach_options(&self) -> AttachOptions {
        AttachOptions {
            alloc_stacks: self.alloc_stacks,
            native_view: self.native_view,
            fault_period: self.fault_period,
        }
    }

    /// The agent's options for one process: the default probe families (and native, if asked),
    /// sampling every `interval`.
    pub fn fleet(pid: u32, native: bool, interval: Duration) -> Self {
        Options {
            pid,
            duration: None,
            interval,
            out: None,
            json: false,
            families: fleet_families(native),
            sample_rate: crate::memory::native::DEFAULT_SAMPLE_RATE,
            max_tracked: FLEET_MAX_TRACKED,
            alloc_stacks: false,
            v8_names: false,
            fleet: true,
            fault_period: leakprobe_ebpf::faults::DEFAULT_PERIOD,
            native_view: false,
            // The agent reports no stacks.
            burst: Duration::ZERO,
            census: false,
        }
    }
}

/// The families the agent attaches: the default ones (and libc's allocator with `native`),
/// but not those that only name stacks, which the agent never reports: the thread pool's and
/// the page faults'.
pub fn fleet_families(native: bool) -> Vec<Family> {
    let mut families: Vec<Family> =
        Family::DEFAULT.into_iter().filter(|f| !matches!(f, Family::Threadpool | Family::Faults)).collect();
    if native {
        families.push(Family::Native);
    }
    families
}

/// Live allocations tracked per family by the agent: each map is preallocated in the kernel
/// for every process watched, so the agent keeps them smaller than the command does.
pub const FLEET_MAX_TRACKED: u32 = 16 * 1024;

/// Which stacks a report judges and names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stacks {
    /// All of them: the final report (suspects, growing mappings, every stack's bytes, GC
    /// triggers, heap samples).
    All,
    /// The leak suspects only: all the refreshing live view shows.
    Suspects,
    /// None: the one-line view.
    Skipped,
}

/// ANSI: cursor home, clear screen.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// The maps of live allocations, sized by [`Options::max_tracked`].
const LIVE_MAPS: [&str; 3] = ["EXT_LIVE", "HEAP_LO_LIVE", "NATIVE_LIVE"];

/// GC-triggering stacks listed in the report.
const TRIGGER_STACKS: usize = 50;

/// Readings of each GC trough, [`TROUGH_EVERY`] apart: the ArrayBuffer sweeper frees what the
/// GC released over the first hundred milliseconds or so, while the program allocates again;
/// the lowest reading is the trough.
const TROUGH_READINGS: u8 = 16;

/// How often a GC trough is read.
const TROUGH_EVERY: Duration = Duration::from_millis(25);

/// The readings after one main-thread mark-compact.
struct Trough {
    /// The GC's sequence number.
    seq: u32,
    /// Readings still to take.
    readings_left: u8,
    /// Each figure's lowest reading so far (taken at the first).
    low: Option<rss::Sample>,
}

/// How often the event ring buffer is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Memory samples kept (thinned evenly beyond that).
const MEMORY_SAMPLES: usize = 512;

/// The eBPF object built by build.rs from leakprobe-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakprobe"));

/// A stack map: stack id → the frames the kernel captured.
type StackMap = BpfHashMap<MapData, i64, RawStack>;

/// The kernel's two stack maps.
struct StackMaps {
    /// Stacks of allocations (and of the work queued to libuv's thread pool).
    stacks: StackMap,
    /// Stacks of the heap's allocation samples.
    samples: StackMap,
}

impl StackMaps {
    /// Frames of stack `id` (of the samples' map when `sampled`), innermost first; empty when
    /// lost. Where the kernel's walk skipped frames stands a frame at [`SKIPPED_PC`]. A stack
    /// taken on a libuv pool thread goes on, past [`RawFrame::QUEUED`], with the stack that
    /// queued the work the thread ran.
    fn frames(&self, sampled: bool, id: i64) -> Vec<RawFrame> {
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

/// A live session: loaded programs, attached probes, and what has been collected so far.
/// One attached process: its probes, maps and books. The command drives it with [`run`]; the
/// agent drives many through [`Session::attach`], [`Session::poll`] and [`Session::sample`].
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
    /// Whether the end of the opening burst was said.
    burst_said: bool,
    // The programs that fire for every process read the target's pid from it: open for the
    // whole session.
    _target_config: Array<MapData, u32>,
    external: ExternalState,
    memory: Thinned<rss::Sample>,
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
    /// Pauses (kind, seconds) not yet taken by the agent; `None` outside fleet mode.
    pending_pauses: Option<Vec<(GcKind, f64)>>,
    /// Events read from the ring buffer.
    events_read: u64,
    /// The kernel programs' diagnostics, when `RUST_LOG` asks for them.
    kernel_log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Heap censuses after main-thread mark-compacts (`None` in fleet mode).
    census: Option<CensusWatch>,
    /// The large arrays allocated since attach and what they hold (`None` in fleet mode).
    containers: Option<Containers>,
}

/// Runs a session to its end and returns the final report (already printed and written).
pub async fn run(options: Options) -> anyhow::Result<Report> {
    privilege::check()?;
    let target = Target::resolve(options.pid)?;
    let mut session = Session::start(target, &options)?;
    status::require_gc(session.target.pid, &session.probes, &options.families)?;
    let attached = session.probes.iter().filter(|p| p.attached).count();
    status!(
        "leakprobe: attached {attached}/{} probes to pid {} ({}, node {}); {}",
        session.probes.len(),
        session.target.pid,
        session.target.module_display,
        session.target.node_version.as_deref().unwrap_or("version unknown"),
        match options.duration {
            Some(d) => format!("collecting for {}", humantime::format_duration(d)),
            None => "Ctrl-C to stop".into(),
        }
    );
    for p in session.probes.iter().filter(|p| p.error.is_some()) {
        status!("leakprobe: warning: probe {}: {}", p.name, p.error.as_deref().unwrap_or_default());
    }

    let stop = session.collect(&options).await?;
    if let Some(census) = &session.census {
        census.settle(crate::memory::census::SETTLE);
    }
    session.drain();
    session.sample();
    let report = session.report(stop, Stacks::All);
    finish(&report, &options)?;
    Ok(report)
}

/// Prints the final summary (or JSON) on stdout, then writes the incident folder.
fn finish(report: &Report, options: &Options) -> anyhow::Result<()> {
    let summary = live::summary(report);
    {
        let mut stdout = std::io::stdout().lock();
        if options.json {
            let json = serde_json::to_string_pretty(report).context("serializing the report")?;
            writeln!(stdout, "{json}")?;
        } else {
            if stdout.is_terminal() {
                // Replace the last live frame rather than printing the same table under it.
                write!(stdout, "{CLEAR_SCREEN}")?;
            }
            write!(stdout, "{summary}")?;
        }
        stdout.flush()?;
    }
    if report.window.stop_reason == StopReason::TargetExited {
        status!(
            "leakprobe: pid {} exited during the session; the report covers what was collected",
            report.target.pid
        );
    }
    if let Some(dir) = &options.out {
        let extra = report.write_to(dir, &summary)?;
        let names: Vec<String> =
            extra.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        status!(
            "leakprobe: wrote {}, summary.txt{}",
            dir.join("report.json").display(),
            names.iter().map(|n| format!(", {n}")).collect::<String>()
        );
    }
    Ok(())
}

/// Takes map `name` out of the object as type `T`.
fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> anyhow::Result<T> {
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Session {
    /// Loads the programs and attaches them to `target` (the agent's entry; the command's is
    /// [`run`]).
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

    /// Reads waiting events; after a full GC, samples too. Call often (every 100 ms or so).
    pub fn poll(&mut self) {
        self.drain();
        if let Some(kernel_log) = &mut self.kernel_log {
            kernel_log.flush();
        }
        self.detach_when_found();
        if let Some(seq) = self.trough_due.take() {
            // Each stack's series gets a point where its floor is, too.
            self.sample();
            self.trough = Some(Trough { seq, readings_left: TROUGH_READINGS, low: None });
        }
        self.read_trough();
    }

    /// Whether a GC trough is being read (every [`TROUGH_EVERY`]).
    fn reading_trough(&self) -> bool {
        self.trough.is_some()
    }

    /// One reading of the trough being read: RSS, external and the V8 heap, each kept at its
    /// lowest; after the last, the trough joins the memory samples.
    fn read_trough(&mut self) {
        let Some(trough) = &mut self.trough else { return };
        if let Some(rss) = rss::read_rss(self.target.pid) {
            let reading = rss::Sample {
                trough: Some(trough.seq),
                t_s: self.started.elapsed().as_secs_f64(),
                rss,
                v8_heap_bytes: self.heap.bytes(),
                v8_old_generation_bytes: self.heap.old_generation_bytes(),
                external_bytes: self.external.read_bytes(),
                native_bytes: self.native.as_ref().map(NativeState::bytes),
            };
            trough.low = Some(trough.low.map_or(reading, |low| low.lowest(&reading)));
        }
        trough.readings_left = trough.readings_left.saturating_sub(1);
        if trough.readings_left == 0 {
            if let Some(low) = trough.low {
                self.memory.push(low);
            }
            self.trough = None;
        }
    }

    /// Detaches the per-allocation probes as soon as node's allocator is known (checked every
    /// poll: until then, every ArrayBuffer allocation pays a uprobe trap).
    fn detach_when_found(&mut self) {
        if self.found_links.is_none() {
            return;
        }
        if self.started.elapsed() < self.burst {
            // The burst: every poll, so that each stack's floor is read between GCs.
            let t = self.started.elapsed().as_secs_f64();
            self.external.sample_stacks(t, &mut self.suspects);
            return;
        }
        let needed = self.external.needs_allocator_probes();
        if !self.burst.is_zero() && !std::mem::replace(&mut self.burst_said, true) {
            status!(
                "leakprobe: opening burst over: the per-allocation Buffer probes are detached{}",
                if needed { " once node's allocator is seen" } else { "" }
            );
        }
        if !needed {
            let links = self.found_links.take().unwrap_or_default();
            attach::detach_found(&mut self.ebpf, links, &mut self.probes);
            self.external.detached();
        }
    }

    /// Takes the pauses seen since the last call (fleet mode), as (kind, seconds).
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
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        for map in LIVE_MAPS {
            loader.map_max_entries(map, options.max_tracked);
        }
        // The kernel programs' diagnostics (aya-log) at the level RUST_LOG asks for; off by
        // default, where each log statement costs its programs one load and branch.
        let log_level = kernel_log_level();
        loader.override_global(aya_log::LEVEL, &log_level, true);
        let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object")?;
        let kernel_log = match log_level {
            0 => None,
            _ => aya_log::EbpfLogger::init(&mut ebpf)
                .map_err(|e| log::warn!("the kernel programs' diagnostics are not shown: {e}"))
                .ok(),
        };
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
        let (probes, lookup, found_links) =
            attach::attach_all(&mut ebpf, &target, families, &options.attach_options())?;
        // What each faulting address is, from V8's page headers in the target's memory.
        let page_kinds = PageKinds::new(ProcMem::open(target.pid).ok());
        let faults_attached = probes.iter().any(|p| p.family == Family::Faults && p.attached);
        let faults = FaultBooks::new(options.fault_period, page_kinds, faults_attached);
        let events: RingBuf<MapData> = take_map(&mut ebpf, "EVENTS")?;
        let events = watch(events).context("polling the event ring buffer")?;
        let drops = take_map(&mut ebpf, "DROPS")?;
        let stack_maps = StackMaps {
            stacks: take_map(&mut ebpf, "STACKS")?,
            samples: take_map(&mut ebpf, "SAMPLE_STACKS")?,
        };
        let ext_by_stack: PerCpuHashMap<MapData, i64, _> = take_map(&mut ebpf, "EXT_BY_STACK")?;
        let ext_allocators: BpfHashMap<MapData, u64, u64> = take_map(&mut ebpf, "EXT_ALLOCATORS")?;
        let external = ExternalState::new(&target, &lookup, ext_by_stack, ext_allocators);
        let heap_large_objects = take_map(&mut ebpf, "HEAP_LO_BY_STACK")?;
        let heap_large_live = take_map(&mut ebpf, "HEAP_LO_LIVE")?;
        let heap_samples = take_map(&mut ebpf, "HEAP_SAMPLES")?;
        // V8's layouts, read from the binary once: for naming JavaScript frames, and for the
        // heap readers (the census thread's and the containers'), opened here so that the
        // collection loop never stops to read the binary.
        let metadata = Metadata::from_elf(target.elf.bytes());
        let heap_probe = || match &metadata {
            Ok(m) => HeapReader::new(&target, m).map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("reading V8's layouts from {}: {e}", target.module_display)),
        };
        let (js, js_frames) = match (options.fleet, options.v8_names) {
            // Fleet mode reports no stacks: keep the kernel's walk to return addresses.
            (true, _) => (None, "unavailable: not used in agent mode".to_string()),
            (false, false) => (None, "perf map only (--no-v8-names)".to_string()),
            (false, true) => js_reader(&target, &metadata, &mut ebpf),
        };
        // Not in fleet mode: the agent's memory and CPU stay bounded over days.
        let census = match options.fleet || !options.census {
            true => None,
            false => Some(CensusWatch::start(heap_probe())?),
        };
        let containers = (!options.fleet).then(|| Containers::new(heap_probe(), heap_large_live));
        let mut symbolizer = Symbolizer::new(target.pid, js);
        if !options.fleet {
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
            burst_said: false,
            _target_config: target_config,
            external,
            memory: Thinned::new(MEMORY_SAMPLES),
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
            pending_pauses: options.fleet.then(Vec::new),
            events_read: 0,
            kernel_log,
            census,
            containers,
        };
        session.gc.skip_timeline = options.fleet;
        session.sample();
        Ok(session)
    }

    /// Collects until a stop condition; returns which one.
    async fn collect(&mut self, options: &Options) -> anyhow::Result<StopReason> {
        let exited = pidfd(self.target.pid)?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval(options.interval);
        // The kernel does not wake us per event (see `emit` in leakprobe-ebpf): drain often.
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trough_tick = tokio::time::interval(TROUGH_EVERY);
        trough_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        let tty = std::io::stdout().is_terminal() && !options.json;

        loop {
            tokio::select! {
                ready = self.events.readable_mut() => {
                    let mut guard = ready.context("waiting for events")?;
                    guard.clear_ready();
                    self.drain();
                }
                // Right after a full GC is where each series' floor is: `poll` samples there
                // too, or the sawtooth of garbage awaiting the GC would read as noise in floors.
                _ = drain.tick() => self.poll(),
                _ = trough_tick.tick(), if self.reading_trough() => {
                    self.drain();
                    self.read_trough();
                }
                _ = tick.tick() => {
                    self.sample();
                    if !options.json {
                        self.show(tty, options);
                    }
                }
                _ = sigint.recv() => return Ok(StopReason::Signal),
                _ = sigterm.recv() => return Ok(StopReason::Signal),
                _ = exited.readable() => return Ok(StopReason::TargetExited),
                _ = sleep_until(deadline) => return Ok(StopReason::Duration),
            }
        }
    }

    /// Refreshes the live view.
    /// (A closed stdout drops the output rather than panicking.)
    fn show(&mut self, tty: bool, options: &Options) {
        let mut stdout = std::io::stdout().lock();
        let _ = if tty {
            let report = self.report(StopReason::Duration, Stacks::Suspects);
            write!(
                stdout,
                "{CLEAR_SCREEN}{}\nrefreshing every {}; Ctrl-C stops{}\n",
                live::summary(&report),
                humantime::format_duration(options.interval),
                options.out.as_ref().map_or(String::new(), |d| format!(" and writes {}", d.display())),
            )
        } else {
            // The one-line view needs no stacks: skip judging and naming them every interval.
            writeln!(stdout, "{}", live::line(&self.report(StopReason::Duration, Stacks::Skipped)))
        };
        let _ = stdout.flush();
    }

    /// Reads every event waiting in the ring buffer, dispatching on its kind.
    fn drain(&mut self) {
        let Session {
            events,
            gc,
            heap,
            mappings,
            target,
            started,
            started_ns,
            trough_due,
            mark_compacts,
            census,
            pending_pauses,
            events_read,
            symbolizer,
            named,
            stack_maps,
            faults,
            ..
        } = self;
        let t = started.elapsed().as_secs_f64();
        let ring = events.get_mut();
        while let Some(item) = ring.next() {
            *events_read += 1;
            let kind = item.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            if kind == Some(EventKind::Gc as u32) {
                if let Some(event) = read_record::<GcEvent>(&item) {
                    gc.record(&event, *started_ns, |tid| {
                        target.thread_name(tid).unwrap_or_else(|| "?".into())
                    });
                    if let Some(kind) = GcKind::from_collector(event.collector) {
                        if let Some(pauses) = pending_pauses {
                            pauses.push((kind, event.duration_ns as f64 / 1e9));
                        }
                        if kind == GcKind::MarkCompact && event.tid == target.pid {
                            *mark_compacts += 1;
                            *trough_due = Some(*mark_compacts);
                        }
                        if let Some(census) = census.as_mut().filter(|_| kind == GcKind::MarkCompact) {
                            census.on_mark_compact(t, event.tid == target.pid);
                        }
                        if kind == GcKind::MarkCompact {
                            symbolizer.moved();
                        }
                        faults.on_gc();
                        heap.on_gc(kind, event.tid);
                    }
                }
            } else if kind == Some(EventKind::Heap as u32) {
                if let Some(event) = read_record::<HeapEvent>(&item) {
                    heap.apply(&event, t);
                }
            } else if kind == Some(EventKind::Map as u32) {
                if let Some(event) = read_record::<MapEvent>(&item) {
                    mappings.apply(&event);
                }
            } else if kind == Some(EventKind::Fault as u32) {
                if let Some(event) = read_record::<FaultEvent>(&item) {
                    faults.record(&event, heap.pages());
                }
            } else if kind == Some(EventKind::NewStack as u32) {
                // Named at once, while its frames' code and objects are where they were
                // (fleet mode reports no stacks).
                if let Some(new) = read_record::<NewStack>(&item).filter(|_| pending_pauses.is_none()) {
                    Self::name_once(named, symbolizer, stack_maps, new.sampled != 0, new.id);
                }
            }
        }
    }

    /// Samples memory: RSS, external bytes, and outstanding bytes by stack. Once the target
    /// has exited, its last samples stand.
    pub fn sample(&mut self) {
        self.drain();
        let Some(rss) = rss::read_rss(self.target.pid) else {
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
            external_bytes: self.external.bytes,
            native_bytes: self.native.as_ref().map(NativeState::bytes),
        });
    }

    /// Symbolizes the stacks a report names that were not named yet, while the target
    /// is alive to read its mappings (after it exits, only these cached names remain). Stack
    /// ids never change their stack, so each is named once.
    fn name_new_stacks(&mut self) {
        if self.pending_pauses.is_some() {
            // Fleet mode reports no stacks.
            return;
        }
        let Session { stack_maps, suspects, mapping_growth, heap, symbolizer, named, containers, .. } = self;
        let triggers = self.gc.top_trigger_stacks(TRIGGER_STACKS).into_iter().map(|(id, _)| id);
        let grown = containers.iter().flat_map(|c| c.tracker.ids());
        let held = suspects
            .ids()
            .chain(mapping_growth.ids())
            .chain(triggers)
            .chain(grown)
            .filter(|id| *id != NO_STACK);
        let held = held.map(|id| (false, id));
        let sampled =
            heap.top_samples().0.into_iter().map(|(id, _)| (true, id)).filter(|(_, id)| *id != NO_STACK);
        for (in_samples, id) in held.chain(sampled) {
            Self::name_once(named, symbolizer, stack_maps, in_samples, id);
        }
    }

    /// Starts naming stack `id` unless it was started before.
    fn name_once(
        named: &mut HashSet<i64>,
        symbolizer: &mut Symbolizer,
        maps: &StackMaps,
        sampled: bool,
        id: i64,
    ) {
        if named.insert(id) {
            symbolizer.prefetch(id, maps.frames(sampled, id));
        }
    }

    fn drop_counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        DropReason::ALL
            .iter()
            .map(|r| {
                let n = self.drops.get(&(*r as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
                (r.name(), n)
            })
            .collect()
    }

    fn report(&mut self, stop_reason: StopReason, stacks_wanted: Stacks) -> Report {
        let all = stacks_wanted == Stacks::All;
        let maps = &self.stack_maps;
        let samples = self.memory.items();
        let categories = verdict::categories(samples);
        let (suspects, verdict, gc_touched) = match stacks_wanted {
            Stacks::Skipped => (Vec::new(), categories, 0),
            Stacks::All | Stacks::Suspects => {
                let symbolizer = &mut self.symbolizer;
                let mut candidates =
                    self.suspects.suspects(|id| maps.frames(false, id), symbolizer, Source::Allocations);
                let (faulting, gc_touched) =
                    self.faults.sites(samples, |id| symbolizer.stack_frames(id, |id| maps.frames(false, id)));
                candidates.extend(faulting);
                if let Some(containers) = &self.containers {
                    let mut holding =
                        containers.tracker.suspects(|id| maps.frames(false, id), symbolizer, Source::Holds);
                    for s in &mut holding {
                        s.holds = containers.held(s.variants.iter().map(|v| v.stack_id));
                    }
                    candidates.extend(holding);
                }
                let native_exact = self.native.is_some();
                let (suspects, verdict) =
                    verdict::judge(candidates, categories, self.alloc_stacks, native_exact);
                (suspects, verdict, gc_touched)
            }
        };
        let growing_mappings = match all {
            true => self.mapping_growth.suspects(
                |id| maps.frames(false, id),
                &mut self.symbolizer,
                Source::Mappings,
            ),
            false => Vec::new(),
        };
        let mut stack_profiles = Vec::new();
        if all {
            stack_profiles = self.suspects.profiles(|id| maps.frames(false, id), &mut self.symbolizer);
            stack_profiles
                .extend(self.mapping_growth.profiles(|id| maps.frames(false, id), &mut self.symbolizer));
        }
        Report {
            schema_version: SCHEMA_VERSION,
            leakprobe_version: env!("CARGO_PKG_VERSION"),
            target: TargetInfo::new(&self.target, &self.js_frames),
            window: Window {
                start_unix_s: self.started_wall.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                duration_s: self.started.elapsed().as_secs_f64(),
                stop_reason,
            },
            probes: self.probes.clone(),
            gc: {
                let mut gc = GcReport::new(&self.gc, self.target.pid);
                if all {
                    gc.trigger_stacks = self
                        .gc
                        .top_trigger_stacks(TRIGGER_STACKS)
                        .into_iter()
                        .map(|(id, pauses)| TriggerStack {
                            pauses,
                            frames: self.symbolizer.stack_frames(id, |id| maps.frames(false, id)),
                        })
                        .collect();
                }
                gc
            },
            memory: {
                let mut memory = rss::MemoryReport::new(self.memory.items());
                if let Some(census) = &self.census {
                    memory.split_isolates(&census.report());
                }
                memory
            },
            heap: {
                let mut heap = self.heap.report(|id| match all {
                    true => self.symbolizer.stack_frames(id, |id| maps.frames(true, id)),
                    false => Vec::new(),
                });
                heap.census = self.census.as_ref().map(CensusWatch::report);
                heap.containers = self.containers.as_ref().map(Containers::report);
                heap
            },
            native: self.native.as_ref().map(NativeState::report),
            mappings: self.mappings.report(growing_mappings),
            external: self.external.report(),
            faults: self.faults.report(gc_touched),
            verdict,
            suspects,
            stacks: stack_profiles,
            drops: self.drop_counts(),
        }
    }
}

/// Gives the kernel's stack walk the layout of JavaScript frames from the binary's V8
/// metadata, and returns the reader that names them with `report.target.js_frames`; without
/// usable metadata, JavaScript frames are not named (said on stderr once).
fn js_reader(
    target: &Target,
    metadata: &Result<Metadata, MetadataError>,
    ebpf: &mut Ebpf,
) -> (Option<Reader<ProcMem>>, String) {
    let reader = metadata
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
        });
    match reader {
        Ok(reader) => (Some(reader), "v8 metadata".into()),
        Err(why) => {
            eprintln!("leakprobe: JavaScript frames will not be named: {why}");
            (None, format!("unavailable: {why}"))
        }
    }
}

/// Copies a `T` out of a ring buffer record, if the record is long enough.
fn read_record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    // SAFETY: T is Pod (repr(C), plain integers), the length is checked, and read_unaligned
    // copes with the ring buffer's 8-byte alignment.
    (bytes.len() >= size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A pidfd for `pid`: it polls readable when the process exits.
fn pidfd(pid: u32) -> anyhow::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Err(crate::error::Error::TargetGone(pid).into());
        }
        return Err(anyhow::Error::new(err).context(format!("pidfd_open({pid})")));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    watch(fd).context("polling the target's pidfd")
}

/// Registers an fd-owning object with the runtime for readability.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: both callers pass an object that owns its descriptor (a RingBuf's map fd, an
    // OwnedFd) for as long as the AsyncFd holds it, and always returns that same descriptor.
    Ok(unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }?)
}

/// The aya-log level for the kernel programs: `log`'s maximum level (set from `RUST_LOG`) as
/// aya-log numbers it (0 is off).
fn kernel_log_level() -> u8 {
    match log::max_level() {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => aya_log::Level::Error as u8,
        log::LevelFilter::Warn => aya_log::Level::Warn as u8,
        log::LevelFilter::Info => aya_log::Level::Info as u8,
        log::LevelFilter::Debug => aya_log::Level::Debug as u8,
        log::LevelFilter::Trace => aya_log::Level::Trace as u8,
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise it where allowed.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct; failure is harmless on memcg-accounting kernels.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if ret != 0 {
        log::debug!("setrlimit(RLIMIT_MEMLOCK) failed: {}", std::io::Error::last_os_error());
    }
}
