//! The books every family keeps: series over time, per-stack trackers, and the suspect
//! records the verdict reads.

pub mod series;
pub mod suspects;
