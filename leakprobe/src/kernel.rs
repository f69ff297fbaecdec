//! The kernel side: the probe table, attaching it to a target, what each probe's attach did,
//! and what loading programs needs (privilege, tracefs).

pub mod health;
pub mod privilege;
pub mod probes;
pub mod tracefs;
