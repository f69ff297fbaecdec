//! The perf map a JIT writes for profilers (`/tmp/perf-PID.map`; node writes one when started
//! with `--perf-basic-prof`): one `START SIZE name` line per compiled code object, hex numbers,
//! appended as code is compiled. Read through `/proc/PID/root` so targets in containers work,
//! with the pid the target sees itself as.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::PathBuf,
};

/// A parsed perf map, reloaded when the file grows.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// Code start → (end, name). A later line for the same start replaces an earlier one.
    entries: BTreeMap<u64, (u64, String)>,
    /// Bytes of the file parsed so far.
    parsed: u64,
}

impl PerfMap {
    /// Adds the lines of `text` (a whole file or what was appended since); malformed lines
    /// are skipped.
    pub fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some((start, size, name)) = parse_line(line) {
                self.entries.insert(start, (start.saturating_add(size), name.to_string()));
            }
        }
    }

    /// The name of the code holding `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.entries.range(..=addr).next_back()?;
        (addr < *end).then_some(name.as_str())
    }

    /// Reads what `pid`'s perf map gained since the last call (nothing when it has none): only
    /// the bytes past those already parsed.
    pub fn refresh(&mut self, pid: u32) {
        let Some(path) = path(pid) else { return };
        let Ok(mut file) = File::open(&path) else { return };
        let Ok(len) = file.metadata().map(|m| m.len()) else { return };
        if len < self.parsed {
            // A new file (the process restarted under the same pid): start over.
            *self = Self::default();
        }
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(self.parsed)).and_then(|_| file.read_to_end(&mut new)).is_err() {
            return;
        }
        // Only whole lines: the JIT may be mid-write.
        let whole = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.add(&String::from_utf8_lossy(&new[..whole]));
        self.parsed += whole as u64;
    }
}

/// One `START SIZE name` line.
pub fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let mut parts = line.splitn(3, ' ');
    let start = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
    let size = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
    let name = parts.next()?.trim_end();
    (!name.is_empty()).then_some((start, size, name))
}

/// `/proc/PID/root/tmp/perf-NSPID.map`, NSPID being the pid the process sees itself as.
fn path(pid: u32) -> Option<PathBuf> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ns_pid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        .unwrap_or("");
    let ns_pid = if ns_pid.is_empty() { pid.to_string() } else { ns_pid.to_string() };
    Some(PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_the_code_holding_an_address() {
        let mut map = PerfMap::default();
        map.add("7f00 40 JS:*render /app/pdf.js:88:17\n7f80 10 Builtin:ArrayForEach\nnot a line\n7f00 20 JS:~later x.js:1\n");
        assert_eq!(map.lookup(0x7f10), Some("JS:~later x.js:1"));
        assert_eq!(map.lookup(0x7f30), None, "the later entry for 7f00 is 0x20 long");
        assert_eq!(map.lookup(0x7f85), Some("Builtin:ArrayForEach"));
        assert_eq!(map.lookup(0x7f90), None);
        assert_eq!(map.lookup(0x10), None);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(parse_line("zz 10 x"), None);
        assert_eq!(parse_line("10 zz x"), None);
        assert_eq!(parse_line("10 20"), None);
        assert_eq!(parse_line("10 20 "), None);
        assert_eq!(parse_line("0x10 0x20 name with spaces"), Some((0x10, 0x20, "name with spaces")));
    }

    proptest! {
        /// Any text parses into entries or is skipped, and lookups never panic.
        #[test]
        fn any_text_is_safe(text in "(([0-9a-f]{1,16}|.{0,4}) ([0-9a-f]{1,16}|.{0,3}) .{0,30}\n){0,10}", addr in any::<u64>()) {
            let mut map = PerfMap::default();
            map.add(&text);
            prop_assert!(map.entries.len() <= text.lines().count());
            let _ = map.lookup(addr);
        }
    }
}
