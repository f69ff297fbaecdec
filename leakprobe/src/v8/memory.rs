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

/// A process's memory: read with `process_vm_readv`, which copies from the target's pages
/// straight into ours (about a third less system time than reading `/proc/PID/mem`, which
/// copies each page twice); through `/proc/PID/mem` where that call is refused. The file is
/// opened in any case: opening it is the permission check, with a clear error (clones share
/// it).
#[derive(Clone)]
pub struct ProcMem {
    file: Arc<File>,
    pid: libc::pid_t,
}

impl ProcMem {
    /// Opens the memory of `pid`.
    pub fn open(pid: u32) -> std::io::Result<Self> {
        let file = File::open(format!("/proc/{pid}/mem"))?;
        Ok(Self { file: Arc::new(file), pid: pid as libc::pid_t })
    }

    /// `process_vm_readv` into `buf`: `None` where the call itself is refused (not permitted,
    /// not built in), else whether all of `buf` was read.
    fn read_vm(&self, addr: u64, buf: &mut [u8]) -> Option<bool> {
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: one local iovec over `buf`, which we own mutably for the call; the remote one
        // is only read, in the target, by the kernel.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        match n {
            n if n >= 0 => Some(n as usize == buf.len()),
            _ => match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EPERM | libc::ENOSYS) => None,
                _ => Some(false),
            },
        }
    }
}

impl Memory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read_vm(addr, buf).unwrap_or_else(|| self.file.read_exact_at(buf, addr).is_ok())
    }
}

/// The little-endian 8-byte words of `raw` (a trailing part word is ignored).
pub fn words(raw: &[u8]) -> impl Iterator<Item = u64> + '_ {
    raw.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
}

/// Copies of the target's 4 KiB pages, for many small reads in a short time: a census names
/// each map and function it meets by reading a few words of each (thousands of maps, functions
/// and their names, which V8 keeps close together), one system call a page instead of one a
/// word. What it serves is as old as the page's first read: keep one only for one pass over
/// the heap ([`crate::v8::reader::Reader::cache_small_reads`]).
#[derive(Clone, Default)]
pub struct PageCache {
    /// Page address → its bytes, or `None` where the page could not be read whole.
    pages: std::collections::HashMap<u64, Option<Box<[u8; CACHED_PAGE]>>>,
}

/// Size of a cached page.
const CACHED_PAGE: usize = 4096;
/// Longest read served from the cache (longer ones go to the memory directly).
const CACHED_READ: usize = 512;
/// Pages kept at most (4 MiB); the cache starts over when full.
const CACHED_PAGES: usize = 1024;

impl PageCache {
    /// Fills `buf` from `addr` through the cache, if it can: not when the read is too long,
    /// crosses a page, or its page could not be read whole (the caller then reads directly).
    pub fn read(&mut self, mem: &impl Memory, addr: u64, buf: &mut [u8]) -> bool {
        let page = addr & !(CACHED_PAGE as u64 - 1);
        let at = (addr - page) as usize;
        if buf.len() > CACHED_READ || at + buf.len() > CACHED_PAGE {
            return false;
        }
        if self.pages.len() >= CACHED_PAGES && !self.pages.contains_key(&page) {
            self.pages.clear();
        }
        let bytes = self.pages.entry(page).or_insert_with(|| {
            let mut bytes = Box::new([0u8; CACHED_PAGE]);
            mem.read(page, &mut bytes[..]).then_some(bytes)
        });
        let Some(bytes) = bytes else { return false };
        buf.copy_from_slice(&bytes[at..at + buf.len()]);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Memory of 3 pages from 0x10000, counting its reads.
    struct Counted {
        bytes: Vec<u8>,
        reads: Cell<u32>,
    }

    impl Memory for Counted {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            self.reads.set(self.reads.get() + 1);
            let Some(at) = addr.checked_sub(0x10000).map(|a| a as usize) else { return false };
            match self.bytes.get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn small_reads_of_one_page_read_it_once_and_return_its_bytes() {
        let mem = Counted { bytes: (0..3 * 4096).map(|i| (i % 251) as u8).collect(), reads: Cell::new(0) };
        let mut cache = PageCache::default();
        let mut word = [0u8; 8];
        for offset in [8u64, 16, 4000, 8] {
            assert!(cache.read(&mem, 0x10000 + offset, &mut word));
            assert_eq!(word.to_vec(), mem.bytes[offset as usize..offset as usize + 8].to_vec());
        }
        assert_eq!(mem.reads.get(), 1, "one page, one read");
        // Across a page boundary, or long: not served.
        assert!(!cache.read(&mem, 0x10000 + 4092, &mut word));
        assert!(!cache.read(&mem, 0x10000, &mut [0u8; 1024]));
        // Past the memory: left to a direct read, and the page not tried again.
        assert!(!cache.read(&mem, 0x10000 + 3 * 4096, &mut word));
        assert!(!cache.read(&mem, 0x10000 + 3 * 4096 + 8, &mut word));
        assert_eq!(mem.reads.get(), 2);
    }
}
