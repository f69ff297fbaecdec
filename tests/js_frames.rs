//! JavaScript frames named with no flags on the target: the kernel keeps each JS frame's
//! function with the stack, and leakprobe names it (function, script, line) from the node
//! binary's V8 metadata. Specified on fixtures whose allocations come from known functions.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// The distinctive function of `invoice-leak.js` and the line it starts on.
const RENDER: (&str, u64) = ("renderInvoicePdf", 8);

/// Whether `frame` is JS function `name` defined at `line` of fixture `file`.
fn is_js(frame: &Value, file: &str, (name, line): (&str, u64)) -> bool {
    frame["kind"] == "js"
        && frame["name"] == name
        && frame["file"].as_str().is_some_and(|f| Path::new(f) == fixture_path(file))
        && frame["line"] == line
}

/// The outstanding-bytes stacks of `category` that pass through fixture `file`.
fn stacks_through<'a>(report: &'a Value, category: &str, file: &str) -> Vec<&'a Value> {
    let path = fixture_path(file);
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["category"] == category && s["outstanding_bytes"].as_i64().unwrap() > 0)
        .filter(|s| {
            s["frames"].as_array().unwrap().iter().any(|f| f["file"].as_str().map(Path::new) == Some(&path))
        })
        .collect()
}

/// Buffers allocated by `renderInvoicePdf`: the top suspect names it with its file and line,
/// and so do at least 90% of the external stacks that pass through the fixture.
fn names_the_allocating_function(node: &Path) {
    let (report, _) = profile_with(node, &[], "invoice-leak.js", &["--alloc-stacks"]);
    assert_eq!(report["target"]["js_frames"], "v8 metadata", "{}", report["target"]);
    let top = &report["suspects"][0];
    assert_eq!(top["category"], "external", "{top}");
    let frames = top["frames"].as_array().unwrap();
    assert!(frames.iter().any(|f| is_js(f, "invoice-leak.js", RENDER)), "{top}");
    let stacks = stacks_through(&report, "external", "invoice-leak.js");
    let named = stacks
        .iter()
        .filter(|s| s["frames"].as_array().unwrap().iter().any(|f| is_js(f, "invoice-leak.js", RENDER)))
        .count();
    assert!(!stacks.is_empty());
    assert!(
        named * 10 >= stacks.len() * 9,
        "{named} of {} stacks name {}: {stacks:#?}",
        stacks.len(),
        RENDER.0
    );
}

on_nodes!(names_the_allocating_function;
    node18_names_the_allocating_function: 18,
    node20_names_the_allocating_function: 20,
    node22_names_the_allocating_function: 22,
    node24_names_the_allocating_function: 24,
);

/// A service is usually busy when leakprobe attaches: the stacks taken from the first probe
/// hit on name their JavaScript as later ones do. (The kernel's walk keeps each JS frame's
/// function only once it has V8's frame layout; stacks taken before had unnamed JIT frames,
/// and a growing array's first large store, whose stack names its series, is often one.)
#[test]
fn a_service_busy_at_attach_has_its_first_stacks_named() {
    let mut fixture = Node::start(&system_node(), &[], "invoice-leak.js");
    fixture.go();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut leakprobe = Leakprobe::attach(fixture.pid(), &["--interval", "200ms", "--alloc-stacks"]);
    assert!(fixture.wait(std::time::Duration::from_secs(120)).success());
    let report = leakprobe.report();
    assert_eq!(report["target"]["js_frames"], "v8 metadata", "{}", report["target"]);
    // Every stack that runs the fixture's JIT code, named or not, and those that name it.
    let external: Vec<&Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["category"] == "external")
        .filter(|s| s["frames"].as_array().unwrap().iter().any(|f| f["kind"] == "js" || f["kind"] == "jit"))
        .collect();
    let named = external
        .iter()
        .filter(|s| s["frames"].as_array().unwrap().iter().any(|f| is_js(f, "invoice-leak.js", RENDER)))
        .count();
    assert!(!external.is_empty(), "{report}");
    assert_eq!(named, external.len(), "stacks not naming {}: {external:#?}", RENDER.0);
}

/// In V8's interpreter every function runs in the same bytecode handlers, so return addresses
/// alone would give every interpreted function one stack. With `--jitless` (everything
/// interpreted), the stacks still tell the functions apart and name node's own library
/// functions down to the allocation, each noted `interpreted`.
#[test]
fn interpreted_frames_are_named_and_kept_apart() {
    let (report, _) = profile_with(&system_node(), &["--jitless"], "invoice-leak.js", &["--alloc-stacks"]);
    let stacks = stacks_through(&report, "external", "invoice-leak.js");
    let top = stacks.iter().max_by_key(|s| s["outstanding_bytes"].as_i64().unwrap()).expect("a stack");
    let js: Vec<&Value> = top["frames"].as_array().unwrap().iter().filter(|f| f["kind"] == "js").collect();
    assert!(js.iter().all(|f| f["note"] == "interpreted"), "{js:#?}");
    let names: Vec<&str> = js.iter().map(|f| f["name"].as_str().unwrap()).collect();
    let render = names.iter().position(|n| *n == RENDER.0).unwrap_or_else(|| panic!("{names:?}"));
    assert!(names[..render].contains(&"alloc"), "Buffer.alloc is named inside {}: {names:?}", RENDER.0);
    assert!(js.iter().any(|f| f["name"] == "alloc" && f["file"] == "node:buffer"), "{js:#?}");
    // Another function (makeInvoice) allocates no Buffers: no stack names it.
    assert!(stacks.iter().all(|s| s["frames"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["name"] != "makeInvoice")));
}

/// Profiles `invoice-leak.js` on a node started with `--perf-basic-prof`, under
/// `leakprobe --alloc-stacks extra`; returns the report and the perf map node wrote (removed).
fn profile_writing_perf_map(extra: &[&str]) -> (Value, String) {
    let mut node = Node::start(&system_node(), &["--perf-basic-prof"], "invoice-leak.js");
    let perf_map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", node.pid()));
    let mut args = vec!["--interval", "200ms", "--alloc-stacks"];
    args.extend_from_slice(extra);
    let mut leakprobe = Leakprobe::attach(node.pid(), &args);
    node.go();
    assert!(node.wait(std::time::Duration::from_secs(120)).success());
    let report = leakprobe.report();
    let text = std::fs::read_to_string(&perf_map).unwrap();
    let _ = std::fs::remove_file(&perf_map);
    (report, text)
}

/// A target started with `--perf-basic-prof` writes a perf map; with `--no-v8-names` (V8's
/// objects not read), its JIT frames are still named from it, with file and line.
#[test]
fn the_perf_map_names_jit_frames() {
    let (report, _) = profile_writing_perf_map(&["--no-v8-names"]);
    assert_eq!(report["target"]["js_frames"], "perf map only (--no-v8-names)");
    let top = &report["suspects"][0];
    assert!(top["frames"].as_array().unwrap().iter().any(|f| is_js(f, "invoice-leak.js", RENDER)), "{top}");
}

/// V8's own perf map is an independent oracle for the names and lines leakprobe reads from
/// V8's objects: every JS frame of the profiled stacks that the perf map also lists (same
/// function and script) has a line the perf map gives it — including node's own library,
/// whose sources live outside V8's heap.
#[test]
fn names_read_from_v8_agree_with_the_perf_map() {
    let (report, text) = profile_writing_perf_map(&[]);
    let listed: Vec<(String, Option<String>, Option<u32>)> = text
        .lines()
        .filter_map(|l| {
            let (_, _, symbol) = leakprobe::process::perfmap::parse_line(l)?;
            let f = leakprobe::stacks::symbolize::perf_map_frame(symbol, 0)?;
            Some((f.name, f.file, f.line))
        })
        .collect();
    let mut compared = 0;
    let mut internal = 0;
    for stack in report["stacks"].as_array().unwrap().iter().take(20) {
        for f in stack["frames"].as_array().unwrap().iter().filter(|f| f["kind"] == "js") {
            let (name, file) = (f["name"].as_str().unwrap(), f["file"].as_str().map(String::from));
            let lines: Vec<Option<u32>> =
                listed.iter().filter(|(n, fl, _)| n == name && *fl == file).map(|(_, _, l)| *l).collect();
            if lines.is_empty() {
                continue;
            }
            let line = f["line"].as_u64().map(|l| l as u32);
            assert!(
                lines.contains(&line),
                "{name} in {file:?}: leakprobe says line {line:?}, the perf map {lines:?}"
            );
            compared += 1;
            internal += usize::from(file.is_some_and(|f| f.starts_with("node:")));
        }
    }
    assert!(
        compared >= 10 && internal >= 3,
        "only {compared} frames ({internal} of node's library) compared"
    );
}

/// The JS call chain of `inlined-leak.js` below its timer callback, innermost first.
const RECEIPT_CHAIN: [&str; 4] = ["stampReceipt", "issueReceipts", "(anonymous)", "listOnTimeout"];

/// The (inlined function, function compiled) pairs of V8's `--trace-turbo-inlining` lines:
/// `Inlining 0x… {0x… <SharedFunctionInfo f>} into 0x… {0x… <SharedFunctionInfo g>}`.
fn turbofan_inlined(stdout: &[String]) -> Vec<(String, String)> {
    let name = |s: &str| {
        let name = s.split("<SharedFunctionInfo").nth(1)?.split('>').next()?.trim();
        Some(if name.is_empty() { "(anonymous)".to_string() } else { name.to_string() })
    };
    stdout
        .iter()
        .filter_map(|l| l.strip_prefix("Inlining ")?.split_once(" into "))
        .filter_map(|(f, g)| Some((name(f)?, name(g)?)))
        .collect()
}

/// `stampReceipt` leaks and is small: the optimizing compilers inline it into its caller (and
/// node's `Buffer.alloc` into it), so physical frames hold several functions. Expanded from
/// the code's inlining positions, at least 90% of the stacks through the fixture still read
/// its whole call chain, and the inlined frames say so; V8's own trace (`--trace-turbo-inlining`
/// on the target) confirms some of the pairs leakprobe reports: inlined function, and the
/// function whose frame holds it.
fn expands_inlined_frames(node: &Path) {
    let (report, stdout) =
        profile_with(node, &["--trace-turbo-inlining"], "inlined-leak.js", &["--alloc-stacks"]);
    let v8_inlined = turbofan_inlined(&stdout);
    assert!(!v8_inlined.is_empty(), "V8 inlined nothing: {stdout:?}");
    let stacks = stacks_through(&report, "external", "inlined-leak.js");
    assert!(!stacks.is_empty());
    let mut whole = 0;
    let mut pairs = Vec::new();
    for stack in &stacks {
        let js: Vec<&Value> =
            stack["frames"].as_array().unwrap().iter().filter(|f| f["kind"] == "js").collect();
        let names: Vec<&str> = js.iter().map(|f| f["name"].as_str().unwrap()).collect();
        whole += usize::from(names.windows(RECEIPT_CHAIN.len()).any(|w| w == RECEIPT_CHAIN));
        // Each inlined frame and the next frame that is not inlined: the physical one.
        for (i, f) in js.iter().enumerate().filter(|(_, f)| f["note"] == "inlined") {
            let holder =
                js[i + 1..].iter().find(|g| g["note"] != "inlined").expect("an inlined frame has a holder");
            pairs.push((
                f["name"].as_str().unwrap().to_string(),
                holder["name"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(
        whole * 10 >= stacks.len() * 9,
        "{whole} of {} stacks read {RECEIPT_CHAIN:?}: {stacks:#?}",
        stacks.len()
    );
    assert!(
        pairs.iter().any(|p| v8_inlined.contains(p)),
        "none of {pairs:?} is in V8's trace {v8_inlined:?}"
    );
    // V8 may free a frame's code (replaced, or moved by a compacting GC) before leakprobe reads
    // it, milliseconds after the stack is first seen: such frames say so, and stay rare.
    let fixture_frames: Vec<&Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap())
        .filter(|f| f["file"].as_str().is_some_and(|f| f.ends_with("inlined-leak.js")))
        .collect();
    let unexpanded: Vec<&&Value> =
        fixture_frames.iter().filter(|f| f["note"] == "compiled: inlined calls not expanded").collect();
    assert!(
        unexpanded.len() * 10 <= fixture_frames.len(),
        "{} of {} fixture frames not expanded: {unexpanded:#?}",
        unexpanded.len(),
        fixture_frames.len()
    );
}

on_nodes!(expands_inlined_frames;
    node20_expands_inlined_frames: 20,
    node22_expands_inlined_frames: 22,
    node24_expands_inlined_frames: 24,
    /// Node 18's V8 keeps instructions inside its `Code` objects, not in `InstructionStream`s: the
    /// same expansion from the other layout.
    node18_expands_inlined_frames: 18,
);
