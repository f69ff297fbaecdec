//! Types shared by leakprobe's kernel programs and its userspace half.
//!
//! Every type here is `#[repr(C)]` and plain data: the kernel writes it into a map or ring buffer
//! and userspace reads the same bytes back. With the `user` feature each type also implements
//! [`aya::Pod`], so userspace can read maps of it directly.
#![no_std]

pub mod alloc;
pub mod drops;
pub mod external;
pub mod faults;
pub mod gc;
pub mod heap;
pub mod native;
pub mod stack;
pub mod syscalls;
pub mod threadpool;

/// The first `u32` of every record in the `EVENTS` ring buffer: which struct follows.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`gc::GcEvent`].
    Gc = 1,
    /// A [`heap::HeapEvent`].
    Heap = 2,
    /// A [`syscalls::MapEvent`].
    Map = 3,
    /// A [`stack::NewStack`].
    NewStack = 4,
    /// A [`faults::FaultEvent`].
    Fault = 5,
}

/// Implements `aya::Pod` for shared types when built for userspace.
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], Copy, and made only of integers, with no padding.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;
