//! The first naming thread: what compiled code each JIT frame of a stack ran, read as soon as
//! the stack arrives ([`CodeReader`]), and where the target's JIT code lies (its anonymous
//! executable mappings). [`super::symbolize`] names the frames from what it read.

use std::{collections::HashMap, hash::Hash};

use crate::{
    stacks::frame::RawFrame,
    v8::{Bad, Compiled, ProcMem, Reader},
};

/// What the code reader read for one naming job.
#[derive(Default)]
pub(super) struct CodeRead {
    /// The target's anonymous executable mappings (JIT code) when read.
    pub(super) jit: Vec<(u64, u64)>,
    /// What compiled code each of the job's JIT frames ran, by (return address, function).
    pub(super) compiled: HashMap<(u64, u64), Option<Compiled>>,
    /// The function and what it ran of each JIT frame the stack gave no function, by (address,
    /// whether it is the instruction that ran: a stack's innermost frame).
    pub(super) owners: HashMap<(u64, bool), Option<(u64, Compiled)>>,
}

/// The first naming thread, at normal priority: what compiled code each JIT frame ran, read as
/// soon as its stack arrives and before anything slower (under load, the low-priority namer can
/// lag by seconds): V8 frees code it replaces (tiering up, deoptimizing), and may put other code
/// in its place.
pub(super) struct CodeReader {
    pid: u32,
    js: Option<Reader<ProcMem>>,
    /// Every anonymous executable range seen: `/proc/PID/maps` is read in pieces, and a
    /// target mapping and unmapping meanwhile can have a line skipped from one reading.
    jit: Vec<(u64, u64)>,
    /// By (return address, function) until objects move.
    compiled: HashMap<(u64, u64), Option<Compiled>>,
    /// As [`CodeRead::owners`], until objects move.
    owners: HashMap<(u64, bool), Option<(u64, Compiled)>>,
}

impl CodeReader {
    /// Reads the code of process `pid` through `js` (no JavaScript frames are read without it).
    pub(super) fn new(pid: u32, js: Option<Reader<ProcMem>>) -> Self {
        Self { pid, js, jit: Vec::new(), compiled: HashMap::new(), owners: HashMap::new() }
    }

    /// Forgets what it read: objects moved (a mark-compact), and code with them.
    pub(super) fn moved(&mut self) {
        self.compiled.clear();
        self.owners.clear();
    }

    /// What the JIT frames of `stacks` ran, and where JIT code lies now.
    pub(super) fn read(&mut self, stacks: &[(i64, Vec<RawFrame>)]) -> CodeRead {
        let frames = || stacks.iter().flat_map(|(_, s)| s).filter(|f| f.js != 0);
        // `/proc/PID/maps` takes a millisecond to read on a big target, while the code may go:
        // read after the code when every JavaScript frame lies in a range seen before.
        let known = !self.jit.is_empty() && frames().all(|f| in_ranges(f.pc, &self.jit));
        if !known {
            self.read_jit_ranges();
        }
        let compiled = self.read_compiled(frames());
        let owners = self.read_owners(stacks);
        if known {
            self.read_jit_ranges();
        }
        CodeRead { jit: self.jit.clone(), compiled, owners }
    }

    /// The function of each JIT frame of `stacks` that has none (the innermost frame of a
    /// sample taken inside JIT code, whose frame the kernel cannot read a function from), from
    /// the optimized code at its address.
    fn read_owners(
        &mut self,
        stacks: &[(i64, Vec<RawFrame>)],
    ) -> HashMap<(u64, bool), Option<(u64, Compiled)>> {
        let mut owners = HashMap::new();
        let Some(reader) = &mut self.js else { return owners };
        let unowned = stacks.iter().flat_map(|(_, s)| s.iter().enumerate());
        for (i, f) in unowned.filter(|(_, f)| f.js == 0 && in_ranges(f.pc, &self.jit)) {
            let key = (f.pc, i == 0);
            let read = cached(&mut self.owners, key, || {
                let found = reader.code_function(f.pc, i == 0);
                match &found {
                    Ok((sfi, _)) => {
                        log::trace!("code at {:#x} (no function in its frame) is function {sfi:#x}'s", f.pc)
                    }
                    Err(e) => log::debug!("code at {:#x} (no function in its frame): {e}", f.pc),
                }
                found
            });
            owners.insert(key, read);
        }
        owners
    }

    /// What compiled code each JIT frame of `frames` ran.
    fn read_compiled<'a>(
        &mut self,
        frames: impl Iterator<Item = &'a RawFrame>,
    ) -> HashMap<(u64, u64), Option<Compiled>> {
        let mut compiled = HashMap::new();
        let Some(reader) = &mut self.js else { return compiled };
        for f in frames.filter(|f| in_ranges(f.pc, &self.jit)) {
            let read = cached(&mut self.compiled, (f.pc, f.js), || {
                reader
                    .compiled(f.pc, f.js)
                    .inspect_err(|e| log::debug!("code at {:#x} of function {:#x}: {e}", f.pc, f.js))
            });
            compiled.insert((f.pc, f.js), read);
        }
        compiled
    }

    /// Adds the JIT ranges of `/proc/PID/maps` now to those seen before.
    fn read_jit_ranges(&mut self) {
        let now = exec_anon_ranges(self.pid);
        if self.jit.len() > MAX_JIT_RANGES {
            self.jit.clear();
        }
        self.jit.extend(now);
        self.jit.sort_unstable();
        self.jit.dedup();
    }
}

/// `key`'s entry of `cache`, read with `read` the first time (a failure is kept as `None`,
/// and not read again until the cache is cleared).
fn cached<K: Eq + Hash, V: Clone>(
    cache: &mut HashMap<K, Option<V>>,
    key: K,
    read: impl FnOnce() -> Result<V, Bad>,
) -> Option<V> {
    cache.entry(key).or_insert_with(|| read().ok()).clone()
}

/// Most JIT ranges remembered (V8 maps a few, and grows them).
const MAX_JIT_RANGES: usize = 4096;

/// Anonymous executable mappings of `pid` (where V8 puts JIT code).
fn exec_anon_ranges(pid: u32) -> Vec<(u64, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| parse_exec_anon(&m)).unwrap_or_default()
}

/// Anonymous executable ranges in a `/proc/PID/maps` text.
pub fn parse_exec_anon(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3);
            if !perms.contains('x') || path.is_some_and(|p| !p.starts_with("[anon")) {
                return None;
            }
            let (lo, hi) = range.split_once('-')?;
            Some((u64::from_str_radix(lo, 16).ok()?, u64::from_str_radix(hi, 16).ok()?))
        })
        .collect()
}

/// Whether `addr` lies in one of `ranges`.
pub(super) fn in_ranges(addr: u64, ranges: &[(u64, u64)]) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..*hi).contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_anonymous_executable_ranges() {
        let maps = "\
00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/node
1f3a0000-1f3c0000 rwxp 00000000 00:00 0 
7f00-7fff r-xp 00000000 00:00 0 [anon:v8]
zz-yy r-xp 0 0 0
7ffd-7ffe rw-p 00000000 00:00 0 [stack]";
        assert_eq!(parse_exec_anon(maps), vec![(0x1f3a0000, 0x1f3c0000), (0x7f00, 0x7fff)]);
        assert!(parse_exec_anon("garbage").is_empty());
    }

    proptest::proptest! {
        /// Any /proc/PID/maps text parses or is skipped, never panics.
        #[test]
        fn maps_lines_never_panic(text in "([0-9a-f]{0,12}-[0-9a-f]{0,12} [rwxps-]{0,4} .{0,40}\n){0,8}") {
            proptest::prop_assert!(parse_exec_anon(&text).len() <= text.lines().count());
        }
    }
}
