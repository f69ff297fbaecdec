//! Bad input and a target that goes away: each gives one clear line and a non-zero exit (or, for
//! a target that exits mid-run, the report of what was collected), never a panic.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

#[test]
fn unknown_pid_is_one_line_error() {
    // A pid that just exited and was reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let (status, _, stderr) = run_leakprobe(&["--pid", &pid.to_string(), "--duration", "1s"]);
    assert_one_line_error(status, &stderr, &format!("no process with pid {pid}"));
}

#[test]
fn pid_that_is_not_node_is_one_line_error() {
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let (status, _, stderr) = run_leakprobe(&["--pid", &sleep.id().to_string(), "--duration", "1s"]);
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert_one_line_error(status, &stderr, "is not a node process");
    assert!(stderr.contains("sleep"), "{stderr}");
}

#[test]
fn malformed_arguments_are_usage_errors() {
    let (status, _, stderr) = run_leakprobe(&["--pid", "abc"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let (status, _, stderr) = run_leakprobe(&["--pid", "1", "--duration", "soon"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid duration"), "{stderr}");
}

/// A stripped copy of `node`, in its own temp directory.
fn stripped(node: &std::path::Path) -> std::path::PathBuf {
    let dir = tempdir("stripped");
    let copy = dir.join("node");
    std::fs::copy(node, &copy).unwrap();
    let status = Command::new("strip").arg(&copy).status().expect("running strip (binutils)");
    assert!(status.success());
    copy
}

/// Node 24 keeps V8 internals only in .symtab: stripped, the GC and heap families cannot attach.
/// With the default families, that is one line (no GC pause would be measured) naming the
/// missing function; with GC left out, leakprobe says which probes are missing and runs with the
/// rest (external memory, whose allocator node exports, the syscall tracepoints and the page-fault
/// sampling).
#[test]
fn stripped_node24_names_the_missing_probes_and_runs_with_the_rest() {
    let node = stripped(&official_node(24));
    let fixture = Node::start(&node, &[], "ticker.js");
    let pid = fixture.pid().to_string();
    let (status, _, stderr) = run_leakprobe(&["--pid", &pid, "--duration", "1s"]);
    assert_one_line_error(status, &stderr, "the GC probes could not be attached");
    assert!(stderr.contains("symbol not found: v8::internal::Heap::PerformGarbageCollection"), "{stderr}");
    assert!(stderr.contains("stripped") && stderr.contains("--probes"), "{stderr}");

    let out = tempdir("stripped-report");
    let out_arg = out.to_string_lossy().into_owned();
    let (status, _, stderr) = run_leakprobe(&[
        "--pid",
        &pid,
        "--duration",
        "1s",
        "--probes",
        "heap,external,syscalls,faults",
        "--out",
        &out_arg,
    ]);
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("probe heap_committed_ret: symbol not found: v8::internal::Heap::CommittedMemory"),
        "{stderr}"
    );
    let report = read_report(&out);
    for p in report["probes"].as_array().unwrap() {
        let expected = ["external", "syscalls", "faults"].iter().any(|f| p["family"] == *f);
        assert_eq!(p["attached"], expected, "{p}");
    }
}

/// With only the GC family asked for, nothing is left to run: one line naming what is missing.
#[test]
fn stripped_node24_with_only_gc_is_one_line_error() {
    let node = stripped(&official_node(24));
    let fixture = Node::start(&node, &[], "ticker.js");
    let (status, _, stderr) =
        run_leakprobe(&["--pid", &fixture.pid().to_string(), "--duration", "1s", "--probes", "gc"]);
    assert_one_line_error(status, &stderr, "no probe could be attached");
    assert!(
        stderr
            .contains("no symbol for v8::internal::Heap::PerformGarbageCollection (probes gc_start, gc_end)"),
        "{stderr}"
    );
    assert!(stderr.contains("stripped"), "{stderr}");
}

/// Node 18-22 also export V8 internals in .dynsym, which `strip` keeps: leakprobe still works.
#[test]
fn stripped_node20_still_attaches_through_dynsym() {
    let node = stripped(&official_node(20));
    let mut fixture = Node::start(&node, &[], "gc-burst.js");
    let mut leakprobe = Leakprobe::attach(fixture.pid(), &[]);
    fixture.go();
    fixture.wait(Duration::from_secs(60));
    let report = leakprobe.report();
    assert!(count(&report, "scavenge") > 0, "{}", report["gc"]);
    // The clone of CommittedOldGenerationMemory that CommittedMemory calls is a local symbol,
    // stripped: V8's heap readings are taken whole at CommittedMemory's return instead, and the
    // young generation is not told apart.
    let probe = |name: &str| {
        report["probes"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or_default()
    };
    let split = probe("heap_committed_split");
    assert_eq!(split["attached"], false, "{split}");
    assert!(split["error"].as_str().unwrap_or_default().contains("no call"), "{split}");
    assert_eq!(probe("heap_committed_ret")["attached"], true, "{}", report["probes"]);
    assert!(report["heap"]["readings"].as_u64().unwrap() > 0, "{}", report["heap"]);
    assert_eq!(report["heap"]["young_generation_bytes"], serde_json::Value::Null);
}

#[test]
fn without_privilege_is_one_line_error() {
    let fixture = Node::start(&system_node(), &[], "ticker.js");
    // Drop to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(LEAKPROBE)
        .args(["--pid", &fixture.pid().to_string(), "--duration", "1s"])
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(out.status, &stderr, "permission denied");
    assert!(stderr.contains("root"), "{stderr}");
}

/// The target exits on its own while leakprobe runs: the report of what was collected is
/// written, and leakprobe exits successfully without waiting for --duration.
#[test]
fn target_exiting_mid_run_still_yields_the_report() {
    let mut fixture = Node::start(&system_node(), &[], "short-lived.js");
    let mut leakprobe = Leakprobe::attach(fixture.pid(), &["--duration", "120s"]);
    let started = std::time::Instant::now();
    fixture.go();
    fixture.wait(Duration::from_secs(60));
    let report = leakprobe.report();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(report["window"]["stop_reason"], "target_exited");
    assert!(count(&report, "scavenge") > 0, "{}", report["gc"]);
    let summary = std::fs::read_to_string(leakprobe.out.join("summary.txt")).unwrap();
    assert!(summary.contains("scavenge"), "{summary}");
    let stderr = leakprobe.stderr.seen.join("\n");
    assert!(stderr.contains("exited"), "{stderr}");
}

/// --duration ends the session, and --json prints the same report on stdout.
#[test]
fn duration_ends_the_session_and_json_goes_to_stdout() {
    let fixture = Node::start(&system_node(), &[], "ticker.js");
    let mut leakprobe = Leakprobe::attach(fixture.pid(), &["--duration", "2s", "--json"]);
    let report = leakprobe.report();
    assert_eq!(report["window"]["stop_reason"], "duration");
    let duration = report["window"]["duration_s"].as_f64().unwrap();
    assert!((1.5..10.0).contains(&duration), "{duration}");
    let stdout = leakprobe.stdout.rest().join("\n");
    let printed: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is the JSON report");
    assert_eq!(printed["gc"], report["gc"]);
    for kind in ["scavenge", "minor_ms", "mark_compact"] {
        for field in ["count", "total_ms", "p50_ms", "p99_ms", "max_ms"] {
            assert!(report["gc"]["pauses"][kind][field].is_number(), "{kind}.{field}");
        }
    }
}

/// With CAP_BPF and CAP_PERFMON but not CAP_SYS_ADMIN, the kernel refuses uprobes (the GC
/// probes): `--pid` fails with one line that says so, rather than running without GC pauses. Left
/// out with `--probes`, the rest runs (the syscall tracepoints need no CAP_SYS_ADMIN).
#[test]
fn pid_without_cap_sys_admin_fails_on_the_gc_probes_unless_left_out() {
    let node = Node::start(&system_node(), &[], "ticker.js");
    let pid = node.pid().to_string();
    let caps = ["bpf", "perfmon", "sys_ptrace", "dac_read_search"];
    let out = leakprobe_with_capabilities(&caps, &["--pid", &pid, "--duration", "2s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(out.status, &stderr, &format!("the GC probes could not be attached to pid {pid}"));
    assert!(stderr.contains("Permission denied") && stderr.contains("CAP_SYS_ADMIN"), "{stderr}");

    let out = leakprobe_with_capabilities(
        &caps,
        &["--pid", &pid, "--duration", "2s", "--probes", "syscalls", "--json"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probes = report["probes"].as_array().unwrap();
    assert!(!probes.is_empty() && probes.iter().all(|p| p["attached"] == true), "{probes:?}");
}
