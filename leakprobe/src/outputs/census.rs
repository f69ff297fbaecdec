//! The heap census as text: `leakprobe census`'s tables (a census, what grew, who holds it),
//! an incident's `census.txt`, and the one "Retained by" line every view of a chain prints
//! ([`retained_by`]; the live summary uses it too).

use crate::{
    process::target::Target,
    v8::heap::{
        census::{Census, Growth, Stopped},
        chain::RetainerSearch,
    },
};

/// What is said of a type whose samples no chain reached.
pub const NO_HOLDER: &str = "Retained by: (no holder found)";

/// One retainer chain: its text, and how many of the type's sampled objects it holds
/// (`note` is added inside the brackets, e.g. `, chain cut short`).
pub fn retained_by(
    text: &str,
    samples: impl std::fmt::Display,
    sampled: impl std::fmt::Display,
    note: &str,
) -> String {
    format!("Retained by: {text}  [{samples} of {sampled} samples{note}]")
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
        if !iso.scripts.is_empty() {
            out += &format!("  its scripts: {}\n", iso.scripts.join(", "));
        }
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
            let cut = if c.complete { "" } else { ", chain cut short" };
            out += &format!("    {}\n", retained_by(&c.text, c.samples, t.sampled, cut));
        }
        if t.chains.is_empty() {
            out += &format!("    {NO_HOLDER}\n");
        }
    }
    out
}

/// The census table of a report (`census.txt` in the incident folder): each isolate's heap and
/// the growing types with their retainers. `None` when the report has no census.
pub fn table(report: &serde_json::Value) -> Option<String> {
    let c = report.get("heap")?.get("census")?;
    let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / (1 << 20) as f64;
    let mut out = format!(
        "heap census: {} ({} censuses, first at {:.1} s, latest at {:.1} s; {} mark-compacts skipped)\n",
        c["status"].as_str().unwrap_or("?"),
        c["censuses"],
        c["first_t_s"].as_f64().unwrap_or(f64::NAN),
        c["last_t_s"].as_f64().unwrap_or(f64::NAN),
        c["skipped_gcs"],
    );
    if let Some(stop) = c["stopped_early"].as_str() {
        out += &format!("  stopped early ({stop}): counts and chains are partial\n");
    }
    out += &format!(
        "  cost: {:.2} s of collector CPU, {:.1} MiB read; latest census {:.0} ms, retainers {:.0} ms\n",
        c["cost"]["cpu_s"].as_f64().unwrap_or(0.0),
        mib(&c["cost"]["bytes_read"]),
        c["cost"]["last_census_ms"].as_f64().unwrap_or(0.0),
        c["cost"]["last_retainers_ms"].as_f64().unwrap_or(0.0),
    );
    out += "\nisolates (latest census)\n";
    out += &format!("  {:<18} {:>12} {:>12} {:>12}\n", "heap", "committed MiB", "objects", "object MiB");
    for i in c["isolates"].as_array()? {
        out += &format!(
            "  {:<18} {:>12.1} {:>12} {:>12.1}\n",
            i["heap"].as_str().unwrap_or("?"),
            mib(&i["committed_bytes"]),
            i["objects"],
            mib(&i["object_bytes"])
        );
    }
    out += "\ngrowing types, most objects gained first\n";
    out += &format!(
        "  {:>10} {:>10} {:>10} {:>10}  {:<18} type\n",
        "objects/s", "objects", "MiB/s", "now", "heap"
    );
    for g in c["growing"].as_array()? {
        out += &format!(
            "  {:>+10.0} {:>+10} {:>+10.3} {:>10}  {:<18} {}\n",
            g["count_per_s"].as_f64().unwrap_or(0.0),
            g["count_delta"],
            g["bytes_per_s"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
            g["count"],
            g["heap"].as_str().unwrap_or("?"),
            g["label"].as_str().unwrap_or("?"),
        );
        for r in g["retained_by"].as_array().into_iter().flatten() {
            let (samples, sampled) = (r["samples"].as_u64().unwrap_or(0), r["sampled"].as_u64().unwrap_or(0));
            // A true chain of a few of the type's objects that cannot hold its growth is listed,
            // and said so: the summary and the metrics name no holder from it.
            let note = match r["holds_growth"].as_bool() {
                Some(false) => ", too few to hold the growth",
                _ => "",
            };
            out += &format!(
                "      {}\n",
                retained_by(r["text"].as_str().unwrap_or("?"), samples, sampled, note)
            );
        }
    }
    Some(out)
}
