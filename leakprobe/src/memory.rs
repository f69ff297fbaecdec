//! The memory families: what each kind of memory holds and how it changes, from the kernel's
//! events and the target's own memory (GC pauses, V8 heap pages, external and native memory,
//! mappings, page faults, the RSS split, the heap census, growing containers).

pub mod alloc;
pub mod census;
pub mod containers;
pub mod external;
pub mod faults;
pub mod gc;
pub mod heap;
pub mod native;
pub mod rss;
pub mod syscalls;
