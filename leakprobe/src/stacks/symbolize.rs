//! Turning captured stacks into frames people can read: native symbols through blazesym
//! (demangled, resolved through `/proc/PID/map_files` so containers work, and the target's perf
//! map when it writes one); JavaScript frames named from the `SharedFunctionInfo` the kernel
//! captured with them ([`crate::v8`]); whatever cannot be named labelled honestly as
//! `[JIT 0x…]` or `[unknown 0x…]`, never dropped.

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
use leakprobe_ebpf::{alloc::NO_STACK, stack::SKIPPED_PC};

use super::code_reader::{in_ranges, CodeRead, CodeReader};
use crate::{
    process::perfmap::PerfMap,
    stacks::frame::{
        note, Frame, FrameKind, RawFrame, INLINED_INTO_NOTE, INLINED_NOTE, QUEUED_NAME, SKIPPED_NAME,
    },
    v8::{Compiled, JsFunction, ProcMem, Reader},
};

/// Symbolizes stacks of one process: native addresses cached by address, JavaScript functions
/// by `SharedFunctionInfo` until the next mark-compact ([`Symbolizer::moved`]), and each stack's
/// frames once named (a stack id always means the same frames).
///
/// The naming runs on threads of its own: the first lookup parses the target's binaries,
/// which must not stall sampling, so stacks are named ahead of reports
/// ([`Symbolizer::prefetch`]) — which also names them while the target is still alive, and
/// while the objects their JavaScript frames point to are still where they were. A first
/// thread at normal priority reads what each compiled frame's code ran as soon as its stack
/// arrives ([`super::code_reader`]); the namer proper runs at the lowest priority.
pub struct Symbolizer {
    pid: u32,
    /// Reads the target's V8 objects; `None` without usable metadata (JS frames then stay
    /// `[JIT …]` or builtins). Moved to the naming thread when it starts.
    js: Option<Reader<ProcMem>>,
    stacks: Arc<Mutex<HashMap<i64, Vec<Frame>>>>,
    jobs: Option<Sender<Job>>,
}

/// Work for the naming threads: the code reader, then the namer.
enum Job {
    /// Name these stacks, then tell `done`.
    Name { stacks: Vec<(i64, Vec<RawFrame>)>, done: Option<SyncSender<()>> },
    /// Objects may have moved: forget what was cached by object address.
    Moved,
    /// Load the symbols of the target's module (its path as the process sees it) now, not
    /// with the first stack.
    Warm(String),
}

impl Symbolizer {
    /// For process `pid`, naming JavaScript frames with `js` when given.
    pub fn new(pid: u32, js: Option<Reader<ProcMem>>) -> Self {
        Self { pid, js, stacks: Arc::new(Mutex::new(HashMap::new())), jobs: None }
    }

    /// The naming threads' queue, started on first use: jobs pass the code reader, then the
    /// namer.
    fn jobs(&mut self) -> &Sender<Job> {
        let (pid, stacks, js) = (self.pid, &self.stacks, &mut self.js);
        self.jobs.get_or_insert_with(|| {
            let (jobs, rx) = mpsc::channel::<Job>();
            // Each job with what the code reader read for it.
            let (to_namer, namer_rx) = mpsc::channel::<(Job, CodeRead)>();
            let (js, stacks) = (js.take(), Arc::clone(stacks));
            let mut code = CodeReader::new(pid, js.clone());
            // Both end when the symbolizer (the first sender) is dropped.
            std::thread::spawn(move || {
                for job in rx {
                    let read = match &job {
                        Job::Name { stacks, .. } => code.read(stacks),
                        Job::Moved => {
                            code.moved();
                            CodeRead::default()
                        }
                        Job::Warm(_) => CodeRead::default(),
                    };
                    if to_namer.send((job, read)).is_err() {
                        break;
                    }
                }
            });
            std::thread::spawn(move || {
                // Naming is never urgent: let sampling and the target have the CPU first.
                // SAFETY: plain syscall on this thread (who = 0: the calling thread).
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                let mut namer = Namer::new(pid, js, stacks);
                for (job, code) in namer_rx {
                    match job {
                        Job::Name { stacks, done } => {
                            namer.name(stacks, code);
                            if let Some(done) = done {
                                let _ = done.send(());
                            }
                        }
                        Job::Moved => namer.moved(),
                        Job::Warm(module) => namer.warm(&module),
                    }
                }
            });
            jobs
        })
    }

    /// Frames of stack `stack_id` (innermost first), whose raw frames `raw` reads from a stack
    /// map when it was not named yet; a stack the kernel could not capture ([`NO_STACK`]) is
    /// the one frame [`Frame::lost`].
    pub fn stack_frames(&mut self, stack_id: i64, raw: impl FnOnce(i64) -> Vec<RawFrame>) -> Vec<Frame> {
        if stack_id == NO_STACK {
            return vec![Frame::lost()];
        }
        if let Some(frames) = lock(&self.stacks).get(&stack_id) {
            return frames.clone();
        }
        let (done, wait) = mpsc::sync_channel(1);
        let job = Job::Name { stacks: vec![(stack_id, raw(stack_id))], done: Some(done) };
        if self.jobs().send(job).is_ok() {
            let _ = wait.recv();
        }
        lock(&self.stacks).get(&stack_id).cloned().unwrap_or_else(|| vec![Frame::lost()])
    }

    /// Names stack `stack_id` in the background, for a later [`Symbolizer::stack_frames`].
    pub fn prefetch(&mut self, stack_id: i64, raw: Vec<RawFrame>) {
        if stack_id != NO_STACK && !lock(&self.stacks).contains_key(&stack_id) {
            let _ = self.jobs().send(Job::Name { stacks: vec![(stack_id, raw)], done: None });
        }
    }

    /// Starts naming: the target's binaries are parsed before the first stack arrives, so
    /// that stacks are named soon after they are taken (V8 frees compiled code it replaces,
    /// and what a frame's code inlined can only be read while it lives).
    /// `module` is the binary holding V8 (node, or its `libnode.so`) as the process sees it.
    pub fn warm(&mut self, module: &str) {
        let _ = self.jobs().send(Job::Warm(module.to_string()));
    }

    /// A mark-compact ran: JavaScript objects may have moved, so names cached by object
    /// address are dropped (stacks already named keep their names).
    pub fn moved(&mut self) {
        if self.jobs.is_some() {
            let _ = self.jobs().send(Job::Moved);
        }
    }
}

/// The cache stays usable even if a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The naming thread's state.
struct Namer {
    pid: u32,
    blazesym: Blazesym,
    js: Option<Reader<ProcMem>>,
    perf_map: PerfMap,
    /// Whether modules are opened through `/proc/PID/map_files` (false once that was denied:
    /// no CAP_SYS_ADMIN), else by the paths in the process's maps.
    map_files: bool,
    native: HashMap<u64, Frame>,
    functions: HashMap<u64, Option<JsFunction>>,
    stacks: Arc<Mutex<HashMap<i64, Vec<Frame>>>>,
}

impl Namer {
    fn new(pid: u32, js: Option<Reader<ProcMem>>, stacks: Arc<Mutex<HashMap<i64, Vec<Frame>>>>) -> Self {
        let blazesym = Blazesym::builder().enable_demangling(true).build();
        Self {
            pid,
            blazesym,
            js,
            perf_map: PerfMap::default(),
            map_files: true,
            native: HashMap::new(),
            functions: HashMap::new(),
            stacks,
        }
    }

    fn moved(&mut self) {
        self.functions.clear();
        if let Some(js) = &mut self.js {
            js.forget();
        }
    }

    /// Parses `module` (the first address of its executable mappings).
    fn warm(&mut self, module: &str) {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default();
        let text = maps.lines().find(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(1).is_some_and(|p| p.contains('x')) && fields.get(5) == Some(&module)
        });
        if let Some(addr) = text.and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok()) {
            self.native.extend(name(
                &self.blazesym,
                &self.perf_map,
                &mut self.map_files,
                self.pid,
                &[addr],
                &[],
            ));
        }
    }

    /// Names `stacks`, whose compiled code `code` read.
    fn name(&mut self, stacks: Vec<(i64, Vec<RawFrame>)>, code: CodeRead) {
        let jit = &code.jit[..];
        let mut addrs: Vec<u64> = stacks.iter().flat_map(|(_, s)| s.iter().map(|f| f.pc)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        addrs.retain(|a| !self.native.contains_key(a) && *a != RawFrame::QUEUED.pc && *a != SKIPPED_PC);
        if !addrs.is_empty() {
            self.perf_map.refresh(self.pid);
            self.native.extend(name(
                &self.blazesym,
                &self.perf_map,
                &mut self.map_files,
                self.pid,
                &addrs,
                jit,
            ));
        }
        for (id, raw) in stacks {
            let mut frames = Vec::with_capacity(raw.len());
            for (i, f) in raw.into_iter().enumerate() {
                let jit = in_ranges(f.pc, jit);
                // A JIT frame with no function is named by its code's, where optimized code
                // names one.
                let (f, compiled) = match (f.js, jit) {
                    (0, true) => match code.owners.get(&(f.pc, i == 0)).cloned().flatten() {
                        Some((js, compiled)) => (RawFrame { js, ..f }, Some(compiled)),
                        None => (f, None),
                    },
                    _ => (f, code.compiled.get(&(f.pc, f.js)).filter(|_| jit).cloned().flatten()),
                };
                self.frames(f, jit, compiled, &mut frames);
            }
            lock(&self.stacks).insert(id, frames);
        }
    }

    /// The frames of one captured frame: the JavaScript function when the frame has one with
    /// a script (V8's own builtins, such as `Array.prototype.forEach`, keep their `Builtins_`
    /// names), preceded by the functions inlined into it at that address when it runs JIT code
    /// (`jit`, whose code ran `compiled`); else the native name or label.
    fn frames(&mut self, raw: RawFrame, jit: bool, compiled: Option<Compiled>, out: &mut Vec<Frame>) {
        match raw {
            _ if raw.pc == SKIPPED_PC => return out.push(Frame::marker(SKIPPED_NAME, FrameKind::Unknown)),
            RawFrame::QUEUED => return out.push(Frame::marker(QUEUED_NAME, FrameKind::Queued)),
            _ => {}
        }
        let native = self.native.get(&raw.pc).cloned().unwrap_or_else(|| unnamed(raw.pc, &[]));
        // Only V8's code holds a JSFunction in the slot; a C++ frame's is a stray local.
        if raw.js == 0 || native.kind == FrameKind::Native {
            return out.push(native);
        }
        let Some(reader) = &mut self.js else { return out.push(native) };
        let Some(function) = js_function(&mut self.functions, reader, raw.js).filter(|f| f.file.is_some())
        else {
            return out.push(native);
        };
        let js = |f: JsFunction, note| Frame {
            name: f.name,
            kind: FrameKind::Js,
            addr: raw.pc,
            file: f.file,
            line: f.line,
            note,
        };
        let mut note = if jit { Some(INLINED_NOTE) } else { note(&native) };
        match compiled {
            Some(Compiled::Optimized(inlined)) => {
                for sfi in inlined {
                    let frame = match js_function(&mut self.functions, reader, sfi) {
                        Some(f) => js(f, Some(INLINED_INTO_NOTE)),
                        None => Frame {
                            name: format!("[inlined {sfi:#x}]"),
                            ..js(function.clone(), Some(INLINED_INTO_NOTE))
                        },
                    };
                    out.push(frame);
                }
                note = None;
            }
            Some(Compiled::Baseline) => note = None,
            None => {}
        }
        out.push(js(function, note));
    }
}

/// The function of `sfi`, named once until objects move.
fn js_function(
    functions: &mut HashMap<u64, Option<JsFunction>>,
    reader: &mut Reader<ProcMem>,
    sfi: u64,
) -> Option<JsFunction> {
    functions.entry(sfi).or_insert_with(|| reader.function(sfi).ok()).clone()
}

/// Frames for the addresses of `pid`, whose JIT code lies in `jit`; modules are opened
/// through `/proc/PID/map_files` while `map_files` holds (cleared once that is denied).
fn name(
    blazesym: &Blazesym,
    perf_map: &PerfMap,
    map_files: &mut bool,
    pid: u32,
    addrs: &[u64],
    jit: &[(u64, u64)],
) -> Vec<(u64, Frame)> {
    let symbolize = |map_files: bool| {
        let mut process = Process::new(Pid::from(pid));
        // Read by `PerfMap` instead: blazesym would keep a parsed copy of each version of the
        // growing file.
        process.perf_map = false;
        process.map_files = map_files;
        blazesym.symbolize(&Source::Process(process), Input::AbsAddr(addrs))
    };
    // A batch fails whole. Opening a module through `/proc/PID/map_files` needs CAP_SYS_ADMIN
    // (without it no native frame was ever named), and a mapping can go between reading the
    // maps and opening it: the maps' paths are tried next, and used from then on when
    // map_files was denied. If that fails too, the addresses are not named now, nor kept as
    // unnamed (a later stack tries them again).
    let mut result = symbolize(*map_files);
    if let (true, Err(first)) = (*map_files, &result) {
        log::debug!("naming {} addresses of pid {pid} through map_files: {first}", addrs.len());
        let denied = first.kind() == blazesym::ErrorKind::PermissionDenied;
        result = symbolize(false);
        *map_files = !(denied && result.is_ok());
    }
    let Ok(symbolized) =
        result.inspect_err(|e| log::debug!("naming {} addresses of pid {pid}: {e}", addrs.len()))
    else {
        return Vec::new();
    };
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
                    note: None,
                },
                // JIT code, named by the target's perf map when it writes one.
                _ => match perf_map.lookup(addr) {
                    Some(symbol) => perf_map_frame(symbol, addr)
                        .unwrap_or_else(|| Frame { name: symbol.to_string(), ..unnamed(addr, jit) }),
                    None => unnamed(addr, jit),
                },
            };
            (addr, frame)
        })
        .collect()
}

/// The frame a perf map entry of V8's names, e.g. `JS:*render /app/pdf.js:88:17` (a function,
/// its tier marker, script, line and column), `LazyCompile:~f file:3` (older V8), or
/// `Builtin:ArrayForEach`; `None` for entries of other shapes.
pub fn perf_map_frame(symbol: &str, addr: u64) -> Option<Frame> {
    let (tag, rest) = symbol.split_once(':')?;
    let frame = |name: String, kind, file, line| Frame { name, kind, addr, file, line, note: None };
    match tag {
        "JS" | "LazyCompile" | "Function" | "Script" | "Eval" | "InterpretedFunction" => {
            // The tier: `*` TurboFan and `+` Maglev inline calls, `^` Sparkplug and `~` do not.
            let optimized = rest.starts_with(['*', '+']);
            let rest = rest.trim_start_matches(['*', '~', '^', '+']);
            let (name, location) = rest.split_once(' ').unwrap_or((rest, ""));
            let (file, line) = split_location(location.trim());
            let name = if name.is_empty() { "(anonymous)" } else { name };
            let note = optimized.then_some(INLINED_NOTE);
            Some(Frame { note, ..frame(name.to_string(), FrameKind::Js, file, line) })
        }
        "Builtin" | "BytecodeHandler" | "Stub" | "Handler" | "RegExp" => {
            Some(frame(symbol.to_string(), FrameKind::Builtin, None, None))
        }
        _ => None,
    }
}

/// `file:line:column` or `file:line` → (file, line); a location without numbers is a file.
fn split_location(location: &str) -> (Option<String>, Option<u32>) {
    let mut file = location;
    let mut numbers = Vec::new();
    while numbers.len() < 2 {
        match file.rsplit_once(':') {
            Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
                numbers.push(tail);
                file = head;
            }
            _ => break,
        }
    }
    // With two numbers, the first from the right is the column.
    let line = numbers.last().and_then(|n| n.parse().ok());
    let file = (!file.is_empty()).then(|| file.to_string());
    (file, line)
}

fn unnamed(addr: u64, jit: &[(u64, u64)]) -> Frame {
    let is_jit = in_ranges(addr, jit);
    Frame {
        name: if is_jit { format!("[JIT {addr:#x}]") } else { format!("[unknown {addr:#x}]") },
        kind: if is_jit { FrameKind::Jit } else { FrameKind::Unknown },
        addr,
        file: None,
        line: None,
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v8_perf_map_entries() {
        let f = perf_map_frame("JS:*renderInvoicePdf /app/billing/pdf.js:88:17", 1).unwrap();
        assert_eq!((f.name.as_str(), f.kind), ("renderInvoicePdf", FrameKind::Js));
        assert_eq!((f.file.as_deref(), f.line), (Some("/app/billing/pdf.js"), Some(88)));
        assert_eq!(f.note, Some(INLINED_NOTE), "optimized code may hold inlined calls");
        let f = perf_map_frame("LazyCompile:~handle file:///srv/a b.mjs:3", 1).unwrap();
        assert_eq!(
            (f.name.as_str(), f.file.as_deref(), f.line),
            ("handle", Some("file:///srv/a b.mjs"), Some(3))
        );
        assert_eq!(f.note, None);
        let f = perf_map_frame("JS:~ node:internal/main/eval_string:1:1", 1).unwrap();
        assert_eq!(
            (f.name.as_str(), f.file.as_deref(), f.line),
            ("(anonymous)", Some("node:internal/main/eval_string"), Some(1))
        );
        let f = perf_map_frame("JS:^f", 1).unwrap();
        assert_eq!((f.name.as_str(), f.file, f.line), ("f", None, None));
        assert_eq!(perf_map_frame("Builtin:ArrayForEach", 1).unwrap().kind, FrameKind::Builtin);
        assert_eq!(perf_map_frame("operator new(unsigned long)", 1), None);
        assert_eq!(perf_map_frame("Other:x", 1), None);
    }

    proptest::proptest! {
        /// Any perf map symbol text gives a frame or `None`, never a panic.
        #[test]
        fn perf_map_entries_never_panic(symbol in ".*", tag in "(JS|LazyCompile|Builtin|Script):[*~^+]?") {
            let _ = perf_map_frame(&symbol, 0);
            let _ = perf_map_frame(&format!("{tag}{symbol}"), 0);
        }

    }

    #[test]
    fn names_our_own_code_and_labels_the_rest() {
        #[inline(never)]
        fn here() -> u64 {
            here as *const () as u64
        }
        let mut s = Symbolizer::new(std::process::id(), None);
        let frames = s.stack_frames(7, |_| vec![RawFrame::native(here()), RawFrame { pc: 0x10, js: 0x1001 }]);
        assert!(frames[0].name.contains("here"), "{:?}", frames[0]);
        assert_eq!(frames[0].kind, FrameKind::Native);
        assert_eq!(frames[1].name, "[unknown 0x10]");
        assert_eq!(frames[1].kind, FrameKind::Unknown);
    }
}
