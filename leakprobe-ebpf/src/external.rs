//! External memory: ArrayBuffer and Buffer backing stores, allocated and freed through
//! `node::NodeArrayBufferAllocator`. The kernel half (`probes/external.rs`) tracks each
//! backing store from `Allocate`/`AllocateUninitialized` to `Free`, by allocation stack, and
//! records the allocator objects it sees so userspace can read their byte counters.

/// Allocator objects remembered (one per isolate: the main thread and each worker).
pub const MAX_ALLOCATORS: u32 = 256;
