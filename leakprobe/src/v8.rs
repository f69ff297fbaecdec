//! Naming JavaScript functions from outside the process: V8's postmortem metadata (the
//! `v8dbg_*` constants every node binary carries) describes its object layouts, and the
//! target's memory (`/proc/PID/mem`) holds the objects. From a `SharedFunctionInfo` pointer
//! captured with a stack, this reads the function's name, its script's name and the line it
//! starts on — with no flags on the target and no per-version offset tables here, except the
//! one place the metadata is silent (where `ScopeInfo` keeps the function's source positions).
//! [`code`] expands the functions an optimized frame inlined, from its return address.
//!
//! Everything read from the target is untrusted: objects are checked by their map's instance
//! type, strings and arrays are bounded, and anything unexpected is a [`Bad`] — never a panic.
//!
//! Its parts: [`metadata`] (the constants), [`layout`] (the object layouts from them),
//! [`memory`] (reading the target), [`reader`] (functions, scripts, strings), [`code`]
//! (inlined frames) and [`heap`] (the heap census and who holds what).

pub mod code;
pub mod heap;
pub mod layout;
pub mod memory;
pub mod metadata;
pub mod reader;

pub use code::Compiled;
pub use layout::{CodeLayout, Layout};
pub use memory::{Bad, Memory, ProcMem};
pub use metadata::{Metadata, MetadataError};
pub use reader::{JsFunction, Reader};
