//! What each probe's attach did ([`ProbeStatus`], `report.json`'s `probes[]`), read by family:
//! whether a family is attached (the agent's `leakprobe_probes_up`), what to do about an error,
//! and the rule that `leakprobe --pid` fails when it cannot attach the GC probes it was asked
//! for.

use serde::Serialize;

use crate::{error::Error, kernel::table::Family};

/// What happened when a probe was attached; one per [`crate::kernel::table::ProbeDef`], in `report.json`'s `probes[]`.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    /// [`crate::kernel::table::ProbeDef::name`].
    pub name: &'static str,
    /// [`crate::kernel::table::ProbeDef::family`].
    pub family: Family,
    /// [`crate::kernel::table::ProbeDef::function`].
    pub function: &'static str,
    /// Whether at least one entry point is attached.
    pub attached: bool,
    /// Entry points attached (the function and its clones).
    pub locations: usize,
    /// Why it is not attached, or what failed for some of its locations.
    pub error: Option<String>,
    /// When it was detached during the run, if it was (see [`crate::kernel::table::When::UntilFound`]).
    pub detached: Option<&'static str>,
}

/// The name of a family, as `--probes` and the metrics' `family` label spell it.
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::Gc => "gc",
        Family::External => "external",
        Family::Heap => "heap",
        Family::Native => "native",
        Family::Syscalls => "syscalls",
        Family::Threadpool => "threadpool",
        Family::Faults => "faults",
    }
}

/// Whether every probe of `family` that was tried is attached (and at least one was tried).
/// A probe detached later because it had done its job (see `When::UntilFound`) counts as
/// attached.
pub fn family_attached(probes: &[ProbeStatus], family: Family) -> bool {
    let mut of_family = probes.iter().filter(|p| p.family == family).peekable();
    of_family.peek().is_some() && of_family.all(|p| p.attached)
}

/// The first error among the probes of `family`.
pub fn family_error(probes: &[ProbeStatus], family: Family) -> Option<&str> {
    probes.iter().filter(|p| p.family == family).find_map(|p| p.error.as_deref())
}

/// What to do about a probe error, when its cause is known.
pub fn hint(error: &str) -> &'static str {
    if error.contains("Permission denied") || error.contains("EACCES") || error.contains("EPERM") {
        " (uprobes need CAP_SYS_ADMIN on this kernel: CAP_BPF and CAP_PERFMON are not enough)"
    } else if error.starts_with("symbol not found") {
        " (was node stripped? leakprobe needs node's .symtab or .dynsym)"
    } else {
        ""
    }
}

/// `leakprobe --pid`'s rule: when the GC family was asked for, its probes must be attached,
/// else the run would show no pause at all.
pub fn require_gc(pid: u32, probes: &[ProbeStatus], families: &[Family]) -> Result<(), Error> {
    if !families.contains(&Family::Gc) || family_attached(probes, Family::Gc) {
        return Ok(());
    }
    let reason = family_error(probes, Family::Gc).unwrap_or("no GC probe was attached").to_string();
    let hint = hint(&reason);
    Err(Error::NoGcProbes { pid, reason, hint })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &'static str, family: Family, attached: bool, error: Option<&str>) -> ProbeStatus {
        ProbeStatus {
            name,
            family,
            function: "f",
            attached,
            locations: usize::from(attached),
            error: error.map(String::from),
            detached: None,
        }
    }

    fn denied() -> Vec<ProbeStatus> {
        let e = Some("gc: perf_event_open failed: Permission denied (os error 13)");
        vec![
            status("gc_start", Family::Gc, false, e),
            status("gc_end", Family::Gc, false, e),
            status("sys_enter_mmap", Family::Syscalls, true, None),
        ]
    }

    #[test]
    fn a_family_is_attached_only_when_all_its_probes_are() {
        let mut probes = denied();
        assert!(!family_attached(&probes, Family::Gc));
        assert!(family_attached(&probes, Family::Syscalls));
        assert!(!family_attached(&probes, Family::Heap), "a family not tried is not attached");
        probes[0].attached = true;
        assert!(!family_attached(&probes, Family::Gc), "half a family measures nothing");
        probes[1].attached = true;
        assert!(family_attached(&probes, Family::Gc));
    }

    #[test]
    fn pid_mode_requires_the_gc_probes_it_asked_for() {
        let probes = denied();
        let err = require_gc(42, &probes, &Family::DEFAULT).unwrap_err().to_string();
        assert!(err.contains("GC probes could not be attached to pid 42"), "{err}");
        assert!(err.contains("Permission denied"), "{err}");
        assert!(err.contains("CAP_SYS_ADMIN"), "{err}");
        assert!(err.contains("--probes"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        // Left out on purpose: fine.
        assert!(require_gc(42, &probes, &[Family::Syscalls]).is_ok());
        let mut ok = probes.clone();
        ok[0].attached = true;
        ok[1].attached = true;
        assert!(require_gc(42, &ok, &Family::DEFAULT).is_ok());
        // A missing symbol has no privilege hint, but a stripping one.
        let missing = vec![status("gc_start", Family::Gc, false, Some("symbol not found: x"))];
        let err = require_gc(1, &missing, &[Family::Gc]).unwrap_err().to_string();
        assert!(!err.contains("CAP_SYS_ADMIN") && err.contains("stripped"), "{err}");
    }
}
