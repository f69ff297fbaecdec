//! The run statistics of a tracer's BPF programs: `kernel.bpf_stats_enabled`, the programs a
//! process holds (its fdinfo) and their names (bpftool).

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    process::Command,
};

use anyhow::Context as _;

/// `kernel.bpf_stats_enabled`.
pub(super) const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Per program name: (total run time in ns, runs).
pub(super) type ProgramStats = BTreeMap<String, (u64, u64)>;

/// Names of the loaded BPF programs, by id (bpftool).
pub(super) fn program_names() -> anyhow::Result<HashMap<u64, String>> {
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().context("running bpftool")?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    Ok(list
        .as_array()
        .map(|a| {
            a.iter().filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_string()))).collect()
        })
        .unwrap_or_default())
}

/// The BPF programs `pid` holds (its file descriptors' /proc fdinfo), by id: (run time in ns,
/// runs). Only the tracer's own programs: other tenants of the machine load theirs too.
pub(super) fn owned_programs(pid: Option<u32>) -> BTreeMap<u64, (u64, u64)> {
    let mut owned = BTreeMap::new();
    let Some(pid) = pid else { return owned };
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return owned };
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else { continue };
        let field = |key: &str| {
            info.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        // Program fds have run statistics; link fds name a program id without them.
        if let (Some(id), Some(time_ns), Some(runs)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            owned.insert(id, (time_ns, runs));
        }
    }
    owned
}
