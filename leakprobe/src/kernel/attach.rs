//! Attaching the probe table ([`crate::kernel::table::PROBES`]) to a target: each probe's
//! functions found in the target's binaries (uprobes), its tracepoint, or the sampled page-fault
//! event on every CPU; a family only when all its probes can attach; the `UntilFound` probes
//! detached once they have done their job.

use std::{num::NonZeroU32, path::PathBuf};

use anyhow::Context as _;
use aya::{
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        PerfEvent, Program, ProgramError, TracePoint, UProbe,
    },
    Ebpf,
};

use crate::{
    error::Error,
    kernel::{
        status::{hint, ProbeStatus},
        table::{At, Family, Module, ProbeDef, When, PROBES},
        tracefs,
    },
    process::{
        insn,
        symbols::{Elf, Lookup, SymbolLocation},
        target::Target,
    },
};

/// The links of the `UntilFound` probes, by program: what [`detach_found`] detaches.
pub type FoundLinks = Vec<(&'static str, UProbeLinkId)>;

/// Detaches the `UntilFound` probes and marks their statuses.
///
/// Removing a uprobe waits for the kernel's RCU grace periods, which can take most of a second
/// on a busy machine: the links are dropped on a thread of their own, so sampling goes on.
pub fn detach_found(ebpf: &mut Ebpf, links: FoundLinks, statuses: &mut [ProbeStatus]) {
    let mut owned = Vec::new();
    for (name, id) in links {
        let program: Option<&mut UProbe> = ebpf.program_mut(name).and_then(|p| p.try_into().ok());
        match program.map(|p| p.take_link(id)) {
            Some(Ok(link)) => owned.push(link),
            Some(Err(e)) => log::warn!("detaching {name}: {e}"),
            None => log::warn!("detaching {name}: not a uprobe program"),
        }
    }
    std::thread::spawn(move || drop(owned));
    for def in PROBES.iter().filter(|d| d.attach == When::UntilFound) {
        for status in statuses.iter_mut().filter(|s| s.name == def.name && s.attached) {
            status.detached = Some(
                "after the opening burst, once node's ArrayBuffer allocator was found (--alloc-stacks keeps it)",
            );
        }
    }
}

/// Attaches every probe in [`PROBES`] to `target`. A probe whose symbols are missing is reported
/// in its status and the rest run; if none attaches, that is an error. Returns the statuses and
/// the symbol lookup (families use it to read their functions' code).
///
/// Only the families in `families` are attached, and a family only when every one of its probes
/// has a symbol: half a family (a GC entry without its return) would measure nothing.
pub fn attach_all(
    ebpf: &mut Ebpf,
    target: &Target,
    families: &[Family],
    options: &AttachOptions,
) -> anyhow::Result<(Vec<ProbeStatus>, Lookup, FoundLinks)> {
    let AttachOptions { alloc_stacks, native_view, fault_period } = *options;
    let node = Binary::new(target.module.clone(), target.module_display.clone(), &target.elf, Module::Node)?;
    if node.lookup.v8_symbols == 0 && target.node_version.is_none() {
        return Err(
            Error::NotNode { pid: target.pid, comm: target.comm.clone(), exe: target.exe.clone() }.into()
        );
    }
    let pid = NonZeroU32::new(target.pid).ok_or(Error::NoSuchProcess(target.pid))?;
    // libc is read only when a family that probes it was asked for.
    let libc_elf;
    let libc = match target.libc() {
        Some((path, display))
            if PROBES.iter().any(|d| d.module == Module::Libc && families.contains(&d.family)) =>
        {
            libc_elf = Elf::open(&path).with_context(|| format!("reading {display}"))?;
            Some(Binary::new(path, display, &libc_elf, Module::Libc)?)
        }
        _ => None,
    };
    let binary = |def: &ProbeDef| match def.module {
        Module::Node => Some(&node),
        Module::Libc => libc.as_ref(),
        Module::Tracepoint | Module::PageFaults => None,
    };
    let tracefs =
        if families.contains(&Family::Syscalls) { tracefs::ensure() } else { Err("not needed".into()) };
    let locations_of = |def: &ProbeDef| -> Vec<&SymbolLocation> {
        binary(def)
            .map(|b| def.symbols.iter().filter_map(|s| b.lookup.found.get(*s)).flatten().collect())
            .unwrap_or_default()
    };
    // Whether a probe's attach point exists: a symbol, or a tracepoint in tracefs.
    let available = |def: &ProbeDef| match def.module {
        Module::Tracepoint => tracefs.as_ref().is_ok_and(|dir| tracefs::has(dir, def.symbols[0])),
        Module::PageFaults => true,
        _ => !locations_of(def).is_empty(),
    };
    // Families with a probe whose attach point is missing: the first such function, for messages.
    let in_mode = |d: &&ProbeDef| match d.attach {
        When::AllocStacks => alloc_stacks,
        When::WithNative => native_view,
        When::Always | When::UntilFound | When::Unless(_) => true,
    };
    let incomplete = |family: Family| {
        PROBES.iter().filter(in_mode).find(|d| d.family == family && !available(d)).map(|d| d.function)
    };

    let mut statuses = Vec::with_capacity(PROBES.len());
    let mut found_links = FoundLinks::new();
    for def in PROBES.iter().filter(in_mode).filter(|d| families.contains(&d.family)) {
        let locations = locations_of(def);
        let mut status = ProbeStatus {
            name: def.name,
            family: def.family,
            function: def.function,
            attached: false,
            locations: 0,
            error: None,
            detached: None,
        };
        if !available(def) {
            status.error = Some(match (def.module, &tracefs) {
                (Module::Tracepoint, Err(e)) => format!("tracepoint unavailable: {e}"),
                (Module::Tracepoint, Ok(_)) => format!("tracepoint not found: {}", def.function),
                _ => format!("symbol not found: {}", def.function),
            });
            statuses.push(status);
            continue;
        }
        if let Some(missing) = incomplete(def.family) {
            status.error = Some(format!("not attached: its family lacks {missing}"));
            statuses.push(status);
            continue;
        }
        if def.module == Module::Tracepoint {
            attach_tracepoint(ebpf, def, &mut status)?;
            statuses.push(status);
            continue;
        }
        if def.module == Module::PageFaults {
            attach_page_faults(ebpf, def, fault_period, &mut status)?;
            statuses.push(status);
            continue;
        }
        if let When::Unless(other) = def.attach {
            if statuses.iter().any(|s| s.name == other && s.attached) {
                continue;
            }
        }
        let program = load_program(ebpf, def, "a uprobe", UProbe::load)?;
        let mut errors = Vec::new();
        let Some(module) = binary(def) else { continue };
        for location in locations {
            let points = attach_points(def, module, location);
            if points.is_empty() {
                errors.push(format!("{}: no call to its callee followed by an add found", location.name));
            }
            for (offset, cookie) in points {
                let point =
                    UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(offset), cookie };
                match program.attach(point, &module.path, UProbeScope::OneProcess(pid)) {
                    Ok(id) => {
                        status.locations += 1;
                        if def.attach == When::UntilFound {
                            found_links.push((def.program, id));
                        }
                    }
                    Err(e) => errors.push(format!("{}: {}", location.name, error_chain(&e))),
                }
            }
        }
        status.attached = status.locations > 0;
        if !errors.is_empty() {
            status.error = Some(errors.join("; "));
        }
        statuses.push(status);
    }

    if !target.alive() {
        return Err(Error::TargetGone(target.pid).into());
    }
    if !statuses.iter().any(|s| s.attached) {
        // One entry per missing function, naming the probes that needed it.
        let mut by_function: Vec<(&str, Vec<&str>)> = Vec::new();
        for s in
            statuses.iter().filter(|s| s.error.as_deref().is_some_and(|e| e.starts_with("symbol not found")))
        {
            match by_function.iter_mut().find(|(f, _)| *f == s.function) {
                Some((_, names)) => names.push(s.name),
                None => by_function.push((s.function, vec![s.name])),
            }
        }
        if by_function.is_empty() {
            // No symbol is missing: the probes failed to attach (permission, tracefs...).
            let reason =
                statuses.iter().find_map(|s| s.error.clone()).unwrap_or_else(|| "no probe asked for".into());
            let hint = hint(&reason);
            return Err(Error::NoProbeAttached { pid: target.pid, reason, hint }.into());
        }
        let missing = by_function
            .iter()
            .map(|(f, names)| format!("{f} (probes {})", names.join(", ")))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::NoUsableProbes { binary: node.display.clone().into(), missing }.into());
    }
    Ok((statuses, node.lookup, found_links))
}

/// What decides which of a family's probes attach (see [`When`]).
#[derive(Clone, Copy, Debug)]
pub struct AttachOptions {
    /// `--alloc-stacks`.
    pub alloc_stacks: bool,
    /// `--native` or `--native-exact`.
    pub native_view: bool,
    /// Page faults per sample.
    pub fault_period: u64,
}

/// A binary that probes attach to, with the symbols the probe table wants from it.
struct Binary<'a> {
    /// Path the kernel attaches by (through `/proc/PID/...`).
    path: PathBuf,
    /// Path as the process sees it.
    display: String,
    elf: &'a Elf,
    lookup: Lookup,
}

impl<'a> Binary<'a> {
    fn new(path: PathBuf, display: String, elf: &'a Elf, module: Module) -> anyhow::Result<Self> {
        let wanted: Vec<&str> = PROBES
            .iter()
            .filter(|d| d.module == module)
            .flat_map(|d| d.symbols.iter().chain(d.at.callees()).copied())
            .collect();
        let lookup = elf.lookup(&wanted).with_context(|| format!("reading symbols of {display}"))?;
        Ok(Self { path, display, elf, lookup })
    }
}

/// Where `def` attaches in the function at `location` of `module`: (file offset, cookie) pairs.
fn attach_points(def: &ProbeDef, module: &Binary<'_>, location: &SymbolLocation) -> Vec<(u64, Option<u64>)> {
    if def.at == At::Entry {
        return vec![(probe_offset(module.elf, location.file_offset), None)];
    }
    let start = location.file_offset as usize;
    let Some(code) = module.elf.bytes().get(start..start.saturating_add(location.size as usize)) else {
        return Vec::new();
    };
    let targets: Vec<u64> = def
        .at
        .callees()
        .iter()
        .filter_map(|c| module.lookup.found.get(*c))
        .flatten()
        .map(|l| l.address)
        .collect();
    insn::returns_from_calls_to(code, location.address, &targets)
        .into_iter()
        .filter_map(|after| {
            let added = insn::added_to_result(&code[after..])?;
            let cookie = leakprobe_ebpf::heap::summed_registers_cookie(&added)?;
            Some((location.file_offset + after as u64, Some(cookie)))
        })
        .collect()
}

/// Where a probe on the function at `file_offset` goes: its entry, or, when the entry is a
/// LOCK-prefixed instruction (which the kernel cannot probe), the instruction after it.
fn probe_offset(elf: &Elf, file_offset: u64) -> u64 {
    let code = elf.bytes().get(file_offset as usize..).unwrap_or_default();
    match insn::decode_locked_rmw(code) {
        Some(_) => file_offset + insn::LOCKED_RMW_LEN as u64,
        None => file_offset,
    }
}

/// Finds `def`'s program in the object as a `T` (`kind`, for messages) and loads it with `load`.
fn load_program<'e, T>(
    ebpf: &'e mut Ebpf,
    def: &ProbeDef,
    kind: &str,
    load: fn(&mut T) -> Result<(), ProgramError>,
) -> anyhow::Result<&'e mut T>
where
    &'e mut T: TryFrom<&'e mut Program, Error = ProgramError>,
{
    let program: &mut T = ebpf
        .program_mut(def.program)
        .with_context(|| format!("program {} missing from the eBPF object", def.program))?
        .try_into()
        .with_context(|| format!("program {} is not {kind}", def.program))?;
    load(program).map_err(|e| load_error(def, e))?;
    Ok(program)
}

/// Loads and attaches a tracepoint probe (`symbols[0]` is `category:name`).
fn attach_tracepoint(ebpf: &mut Ebpf, def: &ProbeDef, status: &mut ProbeStatus) -> anyhow::Result<()> {
    let (category, name) = def.symbols[0].split_once(':').context("tracepoint names are category:name")?;
    let program = load_program(ebpf, def, "a tracepoint", TracePoint::load)?;
    match program.attach(category, name) {
        Ok(_) => {
            status.attached = true;
            status.locations = 1;
        }
        Err(e) => status.error = Some(error_chain(&e)),
    }
    Ok(())
}

/// Loads the page-fault program and opens the sampled software event on every online CPU (for
/// every process: the program keeps the target's faults, including those of threads it starts
/// later).
fn attach_page_faults(
    ebpf: &mut Ebpf,
    def: &ProbeDef,
    period: u64,
    status: &mut ProbeStatus,
) -> anyhow::Result<()> {
    let program = load_program(ebpf, def, "a perf event program", PerfEvent::load)?;
    let cpus = match aya::util::online_cpus() {
        Ok(cpus) => cpus,
        Err((what, e)) => {
            status.error = Some(format!("{what}: {e}"));
            return Ok(());
        }
    };
    let mut errors = Vec::new();
    for cpu in cpus {
        let config = PerfEventConfig::Software(SoftwareEvent::PageFaults);
        let scope = PerfEventScope::AllProcessesOneCpu { cpu };
        match program.attach(config, scope, SamplePolicy::Period(period.max(1)), false) {
            Ok(_) => status.locations += 1,
            Err(e) => errors.push(format!("cpu {cpu}: {}", error_chain(&e))),
        }
    }
    status.attached = status.locations > 0;
    if !errors.is_empty() {
        status.error = Some(errors.join("; "));
    }
    Ok(())
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

fn load_error(def: &ProbeDef, e: ProgramError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("EPERM") || text.contains("ermission") {
        Error::Permission(format!("loading eBPF program {}", def.program)).into()
    } else {
        anyhow::Error::new(e).context(format!("loading eBPF program {}", def.program))
    }
}
