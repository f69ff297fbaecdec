//! Memory accounting, specified against node's own `process.memoryUsage()` and against fixtures
//! with one known leak (or none) each.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use serde_json::Value;

/// Runs `fixture` under leakprobe (sampling every 200 ms) until it exits; returns the report
/// and the fixture's stdout.
fn profile(node: &Path, flags: &[&str], fixture_name: &str) -> (Value, Vec<String>) {
    profile_with(node, flags, fixture_name, &[])
}

/// The fixture's holds: (begin ms, end ms, value at begin, value at end) from its
/// `HOLD begin|end <epoch ms> <value> [<value>…]` lines, the value in `column` (0 for the first).
fn holds(stdout: &[String], column: usize) -> Vec<(f64, f64, f64, f64)> {
    stdout
        .windows(2)
        .filter_map(|w| {
            let b: Vec<&str> = w[0].split_whitespace().collect();
            let e: Vec<&str> = w[1].split_whitespace().collect();
            match (b.as_slice(), e.as_slice()) {
                (["HOLD", "begin", t0, v0 @ ..], ["HOLD", "end", t1, v1 @ ..]) => Some((
                    t0.parse().ok()?,
                    t1.parse().ok()?,
                    v0.get(column)?.parse().ok()?,
                    v1.get(column)?.parse().ok()?,
                )),
                _ => None,
            }
        })
        .collect()
}

/// Every sample of `report.memory.samples[].<field>` taken well inside a hold agrees, within
/// `tolerance`, with the value node printed at the hold's begin or end (in `column`).
fn samples_match_holds(report: &Value, stdout: &[String], field: &str, column: usize, tolerance: f64) {
    let start_ms = report["window"]["start_unix_s"].as_f64().unwrap() * 1e3;
    let samples = report["memory"]["samples"].as_array().unwrap();
    let holds = holds(stdout, column);
    assert_eq!(holds.len(), 5, "{stdout:?}");
    for (t0, t1, v0, v1) in holds {
        // Samples clear of the steps on either side.
        let inside: Vec<f64> = samples
            .iter()
            .filter(|s| {
                let t = start_ms + s["t_s"].as_f64().unwrap() * 1e3;
                t > t0 + 250.0 && t < t1 - 250.0
            })
            .map(|s| s[field].as_f64().unwrap_or_else(|| panic!("{field} not measured: {s}")))
            .collect();
        assert!(inside.len() >= 3, "too few samples in the hold {t0}..{t1}: {inside:?}");
        for measured in inside {
            let error = [v0, v1].iter().map(|v| (measured - v).abs() / v).fold(f64::MAX, f64::min);
            assert!(
                error <= tolerance,
                "{field} {measured} vs node's {v0}..{v1} ({:.1}% off)",
                error * 100.0
            );
        }
    }
    let m = &report["memory"];
    let parts = ["code_bytes", "v8_heap_bytes", "external_bytes", "other_bytes"]
        .iter()
        .map(|k| m[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    if m["other_bytes"].as_u64() != Some(0) {
        assert_eq!(parts, m["rss_bytes"].as_u64().unwrap(), "the parts add up to RSS: {m}");
    }
    for p in report["probes"].as_array().unwrap() {
        assert_eq!(p["attached"], true, "{p}");
    }
}

/// leakprobe's external bytes equal `arrayBuffers` within 5% while Buffer memory grows and
/// shrinks.
fn external_matches_array_buffers(node: &Path) {
    let (report, stdout) = profile(node, &["--expose-gc"], "external-phases.js");
    samples_match_holds(&report, &stdout, "external_bytes", 0, 0.05);
    assert_eq!(report["external"]["counter_error"], Value::Null);
    // The default view reads node's counter: after the opening burst the per-allocation probes
    // follow a sample of the Buffers, so no exact count is said.
    assert_eq!(report["external"]["frees"], Value::Null);
    assert_eq!(report["external"]["followed"], "one in 16");
}

/// leakprobe's V8 heap bytes equal `heapTotal` within 10% while the heap grows (objects and
/// large objects) and shrinks; and the part the verdict reads, without the young generation,
/// equals heapTotal less node's new spaces (`v8.getHeapSpaceStatistics()`) within 10%.
fn v8_heap_matches_heap_total(node: &Path) {
    let (report, stdout) = profile(node, &["--expose-gc"], "heap-phases.js");
    samples_match_holds(&report, &stdout, "v8_heap_bytes", 0, 0.10);
    samples_match_holds(&report, &stdout, "v8_old_generation_bytes", 1, 0.10);
    let young = report["heap"]["young_generation_bytes"].as_u64().expect("the young generation is read");
    assert!(young > 0, "{}", report["heap"]);
    assert!(report["heap"]["readings"].as_u64().unwrap() > 0);
    let baseline = report["heap"]["post_gc_baseline"].as_array().unwrap();
    assert!(!baseline.is_empty(), "the release step's full GCs give baseline points");
}

on_nodes!(v8_heap_matches_heap_total;
    node18_v8_heap_matches_heap_total: 18,
    node20_v8_heap_matches_heap_total: 20,
    node22_v8_heap_matches_heap_total: 22,
    node24_v8_heap_matches_heap_total: 24,
);

on_nodes!(external_matches_array_buffers;
    node18_external_matches_array_buffers: 18,
    node20_external_matches_array_buffers: 20,
    node22_external_matches_array_buffers: 22,
    node24_external_matches_array_buffers: 24,
);

/// With `--alloc-stacks`, the top suspect of a leaking fixture is in `category`, allocated
/// through `entry` (the probed native function, the stack's innermost frame), growing under
/// the GC's sawtooth, and names the leaking JS function `leaker` (name, line it starts on) —
/// also where V8 inlined it into its caller.
fn top_suspect(fixture: &str, category: &str, entry: &str, through: &str, leaker: (&str, u64)) -> Value {
    top_suspect_with(fixture, &["--alloc-stacks"], category, entry, through, leaker)
}

/// [`top_suspect`] with other leakprobe arguments.
fn top_suspect_with(
    fixture: &str,
    leakprobe_args: &[&str],
    category: &str,
    entry: &str,
    through: &str,
    leaker: (&str, u64),
) -> Value {
    let (report, _) = profile_with(&system_node(), &[], fixture, leakprobe_args);
    let suspects = report["suspects"].as_array().unwrap();
    let top = suspects.first().unwrap_or_else(|| panic!("no suspect: {}", report["memory"]));
    assert_eq!(top["category"], category, "{top}");
    let frames: Vec<&str> =
        top["frames"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(frames[0].starts_with(entry), "{frames:?}");
    assert!(frames.iter().any(|f| f.contains(through)), "{frames:?}");
    assert!(top["growth_bytes_per_s"].as_f64().unwrap() > 0.0, "{top}");
    assert!(top["floor_growth_bytes"].as_f64().unwrap() > 0.0, "{top}");
    let file = fixture_path(fixture);
    let js: Vec<(&str, u64)> = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "js" && f["file"].as_str().map(Path::new) == Some(&file))
        .map(|f| (f["name"].as_str().unwrap(), f["line"].as_u64().unwrap_or(0)))
        .collect();
    assert!(js.contains(&leaker), "{fixture}: the top suspect does not name {leaker:?}: {js:?}");
    report
}

#[test]
fn unbounded_buffer_cache_is_an_external_suspect() {
    top_suspect(
        "buffer-leak.js",
        "external",
        "node::NodeArrayBufferAllocator::Allocate",
        "BackingStore::Allocate",
        ("cacheReport", 7),
    );
}

#[test]
fn ignored_backpressure_is_an_external_suspect() {
    top_suspect(
        "backpressure.js",
        "external",
        "node::NodeArrayBufferAllocator::Allocate",
        "BackingStore::Allocate",
        ("forwardChunk", 15),
    );
}

/// With --native-exact, unclosed zlib streams are a native suspect allocated by malloc from zlib's
/// init, and the sampled estimate is reported. Node runs zlib's init as libuv thread-pool work,
/// on a pool thread with no JS on its stack: the suspect goes on, past the queued frame, with
/// the stack that queued the work, down to the leaking function.
#[test]
fn unclosed_zlib_handles_are_a_native_suspect() {
    let report = top_suspect_with(
        "zlib-handles.js",
        &["--native-exact"],
        "native",
        "malloc",
        "deflateInit2_",
        ("compressResponse", 9),
    );
    let frames = report["suspects"][0]["frames"].as_array().unwrap();
    let at = |kind: &str, name: &str| {
        frames.iter().position(|f| f["kind"] == kind && f["name"].as_str().unwrap().contains(name))
    };
    let (pool, queued, js) =
        (at("native", "DoThreadPoolWork"), at("queued", ""), at("js", "compressResponse"));
    assert!(pool < queued && queued < js && pool.is_some(), "{frames:?}");
    let native = &report["native"];
    assert_eq!(native["sample_rate_bytes"], 512 * 1024);
    assert!(native["sampled_allocations"].as_u64().unwrap() > 100, "{native}");
    assert!(native["outstanding_bytes"].as_u64().unwrap() > 100 << 20, "{native}");
    assert_eq!(report["memory"]["native_bytes"], native["outstanding_bytes"]);
    let probes = report["probes"].as_array().unwrap();
    assert!(probes.iter().filter(|p| p["family"] == "native").all(|p| p["attached"] == true), "{probes:?}");
}

/// Without --native-exact, libc is not probed and native memory is reported as not measured.
#[test]
fn native_is_opt_in() {
    let (report, _) = profile(&system_node(), &[], "bounded-cache.js");
    assert_eq!(report["native"], Value::Null);
    assert_eq!(report["memory"]["native_bytes"], Value::Null);
    assert!(report["probes"].as_array().unwrap().iter().all(|p| p["family"] != "native"));
}

#[test]
fn growing_module_array_is_a_v8_heap_suspect() {
    let report = top_suspect(
        "growing-array.js",
        "v8_heap",
        "v8::internal::MemoryAllocator::AllocateLargePage",
        "LargeObjectSpace::AllocateRaw",
        ("recordAudit", 8),
    );
    // The churn view: JIT code's slow-path allocations, sampled by stack.
    let heap = &report["heap"];
    assert!(heap["allocation_samples_total"].as_u64().unwrap() > 100, "{heap}");
    let top = &heap["allocation_samples"][0];
    let entry = top["frames"][0]["name"].as_str().unwrap();
    assert!(entry.starts_with("v8::internal::Runtime_AllocateIn"), "{top}");
    let shares: f64 =
        heap["allocation_samples"].as_array().unwrap().iter().map(|s| s["share"].as_f64().unwrap()).sum();
    assert!(shares > 0.5 && shares <= 1.0 + 1e-9, "{shares}");
}

/// The emitter's listener array grows: the top suspect is in the V8 heap and names
/// `handleRequest` (line 12), either as the stack of the array's large-object pages or as the site whose
/// runtime call (growing the array's elements) first touches old-generation pages.
#[test]
fn accumulating_listeners_are_a_v8_heap_suspect() {
    let (report, _) = profile_with(&system_node(), &[], "listeners-leak.js", &["--alloc-stacks"]);
    let top = report["suspects"].as_array().unwrap().first().cloned().unwrap_or_else(|| {
        panic!("no suspect: {}", report["verdict"]);
    });
    assert_eq!(top["category"], "v8_heap", "{top}");
    let frames: Vec<&str> =
        top["frames"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    let through = |what: &str| frames.iter().any(|f| f.contains(what));
    // The array's large backing stores (allocated, or read for what their elements keep), or
    // the runtime growing its elements (a page-fault site).
    assert!(
        through("AllocateLargePage")
            || through("LargeObjectSpace::AllocateRaw")
            || through("ElementsAccessor"),
        "{frames:?}"
    );
    let file = fixture_path("listeners-leak.js");
    let named = top["frames"].as_array().unwrap().iter().any(|f| {
        f["kind"] == "js"
            && f["name"] == "handleRequest"
            && f["line"] == 12
            && f["file"].as_str().map(Path::new) == Some(&file)
    });
    assert!(named, "the top suspect does not name handleRequest: {frames:?}");
}

/// The same churn with a bounded cache levels off: no suspect.
#[test]
fn bounded_cache_is_not_a_suspect() {
    let (report, _) = profile_with(&system_node(), &[], "bounded-cache.js", &["--alloc-stacks"]);
    assert_eq!(report["suspects"], serde_json::json!([]), "{}", report["suspects"]);
    assert!(report["external"]["allocated_bytes"].as_u64().unwrap() > 100 << 20, "the churn was seen");
}

/// Anonymous mappings made while leakprobe watches are in the books, by stack, and a mapping
/// stack that keeps growing is reported, down to the leaking function: glibc maps the chunks
/// inside malloc, code without frame pointers, which the walk skips (and says so). The syscall
/// tracepoints attach (mounting tracefs if needed).
#[test]
fn anonymous_mappings_are_attributed() {
    let (report, stdout) = profile(&system_node(), &[], "mmap-growth.js");
    let kept: u64 = stdout
        .iter()
        .find_map(|l| l.strip_prefix("END ").and_then(|n| n.parse().ok()))
        .expect("the fixture reports how many MiB it kept");
    let m = &report["mappings"];
    let mapped = m["anon_mapped_bytes"].as_f64().unwrap();
    assert!(mapped >= 0.9 * (kept << 20) as f64, "{mapped} bytes mapped for {kept} MiB kept: {m}");
    assert!(m["mmaps"].as_u64().unwrap() >= kept, "{m}");
    let growing = m["growing_stacks"].as_array().unwrap();
    assert_eq!(growing.first().map(|s| &s["category"]), Some(&Value::from("mapping")), "{m}");
    let frames = growing[0]["frames"].as_array().unwrap();
    let at = |name: &str| frames.iter().position(|f| f["name"] == name);
    let file = fixture_path("mmap-growth.js");
    let leaker = frames.iter().position(|f| {
        f["name"] == "keepChunk" && f["line"] == 7 && f["file"].as_str().map(Path::new) == Some(&file)
    });
    let skipped = at("[frames without frame pointers skipped]");
    assert!(skipped.is_some() && skipped < leaker, "{frames:#?}");
    let probes = report["probes"].as_array().unwrap();
    assert!(probes.iter().filter(|p| p["family"] == "syscalls").all(|p| p["attached"] == true), "{probes:?}");
}

/// Nothing is lost silently: with room for only 64 live Buffers, the rest of a leak is counted
/// as `live_full` drops, shown in the report and in the summary.
#[test]
fn a_full_map_is_counted_and_shown() {
    let mut fixture = Node::start(&system_node(), &[], "buffer-leak.js");
    let mut leakprobe =
        Leakprobe::attach(fixture.pid(), &["--interval", "500ms", "--max-tracked", "64", "--alloc-stacks"]);
    fixture.go();
    assert!(fixture.wait(Duration::from_secs(60)).success());
    let report = leakprobe.report();
    let lost = report["drops"]["live_full"].as_u64().unwrap();
    assert!(lost > 100, "{}", report["drops"]);
    assert!(
        report["external"]["allocations"].as_u64().unwrap()
            <= 64 + report["external"]["frees"].as_u64().unwrap()
    );
    let summary = std::fs::read_to_string(leakprobe.out.join("summary.txt")).unwrap();
    assert!(summary.contains(&format!("live_full: {lost}")), "{summary}");
}
