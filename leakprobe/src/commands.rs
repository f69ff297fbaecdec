//! The commands beside profiling one process: the host-wide agent and the heap census.

pub mod agent;
pub mod census;
pub mod profile;
