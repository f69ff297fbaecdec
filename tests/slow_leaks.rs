//! The slow suite (issue 20): leaks as they are met in production, 10 to 100 KiB/s beside the
//! same churn as the leak suite's (tests/leak_suite.rs), and healthy services whose memory moves
//! in ways that are not a leak, each watched for a 10-minute window in the default mode
//! (`leakprobe --pid N --duration 10m`), on node 22.
//!
//! - A leak's top suspect names its leaking function (name, file, line of its declaration).
//! - A control has no suspect, and no category is judged growing: a table rebuilt and swapped in
//!   every 5 s (a saw-tooth), a cache that fills over the first minutes and then levels off, and
//!   the leak suite's bounded LRU cache.
//!
//! The fixtures print `process.memoryUsage()` once a second: the oracle that each leak really
//! grew over the window (by at least [`LEAK_KIB_PER_S`]) and each control's did not trend.
//!
//! Each test takes some 11 minutes, so they are not run by `cargo xtask test` (CI): `cargo xtask
//! soak` runs them, three at a time.

mod common;
#[path = "common/suite.rs"]
mod suite;

use std::time::Duration;

use common::*;
use suite::*;

/// The window a user would watch for a slow leak.
const WINDOW: Duration = Duration::from_secs(600);
/// The least growth (KiB/s, least-squares over the window) a slow leak shows in node's own numbers.
const LEAK_KIB_PER_S: f64 = 5.0;
/// The node the suite runs on.
const NODE_MAJOR: u32 = 22;

/// What a slow-suite service does to its memory.
enum Expect {
    /// It leaks in the JS function `leaker`; `grows` is the `process.memoryUsage()` field that
    /// shows it.
    Leak { leaker: &'static str, grows: &'static str },
    /// It does not leak.
    Healthy,
}

/// Starts `fixture`, lets it warm up, watches it for [`WINDOW`] and checks the report against
/// `expect`.
fn check(fixture: &str, expect: Expect) {
    let node_bin = official_node(NODE_MAJOR);
    let mut node = Node::start(&node_bin, &[], fixture);
    node.go();
    node.stdout.wait_for("WARM", Duration::from_secs(60));
    let window = format!("{}s", WINDOW.as_secs());
    let mut leakprobe = Leakprobe::attach(node.pid(), &["--duration", &window]);
    let window_start = node.stdout.seen.len();
    let report = leakprobe.report_within(WINDOW + Duration::from_secs(90));
    node.stdout.for_a_while(Duration::from_millis(1100));
    let memory = memory_usage(&node.stdout.seen[window_start..]);
    assert!(memory.len() as u64 >= WINDOW.as_secs() * 3 / 4, "{fixture}: too few memoryUsage lines");
    let suspects = report["suspects"].as_array().unwrap_or_else(|| panic!("no suspects array: {report}"));
    match expect {
        Expect::Leak { leaker, grows } => {
            let kib_per_s = slope_mib_per_s(&memory, grows) * 1024.0;
            assert!(
                kib_per_s >= LEAK_KIB_PER_S,
                "{fixture}: the leak did not grow: {grows} {kib_per_s:.1} KiB/s"
            );
            let file = fixture_path(fixture);
            let line = declaration_line(&file, leaker);
            let top = suspects.first().unwrap_or_else(|| {
                panic!("{fixture} ({grows} +{kib_per_s:.1} KiB/s): no suspect; {}", summary(&report))
            });
            assert!(
                js_frames(top, &file).contains(&(leaker.to_string(), line)),
                "{fixture} ({grows} +{kib_per_s:.1} KiB/s): the top suspect does not name {leaker} (line {line}); {}",
                summary(&report)
            );
        }
        Expect::Healthy => {
            let growing: Vec<&serde_json::Value> =
                report["verdict"].as_array().into_iter().flatten().filter(|v| v["growing"] == true).collect();
            assert!(
                suspects.is_empty() && growing.is_empty(),
                "{fixture}: a healthy service was flagged; {}",
                summary(&report)
            );
        }
    }
}

#[test]
#[ignore = "a 10-minute window: cargo xtask soak"]
fn a_table_of_remembered_users_that_is_never_pruned() {
    check("slow/session-leak.js", Expect::Leak { leaker: "rememberUser", grows: "heapUsed" });
}

#[test]
#[ignore = "a 10-minute window: cargo xtask soak"]
fn an_audit_log_that_is_never_trimmed() {
    check("slow/audit-log.js", Expect::Leak { leaker: "audit", grows: "heapUsed" });
}

#[test]
#[ignore = "a 10-minute window: cargo xtask soak"]
fn a_thumbnail_cache_that_is_never_evicted() {
    check("slow/thumbnail-cache.js", Expect::Leak { leaker: "cacheThumbnail", grows: "arrayBuffers" });
}

#[test]
#[ignore = "a 10-minute window: cargo xtask soak"]
fn a_table_rebuilt_every_few_seconds_is_healthy() {
    check("slow/rebuilt-table.js", Expect::Healthy);
}

#[test]
#[ignore = "a 10-minute window: cargo xtask soak"]
fn a_cache_that_fills_and_levels_off_is_healthy() {
    check("slow/warm-cache.js", Expect::Healthy);
}

#[test]
#[ignore = "a 10-minute window: cargo xtask soak"]
fn a_bounded_cache_is_healthy() {
    check("slow/bounded-lru.js", Expect::Healthy);
}
