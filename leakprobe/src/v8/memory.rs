//! Reading the target's memory: from `/proc/PID/mem` ([`ProcMem`]) or, in tests, from bytes
//! ([`Memory`]); and why what was read is not what it should be ([`Bad`]).

use std::{fs::File, os::unix::fs::FileExt, sync::Arc};

/// Why a `SharedFunctionInfo` could not be named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Bad {
    /// Memory could not be read (unmapped, or the process is gone).
    #[error("unreadable memory at {0:#x}")]
    Unreadable(u64),
    /// A word that should be a heap object pointer is not one.
    #[error("not a heap object: {0:#x}")]
    NotObject(u64),
    /// An object of an unexpected type (stale pointer, or garbage).
    #[error("object at {addr:#x} has type {found}, not {wanted}")]
    WrongType { addr: u64, found: u64, wanted: &'static str },
    /// A string or array longer than we are willing to read, or deeper than we follow.
    #[error("implausible {0}")]
    Implausible(&'static str),
}

/// Read access to the target's memory.
pub trait Memory {
    /// Fills `buf` from address `addr`, or fails.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// A process's memory through `/proc/PID/mem` (clones share the file: reads are positioned).
#[derive(Clone)]
pub struct ProcMem(Arc<File>);

impl ProcMem {
    /// Opens the memory of `pid`.
    pub fn open(pid: u32) -> std::io::Result<Self> {
        File::open(format!("/proc/{pid}/mem")).map(|f| Self(Arc::new(f)))
    }
}

impl Memory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.0.read_exact_at(buf, addr).is_ok()
    }
}

/// The little-endian 8-byte words of `raw` (a trailing part word is ignored).
pub fn words(raw: &[u8]) -> impl Iterator<Item = u64> + '_ {
    raw.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
}
