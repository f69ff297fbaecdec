//! Retainer chains (`leakprobe census --retainers-of TYPE`), checked against the oracle V8
//! itself writes: a `.heapsnapshot` taken right after the census. For each kind of leak the
//! fixture keeps, the holder leakprobe names (the chain's first variable or property) is the
//! snapshot's nearest named retainer of the leaking objects, and the census counts them within
//! 10% of the snapshot.

mod common;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// The parts of a `.heapsnapshot` the checks need: nodes and their retainers.
struct Snapshot {
    /// Node type and name, by node index.
    nodes: Vec<(String, String)>,
    /// By node: (retaining node, edge type, edge name).
    retainers: Vec<Vec<(usize, String, String)>>,
}

impl Snapshot {
    fn read(path: &Path) -> Snapshot {
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let meta = &v["snapshot"]["meta"];
        let strs = |x: &Value| -> Vec<String> {
            x.as_array().unwrap().iter().map(|s| s.as_str().unwrap_or("").to_string()).collect()
        };
        let (node_fields, edge_fields) = (strs(&meta["node_fields"]), strs(&meta["edge_fields"]));
        let (node_types, edge_types) = (strs(&meta["node_types"][0]), strs(&meta["edge_types"][0]));
        let strings = strs(&v["strings"]);
        let at = |fields: &[String], f: &str| fields.iter().position(|x| x == f).unwrap();
        let (n_type, n_name, n_edges) =
            (at(&node_fields, "type"), at(&node_fields, "name"), at(&node_fields, "edge_count"));
        let (e_type, e_name, e_to) =
            (at(&edge_fields, "type"), at(&edge_fields, "name_or_index"), at(&edge_fields, "to_node"));
        let raw_nodes: Vec<u64> =
            v["nodes"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        let raw_edges: Vec<u64> =
            v["edges"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        let (nf, ef) = (node_fields.len(), edge_fields.len());
        let nodes: Vec<(String, String)> = raw_nodes
            .chunks(nf)
            .map(|n| (node_types[n[n_type] as usize].clone(), strings[n[n_name] as usize].clone()))
            .collect();
        let mut retainers = vec![Vec::new(); nodes.len()];
        let mut edges = raw_edges.chunks(ef);
        for (from, n) in raw_nodes.chunks(nf).enumerate() {
            for e in edges.by_ref().take(n[n_edges] as usize) {
                let ty = edge_types[e[e_type] as usize].clone();
                // Element and hidden edges carry an index, the others a string.
                let name = match ty.as_str() {
                    "element" | "hidden" => e[e_name].to_string(),
                    _ => strings[e[e_name] as usize].clone(),
                };
                retainers[e[e_to] as usize / nf].push((from, ty, name));
            }
        }
        Snapshot { nodes, retainers }
    }

    /// Nodes of type `ty` (`object`, `closure`) named `name`.
    fn named(&self, ty: &str, name: &str) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].0 == ty && self.nodes[i].1 == name).collect()
    }

    /// One level up from `level`: the variable (context) and property names of its retainers,
    /// and the retainers not seen before (weak edges and shortcuts left out).
    fn level_up(&self, level: &[usize], seen: &mut HashSet<usize>) -> (HashSet<String>, Vec<usize>) {
        let mut names = HashSet::new();
        let mut next = Vec::new();
        for &x in level {
            for (from, ty, name) in &self.retainers[x] {
                match ty.as_str() {
                    "weak" | "shortcut" => continue,
                    "context" | "property" => {
                        names.insert(name.clone());
                    }
                    _ => {}
                }
                if seen.insert(*from) {
                    next.push(*from);
                }
            }
        }
        (names, next)
    }

    /// The names of the nearest named retainers of node `n`: going up its retainers level by
    /// level, the variable and property edges of the first level that has any.
    fn nearest_named(&self, n: usize) -> HashSet<String> {
        let mut level = vec![n];
        let mut seen = HashSet::from([n]);
        for _ in 0..12 {
            let (names, next) = self.level_up(&level, &mut seen);
            if !names.is_empty() {
                return names;
            }
            level = next;
        }
        HashSet::new()
    }

    /// Every variable and property name on the retaining paths of `nodes` (all of them, as
    /// leakprobe's samples may be any; up to 12 levels): what a chain may name.
    fn names_above(&self, nodes: &[usize]) -> HashSet<String> {
        let mut level: Vec<usize> = nodes.to_vec();
        let mut seen: HashSet<usize> = level.iter().copied().collect();
        let mut names = HashSet::new();
        for _ in 0..12 {
            let (found, next) = self.level_up(&level, &mut seen);
            names.extend(found);
            level = next;
        }
        names
    }

    /// The nearest named retainer most of `nodes` share (over at most 300 of them), and the
    /// share of them that have it.
    fn majority_holder(&self, nodes: &[usize]) -> (String, f64) {
        let mut votes: HashMap<String, u32> = HashMap::new();
        let sample: Vec<usize> = nodes.iter().step_by((nodes.len() / 300).max(1)).copied().collect();
        for &n in &sample {
            for name in self.nearest_named(n) {
                *votes.entry(name).or_default() += 1;
            }
        }
        let (name, count) = votes.into_iter().max_by_key(|(name, c)| (*c, name.clone())).unwrap_or_default();
        (name, count as f64 / sample.len().max(1) as f64)
    }
}

/// One leak: the fixture and how to start it, the leaking type as the census and the snapshot
/// name it, and the holder the fixture's source gives it.
struct Leak {
    fixture: &'static str,
    go: &'static str,
    /// Objects the fixture holds after 3 s at least (it leaks each kind at its own rate).
    held_at_least: u64,
    /// Census kind (`object`, `closure`, `string`, `array_buffer`, `handle`) and name.
    kind: &'static str,
    name: &'static str,
    /// Node type in the snapshot.
    snapshot_type: &'static str,
    holder: &'static str,
    /// Parts of the chain's text expected (the container said as DevTools would).
    chain_has: &'static [&'static str],
}

/// Runs `leak` on `node`: the census's count of the leaking type is within 10% of the
/// snapshot's, and the holder of its top chain (held by most samples) is the snapshot's nearest
/// named retainer of those objects, and the one the fixture's source gives.
fn names_the_holder(node: &Path, leak: &Leak) {
    let mut fixture = Node::start(node, &["--expose-gc"], leak.fixture);
    fixture.send(leak.go);
    std::thread::sleep(Duration::from_secs(3));
    let held = fixture.pause();
    assert!(held >= leak.held_at_least, "the fixture leaked only {held}");

    let pid = fixture.pid().to_string();
    let (status, stdout, stderr) =
        run_leakprobe(&["census", "--pid", &pid, "--json", "--retainers-of", leak.name]);
    assert!(status.success(), "leakprobe census failed ({status}): {stderr}");
    let census: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    let path = tempdir("retainers").join("after.heapsnapshot");
    fixture.send(&format!("snapshot {}", path.display()));
    fixture.stdout.wait_for("SNAPSHOT", Duration::from_secs(120));
    let snapshot = Snapshot::read(&path);
    let _ = std::fs::remove_file(&path);

    let objects = snapshot.named(leak.snapshot_type, leak.name);
    let oracle_count = objects.len() as u64;
    let counted = census_count(&census, leak.name, leak.kind);
    assert!(
        counted.abs_diff(oracle_count) * 10 <= oracle_count,
        "{}: census counts {counted} {}, the snapshot {oracle_count}",
        leak.go,
        leak.name
    );
    let (oracle_holder, share) = snapshot.majority_holder(&objects);
    assert!(
        share > 0.9,
        "{}: the snapshot's nearest named retainer {oracle_holder} holds only {share:.2}",
        leak.go
    );

    let types = census["retainers"]["types"].as_array().unwrap();
    let found =
        types.iter().find(|t| t["kind"] == leak.kind).unwrap_or_else(|| panic!("no retainers: {types:?}"));
    let top = &found["chains"][0];
    eprintln!(
        "{} {}: census {counted}, snapshot {oracle_count}; snapshot's holder {oracle_holder} ({share:.2}); leakprobe: {} [{} of {} samples]",
        node.display(),
        leak.go,
        top["text"],
        top["samples"],
        found["sampled"]
    );
    let holder = top["holder"].as_str().map(snapshot_name);
    assert_eq!(holder.as_deref(), Some(oracle_holder.as_str()), "{}: {found}", leak.go);
    assert_eq!(oracle_holder, leak.holder, "{}: the snapshot disagrees with the fixture's source", leak.go);
    let (samples, sampled) = (top["samples"].as_u64().unwrap(), found["sampled"].as_u64().unwrap());
    assert!(sampled >= 10 && samples * 3 >= sampled * 2, "{}: {found}", leak.go);
    for part in leak.chain_has {
        assert!(top["text"].as_str().unwrap().contains(part), "{}: {}", leak.go, top["text"]);
    }
    assert_eq!(top["complete"], true, "{}: {found}", leak.go);
    // No false holder: every chain printed, not only the top one, names only what the
    // snapshot has on the objects' retaining paths, and a complete chain names its holder.
    let above = snapshot.names_above(&objects);
    for chain in found["chains"].as_array().unwrap() {
        assert!(chain["complete"] == false || chain["holder"].is_string(), "{}: {chain}", leak.go);
        for name in chain["links"].as_array().unwrap().iter().filter_map(|l| l["name"].as_str()) {
            assert!(
                above.contains(&snapshot_name(name)),
                "{}: {name} is not on the snapshot's paths: {chain}",
                leak.go
            );
        }
    }
}

/// A name as the snapshot has it: a symbol-keyed property (`Symbol(kEvents)`) is `<symbol
/// kEvents>` there.
fn snapshot_name(name: &str) -> String {
    match name.strip_prefix("Symbol(").and_then(|s| s.strip_suffix(')')) {
        Some(description) => format!("<symbol {description}>"),
        None => name.to_string(),
    }
}

const MAP_CACHE: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go map-cache",
    held_at_least: 1_000,
    kind: "object",
    name: "CachedResponse",
    snapshot_type: "object",
    holder: "responseCache",
    chain_has: &["responseCache (Map, "],
};
const ARRAY: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go array",
    held_at_least: 1_000,
    kind: "object",
    name: "LogEntry",
    snapshot_type: "object",
    holder: "requestLog",
    chain_has: &["requestLog (Array, "],
};
const LISTENERS: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go listeners",
    held_at_least: 1_000,
    kind: "closure",
    name: "onData",
    snapshot_type: "closure",
    holder: "data",
    chain_has: &["bus (EventEmitter)"],
};
const TIMERS: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go timers",
    held_at_least: 1_000,
    kind: "closure",
    name: "onExpiry",
    snapshot_type: "closure",
    holder: "_onTimeout",
    // As the fixture's setTimeout has it.
    chain_has: &["_onTimeout ← Timeout (setTimeout, 3,600,000 ms, in a timer list)"],
};
const BUFFERS_MAP: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go buffers-map",
    held_at_least: 1_000,
    kind: "array_buffer",
    name: "ArrayBuffer",
    snapshot_type: "object",
    holder: "blobs",
    chain_has: &["blobs (Map, "],
};
const WRITABLE: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go writable",
    held_at_least: 1_000,
    kind: "array_buffer",
    name: "ArrayBuffer",
    snapshot_type: "object",
    holder: "chunk",
    chain_has: &["a stream's buffered writes"],
};
const SCOPE: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go scope",
    held_at_least: 1_000,
    kind: "object",
    name: "UploadBody",
    snapshot_type: "object",
    holder: "upload",
    chain_has: &[
        "upload ← scope of startUpload (retainer-leaks.js) ← closure onProgress (retainer-leaks.js) ← progress (Array, ",
        "uploads (EventEmitter) ← module scope of retainer-leaks.js",
    ],
};
const INTERVALS: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go intervals",
    held_at_least: 1_000,
    kind: "object",
    name: "Connection",
    snapshot_type: "object",
    holder: "conn",
    chain_has: &[
        "conn ← scope of keepAlive (retainer-leaks.js) ← _onTimeout (closure heartbeat (retainer-leaks.js)) ← Timeout (setInterval, every 3,600,000 ms, in a timer list)",
    ],
};
const PROMISES: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go promises",
    held_at_least: 1_000,
    kind: "object",
    name: "RequestContext",
    snapshot_type: "object",
    holder: "ctx",
    chain_has: &[
        "ctx ← scope of awaitUpstream (retainer-leaks.js) ← closure onSettled (retainer-leaks.js) ← (PromiseReaction) (awaiting a pending Promise)",
    ],
};
const ZLIB: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go zlib",
    // Each stream keeps about 200 KiB of native memory: the fixture leaks few.
    held_at_least: 100,
    kind: "handle",
    name: "Zlib",
    snapshot_type: "object",
    holder: "_handle",
    chain_has: &["_handle ← Deflate ← openStreams (Array, "],
};
const CIPHERS: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go ciphers",
    held_at_least: 1_000,
    kind: "handle",
    name: "CipherBase",
    snapshot_type: "object",
    holder: "<symbol kHandle>",
    chain_has: &["Symbol(kHandle) ← Cipheriv ← sessionsByKey (Map, "],
};
const STRINGS: Leak = Leak {
    fixture: "retainer-leaks.js",
    go: "go strings",
    held_at_least: 1_000,
    // The pages are template literals: concatenations of the request's body, a type of their
    // own in the census as in DevTools, apart from the heap's other strings.
    kind: "string",
    name: "(concatenated string)",
    snapshot_type: "concatenated string",
    holder: "renderedPages",
    chain_has: &["renderedPages (Map, "],
};
const SET: Leak = Leak {
    fixture: "census-set-leak.js",
    go: "go",
    held_at_least: 1_000,
    kind: "object",
    name: "Session",
    snapshot_type: "object",
    holder: "openSessions",
    chain_has: &["openSessions (Set, "],
};
const WORKER_JOBS: Leak = Leak {
    fixture: "census-worker-leak.js",
    go: "go jobs",
    held_at_least: 1_000,
    kind: "object",
    name: "FinishedJob",
    snapshot_type: "object",
    holder: "finishedJobs",
    chain_has: &["finishedJobs (Set, "],
};
const WORKER: Leak = Leak {
    fixture: "census-worker-leak.js",
    go: "go",
    held_at_least: 1_000,
    kind: "object",
    name: "WorkerRecord",
    snapshot_type: "object",
    holder: "records",
    chain_has: &["records (Array, "],
};

on_nodes!(|node| names_the_holder(node, &MAP_CACHE);
    system_node_map_cache: system,
    node18_map_cache: 18,
    node20_map_cache: 20,
    node22_map_cache: 22,
    node24_map_cache: 24,
);

on_nodes!(|node| names_the_holder(node, &INTERVALS);
    system_node_intervals: system,
    node18_intervals: 18,
    node20_intervals: 20,
    node22_intervals: 22,
    node24_intervals: 24,
);

on_nodes!(|node| names_the_holder(node, &PROMISES);
    system_node_promises: system,
    node18_promises: 18,
    node20_promises: 20,
    node22_promises: 22,
    node24_promises: 24,
);

on_nodes!(|node| names_the_holder(node, &ARRAY);
    system_node_array: system,
    node18_array: 18,
    node20_array: 20,
    node22_array: 22,
    node24_array: 24,
);

on_nodes!(|node| names_the_holder(node, &LISTENERS);
    system_node_listeners: system,
    node18_listeners: 18,
    node20_listeners: 20,
    node22_listeners: 22,
    node24_listeners: 24,
);

on_nodes!(|node| names_the_holder(node, &TIMERS);
    system_node_timers: system,
    node18_timers: 18,
    node20_timers: 20,
    node22_timers: 22,
    node24_timers: 24,
);

on_nodes!(|node| names_the_holder(node, &BUFFERS_MAP);
    system_node_buffers_in_a_map: system,
    node18_buffers_in_a_map: 18,
    node20_buffers_in_a_map: 20,
    node22_buffers_in_a_map: 22,
    node24_buffers_in_a_map: 24,
);

on_nodes!(|node| names_the_holder(node, &WRITABLE);
    system_node_buffers_in_a_writable: system,
    node18_buffers_in_a_writable: 18,
    node20_buffers_in_a_writable: 20,
    node22_buffers_in_a_writable: 22,
    node24_buffers_in_a_writable: 24,
);

on_nodes!(|node| names_the_holder(node, &SCOPE);
    system_node_scope: system,
    node18_scope: 18,
    node20_scope: 20,
    node22_scope: 22,
    node24_scope: 24,
);

on_nodes!(|node| names_the_holder(node, &ZLIB);
    system_node_zlib: system,
    node18_zlib: 18,
    node20_zlib: 20,
    node22_zlib: 22,
    node24_zlib: 24,
);

on_nodes!(|node| names_the_holder(node, &CIPHERS);
    system_node_ciphers: system,
    node18_ciphers: 18,
    node20_ciphers: 20,
    node22_ciphers: 22,
    node24_ciphers: 24,
);

on_nodes!(|node| names_the_holder(node, &STRINGS);
    system_node_strings: system,
    node18_strings: 18,
    node20_strings: 20,
    node22_strings: 22,
    node24_strings: 24,
);

on_nodes!(|node| names_the_holder(node, &SET);
    system_node_set: system,
    node18_set: 18,
    node20_set: 20,
    node22_set: 22,
    node24_set: 24,
);

on_nodes!(|node| names_the_holder(node, &WORKER);
    system_node_worker: system,
    node18_worker: 18,
    node20_worker: 20,
    node22_worker: 22,
    node24_worker: 24,
);

on_nodes!(|node| names_the_holder(node, &WORKER_JOBS);
    system_node_worker_jobs: system,
    node18_worker_jobs: 18,
    node20_worker_jobs: 20,
    node22_worker_jobs: 22,
    node24_worker_jobs: 24,
);

/// The growing type of a session's census (`report.heap.census`) whose `field` is `value`.
fn growing<'a>(census: &'a Value, field: &str, value: &str) -> &'a Value {
    census["growing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g[field] == value)
        .unwrap_or_else(|| panic!("{census}"))
}

/// The censuses' CPU budget the session tests give (a percentage of the target's CPU since
/// attach): the default (1%, 3% of the first minute) is for a service watched for minutes, and a debug build's census
/// of these heaps takes 0.4 s, so a 20 s window would get one census, and no growth.
const CENSUS_BUDGET: &str = "50";

/// In a profiling session (`leakprobe --pid N`): censuses after main-thread mark-compacts
/// find the growing `Session` type and its holder (`report.heap.census`), the summary says
/// who retains it under the heap's verdict, and the incident folder holds the census table.
/// Censuses are at least 5 s apart, and node 18 once ran all its mark-compacts of the window
/// within such a wait: 12 s in, the fixture stops leaking and runs two full GCs, so that a
/// second census is due whatever V8's own timing.
fn session_reports_who_holds_the_growing_type(node: &Path) {
    let mut fixture = Node::start(node, &["--expose-gc"], "census-set-leak.js");
    let mut leakprobe = Leakprobe::attach(
        fixture.pid(),
        &["--duration", "20s", "--interval", "500ms", "--census-budget", CENSUS_BUDGET],
    );
    fixture.go();
    std::thread::sleep(Duration::from_secs(12));
    fixture.send("pause");
    let report = leakprobe.report();
    let census = &report["heap"]["census"];
    assert_eq!(census["status"], "done", "{census}");
    assert!(census["censuses"].as_u64().unwrap() >= 2, "{census}");
    assert_eq!(census["stopped_early"], Value::Null, "{census}");
    let isolates = census["isolates"].as_array().unwrap();
    assert!(!isolates.is_empty() && isolates.iter().all(|i| i["committed_bytes"].as_u64().unwrap() > 0));
    let session = growing(census, "label", "Session");
    assert!(session["count_delta"].as_i64().unwrap() > 1000, "{session}");
    assert_eq!(session["retained_by"][0]["holder"], "openSessions", "{session}");
    let summary = std::fs::read_to_string(leakprobe.out.join("summary.txt")).unwrap();
    // The summary says it under the heap's verdict: when the heap grows, or could not be
    // judged (a heap judged flat at its troughs has no line to say it under; census.txt does).
    let heap = report["verdict"].as_array().unwrap().iter().find(|v| v["category"] == "v8_heap").cloned();
    if heap.is_some_and(|v| v["growing"] == true || v["next_step"].is_string()) {
        assert!(summary.contains("Retained by: openSessions (Set, "), "{summary}");
    }
    let table = std::fs::read_to_string(leakprobe.out.join("census.txt")).unwrap();
    assert!(table.contains("Session") && table.contains("Retained by: openSessions"), "{table}");
    let cost = &census["cost"];
    eprintln!("{}: census in the session: {} censuses, cost {cost}", node.display(), census["censuses"]);
    assert!(cost["cpu_s"].as_f64().unwrap() > 0.0 && cost["bytes_read"].as_u64().unwrap() > 0, "{cost}");
}

on_nodes!(session_reports_who_holds_the_growing_type;
    a_session_reports_who_holds_the_growing_type: system,
    node18_session_reports_who_holds_the_growing_type: 18,
    node24_session_reports_who_holds_the_growing_type: 24,
);

/// Buffers kept in a Map grow external memory: the summary says who keeps them under the
/// growing external category (from the census's growing ArrayBuffers), once.
#[test]
fn a_session_says_who_keeps_the_growing_buffers() {
    let mut fixture = Node::start(&system_node(), &["--expose-gc"], "retainer-leaks.js");
    let mut leakprobe = Leakprobe::attach(
        fixture.pid(),
        &["--duration", "20s", "--interval", "500ms", "--census-budget", CENSUS_BUDGET],
    );
    fixture.send("go buffers-map");
    let report = leakprobe.report();
    let census = &report["heap"]["census"];
    let buffers = growing(census, "kind", "array_buffer");
    assert_eq!(buffers["retained_by"][0]["holder"], "blobs", "{buffers}");
    let summary = std::fs::read_to_string(leakprobe.out.join("summary.txt")).unwrap();
    // The verdict's line for external (the memory table above has one too).
    let grows = summary.find("\nWhat grows").unwrap_or_else(|| panic!("no verdict:\n{summary}"));
    let external = grows
        + summary[grows..]
            .find("\n  external  ")
            .unwrap_or_else(|| panic!("external does not grow:\n{summary}"));
    let suspects = summary.find("\nLeak suspects").unwrap_or(summary.len());
    let holder = "Retained by: Uint8Array ← blobs (Map, ";
    assert!(summary[external..suspects].contains(holder), "{summary}");
    assert_eq!(summary.matches(holder).count(), 1, "{summary}");
}

/// zlib streams never closed grow native memory (zlib's state, malloc'd by node's binding):
/// the summary says who keeps their `Zlib` handles under the growing native category, once,
/// and not under the V8 heap.
#[test]
fn a_session_says_who_keeps_the_growing_native_handles() {
    let mut fixture = Node::start(&system_node(), &["--expose-gc"], "retainer-leaks.js");
    let mut leakprobe = Leakprobe::attach(
        fixture.pid(),
        &["--duration", "20s", "--interval", "500ms", "--census-budget", CENSUS_BUDGET],
    );
    fixture.send("go zlib");
    let report = leakprobe.report();
    let census = &report["heap"]["census"];
    let handles = growing(census, "kind", "handle");
    assert_eq!(handles["label"], "Zlib", "{census}");
    assert_eq!(handles["retained_by"][0]["holder"], "_handle", "{handles}");
    let summary = std::fs::read_to_string(leakprobe.out.join("summary.txt")).unwrap();
    let grows = summary.find("\nWhat grows").unwrap_or_else(|| panic!("no verdict:\n{summary}"));
    let native = grows
        + summary[grows..]
            .find("\n  native    ")
            .unwrap_or_else(|| panic!("native does not grow:\n{summary}"));
    let suspects = summary.find("\nLeak suspects").unwrap_or(summary.len());
    let holder = "Retained by: _handle ← Deflate ← openStreams (Array, ";
    assert!(summary[native..suspects].contains(holder), "{summary}");
    assert_eq!(summary.matches(holder).count(), 1, "{summary}");
}

/// The target is never paused: a ticker over a 250 MiB heap keeps ticking while leakprobe takes
/// a census and searches retainers. Its longest gap between ticks during the census is no
/// longer than without leakprobe (give or take scheduling noise on a shared machine), and far
/// shorter than the census: a process stopped for the census would show one gap as long.
#[test]
fn a_census_never_pauses_the_target() {
    let mut fixture = Node::start(&system_node(), &["--expose-gc"], "ticker-heap.js");
    let gaps = |lines: &[String], within: Option<(u128, u128)>| -> Vec<f64> {
        lines
            .iter()
            .filter_map(|l| {
                let mut f = l.split_whitespace().skip(2);
                let gap: f64 = f.next()?.parse().ok()?;
                let at: u128 = f.next()?.parse().ok()?;
                within.is_none_or(|(a, b)| (a..=b).contains(&at)).then_some(gap)
            })
            .collect()
    };
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    fixture.stdout.for_a_while(Duration::from_secs(1));
    let without = gaps(&fixture.stdout.for_a_while(Duration::from_secs(6)), None);
    let max_without = without.iter().cloned().fold(0.0, f64::max);

    let pid = fixture.pid().to_string();
    let census = std::thread::spawn(move || {
        let start = now_ms();
        let (status, stdout, stderr) =
            run_leakprobe(&["census", "--pid", &pid, "--json", "--retainers-of", "Entry"]);
        (start, now_ms(), status, stdout, stderr)
    });
    let lines = fixture.stdout.for_a_while(Duration::from_secs(3));
    let (start, end, status, stdout, stderr) = census.join().unwrap();
    let mut lines = lines;
    lines.extend(fixture.stdout.for_a_while(Duration::from_millis(500)));
    assert!(status.success(), "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    let entries: u64 = result["isolates"][0]["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "Entry")
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert!(entries >= 1_350_000, "the census counted {entries} Entry objects");
    assert_eq!(result["retainers"]["types"][0]["chains"][0]["holder"], "table", "{}", result["retainers"]);
    let during = gaps(&lines, Some((start, end)));
    let max_during = during.iter().cloned().fold(0.0, f64::max);
    let took = (end - start) as f64;
    eprintln!(
        "census and retainers took {took:.0} ms ({} MiB read); ticks: {} without leakprobe (max gap {max_without:.1} ms), {} during the census (max gap {max_during:.1} ms)",
        (result["bytes_read"].as_u64().unwrap() + result["retainers"]["bytes_read"].as_u64().unwrap()) >> 20,
        without.len(),
        during.len()
    );
    assert!(took > 300.0, "the census took only {took} ms: too short to show a pause");
    assert!(during.len() as f64 >= took / 10.0 * 0.5, "{} ticks in {took} ms", during.len());
    assert!(
        // Scheduling noise on a shared 2-core machine (the census itself takes a core) stays
        // well under a stop of the census's length.
        max_during <= (2.0 * max_without).max(max_without + 100.0),
        "{max_during} ms against {max_without} ms"
    );
    assert!(max_during < took / 4.0, "a gap of {max_during} ms in a census of {took} ms");
}

/// A leak inside a worker thread, in the default mode: the worker's heap is judged at the
/// worker's own full GCs (the fixture runs one in each isolate every 4 s, as memory pressure
/// would: a heap that only grows gets its full GCs further and further apart, two in 45 s on
/// a loaded machine), and grows about as fast as the
/// worker's own `v8.getHeapStatistics()` says (its committed heap, read by the fixture at the
/// window's start and end); the census's growing `WorkerRecord`s (in that heap) and their
/// holder are said under the worker, and so is the array the worker grows. The main isolate,
/// which only churns, has no suspect.
#[test]
fn a_leak_in_a_worker_is_judged_at_the_workers_own_gcs() {
    let mut fixture = Node::start(&system_node(), &["--expose-gc"], "census-worker-leak.js");
    let heap = |fixture: &mut Node| -> f64 {
        fixture.send("heap");
        let line = fixture.stdout.wait_for("HEAP ", Duration::from_secs(10));
        line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap()
    };
    let mut leakprobe = Leakprobe::attach(
        fixture.pid(),
        &["--duration", "30s", "--interval", "500ms", "--census-budget", CENSUS_BUDGET],
    );
    fixture.go();
    let started = (Instant::now(), heap(&mut fixture));
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(4));
        fixture.send("gc");
    }
    std::thread::sleep(Duration::from_secs(2));
    let oracle = (heap(&mut fixture) - started.1) / started.0.elapsed().as_secs_f64();
    let report = leakprobe.report();
    let verdicts = report["verdict"].as_array().unwrap();
    let summary = std::fs::read_to_string(leakprobe.out.join("summary.txt")).unwrap();
    let worker = verdicts
        .iter()
        .find(|v| v["worker"].is_object())
        .unwrap_or_else(|| panic!("no verdict of the worker's heap:\n{summary}"));
    assert_eq!(worker["growing"], true, "{worker}\n{summary}");
    let tid = worker["worker"]["tid"].as_u64().unwrap();
    assert!(tid != fixture.pid() as u64, "{worker}");
    assert!(Path::new(&format!("/proc/{}/task/{tid}", fixture.pid())).exists(), "{worker}");
    let rate = worker["growth_bytes_per_s"].as_f64().unwrap();
    eprintln!("worker heap +{rate:.0} B/s at its full GCs, its own statistics +{oracle:.0} B/s");
    assert!(
        (0.5..=2.0).contains(&(rate / oracle)),
        "worker heap +{rate:.0} B/s, its own statistics +{oracle:.0} B/s"
    );
    // The worker's heap, as the census names isolates, is where the WorkerRecords grow.
    let records = growing(&report["heap"]["census"], "label", "WorkerRecord");
    assert_eq!(worker["worker"]["heap"], records["heap"], "{worker}\n{records}");
    let line = format!("v8 heap of worker thread {tid} (");
    let under = summary.find(&line).unwrap_or_else(|| panic!("{summary}"));
    let next = summary[under + 1..].find("\n  v8 heap ").map_or(summary.len(), |i| under + 1 + i);
    let section = &summary[under..next.min(summary.find("\nLeak suspects").unwrap_or(summary.len()))];
    assert!(
        section.contains("WorkerRecord") && section.contains("Retained by: records (Array, "),
        "{summary}"
    );
    // The worker is told by the scripts its isolate compiled (read from its heap): the
    // fixture's own file, which the worker runs.
    let scripts = worker["worker"]["scripts"].as_array().unwrap();
    let file = fixture_path("census-worker-leak.js");
    assert!(scripts.iter().any(|s| s.as_str().map(Path::new) == Some(&file)), "{worker}");
    assert!(scripts.iter().all(|s| !s.as_str().unwrap().starts_with("node:")), "{worker}");
    let first = section.lines().next().unwrap();
    assert!(first.contains(" running ") && first.contains("census-worker-leak.js"), "{summary}");
    let main = verdicts.iter().find(|v| v["category"] == "v8_heap" && v["worker"].is_null()).unwrap();
    assert_eq!(main["growing"], false, "the main isolate only churns: {main}\n{summary}");
    let suspects = report["suspects"].as_array().unwrap();
    assert!(!suspects.is_empty(), "{summary}");
    for s in suspects {
        assert_eq!(s["evidence"]["worker"], tid, "a suspect of the main isolate: {s}\n{summary}");
    }
}

/// A leak inside a worker thread, in a profiling session: the RSS split's V8 heap counts the
/// worker's isolate too (listed apart from the main one), and the census finds the worker's
/// growing `WorkerRecord`s in the worker's heap, held by its `records` array.
#[test]
fn a_session_counts_every_isolate() {
    let mut fixture = Node::start(&system_node(), &["--expose-gc"], "census-worker-leak.js");
    let mut leakprobe = Leakprobe::attach(
        fixture.pid(),
        &["--duration", "20s", "--interval", "500ms", "--census-budget", CENSUS_BUDGET],
    );
    fixture.go();
    // Full GCs on the main thread (where censuses are read) while the worker leaks.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        fixture.send("gc");
        std::thread::sleep(Duration::from_secs(4));
    }
    let report = leakprobe.report();
    let memory = &report["memory"];
    let isolates =
        memory["v8_heap_isolates"].as_array().unwrap_or_else(|| panic!("{}", report["heap"]["census"]));
    assert!(isolates.len() >= 2, "{isolates:?}");
    assert_eq!(isolates.iter().filter(|i| i["main"] == true).count(), 1, "{isolates:?}");
    let worker = isolates.iter().find(|i| i["main"] == false).unwrap();
    let others = memory["v8_heap_other_isolates_bytes"].as_u64().unwrap();
    assert!(others >= worker["committed_bytes"].as_u64().unwrap() && others > 4 << 20, "{memory}");
    let v8 = memory["v8_heap_bytes"].as_u64().unwrap();
    assert!(v8 > others, "v8 heap {v8} should hold the main isolate and the others' {others}");
    let census = &report["heap"]["census"];
    let records = growing(census, "label", "WorkerRecord");
    assert_eq!(records["heap"], worker["heap"], "{census}");
    assert_eq!(records["retained_by"][0]["holder"], "records", "{records}");
    let summary = std::fs::read_to_string(leakprobe.out.join("summary.txt")).unwrap();
    assert!(summary.contains("worker") && summary.contains("isolates;"), "{summary}");
}
