//! The live summary's tests.

use super::*;
use crate::memory::census::holds_growth;

fn frame(name: &str, kind: FrameKind, file: Option<&str>, line: Option<u32>) -> Frame {
    Frame { name: name.into(), kind, addr: 0, file: file.map(Into::into), line, note: None }
}

#[test]
fn a_suspect_reads_as_its_entry_point_then_its_js_frames() {
    let frames = vec![
        frame("node::NodeArrayBufferAllocator::Allocate", FrameKind::Native, None, None),
        frame("v8::internal::BackingStore::Allocate", FrameKind::Native, None, None),
        frame("Builtins_CallApiCallback", FrameKind::Builtin, None, None),
        frame("renderInvoicePdf", FrameKind::Js, Some("/app/pdf.js"), Some(8)),
        frame("listOnTimeout", FrameKind::Js, Some("node:internal/timers"), None),
        frame("uv_run", FrameKind::Native, None, None),
    ];
    assert_eq!(
        suspect_lines(&frames),
        [
            "node::NodeArrayBufferAllocator::Allocate",
            "… 2 native frames",
            "renderInvoicePdf (/app/pdf.js:8)",
            "listOnTimeout (node:internal/timers)"
        ]
    );
    // A page fault in a libc routine without symbols, under frames the walk skipped.
    let mut faulted = vec![
        frame("[unknown 0x7f87431d6109]", FrameKind::Unknown, None, None),
        frame("[frames without frame pointers skipped]", FrameKind::Unknown, None, None),
    ];
    faulted.extend(frames.iter().cloned());
    assert_eq!(
        suspect_lines(&faulted),
        [
            "… 2 unnamed frames",
            "node::NodeArrayBufferAllocator::Allocate",
            "… 2 native frames",
            "renderInvoicePdf (/app/pdf.js:8)",
            "listOnTimeout (node:internal/timers)"
        ]
    );
    let native: Vec<Frame> = (0..8).map(|i| frame(&format!("f{i}"), FrameKind::Native, None, None)).collect();
    assert_eq!(suspect_lines(&native), ["f0", "f1", "f2", "f3", "f4", "f5"]);
}

fn growing(kind: Kind, label: &str, chains: &[(&str, u32)]) -> GrowingType {
    GrowingType {
        heap: "0x1000".into(),
        kind,
        label: label.into(),
        count: 30_000,
        count_delta: 20_000,
        bytes_delta: 1 << 20,
        count_per_s: 1_000.0,
        bytes_per_s: 50_000.0,
        retained_by: chains
            .iter()
            .map(|&(text, samples)| RetainedBy {
                text: text.into(),
                holder: Some(text.split(' ').next().unwrap_or_default().into()),
                samples,
                sampled: 24,
                complete: true,
                holds_growth: holds_growth(samples, 24, 20_000, 30_000),
            })
            .collect(),
        searched: Some(Searched { sampled: 24, stale: 0, unexplained: 0 }),
    }
}

#[test]
fn a_worker_is_named_by_its_thread_and_the_files_it_runs() {
    let worker = |name: &str, scripts: &[&str]| WorkerIsolate {
        tid: 416,
        name: name.into(),
        heap: Some("0x7f00".into()),
        scripts: scripts.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(worker_heap_name(&worker("", &[])), "v8 heap of worker thread 416");
    assert_eq!(
        worker_heap_name(&worker("node", &["/srv/app/jobs.js"])),
        "v8 heap of worker thread 416 (node) running jobs.js"
    );
    assert_eq!(
        worker_heap_name(&worker("node", &["/srv/a.js", "/srv/lib/b.js", "/srv/c.js", "/srv/d.js"])),
        "v8 heap of worker thread 416 (node) running a.js, b.js and 2 more"
    );
}

/// Buffers kept in a Map: the census's growing ArrayBuffers are said under external (what
/// grows), not under the V8 heap that also grows; a holder is said once, whatever its
/// counts, and a chain too few samples follow to hold the growth is not said.
#[test]
fn the_holder_of_growing_buffers_is_said_under_external_once() {
    let census = CensusReport {
        censuses: 4,
        first_t_s: Some(2.0),
        last_t_s: Some(18.0),
        growing: vec![
            growing(Kind::ArrayBuffer, "ArrayBuffer", &[("Uint8Array ← blobs (Map, 28,569 entries)", 23)]),
            growing(
                Kind::String,
                "(string)",
                &[("sku ← Object {sku, qty}", 3), ("Uint8Array ← blobs (Map, 28,575 entries)", 1)],
            ),
            growing(Kind::Object, "Uint8Array", &[("blobs (Map, 28,575 entries)", 24)]),
        ],
        ..Default::default()
    };
    let mut said = Said::default();
    let (mut heap, mut external) = (String::new(), String::new());
    census_lines(&mut heap, Some(&census), &mut said, |g| said_under(Category::V8Heap, (true, false), g));
    census_lines(&mut external, Some(&census), &mut said, |g| {
        said_under(Category::External, (true, false), g)
    });
    let holder = "Retained by: Uint8Array ← blobs (Map, ";
    assert!(external.contains(holder) && !heap.contains(holder), "{heap}\n{external}");
    assert!(heap.contains("Retained by: blobs (Map, 28,575 entries)"), "{heap}");
    // Three samples of 24 cannot hold a growth of two thirds of the strings: no holder said.
    assert!(!heap.contains("sku ←"), "{heap}");
    assert!(heap.contains("Retained by: no chain holds enough samples to hold the growth"), "{heap}");
    // With external flat, the ArrayBuffers are said under the V8 heap, their holder once.
    let mut said = Said::default();
    let mut heap = String::new();
    census_lines(&mut heap, Some(&census), &mut said, |g| said_under(Category::V8Heap, (false, false), g));
    assert_eq!(heap.matches(holder).count(), 1, "{heap}");
    assert!(heap.contains("[23 of 24 samples]") && !heap.contains("[1 of 24"), "{heap}");
}

/// Unclosed zlib streams: their `Zlib` handles are said under native memory when it grows
/// (each handle keeps zlib's state there), not under the V8 heap; with native memory flat,
/// under the V8 heap.
#[test]
fn the_holder_of_growing_handles_is_said_under_native() {
    let census = CensusReport {
        censuses: 3,
        first_t_s: Some(2.0),
        last_t_s: Some(18.0),
        growing: vec![
            growing(Kind::Object, "Deflate", &[("openStreams (Array, 1,735 elements)", 24)]),
            growing(Kind::Handle, "Zlib", &[("_handle ← Deflate ← openStreams (Array, 1,735 elements)", 24)]),
        ],
        ..Default::default()
    };
    let holder = "Retained by: _handle ← Deflate ← openStreams (Array, ";
    let mut said = Said::default();
    let (mut heap, mut native) = (String::new(), String::new());
    census_lines(&mut heap, Some(&census), &mut said, |g| said_under(Category::V8Heap, (false, true), g));
    census_lines(&mut native, Some(&census), &mut said, |g| said_under(Category::Native, (false, true), g));
    assert!(native.contains("Zlib") && native.contains(holder), "{native}");
    assert!(!native.contains("Deflate (") && !heap.contains(holder), "{heap}\n{native}");
    assert!(heap.contains("Retained by: openStreams (Array, "), "{heap}");
    let mut said = Said::default();
    let mut heap = String::new();
    census_lines(&mut heap, Some(&census), &mut said, |g| said_under(Category::V8Heap, (false, false), g));
    assert!(heap.contains(holder), "{heap}");
}

#[test]
fn a_thread_pool_suspect_reads_through_to_the_users_function() {
    let frames = vec![
        frame("malloc", FrameKind::Native, None, None),
        frame("deflateInit2_", FrameKind::Native, None, None),
        frame("worker", FrameKind::Native, None, None),
        frame(crate::stacks::frame::QUEUED_NAME, FrameKind::Queued, None, None),
        frame("uv_queue_work", FrameKind::Native, None, None),
        frame("processChunk", FrameKind::Js, Some("node:zlib"), Some(480)),
        frame("_write", FrameKind::Js, Some("node:internal/streams/writable"), Some(453)),
        frame("compressResponse", FrameKind::Js, Some("/app/gzip.js"), Some(9)),
        frame("uv_run", FrameKind::Native, None, None),
        frame("listOnTimeout", FrameKind::Js, Some("node:internal/timers"), None),
    ];
    assert_eq!(
        suspect_lines(&frames),
        [
            "malloc",
            "… 2 native frames",
            "[queued to the libuv thread pool]",
            "… 1 native frame",
            "… 2 frames of node's own JavaScript",
            "compressResponse (/app/gzip.js:9)",
            "listOnTimeout (node:internal/timers)"
        ]
    );
}

/// The one-line view: pauses by kind, then the latest sample's memory, every isolate's V8 heap
/// together (the workers' as V8 reported them), and the events lost.
#[test]
fn the_one_line_view_reads_the_latest_sample() {
    use crate::memory::rss::{Rss, Sample};
    let mib = |n: u64| n << 20;
    let sample = Sample {
        trough: None,
        t_s: 12.0,
        rss: Rss {
            rss_bytes: mib(300),
            rss_anon_bytes: mib(250),
            rss_file_bytes: mib(50),
            rss_shmem_bytes: 0,
        },
        v8_heap_bytes: Some(mib(120)),
        v8_old_generation_bytes: Some(mib(100)),
        v8_worker_heaps_bytes: Some(mib(30)),
        external_bytes: Some(mib(40)),
        native_bytes: None,
    };
    let pauses = crate::memory::gc::ByKind::default();
    let line = line(&Line { t_s: 12.4, pauses: &pauses, memory: Some(&sample), lost: 3 });
    assert_eq!(
        line,
        "t=12s scavenge=0 (0.0ms) minor_ms=0 (0.0ms) mark_compact=0 (0.0ms) rss=300.0MiB v8_heap=150.0MiB external=40.0MiB lost=3"
    );
    // Before the first sample, and before V8 or the allocator were read.
    let none = super::line(&Line { t_s: 0.2, pauses: &pauses, memory: None, lost: 0 });
    assert_eq!(none, "t=0s scavenge=0 (0.0ms) minor_ms=0 (0.0ms) mark_compact=0 (0.0ms) rss=0.0MiB lost=0");
}

/// A growing type that was searched but whose growth no chain holds enough samples of is said so,
/// with its counts, and no holder is named; a chain cut short says so.
#[test]
fn a_searched_type_without_a_holder_says_so() {
    let s = |sampled, stale, unexplained| Searched { sampled, stale, unexplained };
    assert_eq!(
        no_holder(s(24, 0, 24)),
        "Retained by: no holder found for any of 24 samples (dead objects not collected yet, or holders in the young generation)"
    );
    assert_eq!(
        no_holder(s(24, 0, 10)),
        "Retained by: no chain holds enough samples to hold the growth (10 of 24 samples had none; census.txt lists each chain)"
    );
    assert_eq!(
        no_holder(s(0, 24, 0)),
        "Retained by: not searched (24 samples moved or died since the census)"
    );
    // One sample's chain alone is not said as a holder.
    let mut lone = growing(
        Kind::Object,
        "Object {page, body, at}",
        &[("cache (Map, 3 entries) ← module scope of a.js", 1)],
    );
    lone.searched = Some(s(24, 0, 23));
    let census = CensusReport { censuses: 2, growing: vec![lone], ..Default::default() };
    let mut out = String::new();
    census_lines(&mut out, Some(&census), &mut Said::default(), |_| true);
    assert!(out.contains("no chain holds enough samples to hold the growth (23 of 24"), "{out}");
    assert!(!out.contains("cache (Map"), "{out}");
    // A chain that holds the growth but reaches no name (node's TCP handles, in the demo) is
    // said as it is.
    let mut handles = growing(Kind::Handle, "TCP", &[("(PropertyArray)", 12)]);
    handles.retained_by[0].holder = None;
    let census = CensusReport { censuses: 2, growing: vec![handles], ..Default::default() };
    let mut out = String::new();
    census_lines(&mut out, Some(&census), &mut Said::default(), |_| true);
    assert!(out.contains("Retained by: (PropertyArray)  [12 of 24 samples, no named holder]"), "{out}");
    assert!(!out.contains("no chain holds"), "{out}");
}
