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
        && frame["file"].as_str().is_some_and(|f| Path::new(f) == fixture(file).canonicalize().unwrap())
        && frame["line"] == line
}

/// The outstanding-bytes stacks of `category` that pass through fixture `file`.
fn stacks_through<'a>(report: &'a Value, category: &str, file: &str) -> Vec<&'a Value> {
    let path = fixture(file).canonicalize().unwrap();
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

#[test]
fn node20_names_the_allocating_function() {
    names_the_allocating_function(&official_node(20));
}

#[test]
fn node22_names_the_allocating_function() {
    names_the_allocating_function(&official_node(22));
}

#[test]
fn node24_names_the_allocating_function() {
    names_the_allocating_function(&official_node(24));
}

/// In V8's interpreter every function runs in the same bytecode handlers, so return addresses
/// alone would give every interpreted function one stack. With `--jitless` (everything
/// interpreted), the stacks still tell the functions apart and name node's own library
/// functions down to the allocation, with no "compiled" note.
#[test]
fn interpreted_frames_are_named_and_kept_apart() {
    let (report, _) = profile_with(&system_node(), &["--jitless"], "invoice-leak.js", &["--alloc-stacks"]);
    let stacks = stacks_through(&report, "external", "invoice-leak.js");
    let top = stacks.iter().max_by_key(|s| s["outstanding_bytes"].as_i64().unwrap()).expect("a stack");
    let js: Vec<&Value> = top["frames"].as_array().unwrap().iter().filter(|f| f["kind"] == "js").collect();
    assert!(js.iter().all(|f| f.get("note").is_none()), "{js:#?}");
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

/// A target started with `--perf-basic-prof` writes a perf map; with `--no-v8-names` (V8's
/// objects not read), its JIT frames are still named from it, with file and line.
#[test]
fn the_perf_map_names_jit_frames() {
    let mut node = Node::start(&system_node(), &["--perf-basic-prof"], "invoice-leak.js");
    let perf_map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", node.pid()));
    let mut leakprobe =
        Leakprobe::attach(node.pid(), &["--interval", "200ms", "--alloc-stacks", "--no-v8-names"]);
    node.go();
    assert!(node.wait(std::time::Duration::from_secs(120)).success());
    let report = leakprobe.report();
    let _ = std::fs::remove_file(&perf_map);
    assert_eq!(report["target"]["js_frames"], "perf map only (--no-v8-names)");
    let top = &report["suspects"][0];
    assert!(top["frames"].as_array().unwrap().iter().any(|f| is_js(f, "invoice-leak.js", RENDER)), "{top}");
}
