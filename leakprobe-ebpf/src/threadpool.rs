//! libuv's thread pool: work that node queues from JavaScript (zlib, crypto, fs, dns, addons'
//! `napi_queue_async_work`) runs later on a pool thread, whose stack holds no JavaScript. The
//! kernel half (`probes/threadpool.rs`) keeps the stack that queued each piece of work and, while
//! a pool thread runs it, gives the stacks taken on that thread the queuing stack as their
//! origin ([`crate::stack::RawStack::origin`]), so an allocation made there still names the
//! JavaScript function that asked for it.

/// Offset of `work_req` (the `struct uv__work` the pool runs) in `uv_work_t`: `UV_REQ_FIELDS`
/// (data, type, reserved[6]: 64 bytes), then loop, work_cb, after_work_cb. Part of libuv 1.x's
/// ABI (`uv_work_t` is a public struct), so the same in every node version.
pub const WORK_REQ_OFFSET: u64 = 0x58;

/// Queued work not yet started (bounded by the pool's queue: node queues each piece once).
pub const MAX_QUEUED: u32 = 16_384;

/// Pool threads (libuv's limit on `UV_THREADPOOL_SIZE` is 1024).
pub const MAX_POOL_THREADS: u32 = 1024;
