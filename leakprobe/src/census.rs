//! `leakprobe census --pid N`: one census of a running node process's V8 heaps, read from
//! `/proc/PID/mem` without stopping it (see [`crate::v8::heap`]), printed as a table or JSON.

use anyhow::Context as _;

use crate::{
    error::Error,
    target::Target,
    v8::{
        self,
        heap::{self, Census, Growth, HeapLayout, Limits},
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
}

/// Reads one census of `pid`'s heaps.
pub fn take(pid: u32, limits: Limits) -> anyhow::Result<(Target, Census)> {
    let target = Target::resolve(pid)?;
    let major: Option<u32> = target
        .node_version
        .as_deref()
        .and_then(|v| v.trim_start_matches('v').split('.').next()?.parse().ok());
    let metadata = Metadata::from_elf(target.elf.bytes())
        .with_context(|| format!("reading V8's layouts from {}", target.module_display))?;
    let layout = v8::Layout::new(&metadata, major)
        .with_context(|| format!("reading V8's layouts from {}", target.module_display))?;
    let heap_layout = HeapLayout::new(&metadata)
        .with_context(|| format!("reading V8's heap layouts from {}", target.module_display))?;
    let mem = ProcMem::open(pid).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            anyhow::Error::from(Error::Inaccessible { pid, what: format!("/proc/{pid}/mem") })
        }
        _ => anyhow::Error::from(e).context(format!("opening /proc/{pid}/mem")),
    })?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    let mut reader = Reader::new(layout, mem);
    let census = heap::census(&mut reader, &heap_layout, &heap::anonymous_ranges(&maps), limits);
    Ok((target, census))
}

/// Runs `leakprobe census`.
pub fn run(opts: &CensusOptions) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (target, census) = take(opts.pid, opts.limits)?;
    if census.pages_found == 0 {
        anyhow::bail!(
            "no V8 heap page found in pid {}: its page headers are not of node 18–24's shapes",
            opts.pid
        );
    }
    let Some(after) = opts.again_after else {
        match opts.json {
            true => println!("{}", serde_json::to_string_pretty(&census).context("writing JSON")?),
            false => print!("{}", render(&target, &census, opts.top)),
        }
        return Ok(());
    };
    std::thread::sleep(after.saturating_sub(started.elapsed()));
    let seconds = started.elapsed().as_secs_f64();
    let (_, second) = take(opts.pid, opts.limits).context("taking the second census")?;
    let growth = heap::growth(&census, &second, seconds);
    match opts.json {
        true => {
            let both = serde_json::json!({
                "first": census,
                "second": second,
                "seconds": seconds,
                "growth": growth,
            });
            println!("{}", serde_json::to_string_pretty(&both).context("writing JSON")?);
        }
        false => {
            print!("{}", render(&target, &second, opts.top));
            print!("{}", render_growth(&growth, seconds, opts.top));
        }
    }
    Ok(())
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
