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

use crate::stacks::frame::located;

/// What a frame is, from the report's `kind` field (plus the category root frames leakprobe adds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Interpreted or optimized JavaScript, symbolized to a JS function.
    Js,
    /// Native code in node, V8 or a shared library.
    Native,
    /// A V8 builtin (embedded blob).
    Builtin,
    /// JIT code not (yet) symbolized to a JS function.
    Jit,
    /// Kernel code.
    Kernel,
    /// Anything else.
    Unknown,
    /// The root frame naming the memory category (`[external]`, `[native]`, ...).
    Category,
    /// Where work queued to libuv's thread pool (the frames above) meets the stack that
    /// queued it (below).
    Queued,
}

impl FrameKind {
    /// From the report's `kind` string; unknown strings are [`FrameKind::Unknown`].
    pub fn parse(kind: &str) -> Self {
        match kind {
            "js" => FrameKind::Js,
            "native" => FrameKind::Native,
            "builtin" => FrameKind::Builtin,
            "jit" => FrameKind::Jit,
            "kernel" => FrameKind::Kernel,
            "queued" => FrameKind::Queued,
            _ => FrameKind::Unknown,
        }
    }

    /// The name used in the SVG's `class="kind-<name>"`.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Js => "js",
            FrameKind::Native => "native",
            FrameKind::Builtin => "builtin",
            FrameKind::Jit => "jit",
            FrameKind::Kernel => "kernel",
            FrameKind::Unknown => "unknown",
            FrameKind::Category => "category",
            FrameKind::Queued => "queued",
        }
    }

    /// Base fill colour of the kind (each frame gets a slightly varied shade of it).
    pub fn base_color(self) -> Color {
        let (r, g, b) = match self {
            FrameKind::Js => (178, 214, 84),        // yellow-green
            FrameKind::Native => (112, 160, 232),   // blue
            FrameKind::Builtin => (244, 160, 64),   // orange
            FrameKind::Jit => (246, 204, 72),       // yellow-orange
            FrameKind::Kernel => (200, 120, 112),   // grey-red
            FrameKind::Unknown => (184, 184, 184),  // grey
            FrameKind::Category => (196, 176, 228), // lavender
            FrameKind::Queued => (96, 200, 190),    // teal
        };
        Color { r, g, b }
    }
}

/// One frame of a report stack, borrowed from the JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameRef<'a> {
    /// Function name (`[unknown]` when missing or empty).
    pub name: &'a str,
    /// Frame kind.
    pub kind: FrameKind,
    /// Instruction address, when the report has a parsable one.
    pub addr: Option<u64>,
    /// Source file, when known.
    pub file: Option<&'a str>,
    /// Source line, when known.
    pub line: Option<i64>,
    /// What the name does not say (e.g. that inlined calls are not expanded).
    pub note: Option<&'a str>,
}

/// One stack with its value, as read from one of the report's stack arrays.
#[derive(Clone, Debug, PartialEq)]
pub struct StackValue<'a> {
    /// `external`, `v8_heap`, `native`, `mapping`, when the entry has one.
    pub category: Option<&'a str>,
    /// Innermost frame first, as in the report.
    pub frames: Vec<FrameRef<'a>>,
    /// The value (bytes, pauses, samples).
    pub value: u64,
}

/// Reads one frame object (`{name, kind, addr, file, line}`); every field is optional.
pub fn parse_frame(frame: &Value) -> FrameRef<'_> {
    let name =
        frame.get("name").and_then(Value::as_str).filter(|n| !n.trim().is_empty()).unwrap_or("[unknown]");
    let addr = frame.get("addr").and_then(|a| match a {
        Value::String(s) => {
            let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
            u64::from_str_radix(hex, 16).ok()
        }
        Value::Number(n) => n.as_u64(),
        _ => None,
    });
    FrameRef {
        name,
        kind: FrameKind::parse(frame.get("kind").and_then(Value::as_str).unwrap_or("")),
        addr,
        file: frame.get("file").and_then(Value::as_str).filter(|f| !f.is_empty()),
        line: frame.get("line").and_then(Value::as_i64),
        note: frame.get("note").and_then(Value::as_str).filter(|n| !n.is_empty()),
    }
}

/// The entries of the array at JSON pointer `array` (e.g. `/stacks`) whose `key` is a positive
/// integer; entries with a null, missing, zero or negative value are left out. A missing array
/// is an empty profile.
pub fn stack_values<'a>(report: &'a Value, array: &str, key: &str) -> Vec<StackValue<'a>> {
    let Some(entries) = report.pointer(array).and_then(Value::as_array) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let value = entry.get(key).and_then(Value::as_u64).filter(|&v| v > 0)?;
            let frames = entry
                .get("frames")
                .and_then(Value::as_array)
                .map(|f| f.iter().map(parse_frame).collect())
                .unwrap_or_default();
            Some(StackValue { category: entry.get("category").and_then(Value::as_str), frames, value })
        })
        .collect()
}

/// Makes a name safe for the folded format: `;` (the frame separator) becomes `,`, line breaks
/// and tabs become spaces, surrounding whitespace goes, and a trailing ` <number>` (which inferno
/// would read as a sample count) keeps its space as a no-break space.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            ';' => ',',
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    s = s.trim().to_string();
    if let Some(space) = s.rfind(' ') {
        let tail = &s[space + 1..];
        if !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit() || c == '.') {
            s.replace_range(space..space + 1, "\u{a0}");
        }
    }
    if s.is_empty() {
        s.push_str("[unknown]");
    }
    s
}

/// A frame's label in the graph: its name, plus ` (file:line)` when both are known (a
/// JavaScript frame's file alone when its line is not), plus its note in brackets.
pub fn frame_label(frame: &FrameRef<'_>) -> String {
    let mut label = located(frame.name, frame.kind == FrameKind::Js, frame.file, frame.line);
    if let Some(note) = frame.note {
        label.push_str(&format!(" [{note}]"));
    }
    sanitize(&label)
}

/// The root frame naming a category: `[external]`.
pub fn category_label(category: &str) -> String {
    sanitize(&format!("[{category}]"))
}

/// Folded stacks: `root;...;leaf` → summed value, sorted, plus each label's frame kind (the
/// first kind seen for a label wins).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folded {
    /// Root-first stack → value.
    pub stacks: BTreeMap<String, u64>,
    /// Label → frame kind.
    pub kinds: BTreeMap<String, FrameKind>,
}

impl Folded {
    /// Sum of all values.
    pub fn total(&self) -> u64 {
        self.stacks.values().sum()
    }

    /// `stack value` lines, as `inferno-flamegraph` reads them.
    pub fn lines(&self) -> Vec<String> {
        self.stacks.iter().map(|(stack, value)| format!("{stack} {value}")).collect()
    }

    /// The folded text (one line per stack, newline-terminated).
    pub fn text(&self) -> String {
        self.stacks.iter().fold(String::new(), |mut out, (stack, value)| {
            let _ = writeln!(out, "{stack} {value}");
            out
        })
    }
}

/// Folds stacks (innermost first) into root-first `a;b;c` lines, with the category as root
/// frame when the entry has one. Identical stacks add up.
pub fn fold(stacks: &[StackValue<'_>]) -> Folded {
    let mut folded = Folded::default();
    for stack in stacks {
        let mut labels = Vec::with_capacity(stack.frames.len() + 1);
        if let Some(category) = stack.category {
            let label = category_label(category);
            folded.kinds.entry(label.clone()).or_insert(FrameKind::Category);
            labels.push(label);
        }
        for frame in stack.frames.iter().rev() {
            let label = frame_label(frame);
            folded.kinds.entry(label.clone()).or_insert(frame.kind);
            labels.push(label);
        }
        if labels.is_empty() {
            labels.push("[no frames]".to_string());
            folded.kinds.entry(labels[0].clone()).or_insert(FrameKind::Unknown);
        }
        *folded.stacks.entry(labels.join(";")).or_default() += stack.value;
    }
    folded
}

/// `12 s`, `8.5 s`: window lengths in titles.
pub fn format_seconds(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// A graph title: `"{what} — pid 1234, node v20.20.2, 60 s window"`.
pub fn title(what: &str, report: &Value) -> String {
    let mut t = format!("{what} — pid ");
    match report.pointer("/target/pid").and_then(Value::as_u64) {
        Some(pid) => {
            let _ = write!(t, "{pid}");
        }
        None => t.push('?'),
    }
    match report.pointer("/target/node_version").and_then(Value::as_str) {
        Some(v) => {
            let _ = write!(t, ", node {v}");
        }
        None => t.push_str(", node version unknown"),
    }
    if let Some(d) = report.pointer("/window/duration_s").and_then(Value::as_f64) {
        let _ = write!(t, ", {} window", format_seconds(d));
    }
    t
}

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

/// Writes `bytes` to `dir/file`, or removes a stale `dir/file` when `bytes` is `None`.
fn put(dir: &Path, file: &str, bytes: Option<Vec<u8>>) -> anyhow::Result<Option<PathBuf>> {
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
        written.extend(put(dir, graph.file, svg)?);
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
    written.extend(put(dir, "growth.svg", svg)?);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
