//! Finding the host's node processes: a scan of `/proc`, filtered by a pattern on the process
//! name (`comm`) or its command line, each process identified by pid and start time so that a
//! reused pid is a new process.

use std::fs;

use regex::Regex;

/// The default `--match`: processes named `node`, or started as `node` / `nodejs` / `.../node`.
pub const DEFAULT_PATTERN: &str = r"^(node|nodejs)$|^(\S*/)?(node|nodejs)(\s|$)";

/// A process on the host, as `/proc` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Process id (in the agent's pid namespace: the host's, with `hostPID`).
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// `/proc/PID/cmdline`, arguments joined by spaces.
    pub cmdline: String,
}

impl Process {
    /// Reads `/proc/PID`; `None` if the process is gone or is a kernel thread.
    pub fn read(pid: u32) -> Option<Process> {
        let start_time = start_time(pid)?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end().to_string();
        let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        if raw.is_empty() {
            return None;
        }
        let cmdline = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Some(Process { pid, start_time, comm, cmdline })
    }

    /// Whether `pattern` matches the name or the command line.
    pub fn matches(&self, pattern: &Regex) -> bool {
        pattern.is_match(&self.comm) || pattern.is_match(&self.cmdline)
    }

    /// Whether this process is still the one running under its pid.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Every user process on the host except this one.
pub fn processes() -> Vec<Process> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(Process::read)
        .collect()
}

/// The start time of process `pid`, if it exists (see [`Process::start_time`]).
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time from a `/proc/PID/stat` line. The name (field 2) is in parentheses and may
/// itself contain spaces and parentheses: fields are counted after its last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, start time field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_names() {
        let stat =
            "4242 (node (a) b) S 1 4242 4242 0 -1 4194560 2000 0 0 0 10 5 0 0 20 0 11 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
    }

    #[test]
    fn default_pattern_finds_node_not_lookalikes() {
        let re = Regex::new(DEFAULT_PATTERN).unwrap();
        let p = |comm: &str, cmdline: &str| Process {
            pid: 1,
            start_time: 1,
            comm: comm.into(),
            cmdline: cmdline.into(),
        };
        assert!(p("node", "node server.js").matches(&re));
        assert!(p("MainThread", "/usr/local/bin/node --max-old-space-size=4096 app.js").matches(&re));
        assert!(p("nodejs", "nodejs app.js").matches(&re));
        assert!(!p("bash", "bash -c sleep 1").matches(&re));
        assert!(!p("nodemon", "nodemon app.js").matches(&re));
        assert!(!p("vim", "vim node.js").matches(&re));
    }

    #[test]
    fn reads_this_process() {
        let me = Process::read(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(!me.comm.is_empty());
    }
}
