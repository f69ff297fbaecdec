//! What the user asked a session for ([`Options`]), and what the agent asks for each process.

use std::{path::PathBuf, time::Duration};

use crate::kernel::{attach::AttachOptions, table::Family};

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
    /// pause is handed to [`crate::session::Session::take_pauses`] for the metrics instead.
    pub agent: bool,
    /// Judge and name what grows: JavaScript frames named from V8's objects, the large arrays
    /// read, heap censuses (with [`Self::census`]). Always for a profiling session; the
    /// agent's `--no-verdict` turns it off.
    pub judge: bool,
    /// Page faults per sample (the `faults` family).
    pub fault_period: u64,
    /// `--native` (or `--native-exact`): also name fs, dns and random thread-pool work.
    pub native_view: bool,
    /// Take heap censuses after mark-compacts (`--no-census` turns them off).
    pub census: bool,
    /// The censuses' CPU budget: a share of the target's CPU time since attach
    /// (`--census-budget`, [`crate::memory::census::DEFAULT_BUDGET`]).
    pub census_budget: f64,
    /// The verdict's rolling window in seconds (the agent's `--window`): before each verdict,
    /// what came before the last `window` seconds is forgotten. `None`: everything since
    /// attach (a profiling session).
    pub window: Option<f64>,
    /// How long the default mode traces every Buffer/ArrayBuffer allocation after attaching
    /// (the opening burst; zero: not at all): long enough for several GCs, so that the sites
    /// whose Buffers survive them stand apart from the churn. Then the per-allocation probes
    /// are detached.
    pub burst: Duration,
    /// After the opening burst, one Buffer allocation in this many (and large ones by their
    /// bytes) is still followed by stack ([`crate::memory::external::Sampling`]); 0: the
    /// per-allocation probes are detached after the burst.
    pub buffer_sampling: u64,
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
    /// sampling every `interval`; with `judge`, the verdict's evidence as in a profiling
    /// session (named stacks, large arrays, heap censuses within `census_budget` of the
    /// process's own CPU time, the opening burst of Buffer allocations).
    pub fn agent(
        pid: u32,
        native: bool,
        interval: Duration,
        judge: bool,
        census_budget: f64,
        window: Duration,
    ) -> Self {
        Options {
            pid,
            duration: None,
            interval,
            out: None,
            json: false,
            families: agent_families(native),
            sample_rate: crate::memory::native::DEFAULT_SAMPLE_RATE,
            max_tracked: AGENT_MAX_TRACKED,
            alloc_stacks: false,
            v8_names: judge,
            agent: true,
            judge,
            fault_period: leakprobe_ebpf::faults::DEFAULT_PERIOD,
            native_view: false,
            // Without the verdict, the agent reports no stacks.
            burst: if judge { AGENT_BURST } else { Duration::ZERO },
            // Every watched process would pay a trap per Buffer: the agent keeps the burst alone.
            buffer_sampling: 0,
            census: judge,
            census_budget,
            window: Some(window.as_secs_f64()),
        }
    }
}

/// The families the agent attaches: the default ones (and libc's allocator with `native`),
/// but not those that only name stacks, which the agent never reports: the thread pool's and
/// the page faults'.
pub fn agent_families(native: bool) -> Vec<Family> {
    let mut families: Vec<Family> =
        Family::DEFAULT.into_iter().filter(|f| !matches!(f, Family::Threadpool | Family::Faults)).collect();
    if native {
        families.push(Family::Native);
    }
    families
}

/// The agent's opening burst of Buffer allocations per process (as the command's default).
pub const AGENT_BURST: Duration = Duration::from_secs(5);

/// Live allocations tracked per family by the agent: each map is preallocated in the kernel
/// for every process watched, so the agent keeps them smaller than the command does.
pub const AGENT_MAX_TRACKED: u32 = 16 * 1024;
