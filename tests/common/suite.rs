//! What the leak suites (tests/leak_suite.rs, and the slow suite of tests/slow_leaks.rs) read
//! of a suite service and of leakprobe's report: the fixtures' `MEM {json}` lines of
//! `process.memoryUsage()` (the oracle), the JS frames a suspect names, and what a failure shows.
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

pub const MIB: f64 = (1 << 20) as f64;

/// The fixture's `MEM {json}` lines among `lines`, parsed.
pub fn memory_usage(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("MEM "))
        .map(|json| serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}")))
        .collect()
}

/// The least-squares slope of `field` over the samples' seconds, in MiB/s.
pub fn slope_mib_per_s(memory: &[Value], field: &str) -> f64 {
    let points: Vec<(f64, f64)> = memory
        .iter()
        .map(|m| {
            let value = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("no {k} in {m}"));
            (value("t"), value(field) / MIB)
        })
        .collect();
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let (sxy, sxx) = points
        .iter()
        .fold((0.0, 0.0), |(sxy, sxx), (x, y)| (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx)));
    sxy / sxx
}

/// The rise of `field`'s floor (MiB): the lowest value of the last third of the samples against
/// the lowest of the first third.
pub fn floor_growth_mib(memory: &[Value], field: &str) -> f64 {
    let values: Vec<f64> = memory
        .iter()
        .map(|m| m[field].as_f64().unwrap_or_else(|| panic!("no {field} in {m}")) / MIB)
        .collect();
    let third = values.len() / 3;
    let floor = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    floor(&values[values.len() - third..]) - floor(&values[..third])
}

/// The 1-based line of `function NAME(` in `file`: where a JS frame of NAME says it starts.
pub fn declaration_line(file: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap();
    let declaration = format!("function {name}(");
    let line = text.lines().position(|l| l.starts_with(&declaration));
    line.unwrap_or_else(|| panic!("{}: no {declaration}", file.display())) as u64 + 1
}

/// (name, line) of `suspect`'s JS frames in `file`.
pub fn js_frames(suspect: &Value, file: &Path) -> Vec<(String, u64)> {
    suspect["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter(|f| f["kind"] == "js" && f["file"].as_str().map(Path::new) == Some(file))
                .map(|f| (f["name"].as_str().unwrap_or("").to_string(), f["line"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// What a failure message shows of the report: the memory growth and the first suspects, each
/// with its category and JS frames.
pub fn summary(report: &Value) -> String {
    let suspects: Vec<String> = report["suspects"]
        .as_array()
        .map(|s| s.iter().take(5).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let js: Vec<String> = s["frames"]
                .as_array()
                .map(|f| f.iter().filter(|f| f["kind"] == "js").collect::<Vec<_>>())
                .unwrap_or_default()
                .iter()
                .map(|f| format!("{}:{}", f["name"].as_str().unwrap_or("?"), f["line"]))
                .collect();
            format!("[{} {} {} B/s: {}]", s["category"], s["source"], s["growth_bytes_per_s"], js.join(" < "))
        })
        .collect();
    let mut memory = report["memory"].clone();
    if let Some(m) = memory.as_object_mut() {
        // The troughs are what the verdict read; the other samples would drown the message.
        if let Some(samples) = m.get_mut("samples").and_then(|s| s.as_array_mut()) {
            samples.retain(|s| !s["trough"].is_null());
        }
    }
    format!(
        "suspects: {}; verdict: {}; containers: {}; memory: {memory}",
        suspects.join(" "),
        report["verdict"],
        report["heap"]["containers"]
    )
}

/// The (file, function) of `suspect`'s innermost JavaScript frame outside node's own code.
pub fn innermost_user_frame(suspect: &Value) -> Option<(String, String)> {
    suspect["frames"].as_array()?.iter().find_map(|f| {
        let file = f["file"].as_str()?;
        (f["kind"] == "js" && !file.starts_with("node:"))
            .then(|| (file.to_string(), f["name"].as_str().unwrap_or("").to_string()))
    })
}
