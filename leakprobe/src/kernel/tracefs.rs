//! Finding tracefs, where the kernel lists its tracepoints (aya reads tracepoint ids there).

use std::{
    ffi::CStr,
    path::{Path, PathBuf},
};

const MOUNT_POINT: &CStr = c"/sys/kernel/tracing";
const PLACES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs directory, mounting tracefs at /sys/kernel/tracing when no mount is found
/// (root may; that is also where a DaemonSet mounts it). The error says why there is none.
pub fn ensure() -> Result<PathBuf, String> {
    if let Some(dir) = find() {
        return Ok(dir);
    }
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let ret = unsafe {
        libc::mount(c"tracefs".as_ptr(), MOUNT_POINT.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if ret != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {err}"));
    }
    find().ok_or_else(|| "tracefs was mounted but lists no events".to_string())
}

fn find() -> Option<PathBuf> {
    PLACES.iter().map(PathBuf::from).find(|p| p.join("events").is_dir())
}

/// Whether tracepoint `category:name` exists under tracefs directory `dir`.
pub fn has(dir: &Path, tracepoint: &str) -> bool {
    tracepoint
        .split_once(':')
        .is_some_and(|(category, name)| dir.join("events").join(category).join(name).is_dir())
}
