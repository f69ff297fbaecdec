//! Loading the eBPF object built from leakprobe-ebpf, and reading what its programs send: maps
//! taken out by name, ring buffer records.

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};

use crate::kernel::table::Family;

/// The eBPF object built by build.rs from leakprobe-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakprobe"));

/// The maps of live allocations: the family that fills each, and the most entries it may
/// have, sized by [`load`]'s `max_tracked` up to that.
const LIVE_MAPS: [(&str, Family, u32); 3] = [
    ("EXT_LIVE", Family::External, u32::MAX),
    ("HEAP_LO_LIVE", Family::Heap, MAX_LARGE_OBJECTS),
    ("NATIVE_LIVE", Family::Native, u32::MAX),
];

/// Most entries of the large objects' live map (`HEAP_LO_LIVE`): V8 gives an object a page of
/// its own only past 128 KiB (half a regular page), so 32,768 of them fill a 4 GiB heap, V8's
/// largest default. Userspace lists this map every second, and listing a hash map walks all of
/// its buckets: the kernel walking the buckets of the maps listed was 15% of the main thread's
/// samples, this map (at `--max-tracked`, 131,072 by default) the largest of them.
const MAX_LARGE_OBJECTS: u32 = 32_768;

/// The other maps only one family fills. Hash maps allocate entries as they are inserted, but
/// their buckets when created (16 bytes an entry): the maps of a family that is off (these and
/// its live map) get one entry.
const FAMILY_MAPS: [(&str, Family); 3] = [
    ("NATIVE_PENDING", Family::Native),
    ("NATIVE_BY_STACK", Family::Native),
    ("NATIVE_MEMPTR", Family::Native),
];

/// The kernel programs' diagnostics (aya-log), when `RUST_LOG` asks for them.
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Loads the eBPF object for the probe `families` that will be attached, its maps of live
/// allocations sized for `max_tracked` allocations each (one entry where the family is off);
/// with the kernel programs' logger where `RUST_LOG` asks for their diagnostics.
pub fn load(families: &[Family], max_tracked: u32) -> anyhow::Result<(Ebpf, Option<KernelLog>)> {
    raise_memlock_limit();
    let mut loader = EbpfLoader::new();
    for (map, family, most) in LIVE_MAPS {
        let on = families.contains(&family);
        loader.map_max_entries(map, if on { max_tracked.min(most) } else { 1 });
    }
    for (map, _) in FAMILY_MAPS.into_iter().filter(|(_, family)| !families.contains(family)) {
        loader.map_max_entries(map, 1);
    }
    // The kernel programs' diagnostics (aya-log) at the level RUST_LOG asks for; off by
    // default, where each log statement costs its programs one load and branch.
    let log_level = kernel_log_level();
    loader.override_global(aya_log::LEVEL, &log_level, true);
    let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object")?;
    let kernel_log = match log_level {
        0 => None,
        _ => aya_log::EbpfLogger::init(&mut ebpf)
            .map_err(|e| log::warn!("the kernel programs' diagnostics are not shown: {e}"))
            .ok(),
    };
    Ok((ebpf, kernel_log))
}

/// Takes map `name` out of the object as type `T`.
pub fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> anyhow::Result<T> {
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Copies a `T` out of a ring buffer record, if the record is long enough.
pub fn read_record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    // SAFETY: T is Pod (repr(C), plain integers), the length is checked, and read_unaligned
    // copes with the ring buffer's 8-byte alignment.
    (bytes.len() >= size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// The aya-log level for the kernel programs: `log`'s maximum level (set from `RUST_LOG`) as
/// aya-log numbers it (0 is off).
fn kernel_log_level() -> u8 {
    match log::max_level() {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => aya_log::Level::Error as u8,
        log::LevelFilter::Warn => aya_log::Level::Warn as u8,
        log::LevelFilter::Info => aya_log::Level::Info as u8,
        log::LevelFilter::Debug => aya_log::Level::Debug as u8,
        log::LevelFilter::Trace => aya_log::Level::Trace as u8,
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise it where allowed.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct; failure is harmless on memcg-accounting kernels.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if ret != 0 {
        log::debug!("setrlimit(RLIMIT_MEMLOCK) failed: {}", std::io::Error::last_os_error());
    }
}
