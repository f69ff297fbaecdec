//! `leakprobe census --pid N`: one census of a running node process's V8 heaps, read from
//! `/proc/PID/mem` without stopping it (see [`crate::v8::heap`]), printed as a table or JSON.

use anyhow::Context as _;

use crate::{
    error::Error,
    process::target::Target,
    v8::{
        self,
        heap::{self, Census, Contents, Growth, HeapLayout, Kind, Limits, RetainerSearch},
        Metadata, ProcMem, Reader,
    },
};

/// What `leakprobe census` was asked for.
#[derive(Clone, Debug)]
pub struct CensusOptions {
    /// Target process.
    pub pid: u32,
    /// Types listed per isolate.
    pub top: usize,
    /// Print JSON instead of the table.
    pub json: bool,
    /// Caps (of each census).
    pub limits: Limits,
    /// Take a second census this long after the first, and print what grew in between.
    pub again_after: Option<std::time::Duration>,
    /// Also find what holds the objects of these types (constructor, function or label).
    pub retainers_of: Vec<String>,
}

/// What a census of one process reads with: its V8 layouts and its memory.
pub struct Probe {
    /// The process.
    pid: u32,
    reader: Reader<ProcMem>,
    layout: HeapLayout,
}

impl Probe {
    /// Opens `target` for censuses, with `metadata`, its binary's V8 layouts (already read
    /// from `target.elf`: nothing here scans the binary again).
    pub fn new(target: &Target, metadata: &Metadata) -> anyhow::Result<Self> {
        let layout = v8::Layout::new(metadata, target.node_major())
            .with_context(|| format!("reading V8's layouts from {}", target.module_display))?;
        let heap_layout = HeapLayout::new(metadata)
            .with_context(|| format!("reading V8's heap layouts from {}", target.module_display))?;
        let pid = target.pid;
        let mem = ProcMem::open(pid).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                anyhow::Error::from(Error::Inaccessible { pid, what: format!("/proc/{pid}/mem") })
            }
            _ => anyhow::Error::from(e).context(format!("opening /proc/{pid}/mem")),
        })?;
        Ok(Self { pid, reader: Reader::new(layout, mem), layout: heap_layout })
    }

    /// Opens `target` for censuses, reading its binary's V8 layouts.
    pub fn open(target: &Target) -> anyhow::Result<Self> {
        let metadata = Metadata::from_elf(target.elf.bytes())
            .with_context(|| format!("reading V8's layouts from {}", target.module_display))?;
        Self::new(target, &metadata)
    }

    /// The target's anonymous mappings now.
    fn ranges(&self) -> anyhow::Result<Vec<(u64, u64)>> {
        anonymous_ranges(self.pid)
    }

    /// One census of the process's heaps.
    pub fn census(&mut self, limits: Limits) -> anyhow::Result<Census> {
        let ranges = self.ranges()?;
        self.reader.forget();
        Ok(heap::census(&mut self.reader, &self.layout, &ranges, limits))
    }

    /// What the large container on the page at `chunk` holds ([`heap::contents`]).
    pub fn contents(&mut self, chunk: u64) -> Option<Contents> {
        heap::contents(&mut self.reader, &self.layout, chunk)
    }

    /// Who holds the sampled objects of `wanted` (isolate heap, kind, label) of `census`.
    pub fn retainers(
        &mut self,
        census: &Census,
        wanted: &[(String, Kind, String)],
        limits: Limits,
    ) -> anyhow::Result<RetainerSearch> {
        let first = self.ranges()?;
        let pid = self.pid;
        let once = std::cell::Cell::new(Some(first));
        // The mappings as they are at the search's start, then read again when it looks again.
        let ranges = || once.take().unwrap_or_else(|| anonymous_ranges(pid).unwrap_or_default());
        Ok(heap::retainers(&mut self.reader, &self.layout, &ranges, census, wanted, limits))
    }
}

/// The anonymous mappings of process `pid` (where V8's heap pages are).
fn anonymous_ranges(pid: u32) -> anyhow::Result<Vec<(u64, u64)>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(heap::anonymous_ranges(&maps))
}

/// The types whose retainers are worth a search: the `top` growing JavaScript types (objects,
/// arrays, closures, ArrayBuffers; not V8's internal ones), most objects gained first.
pub fn growing_types(growth: &[Growth], top: usize) -> Vec<(String, Kind, String)> {
    growth
        .iter()
        .filter(|g| {
            g.count_delta > 0
                && matches!(g.kind, Kind::Object | Kind::Array | Kind::Closure | Kind::ArrayBuffer)
        })
        .take(top)
        .map(|g| (g.heap.clone(), g.kind, g.label.clone()))
        .collect()
}

/// The types of `census` named `name` (a constructor, function or type name, or a label), in
/// every isolate.
pub fn named_types(census: &Census, name: &str) -> Vec<(String, Kind, String)> {
    census
        .isolates
        .iter()
        .flat_map(|i| i.types.iter().map(move |t| (i, t)))
        .filter(|(_, t)| t.name == name || t.label == name)
        .map(|(i, t)| (i.heap.clone(), t.kind, t.label.clone()))
        .collect()
}

/// Reads one census of `pid`'s heaps.
pub fn take(pid: u32, limits: Limits) -> anyhow::Result<(Target, Census)> {
    let target = Target::resolve(pid)?;
    let census = Probe::open(&target)?.census(limits)?;
    Ok((target, census))
}

/// Runs `leakprobe census`.
pub fn run(opts: &CensusOptions) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let target = Target::resolve(opts.pid)?;
    let mut probe = Probe::open(&target)?;
    let census = probe.census(opts.limits)?;
    if census.pages_found == 0 {
        anyhow::bail!(
            "no V8 heap page found in pid {}: its page headers are not of node 18–24's shapes",
            opts.pid
        );
    }
    let Some(after) = opts.again_after else {
        let wanted: Vec<_> = opts.retainers_of.iter().flat_map(|n| named_types(&census, n)).collect();
        let found = match wanted.is_empty() {
            true => None,
            false => Some(probe.retainers(&census, &wanted, opts.limits)?),
        };
        match opts.json {
            true => {
                let mut value = serde_json::to_value(&census).context("writing JSON")?;
                if let Some(found) = &found {
                    value["retainers"] = serde_json::to_value(found).context("writing JSON")?;
                }
                println!("{}", serde_json::to_string_pretty(&value).context("writing JSON")?);
            }
            false => {
                print!("{}", render(&target, &census, opts.top));
                if let Some(found) = &found {
                    print!("{}", render_retainers(found));
                }
            }
        }
        return Ok(());
    };
    std::thread::sleep(after.saturating_sub(started.elapsed()));
    let seconds = started.elapsed().as_secs_f64();
    let second = probe.census(opts.limits).context("taking the second census")?;
    let growth = heap::growth(&census, &second, seconds);
    let mut wanted = growing_types(&growth, RETAINED_TYPES);
    wanted.extend(opts.retainers_of.iter().flat_map(|n| named_types(&second, n)));
    wanted.dedup();
    let found = probe.retainers(&second, &wanted, opts.limits).context("searching retainers")?;
    match opts.json {
        true => {
            let both = serde_json::json!({
                "first": census,
                "second": second,
                "seconds": seconds,
                "growth": growth,
                "retainers": found,
            });
            println!("{}", serde_json::to_string_pretty(&both).context("writing JSON")?);
        }
        false => {
            print!("{}", render(&target, &second, opts.top));
            print!("{}", render_growth(&growth, seconds, opts.top));
            print!("{}", render_retainers(&found));
        }
    }
    Ok(())
}

/// Growing types whose retainers `leakprobe census --again-after` looks for.
const RETAINED_TYPES: usize = 3;

/// "Retained by" lines: each type's chains, with the share of samples each explains.
pub fn render_retainers(found: &RetainerSearch) -> String {
    let mut out = format!(
        "
retainers ({} passes over the heap in {:.0} ms, {:.1} MiB read{}):
",
        found.passes,
        found.elapsed_ms,
        found.bytes_read as f64 / (1 << 20) as f64,
        match found.stopped_early {
            Some(heap::Stopped::SizeCap) => ", stopped early by the size cap",
            Some(heap::Stopped::TimeCap) => ", stopped early by the time cap",
            None => "",
        }
    );
    for t in &found.types {
        out += &format!("  {} (heap {}): {} sampled", t.label, t.heap, t.sampled);
        if t.stale > 0 {
            out += &format!(", {} moved since the census", t.stale);
        }
        out += "
";
        for c in &t.chains {
            out += &format!(
                "    Retained by: {}  [{} of {} samples{}]\n",
                c.text,
                c.samples,
                t.sampled,
                if c.complete { "" } else { ", chain cut short" }
            );
        }
        if t.chains.is_empty() {
            out += "    Retained by: (no holder found)\n";
        }
    }
    out
}

/// The types that gained most objects between two censuses, `top` of them.
pub fn render_growth(growth: &[Growth], seconds: f64, top: usize) -> String {
    let mut out = format!("\ngrowth over {seconds:.1} s, most objects gained first:\n");
    out += &format!("  {:>10}  {:>10}  {:>10}  {:>10}  type\n", "objects/s", "objects", "MiB", "now");
    for g in growth.iter().filter(|g| g.count_delta > 0).take(top) {
        out += &format!(
            "  {:>+10.0}  {:>+10}  {:>+10.2}  {:>10}  {}\n",
            g.count_per_s,
            g.count_delta,
            g.bytes_delta as f64 / (1 << 20) as f64,
            g.count,
            g.label
        );
    }
    out
}

/// The census as a text table, `top` types per isolate.
pub fn render(target: &Target, census: &Census, top: usize) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut out = format!(
        "heap census of pid {} ({}), {} isolate(s): {} pages in {:.0} ms, {:.1} MiB read\n",
        target.pid,
        target.node_version.as_deref().unwrap_or("unknown node"),
        census.isolates.len(),
        census.pages_found,
        census.elapsed_ms,
        mib(census.bytes_read),
    );
    out += &format!(
        "  unparsed {:.2} MiB ({} look-aheads), unreadable pages {}\n",
        mib(census.unparsed_bytes),
        census.resyncs,
        census.unreadable_pages
    );
    if !census.unparsed_at.is_empty() {
        let at: Vec<String> = census.unparsed_at.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        out += &format!("  unparsed at: {}\n", at.join(", "));
    }
    if let Some(stop) = census.stopped_early {
        out += &format!(
            "  stopped early ({}): {} pages not walked\n",
            match stop {
                heap::Stopped::SizeCap => "size cap",
                heap::Stopped::TimeCap => "time cap",
            },
            census.pages_not_walked
        );
    }
    for iso in &census.isolates {
        out += &format!(
            "\nisolate heap {}: {} objects, {:.1} MiB in {} old-generation pages; {} young pages ({:.1} MiB) not walked; free {:.1} MiB\n",
            iso.heap,
            iso.objects,
            mib(iso.object_bytes),
            iso.pages,
            iso.young_pages,
            mib(iso.young_bytes),
            mib(iso.free_bytes)
        );
        out += &format!("  {:>10}  {:>10}  {:>10}  type\n", "count", "MiB", "external");
        for t in iso.types.iter().take(top) {
            let external = match t.external_bytes {
                0 => String::new(),
                b => format!("{:.2}", mib(b)),
            };
            out += &format!("  {:>10}  {:>10.2}  {:>10}  {}\n", t.count, mib(t.bytes), external, t.label);
        }
    }
    out
}
