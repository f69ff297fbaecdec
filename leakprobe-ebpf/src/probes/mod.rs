//! Kernel programs, one module per probe family (the userspace halves have the same names).

pub mod external;
pub mod faults;
pub mod gc;
pub mod heap;
pub mod native;
pub mod syscalls;
pub mod threadpool;
mod track;
