//! `leakprobe census`: a live V8 heap census read from the target's memory, checked against
//! the oracle V8 itself writes, a `.heapsnapshot` taken right after the census.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use serde_json::Value;

/// Objects in a `.heapsnapshot` of node type `object` named `name` (what DevTools lists
/// under the constructor `name`).
fn snapshot_count(snapshot: &Value, name: &str) -> u64 {
    let meta = &snapshot["snapshot"]["meta"];
    let fields: Vec<&str> =
        meta["node_fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let types: Vec<&str> =
        meta["node_types"][0].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let (type_at, name_at) = (
        fields.iter().position(|f| *f == "type").unwrap(),
        fields.iter().position(|f| *f == "name").unwrap(),
    );
    let strings = snapshot["strings"].as_array().unwrap();
    let nodes = snapshot["nodes"].as_array().unwrap();
    nodes
        .chunks(fields.len())
        .filter(|n| types[n[type_at].as_u64().unwrap() as usize] == "object")
        .filter(|n| strings[n[name_at].as_u64().unwrap() as usize] == name)
        .count() as u64
}

/// `Session` instances held in a Set, beside request churn that keeps running during the
/// census: leakprobe's count of `Session` is within 10% of the heap snapshot's, their plain
/// `client` objects are counted under their shape, and the census walked the whole heap.
fn counts_the_leaking_class(node: &Path) {
    let mut fixture = Node::start(node, &["--expose-gc"], "census-set-leak.js");
    fixture.go();
    std::thread::sleep(Duration::from_secs(3));
    let held = fixture.pause();
    assert!(held > 5_000, "the fixture leaked only {held} sessions");

    let pid = fixture.pid().to_string();
    let (status, stdout, stderr) = run_leakprobe(&["census", "--pid", &pid, "--json"]);
    assert!(status.success(), "leakprobe census failed ({status}): {stderr}");
    let census: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    let path = tempdir("census").join("after.heapsnapshot");
    fixture.send(&format!("snapshot {}", path.display()));
    fixture.stdout.wait_for("SNAPSHOT", Duration::from_secs(120));
    let snapshot: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);

    let oracle = snapshot_count(&snapshot, "Session");
    assert!(oracle >= held, "the snapshot holds {oracle} sessions, the fixture {held}");
    let types: Vec<&Value> =
        census["isolates"].as_array().unwrap().iter().flat_map(|i| i["types"].as_array().unwrap()).collect();
    let counted = census_count(&census, "Session", "object");
    eprintln!(
        "{}: census {counted} Session, snapshot {oracle}, fixture {held}; census {}",
        node.display(),
        serde_json::json!({"unparsed_bytes": census["unparsed_bytes"], "elapsed_ms": census["elapsed_ms"], "bytes_read": census["bytes_read"]})
    );
    assert!(
        counted.abs_diff(oracle) * 10 <= oracle,
        "census counts {counted} Session, the snapshot {oracle}; census: {}",
        serde_json::to_string(&census["unparsed_at"]).unwrap()
    );
    assert_eq!(census["stopped_early"], Value::Null);
    // Each session's plain `client` object is counted by its shape.
    let clients: u64 = types
        .iter()
        .filter(|t| t["label"] == "Object {ip, agent}")
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert!(
        clients.abs_diff(held) * 10 <= held,
        "{clients} objects of shape {{ip, agent}} for {held} sessions; shapes: {:?}",
        types
            .iter()
            .filter(|t| t["name"] == "Object")
            .take(20)
            .map(|t| t["label"].as_str().unwrap())
            .collect::<Vec<_>>()
    );
}

on_nodes!(counts_the_leaking_class;
    system_node_counts_the_leaking_class: system,
    node18_counts_the_leaking_class: 18,
    node20_counts_the_leaking_class: 20,
    node22_counts_the_leaking_class: 22,
    node24_counts_the_leaking_class: 24,
);

/// A leak inside a worker thread: the census lists each isolate's heap on its own, and the
/// worker's `WorkerRecord`s are all in one isolate, as many as the worker holds (within 10%).
fn counts_a_leak_inside_a_worker(node: &Path) {
    let mut fixture = Node::start(node, &["--expose-gc"], "census-worker-leak.js");
    fixture.go();
    std::thread::sleep(Duration::from_secs(2));
    let held = fixture.pause();
    assert!(held > 5_000, "the worker holds only {held} records");
    let pid = fixture.pid().to_string();
    let (status, stdout, stderr) = run_leakprobe(&["census", "--pid", &pid, "--json"]);
    assert!(status.success(), "{stderr}");
    let census: Value = serde_json::from_str(&stdout).unwrap();
    let isolates = census["isolates"].as_array().unwrap();
    assert!(isolates.len() >= 2, "{} isolates", isolates.len());
    let per_isolate: Vec<u64> = isolates
        .iter()
        .map(|i| {
            i["types"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] == "WorkerRecord")
                .map(|t| t["count"].as_u64().unwrap())
                .sum()
        })
        .collect();
    assert_eq!(per_isolate.iter().filter(|c| **c > 0).count(), 1, "{per_isolate:?}");
    let counted: u64 = per_isolate.iter().sum();
    assert!(counted.abs_diff(held) * 10 <= held, "census: {counted} WorkerRecord, the worker holds {held}");
}

on_nodes!(counts_a_leak_inside_a_worker;
    system_node_counts_a_leak_inside_a_worker: system,
    node18_counts_a_leak_inside_a_worker: 18,
    node22_counts_a_leak_inside_a_worker: 22,
    node24_counts_a_leak_inside_a_worker: 24,
);

/// Two censuses two seconds apart while Sessions leak: the JavaScript type that gained most
/// objects is the Session (or its plain client object, one per Session), at a rate near the
/// fixture's own count of sessions opened meanwhile.
#[test]
fn growth_between_censuses_names_the_leaking_class() {
    let mut fixture = Node::start(&system_node(), &["--expose-gc"], "census-set-leak.js");
    fixture.go();
    std::thread::sleep(Duration::from_secs(1));
    fixture.send("count");
    let before: u64 = fixture.stdout.wait_for("COUNT", Duration::from_secs(10))[6..].parse().unwrap();
    let pid = fixture.pid().to_string();
    let (status, stdout, stderr) = run_leakprobe(&["census", "--pid", &pid, "--json", "--again-after", "2s"]);
    assert!(status.success(), "{stderr}");
    fixture.send("count");
    let after: u64 = fixture.stdout.wait_for("COUNT", Duration::from_secs(10))[6..].parse().unwrap();
    let result: Value = serde_json::from_str(&stdout).unwrap();
    let seconds = result["seconds"].as_f64().unwrap();
    assert!((2.0..10.0).contains(&seconds), "{seconds}");
    let growth = result["growth"].as_array().unwrap();
    let top_object = growth.iter().find(|g| g["kind"] == "object").expect("no object type grew");
    assert!(
        top_object["name"] == "Session" || top_object["label"] == "Object {ip, agent}",
        "top growing object type: {top_object}"
    );
    let session = growth.iter().find(|g| g["name"] == "Session").expect("Session did not grow");
    let gained = session["count_delta"].as_i64().unwrap() as f64;
    // The fixture's count spans both censuses and leakprobe's start; the census window is
    // shorter, and young Sessions are not counted.
    let opened = (after - before) as f64;
    assert!(gained > 0.3 * opened && gained <= opened, "census: +{gained} Session, fixture: +{opened}");
}

/// A census capped at a few bytes stops early and says so.
#[test]
fn a_capped_census_says_it_stopped_early() {
    let mut fixture = Node::start(&system_node(), &["--expose-gc"], "census-set-leak.js");
    fixture.go();
    std::thread::sleep(Duration::from_millis(500));
    let pid = fixture.pid().to_string();
    let (status, stdout, stderr) = run_leakprobe(&["census", "--pid", &pid, "--json", "--max-bytes", "4096"]);
    assert!(status.success(), "{stderr}");
    let census: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(census["stopped_early"], "size_cap", "{stdout}");
    assert!(census["pages_not_walked"].as_u64().unwrap() > 0, "{stdout}");
    let (status, stdout, _) = run_leakprobe(&["census", "--pid", &pid, "--max-bytes", "4096"]);
    assert!(status.success());
    assert!(stdout.contains("stopped early (size cap)"), "{stdout}");
}

/// A process that is not node is refused with one line, not a panic.
#[test]
fn census_of_a_non_node_process_is_a_clear_error() {
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let (status, _, stderr) = run_leakprobe(&["census", "--pid", &pid]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("leakprobe: error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
