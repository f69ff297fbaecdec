//! GC pauses, specified against V8's own `--trace-gc` output: every pause leakprobe reports is a
//! pause V8 printed, of the same kind, on the same thread, and the pause times agree.

mod common;

use std::time::Duration;

use common::*;

/// Per-kind counts equal `--trace-gc` exactly; total pause time within 20% of its sum.
fn counts_match_trace_gc(node: &std::path::Path, flags: &[&str]) {
    let mut args = vec!["--trace-gc"];
    args.extend_from_slice(flags);
    let mut fixture = Node::start(node, &args, "gc-burst.js");
    let mut leakprobe = Leakprobe::attach(fixture.pid(), &["--interval", "1s"]);
    fixture.go();
    assert!(fixture.wait(Duration::from_secs(120)).success());
    let report = leakprobe.report();
    let trace = trace_after_start(fixture.stdout.rest());
    assert!(trace.len() >= 3, "the fixture should cause GCs; trace-gc printed {trace:?}");

    assert_eq!(report["target"]["pid"].as_u64(), Some(fixture.pid() as u64));
    assert!(
        report["target"]["node_version"].as_str().is_some_and(|v| v.starts_with('v')),
        "{}",
        report["target"]
    );
    assert_eq!(report["window"]["stop_reason"], "target_exited");
    for kind in ["scavenge", "minor_ms", "mark_compact"] {
        let expected = trace.iter().filter(|t| t.kind == kind).count() as u64;
        assert_eq!(
            count(&report, kind),
            expected,
            "{kind} pauses: leakprobe vs --trace-gc\n{}",
            report["gc"]
        );
    }
    let traced: f64 = trace.iter().map(|t| t.pause_ms).sum();
    let measured: f64 = ["scavenge", "minor_ms", "mark_compact"]
        .iter()
        .map(|k| report["gc"]["pauses"][k]["total_ms"].as_f64().unwrap())
        .sum();
    let ratio = measured / traced;
    // The timeline holds the same pauses, in order, inside the window.
    let events = report["gc"]["events"].as_array().unwrap();
    assert_eq!(events.len(), trace.len());
    let window_ms = report["window"]["duration_s"].as_f64().unwrap() * 1e3;
    let starts: Vec<f64> = events.iter().map(|e| e["at_ms"].as_f64().unwrap()).collect();
    // One thread in this fixture: its pauses cannot overlap, so they arrive in order.
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    assert!(starts.iter().all(|&t| (0.0..=window_ms).contains(&t)), "{starts:?} outside 0..{window_ms}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, trace.iter().map(|t| t.kind).collect::<Vec<_>>());
    assert!((0.8..=1.2).contains(&ratio), "total pause {measured:.2} ms vs --trace-gc {traced:.2} ms");
    for p in report["probes"].as_array().unwrap() {
        assert_eq!(p["attached"], true, "{p}");
    }
    assert_eq!(report["drops"]["ringbuf_full"], 0);
    assert_eq!(report["drops"]["gc_inflight_full"], 0);
}

on_nodes!(|node| counts_match_trace_gc(node, &[]);
    system_node_counts_match_trace_gc: system,
    node18_counts_match_trace_gc: 18,
    node20_counts_match_trace_gc: 20,
    node22_counts_match_trace_gc: 22,
    node24_counts_match_trace_gc: 24,
);

on_nodes!(|node| counts_match_trace_gc(node, &["--minor-ms"]);
    /// With `--minor-ms` (node 22+), young-generation pauses are minor mark-sweeps, and reported so.
    node22_minor_mark_sweep_is_its_own_kind: 22,
    node24_minor_mark_sweep_is_its_own_kind: 24,
);

/// A worker_threads worker's pauses are attributed to the worker's thread, the main thread's
/// (three forced full GCs) to the main thread, each matching its isolate's `--trace-gc` lines.
fn worker_pauses_on_worker_thread(node: &std::path::Path) {
    let mut fixture = Node::start(node, &["--trace-gc", "--expose-gc"], "gc-worker.js");
    let mut leakprobe = Leakprobe::attach(fixture.pid(), &[]);
    fixture.go();
    assert!(fixture.wait(Duration::from_secs(120)).success());
    let report = leakprobe.report();
    let trace = trace_after_start(fixture.stdout.rest());
    // The first GC after START is the main thread's forced gc(); the worker starts after it.
    let main_isolate = trace.first().expect("trace-gc lines after START").isolate.clone();
    let main_traced = trace.iter().filter(|t| t.isolate == main_isolate).count() as u64;
    let worker_traced = trace.len() as u64 - main_traced;
    assert!(main_traced >= 3 && worker_traced > 0, "{trace:?}");

    let threads = report["gc"]["threads"].as_array().unwrap();
    let total = |t: &serde_json::Value| -> u64 {
        ["scavenge", "minor_ms", "mark_compact"]
            .iter()
            .map(|k| t["pauses"][k]["count"].as_u64().unwrap())
            .sum()
    };
    let main: Vec<_> = threads.iter().filter(|t| t["main"] == true).collect();
    let others: Vec<_> = threads.iter().filter(|t| t["main"] == false).collect();
    assert_eq!(main.len(), 1, "{threads:?}");
    assert_eq!(main[0]["tid"].as_u64(), Some(fixture.pid() as u64));
    assert_eq!(total(main[0]), main_traced, "main thread pauses");
    assert!(main[0]["pauses"]["mark_compact"]["count"].as_u64().unwrap() >= 3);
    assert_eq!(others.len(), 1, "one worker thread expected: {threads:?}");
    assert_ne!(others[0]["tid"].as_u64(), Some(fixture.pid() as u64));
    assert_eq!(total(others[0]), worker_traced, "worker thread pauses");
}

on_nodes!(worker_pauses_on_worker_thread;
    node20_worker_pauses_on_worker_thread: 20,
    node24_worker_pauses_on_worker_thread: 24,
);

#[test]
fn parses_trace_gc_lines_of_every_version() {
    let l = "[7557:0x2f918c00]     2357 ms: Scavenge 4.1 (4.2) -> 3.8 (5.2) MB, 1.88 / 0.00 ms  (average mu = 1.000, current mu = 1.000) allocation failure; ";
    assert_eq!(
        parse_trace_gc(l),
        Some(TraceGc { isolate: "0x2f918c00".into(), kind: "scavenge", pause_ms: 1.88 })
    );
    let l = "[9218:0x15cb3000]       39 ms: Scavenge 4.7 (5.4) -> 4.2 (6.4) MB, pooled: 0 MB, 1.27 / 0.00 ms  (average mu = 1.000, current mu = 1.000) allocation failure; ";
    assert_eq!(
        parse_trace_gc(l),
        Some(TraceGc { isolate: "0x15cb3000".into(), kind: "scavenge", pause_ms: 1.27 })
    );
    let l = "[1:0x1bdb4d00]    80 ms: Mark-sweep 5.0 (7.0) -> 3.1 (7.2) MB, 2.50 / 0.01 ms  (average mu = 1.000) testing GC";
    assert_eq!(parse_trace_gc(l).unwrap().kind, "mark_compact");
    let l = "[1:0x1]   9 ms: Minor Mark-Sweep 4.0 (5.0) -> 3.0 (5.0) MB, 0.40 / 0.00 ms  allocation failure";
    assert_eq!(parse_trace_gc(l).unwrap().kind, "minor_ms");
    let l = "[1:0x1]   9 ms: Scavenge (interleaved) 4.0 (5.0) -> 3.0 (5.0) MB, 0.40 / 0.00 ms  task";
    assert_eq!(parse_trace_gc(l).unwrap().kind, "scavenge");
    assert_eq!(parse_trace_gc("START"), None);
    assert_eq!(parse_trace_gc("[1:0x1] not a gc line"), None);
}
