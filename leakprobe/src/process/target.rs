//! Finding the node process to profile and the binary its V8 lives in.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{error::Error, process::symbols::Elf};

/// A resolved target process.
pub struct Target {
    /// Process id.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// The executable as the process sees it (inside its container, if any).
    pub exe: String,
    /// The module that holds V8: `/proc/PID/exe`, or the `libnode.so` the process maps, reached
    /// through `/proc/PID/root` so that paths inside containers resolve.
    pub module: PathBuf,
    /// The module's path as the process sees it, for messages.
    pub module_display: String,
    /// `v20.20.2`, read from the binary's release URL strings.
    pub node_version: Option<String>,
    /// The module, mapped.
    pub elf: Elf,
}

impl Target {
    /// Resolves `pid`, failing with a user-facing [`Error`] when it does not exist, is not node,
    /// or cannot be inspected.
    pub fn resolve(pid: u32) -> anyhow::Result<Target> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc.exists() {
            return Err(Error::NoSuchProcess(pid).into());
        }
        let comm = fs::read_to_string(proc.join("comm")).map_err(|e| gone_or(pid, e))?.trim_end().to_string();
        let exe = match fs::read_link(proc.join("exe")) {
            Ok(exe) => exe.to_string_lossy().into_owned(),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Error::Inaccessible { pid, what: format!("/proc/{pid}/exe") }.into())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && proc.exists() => {
                // Kernel threads and zombies have no executable.
                return Err(Error::NotNode { pid, comm, exe: "no executable".into() }.into());
            }
            Err(e) => return Err(gone_or(pid, e)),
        };
        let maps = fs::read_to_string(proc.join("maps")).map_err(|e| gone_or(pid, e))?;
        let (module, module_display) = match libnode_path(&maps) {
            Some(lib) => (proc.join("root").join(lib.trim_start_matches('/')), lib.to_string()),
            None => (proc.join("exe"), exe.clone()),
        };
        let elf = Elf::open(&module).with_context(|| format!("reading the binary of pid {pid}"))?;
        let node_version = node_version(elf.bytes());
        Ok(Target { pid, comm, exe, module, module_display, node_version, elf })
    }

    /// Node's major version (20 for `v20.20.2`), when the version was read.
    pub fn node_major(&self) -> Option<u32> {
        self.node_version.as_deref()?.trim_start_matches('v').split('.').next()?.parse().ok()
    }

    /// The C library the process maps: the path to attach by (through `/proc/PID/root`) and
    /// the path as the process sees it.
    pub fn libc(&self) -> Option<(PathBuf, String)> {
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.pid)).ok()?;
        let path = mapped_library(&maps, |name| name.starts_with("libc.so") || name.starts_with("libc-"))?;
        Some((
            PathBuf::from(format!("/proc/{}/root", self.pid)).join(path.trim_start_matches('/')),
            path.to_string(),
        ))
    }

    /// Whether the process is still alive (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        is_alive(self.pid)
    }

    /// The name of thread `tid`, or `None` when it has exited.
    pub fn thread_name(&self, tid: u32) -> Option<String> {
        fs::read_to_string(format!("/proc/{}/task/{tid}/comm", self.pid))
            .ok()
            .map(|s| s.trim_end().to_string())
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised comm, which may itself contain spaces or ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn gone_or(pid: u32, e: io::Error) -> anyhow::Error {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        Error::NoSuchProcess(pid).into()
    } else if e.kind() == io::ErrorKind::PermissionDenied {
        Error::Inaccessible { pid, what: format!("/proc/{pid}") }.into()
    } else {
        anyhow::Error::new(e).context(format!("reading /proc/{pid}"))
    }
}

/// The path of a `libnode.so*` mapped in a `/proc/PID/maps` text, if any.
pub fn libnode_path(maps: &str) -> Option<&str> {
    mapped_library(maps, |name| name.starts_with("libnode.so"))
}

/// The first mapped file in a `/proc/PID/maps` text whose file name satisfies `wanted`.
pub fn mapped_library(maps: &str, wanted: impl Fn(&str) -> bool) -> Option<&str> {
    maps.lines().filter_map(|line| line.split_whitespace().nth(5)).find(|path| {
        path.starts_with('/') && Path::new(path).file_name().and_then(|n| n.to_str()).is_some_and(&wanted)
    })
}

/// Node's version, from the release URLs every node build embeds
/// (`https://nodejs.org/download/release/v20.20.2/...`).
pub fn node_version(binary: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"/download/release/v";
    // memmem, not a scan of windows: the binary is 100 MB and more.
    let at = memchr::memmem::find(binary, NEEDLE)? + NEEDLE.len();
    let digits: Vec<u8> =
        binary[at..].iter().take(32).take_while(|b| b.is_ascii_digit() || **b == b'.').copied().collect();
    let version = String::from_utf8(digits).ok()?;
    let parts = version.split('.').filter(|p| !p.is_empty()).count();
    (parts == 3).then(|| format!("v{version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libnode_among_mappings() {
        let maps = "\
5583c2a00000-5583c2a01000 r--p 00000000 08:01 123 /usr/bin/electron-ish
7f1c2c000000-7f1c2e000000 r-xp 00000000 08:01 456 /opt/app/lib/libnode.so.108
7f1c30000000-7f1c30021000 rw-p 00000000 00:00 0 
7ffd1a2f0000-7ffd1a311000 rw-p 00000000 00:00 0 [stack]";
        assert_eq!(libnode_path(maps), Some("/opt/app/lib/libnode.so.108"));
        assert_eq!(libnode_path("7ffd1a2f0000-7ffd1a311000 rw-p 00000000 00:00 0 [stack]"), None);
        assert_eq!(libnode_path("garbage\n\n   \n1 2 3 4 5 libnode.so"), None);
    }

    #[test]
    fn reads_the_release_version() {
        let bin = b"\0\0https://nodejs.org/download/release/v22.23.3/node-v22.23.3-headers.tar.gz\0";
        assert_eq!(node_version(bin).as_deref(), Some("v22.23.3"));
        assert_eq!(node_version(b"/download/release/vX"), None);
        assert_eq!(node_version(b"/download/release/v1.2"), None);
        assert_eq!(node_version(b"nothing here"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_pid_max_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(u32::MAX));
    }
}
