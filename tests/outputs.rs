//! The incident folder's flamegraphs and pprof profiles, checked by independent readers:
//! `leakprobe render DIR` on a hand-made report.json, then every SVG opened in a real headless
//! browser (Debian's chromium: its DOM after the SVG's own script ran, and a screenshot whose
//! pixels are decoded), and every profile read back by `go tool pprof` (Debian's golang-go).
//! Both come with `cargo xtask setup`. The last test runs a live session against a leaking node
//! fixture (root needed).

mod common;

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use leakprobe::outputs::{flamegraph::frame_color, folded::FrameKind};
use serde_json::{json, Value};

fn frame(name: &str, kind: &str, addr: &str, file: Option<&str>, line: Option<u32>) -> Value {
    json!({"name": name, "kind": kind, "addr": addr, "file": file, "line": line})
}

/// A report as a live session writes it (the fields the outputs read, and a few others).
fn report() -> Value {
    let allocate = frame("node::ArrayBufferAllocator::Allocate", "native", "0x55d0c0a1b2c0", None, None);
    let typed_array = frame("Builtins_TypedArrayConstructor", "builtin", "0x55d0c1000100", None, None);
    let render = frame("renderInvoice", "js", "0x3e8a0c0d1e40", Some("billing/pdf.js"), Some(88));
    let handle = frame("handleRequest", "js", "0x3e8a0c0d2000", Some("server.js"), Some(31));
    let malloc = frame("malloc", "native", "0x7f3a10001000", None, None);
    let jit = frame("[JIT 0x3e8a0c0d9000]", "jit", "0x3e8a0c0d9000", None, None);
    let parse = frame("parseRow", "js", "0x3e8a0c0d3000", Some("lib/csv.js"), Some(12));
    let mmap = frame("mmap", "native", "0x7f3a10002000", None, None);
    json!({
        "schema_version": 1,
        "leakprobe_version": "0.1.0",
        "target": {"pid": 4242, "comm": "node", "exe": "/usr/bin/node", "module": "/usr/bin/node",
                   "node_version": "v20.20.2"},
        "window": {"start_unix_s": 1_700_000_000.0, "duration_s": 60.0, "stop_reason": "duration"},
        "stacks": [
            // The leak: invoices rendered into Buffers that are never released.
            {"category": "external", "frames": [allocate, typed_array, render, handle],
             "allocated_bytes": 8_388_608, "outstanding_bytes": 6_291_456,
             "outstanding_mid_bytes": 2_097_152},
            // Steady native churn through JIT code.
            {"category": "native", "frames": [malloc, jit],
             "allocated_bytes": 1_048_576, "outstanding_bytes": 524_288,
             "outstanding_mid_bytes": 524_288},
            // Freed again: allocated, nothing outstanding.
            {"category": "native", "frames": [malloc, parse],
             "allocated_bytes": 262_144, "outstanding_bytes": 0, "outstanding_mid_bytes": 131_072},
            // Mappings have no allocated_bytes.
            {"category": "mapping", "frames": [mmap, handle],
             "allocated_bytes": null, "outstanding_bytes": 2_097_152,
             "outstanding_mid_bytes": 2_097_152}
        ],
        "gc": {
            "pauses": {},
            "trigger_stacks": [
                {"pauses": 12, "frames": [frame("Builtins_ArrayPrototypeMap", "builtin",
                                                "0x55d0c1000200", None, None), render]},
                {"pauses": 3, "frames": [parse]}
            ]
        },
        "heap": {
            "allocation_samples": [
                {"samples": 40, "share": 0.8, "frames": [render, handle]},
                {"samples": 10, "share": 0.2, "frames": [parse]}
            ],
            "allocation_samples_total": 50
        },
        "suspects": [],
        "drops": {}
    })
}

const TITLE_TAIL: &str = "pid 4242, node v20.20.2, 60 s window";

/// A folder with report.json, rendered by `leakprobe render`.
fn rendered(prefix: &str) -> PathBuf {
    let dir = tempdir(prefix);
    fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report()).unwrap()).unwrap();
    let (status, stdout, stderr) = run_leakprobe(&["render", dir.to_str().unwrap()]);
    assert!(status.success(), "leakprobe render failed: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for file in [
        "allocated.svg",
        "outstanding.svg",
        "growth.svg",
        "gc-triggers.svg",
        "heap-samples.svg",
        "allocated.pb.gz",
        "outstanding.pb.gz",
        "gc-triggers.pb.gz",
        "heap-samples.pb.gz",
    ] {
        assert!(dir.join(file).is_file(), "{file} not written; stderr: {stderr}");
        assert!(stderr.contains(&format!("wrote {}", dir.join(file).display())), "{stderr}");
    }
    dir
}

/// The DOM of an SVG after the browser loaded it and ran its script.
fn dom(dir: &Path, svg: &str) -> String {
    let dom = chromium(dir, &dir.join(svg), &["--window-size=1200,800", "--dump-dom"]);
    assert!(dom.contains("<svg"), "{svg}: no SVG in the DOM:\n{dom}");
    // inferno's script makes the graph fluid on load: it drops the root element's fixed width
    // and viewBox. A root without them shows the script ran in the browser.
    let root = &dom[dom.find("<svg").unwrap()..];
    let root = &root[..root.find('>').unwrap()];
    assert!(
        !root.contains("viewBox") && !root.contains("width"),
        "{svg}: the flamegraph script did not run: {root}"
    );
    dom
}

fn assert_has(dom: &str, svg: &str, needle: &str) {
    assert!(dom.contains(needle), "{svg}: {needle:?} not in the rendered DOM:\n{dom}");
}

#[test]
fn flamegraphs_render_in_a_real_browser() {
    let dir = rendered("outputs-svg");

    let svg = "outstanding.svg";
    let d = dom(&dir, svg);
    assert_has(&d, svg, &format!("Bytes outstanding by allocation stack — {TITLE_TAIL}</text>"));
    // Root first: [external] → handleRequest → renderInvoice → builtin → allocator, each frame
    // with its share of the 8,912,896 bytes held, coloured by kind.
    assert_has(&d, svg, "<title>all (8,912,896 bytes, 100%)</title>");
    assert_has(&d, svg, "<title>[external] (6,291,456 bytes, 70.59%)</title>");
    assert_has(
        &d,
        svg,
        r#"<g class="kind-js"><title>renderInvoice (billing/pdf.js:88) (6,291,456 bytes, 70.59%)</title>"#,
    );
    assert_has(&d, svg, r#"<g class="kind-builtin"><title>Builtins_TypedArrayConstructor (6,291,456 bytes"#);
    assert_has(&d, svg, r#"<g class="kind-native"><title>node::ArrayBufferAllocator::Allocate (6,291,456"#);
    assert_has(&d, svg, r#"<g class="kind-jit"><title>[JIT 0x3e8a0c0d9000] (524,288 bytes"#);
    assert_has(&d, svg, "<title>[mapping] (2,097,152 bytes, 23.53%)</title>");
    let c = frame_color(FrameKind::Js, "renderInvoice (billing/pdf.js:88)");
    assert_has(&d, svg, &format!(r#"fill="rgb({},{},{})""#, c.r, c.g, c.b));
    // Nothing outstanding from parseRow: not in this graph.
    assert!(!d.contains("parseRow"), "{d}");

    let svg = "allocated.svg";
    let d = dom(&dir, svg);
    assert_has(&d, svg, &format!("Bytes allocated since attach by stack — {TITLE_TAIL}</text>"));
    assert_has(&d, svg, "<title>all (9,699,328 bytes, 100%)</title>");
    assert_has(&d, svg, "<title>parseRow (lib/csv.js:12) (262,144 bytes, 2.70%)</title>");
    assert!(!d.contains("[mapping]"), "mappings have no allocated bytes:\n{d}");

    let svg = "growth.svg";
    let d = dom(&dir, svg);
    assert_has(&d, svg, &format!("Growth of outstanding bytes by allocation stack — {TITLE_TAIL}</text>"));
    // The leak grew by 4 MiB of the 8.5 MiB held at the end (+47.06%): its allocation frame is
    // inferno's deepest red; the native and mapping stacks held steady (0.00%, near white).
    assert_has(
        &d,
        svg,
        "<title>node::ArrayBufferAllocator::Allocate (6,291,456 bytes, 70.59%; +47.06%)</title>",
    );
    assert_has(&d, svg, r#"fill="rgb(255,100,100)""#);
    assert_has(&d, svg, "<title>malloc (524,288 bytes, 5.88%; 0.00%)</title>");

    let svg = "gc-triggers.svg";
    let d = dom(&dir, svg);
    assert_has(&d, svg, &format!("GC pauses by triggering stack — {TITLE_TAIL}</text>"));
    assert_has(&d, svg, "<title>all (15 pauses, 100%)</title>");
    assert_has(&d, svg, "<title>Builtins_ArrayPrototypeMap (12 pauses, 80.00%)</title>");

    let svg = "heap-samples.svg";
    let d = dom(&dir, svg);
    assert_has(&d, svg, &format!("JS heap allocation samples by stack — {TITLE_TAIL}</text>"));
    assert_has(&d, svg, "<title>renderInvoice (billing/pdf.js:88) (40 samples, 80.00%)</title>");

    fs::remove_dir_all(&dir).unwrap();
}

/// A decoded 8-bit RGB(A) PNG, as chromium writes screenshots.
struct Png {
    width: usize,
    height: usize,
    rgba: Vec<[u8; 4]>,
}

fn decode_png(bytes: &[u8]) -> Png {
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (mut pos, mut idat, mut header) = (8, Vec::new(), None);
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => header = Some(data.to_vec()),
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        pos += 12 + len;
    }
    let h = header.expect("PNG without IHDR");
    let width = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
    let height = u32::from_be_bytes(h[4..8].try_into().unwrap()) as usize;
    assert_eq!(h[8], 8, "bit depth");
    assert_eq!(h[12], 0, "interlaced");
    let bpp = match h[9] {
        2 => 3,
        6 => 4,
        t => panic!("PNG colour type {t}"),
    };
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(idat.as_slice()).read_to_end(&mut raw).unwrap();
    let stride = width * bpp;
    let mut prev = vec![0u8; stride];
    let mut rgba = Vec::with_capacity(width * height);
    for row in raw.chunks(stride + 1).take(height) {
        let (filter, line) = (row[0], &row[1..]);
        let mut cur = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= bpp { cur[i - bpp] } else { 0 };
            let (b, c) = (prev[i], if i >= bpp { prev[i - bpp] } else { 0 });
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) =
                        ((p - i16::from(a)).abs(), (p - i16::from(b)).abs(), (p - i16::from(c)).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("PNG filter {f}"),
            };
            cur[i] = line[i].wrapping_add(predicted);
        }
        rgba.extend(cur.chunks(bpp).map(|p| [p[0], p[1], p[2], if bpp == 4 { p[3] } else { 255 }]));
        prev = cur;
    }
    assert_eq!(rgba.len(), width * height, "truncated PNG");
    Png { width, height, rgba }
}

#[test]
fn flamegraph_screenshot_shows_the_frames_in_their_colours() {
    let dir = rendered("outputs-png");
    let png = dir.join("outstanding.png");
    chromium(
        &dir,
        &dir.join("outstanding.svg"),
        &["--window-size=1200,400", &format!("--screenshot={}", png.display())],
    );
    let bytes = fs::read(&png).expect("chromium wrote no screenshot");
    assert!(bytes.len() > 8 * 1024, "a {}-byte screenshot is too small to show a graph", bytes.len());
    let img = decode_png(&bytes);
    assert_eq!((img.width, img.height), (1200, 400));
    // Each frame's fill, as the browser painted it: the JS frame, the builtin, the allocator.
    for (kind, label, min_pixels) in [
        (FrameKind::Js, "renderInvoice (billing/pdf.js:88)", 5_000),
        (FrameKind::Builtin, "Builtins_TypedArrayConstructor", 5_000),
        (FrameKind::Native, "node::ArrayBufferAllocator::Allocate", 5_000),
        (FrameKind::Category, "[external]", 5_000),
    ] {
        let c = frame_color(kind, label);
        let n = img.rgba.iter().filter(|p| p[..3] == [c.r, c.g, c.b]).count();
        assert!(n >= min_pixels, "{label}: only {n} pixels of {c:?} in the screenshot");
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// What `go tool pprof -raw` printed of a profile.
struct Raw {
    /// `space/bytes[dflt]`.
    sample_type: String,
    /// (value, location ids leaf first) per sample.
    samples: Vec<(i64, Vec<u64>)>,
    /// `     3: 0x3e8a0c0d1e40 M=1 renderInvoice billing/pdf.js:88 s=0`.
    locations: Vec<String>,
}

/// `go tool pprof -raw FILE`, parsed.
fn pprof_raw(file: &Path) -> Raw {
    require("go", "version", "golang-go");
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(file)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("running go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "go tool pprof -raw {}: {stderr}", file.display());
    assert!(stderr.trim().is_empty(), "go tool pprof complained: {stderr}");
    let mut lines = stdout.lines();
    lines.by_ref().find(|l| *l == "Samples:").unwrap_or_else(|| panic!("no samples:\n{stdout}"));
    let sample_type = lines.next().unwrap().trim().to_string();
    let mut samples = Vec::new();
    for line in lines.by_ref() {
        if line == "Locations" {
            break;
        }
        // "    6291456: 1 2 3 4 5 " (label lines have no ':' right after a number).
        let Some((value, ids)) = line.trim().split_once(": ") else { continue };
        let Ok(value) = value.parse::<i64>() else { continue };
        samples.push((value, ids.split_whitespace().map(|i| i.parse().unwrap()).collect()));
    }
    let locations = lines.take_while(|l| *l != "Mappings").map(str::to_string).collect();
    Raw { sample_type, samples, locations }
}

/// The function name and file:line of location `id` in `-raw` output.
fn location(locations: &[String], id: u64) -> &str {
    locations
        .iter()
        .find(|l| l.trim_start().starts_with(&format!("{id}: ")))
        .unwrap_or_else(|| panic!("no location {id} in {locations:#?}"))
}

#[test]
fn pprof_profiles_read_back_with_go_tool_pprof() {
    let dir = rendered("outputs-pprof");
    for (file, sample_type, total, samples) in [
        ("allocated.pb.gz", "space/bytes[dflt]", 8_388_608 + 1_048_576 + 262_144, 3),
        ("outstanding.pb.gz", "space/bytes[dflt]", 6_291_456 + 524_288 + 2_097_152, 3),
        ("gc-triggers.pb.gz", "pauses/count[dflt]", 15, 2),
        ("heap-samples.pb.gz", "samples/count[dflt]", 50, 2),
    ] {
        let raw = pprof_raw(&dir.join(file));
        assert_eq!(raw.sample_type, sample_type, "{file}");
        assert_eq!(raw.samples.len(), samples, "{file}: {:?}", raw.samples);
        assert_eq!(raw.samples.iter().map(|s| s.0).sum::<i64>(), total, "{file}");
        assert!(
            raw.locations.iter().any(|l| l.contains(" renderInvoice billing/pdf.js:88 ")),
            "{file}: {:#?}",
            raw.locations
        );
    }

    // The leak's sample, leaf first, as pprof resolves it: allocator, builtin, JS with its
    // source line, then the [external] root.
    let raw = pprof_raw(&dir.join("outstanding.pb.gz"));
    let (_, ids) = raw.samples.iter().find(|s| s.0 == 6_291_456).expect("the leak's sample");
    let names: Vec<&str> = ids.iter().map(|&id| location(&raw.locations, id)).collect();
    let expect = [
        "0x55d0c0a1b2c0 M=1 node::ArrayBufferAllocator::Allocate :0",
        "0x55d0c1000100 M=1 Builtins_TypedArrayConstructor :0",
        "0x3e8a0c0d1e40 M=1 renderInvoice billing/pdf.js:88",
        "0x3e8a0c0d2000 M=1 handleRequest server.js:31",
        "M=1 [external] :0",
    ];
    assert_eq!(names.len(), expect.len(), "{names:#?}");
    for (name, expect) in names.iter().zip(expect) {
        assert!(name.contains(expect), "{name:?} should contain {expect:?}");
    }

    // pprof's own aggregation agrees: -top by flat bytes.
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=20", "-sample_index=space", "-unit=byte"])
        .arg(dir.join("outstanding.pb.gz"))
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("running go tool pprof");
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(top.contains("Total samples = 8912896B"), "{top}");
    assert!(
        top.lines().any(|l| l.contains("6291456B") && l.ends_with("node::ArrayBufferAllocator::Allocate")),
        "{top}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn render_errors_are_one_line() {
    let (status, _, stderr) = run_leakprobe(&["render", "/nonexistent/leakprobe-incident"]);
    assert_one_line_error(
        status,
        &stderr,
        "leakprobe: error: /nonexistent/leakprobe-incident is not a directory",
    );
    assert_eq!(status.code(), Some(1));

    let dir = tempdir("outputs-errors");
    let (status, _, stderr) = run_leakprobe(&["render", dir.to_str().unwrap()]);
    assert_one_line_error(status, &stderr, "report.json: No such file or directory");
    assert_eq!(status.code(), Some(1));

    fs::write(dir.join("report.json"), "{\"target\": {\"pid\": 1},\n").unwrap();
    let (status, _, stderr) = run_leakprobe(&["render", dir.to_str().unwrap()]);
    assert_one_line_error(status, &stderr, "report.json is not valid JSON");
    assert_eq!(status.code(), Some(1));

    fs::write(dir.join("report.json"), "[1, 2]").unwrap();
    let (status, _, stderr) = run_leakprobe(&["render", dir.to_str().unwrap()]);
    assert_one_line_error(status, &stderr, "is not a leakprobe report");
    assert_eq!(status.code(), Some(1));

    let (status, _, stderr) = run_leakprobe(&["render"]);
    assert_eq!(status.code(), Some(2), "a missing DIR is a usage error: {stderr}");
    fs::remove_dir_all(&dir).unwrap();
}

/// A report written before the stack data existed (or with none of it) renders nothing and
/// succeeds: no empty graphs, no error.
#[test]
fn report_without_stacks_renders_nothing() {
    let dir = tempdir("outputs-empty");
    let mut report = report();
    let obj = report.as_object_mut().unwrap();
    obj.remove("stacks");
    obj.insert("gc".into(), json!({"pauses": {}}));
    obj.insert("heap".into(), json!({"allocation_samples": []}));
    fs::write(dir.join("report.json"), report.to_string()).unwrap();
    let (status, _, stderr) = run_leakprobe(&["render", dir.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let files: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files, ["report.json"]);
    fs::remove_dir_all(&dir).unwrap();
}

/// A live session with `--out` writes the incident folder: the leak's flamegraph, opened in a
/// real browser, shows the allocation path of the leaking Buffers, and the pprof profile of
/// outstanding bytes reads back with the same path.
#[test]
fn a_live_session_writes_the_incident_folder() {
    let mut fixture = Node::start(&system_node(), &[], "buffer-leak.js");
    let mut leakprobe = Leakprobe::attach(fixture.pid(), &["--interval", "200ms", "--alloc-stacks"]);
    fixture.go();
    assert!(fixture.wait(Duration::from_secs(120)).success());
    let report = leakprobe.report();
    let dir = leakprobe.out.clone();
    for file in
        ["report.json", "summary.txt", "allocated.svg", "outstanding.svg", "growth.svg", "outstanding.pb.gz"]
    {
        assert!(dir.join(file).is_file(), "{file} missing from the incident folder");
    }
    let stacks = report["stacks"].as_array().unwrap();
    assert!(stacks.iter().any(|s| s["category"] == "external"), "{stacks:?}");
    let svg = dom(&dir, "outstanding.svg");
    assert_has(&svg, "outstanding.svg", &format!("pid {}", fixture.pid()));
    assert_has(&svg, "outstanding.svg", "node::NodeArrayBufferAllocator::Allocate");
    assert_has(&svg, "outstanding.svg", "[external]");
    let raw = pprof_raw(&dir.join("outstanding.pb.gz"));
    assert!(
        raw.locations.iter().any(|l| l.contains("node::NodeArrayBufferAllocator::Allocate")),
        "{:?}",
        raw.locations
    );
}
