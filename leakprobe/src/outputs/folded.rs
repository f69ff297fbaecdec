//! A report's stacks read back from its JSON ([`serde_json::Value`], so a live report and a
//! `report.json` from disk read alike) and folded: each frame labelled by kind, function, script
//! and line, each stack's value, and the graphs' titles. The flamegraphs ([`crate::outputs::flamegraph`])
//! and the pprof profiles ([`crate::outputs::pprof`]) are drawn from these.

use std::{collections::BTreeMap, fmt::Write as _};

use inferno::flamegraph::color::Color;
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
