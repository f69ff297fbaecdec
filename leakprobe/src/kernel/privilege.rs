//! Checking up front that we may load eBPF programs, so the user gets one clear line.
//!
//! What each probe kind needs, measured on kernel 6.18 (deploy/README.md has the table): loading
//! programs and maps needs CAP_BPF; tracepoints and perf software events need CAP_PERFMON; but
//! uprobes created through perf_event_open(2) need CAP_SYS_ADMIN, which also covers the two
//! others. So this check passes with CAP_BPF and CAP_PERFMON (the syscall probes work), and a
//! uprobe refused later says that CAP_SYS_ADMIN is missing.

use crate::error::Error;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with [`Error::Permission`] unless this process has CAP_SYS_ADMIN, or CAP_BPF and
/// CAP_PERFMON, in its effective set.
pub fn check() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::Permission(format!("cannot read /proc/self/status: {e}")))?;
    let effective = effective_caps(&status).unwrap_or(0);
    if has_bpf_caps(effective) {
        Ok(())
    } else {
        Err(Error::Permission("loading eBPF programs needs CAP_SYS_ADMIN, or CAP_BPF and CAP_PERFMON".into()))
    }
}

/// The `CapEff` bit set from a `/proc/PID/status` text.
pub fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Whether a capability set allows loading tracing eBPF programs.
pub fn has_bpf_caps(caps: u64) -> bool {
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_capeff_and_judges_it() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(has_bpf_caps(effective_caps(root).unwrap()));
        let nobody = "CapEff:\t0000000000000000\n";
        assert!(!has_bpf_caps(effective_caps(nobody).unwrap()));
        assert!(has_bpf_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_bpf_caps(1 << CAP_BPF));
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
        assert_eq!(effective_caps(""), None);
    }
}
