//! Native memory: libc's malloc family, sampled. What the `native` kernel programs share with
//! userspace besides the allocation tracker's types.

/// Index of the sampling rate (bytes) in the `NATIVE_CONFIG` array: an allocation of `s` bytes
/// is tracked with probability `min(1, s / rate)` and then counts as `max(s, rate)` bytes, an
/// unbiased estimate of the bytes allocated and outstanding.
pub const CONFIG_SAMPLE_RATE: u32 = 0;
/// Slots in `NATIVE_CONFIG`.
pub const CONFIG_SLOTS: u32 = 1;
/// Largest sampling rate accepted (keeps the sampling arithmetic within 64 bits).
pub const MAX_SAMPLE_RATE: u64 = 1 << 31;
