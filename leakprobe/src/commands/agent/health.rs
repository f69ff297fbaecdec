//! The agent's health, served on `/healthz`: degraded when node processes are there and none
//! is measured.

/// The agent's health, served on `/healthz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// At least one target has its GC probes, or there is no node process to watch.
    Ok,
    /// Node processes were found, but none is measured: the text says why.
    Degraded(String),
}

/// What the agent knows at a scan, for [`Health::of`].
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Processes watched.
    pub watched: usize,
    /// Of those, the ones whose GC probes are attached.
    pub with_gc: usize,
    /// Node processes (alive) the agent could not attach to, with the first error.
    pub failed: Vec<(u32, String)>,
}

impl Health {
    /// Degraded when node processes are there (watched, or found but not attachable) and none has
    /// its GC probes; healthy otherwise, also when the host runs no node process at all.
    pub fn of(tally: &Tally) -> Health {
        if tally.with_gc > 0 || (tally.watched == 0 && tally.failed.is_empty()) {
            return Health::Ok;
        }
        let mut parts = Vec::new();
        if tally.watched > 0 {
            parts.push(format!("{} watched without GC probes", tally.watched));
        }
        if let Some((pid, error)) = tally.failed.first() {
            parts.push(format!("{} not attachable (pid {pid}: {error})", tally.failed.len()));
        }
        Health::Degraded(format!("no target has its GC probes: {}", parts.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_is_degraded_only_when_node_processes_are_there_and_none_is_measured() {
        assert_eq!(Health::of(&Tally::default()), Health::Ok, "no node process: nothing to measure");
        let one_good = Tally { watched: 2, with_gc: 1, failed: vec![(7, "x".into())] };
        assert_eq!(Health::of(&one_good), Health::Ok);
        let blind = Tally { watched: 2, with_gc: 0, failed: vec![] };
        let Health::Degraded(why) = Health::of(&blind) else { panic!("watched without GC is degraded") };
        assert!(why.contains("2 watched without GC probes"), "{why}");
        let refused = Tally { watched: 0, with_gc: 0, failed: vec![(7, "permission denied".into())] };
        let Health::Degraded(why) = Health::of(&refused) else { panic!("found but refused is degraded") };
        assert!(why.contains("pid 7: permission denied"), "{why}");
    }
}
