//! Turning stack addresses into frames people can read: native symbols through blazesym
//! (demangled, resolved through `/proc/PID/map_files` so containers work, and the target's perf
//! map when it writes one); JIT code labelled honestly as `[JIT 0x…]`, never dropped.

use std::{
    collections::HashMap,
    sync::{
        mpsc::{self, Sender, SyncSender},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use blazesym::{
    symbolize::{
        source::{Process, Source},
        Input, Symbolized, Symbolizer as Blazesym,
    },
    Pid,
};
use leakprobe_ebpf::alloc::NO_STACK;
use serde::Serialize;

/// What kind of code a frame is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// C/C++ code in node, libnode, libc or an addon.
    Native,
    /// V8's embedded builtins (`Builtins_*`), including the interpreter's bytecode handlers.
    Builtin,
    /// JIT-compiled JavaScript (named once JS symbolization lands; issue 5).
    Jit,
    /// Anything else.
    Unknown,
}

/// One stack frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Frame {
    /// Demangled function name, or an honest label such as `[JIT 0x7f…]`.
    pub name: String,
    /// Kind of code.
    pub kind: FrameKind,
    /// Instruction address.
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    /// Source file, where debug information says.
    pub file: Option<String>,
    /// Source line, where debug information says.
    pub line: Option<u32>,
}

impl Frame {
    /// The frame standing for a stack that could not be captured.
    pub fn lost() -> Frame {
        Frame { name: "[stack lost]".into(), kind: FrameKind::Unknown, addr: 0, file: None, line: None }
    }

    /// What identifies the frame across compilations: its name, or its kind for JIT and
    /// unknown code (whose labels carry addresses).
    pub fn kind_key(&self) -> String {
        match self.kind {
            FrameKind::Jit => "[JIT]".into(),
            FrameKind::Unknown => "[unknown]".into(),
            FrameKind::Native | FrameKind::Builtin => self.name.clone(),
        }
    }
}

fn hex<S: serde::Serializer>(addr: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{addr:#x}"))
}

/// Symbolizes addresses of one process, caching by address.
///
/// The naming runs on a thread of its own: the first lookup parses the target's binaries,
/// which must not stall sampling, so addresses are named ahead of reports
/// ([`Symbolizer::prefetch`]) — which also names them while the target is still alive.
pub struct Symbolizer {
    pid: u32,
    cache: Arc<Mutex<HashMap<u64, Frame>>>,
    requests: Option<Sender<Request>>,
}

/// Addresses to name, and whom to tell when they are.
struct Request {
    addrs: Vec<u64>,
    done: Option<SyncSender<()>>,
}

impl Symbolizer {
    /// For process `pid`.
    pub fn new(pid: u32) -> Self {
        Self { pid, cache: Arc::new(Mutex::new(HashMap::new())), requests: None }
    }

    /// The naming thread's queue, started on first use.
    fn requests(&mut self) -> &Sender<Request> {
        let (pid, cache) = (self.pid, &self.cache);
        self.requests.get_or_insert_with(|| {
            let (requests, rx) = mpsc::channel::<Request>();
            let shared = Arc::clone(cache);
            // Ends when the symbolizer (the sender) is dropped.
            std::thread::spawn(move || {
                // Naming is never urgent: let sampling and the target have the CPU first.
                // SAFETY: plain syscall on this thread (who = 0: the calling thread).
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                let blazesym = Blazesym::builder().enable_demangling(true).build();
                for request in rx {
                    let named = name(&blazesym, pid, &request.addrs);
                    lock(&shared).extend(named);
                    if let Some(done) = request.done {
                        let _ = done.send(());
                    }
                }
            });
            requests
        })
    }

    /// The addresses of `addrs` not named yet.
    fn uncached(&self, addrs: &[u64]) -> Vec<u64> {
        let cache = lock(&self.cache);
        addrs.iter().copied().filter(|a| !cache.contains_key(a)).collect()
    }

    /// Frames for `addrs` (innermost first). Addresses that cannot be named get labels.
    pub fn frames(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let missing = self.uncached(addrs);
        if !missing.is_empty() {
            let (done, wait) = mpsc::sync_channel(1);
            if self.requests().send(Request { addrs: missing, done: Some(done) }).is_ok() {
                let _ = wait.recv();
            }
        }
        let cache = lock(&self.cache);
        addrs.iter().map(|a| cache.get(a).cloned().unwrap_or_else(|| unnamed(*a, &[]))).collect()
    }

    /// Frames for stack `stack_id`, whose addresses `addrs` reads from a stack map; a stack
    /// the kernel could not capture ([`NO_STACK`]) is the one frame [`Frame::lost`].
    pub fn stack_frames(&mut self, stack_id: i64, addrs: impl FnOnce(i64) -> Vec<u64>) -> Vec<Frame> {
        match stack_id {
            NO_STACK => vec![Frame::lost()],
            id => self.frames(&addrs(id)),
        }
    }

    /// Names `addrs` in the background, for a later [`Symbolizer::frames`] to find cached.
    pub fn prefetch(&mut self, addrs: Vec<u64>) {
        let addrs = self.uncached(&addrs);
        if !addrs.is_empty() {
            let _ = self.requests().send(Request { addrs, done: None });
        }
    }
}

/// The cache stays usable even if a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Frames for the addresses of `pid` (already-cached ones are named again, harmlessly).
fn name(blazesym: &Blazesym, pid: u32, addrs: &[u64]) -> Vec<(u64, Frame)> {
    let jit = exec_anon_ranges(pid);
    let src = Source::Process(Process::new(Pid::from(pid)));
    let symbolized = blazesym.symbolize(&src, Input::AbsAddr(addrs)).unwrap_or_default();
    addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let frame = match symbolized.get(i) {
                Some(Symbolized::Sym(sym)) => Frame {
                    kind: if sym.name.starts_with("Builtins_") {
                        FrameKind::Builtin
                    } else {
                        FrameKind::Native
                    },
                    name: sym.name.to_string(),
                    addr,
                    file: sym.code_info.as_ref().map(|c| c.file.to_string_lossy().into_owned()),
                    line: sym.code_info.as_ref().and_then(|c| c.line),
                },
                _ => unnamed(addr, &jit),
            };
            (addr, frame)
        })
        .collect()
}

fn unnamed(addr: u64, jit: &[(u64, u64)]) -> Frame {
    let is_jit = jit.iter().any(|(lo, hi)| (*lo..*hi).contains(&addr));
    Frame {
        name: if is_jit { format!("[JIT {addr:#x}]") } else { format!("[unknown {addr:#x}]") },
        kind: if is_jit { FrameKind::Jit } else { FrameKind::Unknown },
        addr,
        file: None,
        line: None,
    }
}

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

    #[test]
    fn names_our_own_code_and_labels_the_rest() {
        #[inline(never)]
        fn here() -> u64 {
            here as *const () as u64
        }
        let mut s = Symbolizer::new(std::process::id());
        let frames = s.frames(&[here(), 0x10]);
        assert!(frames[0].name.contains("here"), "{:?}", frames[0]);
        assert_eq!(frames[0].kind, FrameKind::Native);
        assert_eq!(frames[1].name, "[unknown 0x10]");
        assert_eq!(frames[1].kind, FrameKind::Unknown);
    }
}
