//! What a session writes: the live terminal summary ([`live`]), `report.json` and the incident
//! folder ([`report`]), flamegraph SVGs ([`flamegraph`]), pprof profiles ([`pprof`]) and the
//! agent's Prometheus metrics ([`metrics`]).

pub mod flamegraph;
pub mod live;
pub mod metrics;
pub mod pprof;
pub mod report;
