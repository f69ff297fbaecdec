//! What leakprobe writes, all text and files in one place: the live terminal summary
//! ([`live`]), `report.json` and the incident folder ([`report`]), the heap census's tables and
//! retainer lines ([`census`]), flamegraph SVGs ([`flamegraph`]) and pprof profiles ([`pprof`]) of the
//! report's stacks ([`folded`]) and
//! the agent's Prometheus metrics ([`metrics`]); how bytes and rates are written ([`units`]).

pub mod census;
pub mod flamegraph;
pub mod folded;
pub mod live;
pub mod metrics;
pub mod pprof;
pub mod report;
pub mod units;
