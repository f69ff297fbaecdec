//! The kernel side: the probe table, attaching it to a target and what each attach did,
//! loading the eBPF object and reading its maps, and what loading programs needs (privilege,
//! tracefs).

pub mod attach;
pub mod load;
pub mod privilege;
pub mod stacks;
pub mod status;
pub mod table;
pub mod tracefs;
