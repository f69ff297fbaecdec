//! The books every family keeps: series over time, per-stack trackers of bytes, logical site
//! keys, and the suspect records the verdict reads.

pub mod series;
pub mod site;
pub mod suspect;
pub mod tracker;
