//! Stack frames: as the kernel captured them ([`RawFrame`]) and as people read them ([`Frame`]:
//! a native symbol, a builtin, a JavaScript function with its script and line, or an honest
//! label for what could not be named).

use serde::Serialize;

/// What kind of code a frame is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// C/C++ code in node, libnode, libc or an addon.
    Native,
    /// V8's embedded builtins (`Builtins_*`), including the interpreter's bytecode handlers.
    Builtin,
    /// A JavaScript function, named from V8's objects (interpreted, baseline or optimized).
    Js,
    /// JIT-compiled code whose function could not be named.
    Jit,
    /// Anything else.
    Unknown,
    /// Not code: where a libuv pool thread's stack ends and the stack that queued the work it
    /// ran goes on ([`QUEUED_NAME`]).
    Queued,
}

/// The name of the [`FrameKind::Queued`] frame.
pub const QUEUED_NAME: &str = "[queued to the libuv thread pool]";

/// The name of the frame standing for frames the kernel's walk skipped: code without frame
/// pointers between a probe and its callers' saved frame pointer ([`leakprobe_ebpf::stack::SKIPPED_PC`]).
pub const SKIPPED_NAME: &str = "[frames without frame pointers skipped]";

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
    /// Source line, where debug information says; for JavaScript, the line the function
    /// starts on.
    pub line: Option<u32>,
    /// What the frame's name does not say (shown after it in flamegraphs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// A frame's name with where it is: ` (file:line)` when both are known, ` (file)` for a
/// JavaScript frame whose line is not (the summary and the flamegraphs read the same).
pub fn located(name: &str, js: bool, file: Option<&str>, line: Option<i64>) -> String {
    match (file, line) {
        (Some(file), Some(line)) => format!("{name} ({file}:{line})"),
        (Some(file), None) if js => format!("{name} ({file})"),
        _ => name.to_string(),
    }
}

/// The note on a JavaScript frame running compiled code whose inlined calls could not be
/// recovered (the optimizing tiers inline small functions into their callers): code V8 had
/// freed by the time the stack was named, or names from the perf map alone.
pub const INLINED_NOTE: &str = "compiled: inlined calls not expanded";

/// The note on a JavaScript function that optimized code inlined into the frame below it in
/// the list (its caller): it ran in its caller's physical frame.
pub const INLINED_INTO_NOTE: &str = "inlined";

/// The note on a JavaScript frame running in V8's interpreter (its bytecode handlers).
pub const INTERPRETED_NOTE: &str = "interpreted";

/// The note for a JavaScript function found in the frame `native` names by address: compiled
/// code may hold inlined calls; the interpreter's handlers run one function's bytecode.
pub fn note(native: &Frame) -> Option<&'static str> {
    match native.kind {
        FrameKind::Jit | FrameKind::Unknown => Some(INLINED_NOTE),
        FrameKind::Builtin if native.name.contains("Handler") || native.name.contains("Interpreter") => {
            Some(INTERPRETED_NOTE)
        }
        _ => None,
    }
}

/// One frame as the kernel captured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RawFrame {
    /// Instruction address.
    pub pc: u64,
    /// Tagged `SharedFunctionInfo` of the JavaScript function in the frame, or 0.
    pub js: u64,
}

impl RawFrame {
    /// Not a frame: the stack before it ran on a libuv pool thread, queued by the stack after
    /// it (no user address is `u64::MAX`).
    pub const QUEUED: RawFrame = RawFrame { pc: u64::MAX, js: 0 };

    /// A frame known by its address only.
    pub fn native(pc: u64) -> Self {
        Self { pc, js: 0 }
    }
}

impl Frame {
    /// The frame standing for a stack that could not be captured.
    pub fn lost() -> Frame {
        Frame::marker("[stack lost]", FrameKind::Unknown)
    }

    /// A frame that stands for no code of its own.
    pub fn marker(name: &str, kind: FrameKind) -> Frame {
        Frame { name: name.into(), kind, addr: 0, file: None, line: None, note: None }
    }

    /// The frame as a line of text ([`located`]).
    pub fn label(&self) -> String {
        located(&self.name, self.kind == FrameKind::Js, self.file.as_deref(), self.line.map(i64::from))
    }

    /// What identifies the frame across compilations: its name, or its kind for JIT and
    /// unknown code (whose labels carry addresses).
    pub fn kind_key(&self) -> String {
        match self.kind {
            FrameKind::Jit => "[JIT]".into(),
            // Marker frames (no address) keep their names.
            FrameKind::Unknown if self.addr != 0 => "[unknown]".into(),
            FrameKind::Unknown => self.name.clone(),
            FrameKind::Native | FrameKind::Builtin | FrameKind::Queued => self.name.clone(),
            FrameKind::Js => {
                format!("{} {}:{}", self.name, self.file.as_deref().unwrap_or(""), self.line.unwrap_or(0))
            }
        }
    }
}

fn hex<S: serde::Serializer>(addr: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{addr:#x}"))
}

/// Frames for tests of what reads stacks.
#[cfg(test)]
pub mod test_frames {
    use super::{Frame, FrameKind};

    /// A frame of `kind`.
    pub fn frame(name: &str, kind: FrameKind, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame { name: name.into(), kind, addr: 0, file: file.map(Into::into), line, note: None }
    }

    /// A JavaScript frame.
    pub fn js(name: &str, file: &str, line: u32) -> Frame {
        frame(name, FrameKind::Js, Some(file), Some(line))
    }

    /// A native frame.
    pub fn native(name: &str) -> Frame {
        frame(name, FrameKind::Native, None, None)
    }
}
