//! Flamegraph SVGs of a report, drawn with [inferno](https://docs.rs/inferno).
//!
//! The input is the report as a [`serde_json::Value`], so a live session's report and a
//! `report.json` read back from disk (`leakprobe render DIR`) render the same way. Each graph is
//! written only when its profile has something in it: an empty profile writes no file, and
//! removes the file of that name a previous render left, so the folder always matches its
//! `report.json`.
//!
//! | File | Data | Width |
//! | --- | --- | --- |
//! | `allocated.svg` | `stacks[].allocated_bytes` | bytes allocated since attach |
//! | `outstanding.svg` | `stacks[].outstanding_bytes` | bytes still held at the end of the window |
//! | `growth.svg` | `outstanding_mid_bytes` → `outstanding_bytes` | held at the end; red grew, blue shrank |
//! | `gc-triggers.svg` | `gc.trigger_stacks[].pauses` | GC pauses entered from the stack |
//! | `heap-samples.svg` | `heap.allocation_samples[].samples` | JS heap allocation samples |
//!
//! Frames are coloured by kind (JS, native, builtin, JIT, kernel, unknown, queued) through a fixed
//! per-function palette; each frame's `<g>` also carries `class="kind-<kind>"` (inferno's
//! per-function attributes). The differential graph uses inferno's red/blue delta colours.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, BufReader},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use inferno::flamegraph::{
    self,
    color::{BackgroundColor, Color, PaletteMap},
    FuncFrameAttrsMap, TextTruncateDirection,
};
use serde_json::Value;

use crate::outputs::folded::{fold, stack_values, title, Folded, FrameKind};

/// A deterministic shade of the kind's colour for `label` (FNV-1a of the label darkens each
/// channel by 0..=27), so neighbouring frames of one kind stay distinguishable.
pub fn frame_color(kind: FrameKind, label: &str) -> Color {
    let hash = label
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let shade = (hash % 28) as u8;
    let base = kind.base_color();
    Color {
        r: base.r.saturating_sub(shade),
        g: base.g.saturating_sub(shade),
        b: base.b.saturating_sub(shade),
    }
}

/// One plain graph of [`render_all`].
struct Graph {
    file: &'static str,
    title: String,
    subtitle: Option<&'static str>,
    count_name: &'static str,
}

fn frame_attrs(kinds: &BTreeMap<String, FrameKind>) -> io::Result<FuncFrameAttrsMap> {
    // inferno's per-function attributes: "<function>\t<name>=<value>" lines.
    let mut text = String::new();
    for (label, kind) in kinds {
        let _ = writeln!(text, "{label}\tclass=kind-{}", kind.name());
    }
    FuncFrameAttrsMap::from_reader(BufReader::new(text.as_bytes()))
}

fn options<'a>(
    title: &str,
    subtitle: Option<&str>,
    count_name: &str,
    kinds: &BTreeMap<String, FrameKind>,
    palette: Option<&'a mut PaletteMap>,
) -> io::Result<flamegraph::Options<'a>> {
    let mut opt = flamegraph::Options::default();
    opt.title = title.to_string();
    opt.subtitle = subtitle.map(str::to_string);
    opt.count_name = count_name.to_string();
    opt.name_type = "Frame:".to_string();
    opt.bgcolors = Some(BackgroundColor::Grey);
    opt.deterministic = true;
    // Keep the start of a label (the function's name) when a box is too narrow for all of it.
    opt.text_truncate_direction = TextTruncateDirection::Right;
    opt.func_frameattrs = frame_attrs(kinds)?;
    opt.palette_map = palette;
    Ok(opt)
}

fn palette(kinds: &BTreeMap<String, FrameKind>) -> PaletteMap {
    let mut map = PaletteMap::default();
    // inferno's "all" root frame has the empty name.
    map.insert("", Color { r: 216, g: 216, b: 216 });
    for (label, &kind) in kinds {
        map.insert(label, frame_color(kind, label));
    }
    map
}

/// One output file in memory: its name, and its contents (`None`: nothing to show, no file).
pub type OutputFile = (String, Option<Vec<u8>>);

/// Writes `bytes` to `dir/file`, or removes a stale `dir/file` when `bytes` is `None`.
pub(crate) fn put(dir: &Path, file: &str, bytes: Option<Vec<u8>>) -> anyhow::Result<Option<PathBuf>> {
    let path = dir.join(file);
    match bytes {
        Some(bytes) => {
            fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            Ok(Some(path))
        }
        None => {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
            }
            Ok(None)
        }
    }
}

/// Renders one plain flamegraph; `None` for an empty profile.
pub fn render_svg(
    folded: &Folded,
    title: &str,
    subtitle: Option<&str>,
    count_name: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    if folded.total() == 0 {
        return Ok(None);
    }
    let mut colors = palette(&folded.kinds);
    let mut opt = options(title, subtitle, count_name, &folded.kinds, Some(&mut colors))?;
    let lines = folded.lines();
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut svg)
        .with_context(|| format!("rendering {title:?}"))?;
    Ok(Some(svg))
}

/// Renders a differential flamegraph from `before` to `after` with inferno's differential
/// module (as `inferno-diff-folded before after | inferno-flamegraph`): widths are `after`,
/// red frames grew, blue ones shrank. `None` when `after` is empty.
pub fn render_diff_svg(
    before: &Folded,
    after: &Folded,
    title: &str,
    subtitle: Option<&str>,
    count_name: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    if after.total() == 0 {
        return Ok(None);
    }
    let before_text = before.text();
    let after_text = after.text();
    let mut diff = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        before_text.as_bytes(),
        after_text.as_bytes(),
        &mut diff,
    )
    .context("folding the differential")?;
    let diff = String::from_utf8(diff).context("differential output")?;
    let mut kinds = before.kinds.clone();
    for (label, kind) in &after.kinds {
        kinds.entry(label.clone()).or_insert(*kind);
    }
    let mut opt = options(title, subtitle, count_name, &kinds, None)?;
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut opt, diff.lines(), &mut svg)
        .with_context(|| format!("rendering {title:?}"))?;
    Ok(Some(svg))
}

/// Renders every flamegraph of `report` into `dir` (which must exist) and returns the files
/// written. Empty profiles write nothing (and remove a stale file of that name).
pub fn render_all(report: &Value, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (file, svg) in svgs(report)? {
        written.extend(put(dir, &file, svg)?);
    }
    Ok(written)
}

/// Every flamegraph of `report` in memory, by file name (`None`: empty, no graph).
pub fn svgs(report: &Value) -> anyhow::Result<Vec<OutputFile>> {
    let mut svgs = Vec::new();

    let graphs = [
        (
            Graph {
                file: "allocated.svg",
                title: title("Bytes allocated since attach by stack", report),
                subtitle: None,
                count_name: "bytes",
            },
            fold(&stack_values(report, "/stacks", "allocated_bytes")),
        ),
        (
            Graph {
                file: "outstanding.svg",
                title: title("Bytes outstanding by allocation stack", report),
                subtitle: Some("allocated since attach and still held at the end of the window"),
                count_name: "bytes",
            },
            fold(&stack_values(report, "/stacks", "outstanding_bytes")),
        ),
        (
            Graph {
                file: "gc-triggers.svg",
                title: title("GC pauses by triggering stack", report),
                subtitle: None,
                count_name: "pauses",
            },
            fold(&stack_values(report, "/gc/trigger_stacks", "pauses")),
        ),
        (
            Graph {
                file: "heap-samples.svg",
                title: title("JS heap allocation samples by stack", report),
                subtitle: None,
                count_name: "samples",
            },
            fold(&stack_values(report, "/heap/allocation_samples", "samples")),
        ),
    ];
    for (graph, folded) in &graphs {
        let svg = render_svg(folded, &graph.title, graph.subtitle, graph.count_name)?;
        svgs.push((graph.file.to_string(), svg));
    }

    let before = fold(&stack_values(report, "/stacks", "outstanding_mid_bytes"));
    let after = &graphs[1].1;
    let svg = render_diff_svg(
        &before,
        after,
        &title("Growth of outstanding bytes by allocation stack", report),
        Some("width: held at the end of the window; red: grew since mid-window, blue: shrank"),
        "bytes",
    )?;
    svgs.push(("growth.svg".to_string(), svg));
    Ok(svgs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::outputs::folded::{sanitize, *};

    fn frame(name: &str, kind: &str, file: Option<&str>, line: Option<i64>) -> Value {
        json!({"name": name, "kind": kind, "addr": "0x1000", "file": file, "line": line})
    }

    fn report() -> Value {
        json!({
            "target": {"pid": 1234, "node_version": "v20.20.2"},
            "window": {"duration_s": 60.0},
            "stacks": [
                {"category": "external", "allocated_bytes": 3000, "outstanding_bytes": 2000,
                 "outstanding_mid_bytes": 500,
                 "frames": [frame("malloc", "native", None, None),
                            frame("renderInvoice", "js", Some("billing/pdf.js"), Some(88)),
                            frame("main", "js", Some("app.js"), Some(1))]},
                {"category": "external", "allocated_bytes": 1000, "outstanding_bytes": 0,
                 "outstanding_mid_bytes": 700,
                 "frames": [frame("malloc", "native", None, None),
                            frame("Builtins_ArrayMap", "builtin", None, None)]},
                {"category": "mapping", "allocated_bytes": null, "outstanding_bytes": 4096,
                 "outstanding_mid_bytes": 4096,
                 "frames": [frame("mmap", "native", None, None)]}
            ],
            "gc": {"trigger_stacks": [
                {"pauses": 7, "frames": [frame("Builtins_ArrayMap", "builtin", None, None)]}
            ]},
            "heap": {"allocation_samples": []}
        })
    }

    #[test]
    fn folds_root_first_with_category_and_file_line() {
        let r = report();
        let folded = fold(&stack_values(&r, "/stacks", "allocated_bytes"));
        assert_eq!(
            folded.lines(),
            vec![
                "[external];Builtins_ArrayMap;malloc 1000",
                "[external];main (app.js:1);renderInvoice (billing/pdf.js:88);malloc 3000",
            ]
        );
        // The mapping stack's null allocated_bytes is left out.
        assert_eq!(folded.total(), 4000);
        assert_eq!(folded.kinds["renderInvoice (billing/pdf.js:88)"], FrameKind::Js);
        assert_eq!(folded.kinds["Builtins_ArrayMap"], FrameKind::Builtin);
        assert_eq!(folded.kinds["[external]"], FrameKind::Category);

        let outstanding = fold(&stack_values(&r, "/stacks", "outstanding_bytes"));
        assert_eq!(outstanding.total(), 6096);
        assert!(outstanding.stacks.contains_key("[mapping];mmap"));
        assert!(!outstanding.lines().iter().any(|l| l.contains("ArrayMap")), "0 bytes is left out");
    }

    #[test]
    fn identical_stacks_add_up() {
        let r = json!({"stacks": [
            {"outstanding_bytes": 5, "frames": [frame("f", "js", Some("a.js"), Some(2))]},
            {"outstanding_bytes": 7, "frames": [frame("f", "js", Some("a.js"), Some(2))]},
            {"outstanding_bytes": 1, "frames": []}
        ]});
        let folded = fold(&stack_values(&r, "/stacks", "outstanding_bytes"));
        assert_eq!(folded.lines(), vec!["[no frames] 1", "f (a.js:2) 12"]);
    }

    #[test]
    fn missing_arrays_are_empty_profiles() {
        let r = json!({"target": {"pid": 1}});
        assert!(stack_values(&r, "/stacks", "allocated_bytes").is_empty());
        assert!(stack_values(&r, "/gc/trigger_stacks", "pauses").is_empty());
        assert_eq!(render_svg(&Folded::default(), "t", None, "bytes").unwrap(), None);
    }

    #[test]
    fn sanitizes_separators_and_trailing_numbers() {
        assert_eq!(sanitize("a;b"), "a,b");
        assert_eq!(sanitize("line1\nline2\r\tx"), "line1 line2  x");
        assert_eq!(sanitize("  "), "[unknown]");
        assert_eq!(sanitize("operator new 2"), "operator new\u{a0}2");
        assert_eq!(sanitize("v 1.5"), "v\u{a0}1.5");
        assert_eq!(sanitize("f (a.js:3)"), "f (a.js:3)");
        let v = json!({"name": "x;y\nz", "kind": "jit", "addr": "0xff"});
        let f = parse_frame(&v);
        assert_eq!(f.addr, Some(255));
        assert_eq!(f.kind, FrameKind::Jit);
        assert_eq!(frame_label(&f), "x,y z");
        // A file without a line (or the reverse) is not shown, except a JavaScript file.
        let v = json!({"name": "g", "kind": "native", "file": "a.cc", "line": null});
        assert_eq!(frame_label(&parse_frame(&v)), "g");
        let v = json!({"name": "g", "kind": "js", "file": "node:internal/timers", "line": null});
        assert_eq!(frame_label(&parse_frame(&v)), "g (node:internal/timers)");
        // A note follows in brackets.
        let v = json!({"name": "h", "kind": "js", "file": "a.js", "line": 3, "note": "compiled"});
        assert_eq!(frame_label(&parse_frame(&v)), "h (a.js:3) [compiled]");
        assert_eq!(parse_frame(&json!({})).name, "[unknown]");
        assert_eq!(parse_frame(&json!({"kind": "weird"})).kind, FrameKind::Unknown);
    }

    #[test]
    fn titles_carry_pid_version_and_window() {
        assert_eq!(
            title("Bytes outstanding by allocation stack", &report()),
            "Bytes outstanding by allocation stack — pid 1234, node v20.20.2, 60 s window"
        );
        let r = json!({"target": {"pid": 7, "node_version": null}, "window": {"duration_s": 8.04}});
        assert_eq!(title("X", &r), "X — pid 7, node version unknown, 8.0 s window");
        assert_eq!(format_seconds(2.5), "2.5 s");
        assert_eq!(format_seconds(12.4), "12 s");
    }

    #[test]
    fn colours_follow_kind() {
        let js = frame_color(FrameKind::Js, "f");
        let native = frame_color(FrameKind::Native, "f");
        assert!(js.g > js.b, "js is yellow-green");
        assert!(native.b > native.r, "native is blue");
        assert_eq!(frame_color(FrameKind::Js, "f"), js, "deterministic");
    }

    #[test]
    fn renders_svgs_with_titles_counts_and_kind_classes() {
        let dir = std::env::temp_dir().join(format!("leakprobe-fg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("heap-samples.svg"), "stale").unwrap();
        let written = render_all(&report(), &dir).unwrap();
        let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["allocated.svg", "outstanding.svg", "gc-triggers.svg", "growth.svg"]);
        assert!(!dir.join("heap-samples.svg").exists(), "empty profile removes the stale file");

        let svg = fs::read_to_string(dir.join("outstanding.svg")).unwrap();
        assert!(svg.contains("Bytes outstanding by allocation stack — pid 1234, node v20.20.2"));
        assert!(svg.contains("renderInvoice (billing/pdf.js:88) (2,000 bytes, 32.81%)"), "{svg}");
        assert!(svg.contains(r#"class="kind-js""#));
        assert!(svg.contains(r#"class="kind-builtin""#) || !svg.contains("ArrayMap"));
        let c = frame_color(FrameKind::Native, "mmap");
        assert!(svg.contains(&format!("fill=\"rgb({},{},{})\"", c.r, c.g, c.b)));

        let growth = fs::read_to_string(dir.join("growth.svg")).unwrap();
        // renderInvoice's stack grew 500 → 2000 of 6096 bytes at the end: its leaf (where the
        // delta lands, as in every differential flamegraph) is red, +24.61%; mmap's held still.
        assert!(growth.contains("<title>malloc (2,000 bytes, 32.81%; +24.61%)</title>"));
        assert!(growth.contains("<title>mmap (4,096 bytes, 67.19%; 0.00%)</title>"));
        assert!(growth.contains("rgb(255,100,100)"), "the largest growth is the reddest");

        let gc = fs::read_to_string(dir.join("gc-triggers.svg")).unwrap();
        assert!(gc.contains("Builtins_ArrayMap (7 pauses, 100.00%)"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
