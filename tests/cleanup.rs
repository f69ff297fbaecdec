//! Leaving no trace: after leakprobe exits, normally or by SIGKILL, none of its programs or
//! uprobes remain in the kernel, and the target keeps running with unchanged output.
//!
//! One test in its own binary: it inspects kernel-wide state (every loaded BPF program), so
//! no other leakprobe may run beside it.

mod common;

use std::{process::Command, thread, time::Duration};

use common::*;
use leakprobe::kernel::table::{Family, When, PROBES};

/// The programs of the default probe families, less those only the native view attaches
/// (bpftool shows their full names, from BTF).
fn default_programs() -> Vec<String> {
    PROBES
        .iter()
        // Fallbacks load only where the probe they stand in for did not attach.
        .filter(|p| {
            Family::DEFAULT.contains(&p.family) && !matches!(p.attach, When::WithNative | When::Unless(_))
        })
        .map(|p| p.program.to_string())
        .collect()
}

/// Loaded BPF programs that are leakprobe's, by `bpftool prog show`.
fn our_programs() -> Vec<String> {
    let out = Command::new("bpftool").args(["prog", "show"]).output().expect("running bpftool");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let ours = default_programs();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| ours.iter().any(|name| l.contains(&format!(" name {name} "))))
        .map(str::to_string)
        .collect()
}

/// uprobes registered through tracefs that point at node (perf-event uprobes never appear here;
/// this guards against a fallback that would leave some behind).
fn tracefs_uprobes() -> String {
    let path = ["/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    path.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default()
}

fn wait_until_gone() -> Vec<String> {
    // Program teardown after the last fd closes is asynchronous (RCU): give it a moment.
    for _ in 0..100 {
        let left = our_programs();
        if left.is_empty() {
            return left;
        }
        thread::sleep(Duration::from_millis(50));
    }
    our_programs()
}

/// The ticker's lines keep coming, each one more than the last.
fn assert_ticks_continue(fixture: &mut Node) {
    let lines = fixture.stdout.for_a_while(Duration::from_millis(600));
    let ticks: Vec<u64> = lines
        .iter()
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected output {l:?}"))
        })
        .collect();
    assert!(ticks.len() >= 5, "target stopped printing: {lines:?}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "ticks not consecutive: {ticks:?}");
}

#[test]
fn nothing_remains_after_exit_or_sigkill() {
    assert!(our_programs().is_empty(), "leftover programs before the test: {:?}", our_programs());
    let mut fixture = Node::start(&system_node(), &[], "ticker.js");

    for (how, signal) in [("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM), ("SIGKILL", libc::SIGKILL)] {
        // --alloc-stacks keeps every program of the default families loaded for the whole run.
        let mut leakprobe = Leakprobe::attach(fixture.pid(), &["--alloc-stacks"]);
        assert_eq!(our_programs().len(), default_programs().len(), "while attached, every program is loaded");
        assert_ticks_continue(&mut fixture);
        leakprobe.signal(signal);
        let status = leakprobe.wait(Duration::from_secs(30));
        if signal != libc::SIGKILL {
            assert!(status.success(), "{status}");
            assert_eq!(read_report(&leakprobe.out)["window"]["stop_reason"], "signal");
        }
        assert_eq!(wait_until_gone(), Vec::<String>::new(), "programs left after {how}");
        assert!(
            !tracefs_uprobes().contains("node"),
            "tracefs uprobes left after {how}: {}",
            tracefs_uprobes()
        );
        assert!(fixture.child.try_wait().unwrap().is_none(), "target died after {how}");
        assert_ticks_continue(&mut fixture);
    }
}
