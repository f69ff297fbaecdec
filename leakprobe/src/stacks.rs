//! Stacks: the frames the kernel captured, named (native symbols, JavaScript functions read
//! through [`crate::v8`]).

mod code_reader;
pub mod frame;
pub mod symbolize;
