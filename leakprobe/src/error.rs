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
    /// Not root and without the capabilities eBPF needs.
    #[error("permission denied: {0}; run leakprobe as root (sudo) or grant it CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE")]
    Permission(String),
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
