//! The errors a user can cause, each printed as one line by the binary.

use std::path::PathBuf;

/// Errors in the user's input or environment. Internal failures use `anyhow` with context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--pid` names no process.
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    /// The process exists but runs no node/V8 code we can find.
    #[error("pid {pid} ({comm}, {exe}) is not a node process: it has no V8 symbols, no node version string and no libnode.so mapped")]
    NotNode {
        /// Target pid.
        pid: u32,
        /// Its command name.
        comm: String,
        /// Its executable, as the process sees it.
        exe: String,
    },
    /// The node binary lacks the symbols every probe needs.
    #[error("no probe could be attached: {binary} has no symbol for {missing}; was it stripped? (leakprobe needs node's .symtab or .dynsym)")]
    NoUsableProbes {
        /// The module we looked in.
        binary: PathBuf,
        /// The missing functions, each with the probes that needed it.
        missing: String,
    },
    /// Every probe failed to attach, though their symbols were found.
    #[error("no probe could be attached to pid {pid}: {reason}{hint}")]
    NoProbeAttached {
        /// Target pid.
        pid: u32,
        /// The first probe's error.
        reason: String,
        /// What to do about it, when the reason is known.
        hint: &'static str,
    },
    /// Not root and without the capabilities eBPF needs.
    #[error("permission denied: {0}; run leakprobe as root (sudo) or grant it CAP_SYS_ADMIN (uprobes need it), CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")]
    Permission(String),
    /// The GC probes, asked for, could not be attached: leakprobe would measure no pause.
    #[error("the GC probes could not be attached to pid {pid}: {reason}{hint}; leave GC out with --probes (e.g. --probes heap,external,syscalls) to run without them")]
    NoGcProbes {
        /// Target pid.
        pid: u32,
        /// The first probe's error.
        reason: String,
        /// What to do about it, when the reason is known.
        hint: &'static str,
    },
    /// We are privileged but the kernel still refuses to let us inspect the process.
    #[error("cannot inspect pid {pid}: {what}: permission denied (it may run in another user namespace, or ptrace access to it is restricted)")]
    Inaccessible {
        /// Target pid.
        pid: u32,
        /// What could not be read.
        what: String,
    },
    /// The target exited before the probes were attached.
    #[error("pid {0} exited before the probes were attached")]
    TargetGone(u32),
}
