//! `leakprobe census --pid N`: one census of a running node process's V8 heaps, read from
//! `/proc/PID/mem` without stopping it (see [`crate::v8::heap`]), printed as a table or JSON.

use anyhow::Context as _;

use crate::{
    process::target::Target,
    v8::heap::{
        census::{growing_types, growth, named_types, Census, Growth, Limits, Stopped},
        chain::RetainerSearch,
        reader::HeapReader,
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

/// Reads one census of `pid`'s heaps.
pub fn take(pid: u32, limits: Limits) -> anyhow::Result<(Target, Census)> {
    let target = Target::resolve(pid)?;
    let census = HeapReader::open(&target)?.census(limits)?;
    Ok((target, census))
}

/// Runs `leakprobe census`.
pub fn run(opts: &CensusOptions) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let target = Target::resolve(opts.pid)?;
    let mut probe = HeapReader::open(&target)?;
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
    let growth = growth(&census, &second, seconds);
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
            Some(Stopped::SizeCap) => ", stopped early by the size cap",
            Some(Stopped::TimeCap) => ", stopped early by the time cap",
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
                Stopped::SizeCap => "size cap",
                Stopped::TimeCap => "time cap",
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
