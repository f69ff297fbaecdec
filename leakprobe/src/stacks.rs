//! Stacks: the frames the kernel captured, named (native symbols, JavaScript functions read
//! through [`crate::v8`]).

pub mod frame;
pub mod symbolize;
