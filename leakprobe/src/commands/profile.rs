//! `leakprobe --pid N`: one session against one process, from attach to the incident folder.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;

use crate::{
    kernel::{privilege, status},
    outputs::{
        live::{self, CLEAR_SCREEN},
        report::{Report, StopReason},
    },
    process::target::Target,
    session::{options::Options, Session},
};

/// Runs a session to its end and returns the final report (already printed and written).
pub async fn run(options: Options) -> anyhow::Result<Report> {
    privilege::check()?;
    let target = Target::resolve(options.pid)?;
    let mut session = Session::attach(target, &options)?;
    status::require_gc(session.target().pid, session.probes(), &options.families)?;
    let attached = session.probes().iter().filter(|p| p.attached).count();
    status!(
        "leakprobe: attached {attached}/{} probes to pid {} ({}, node {}); {}",
        session.probes().len(),
        session.target().pid,
        session.target().module_display,
        session.target().node_version.as_deref().unwrap_or("version unknown"),
        match options.duration {
            Some(d) => format!("collecting for {}", humantime::format_duration(d)),
            None => "Ctrl-C to stop".into(),
        }
    );
    for p in session.probes().iter().filter(|p| p.error.is_some()) {
        status!("leakprobe: warning: probe {}: {}", p.name, p.error.as_deref().unwrap_or_default());
    }

    let stop = session.collect(&options).await?;
    let report = session.close(stop);
    finish(&report, &options)?;
    Ok(report)
}

/// Prints the final summary (or JSON) on stdout, then writes the incident folder.
fn finish(report: &Report, options: &Options) -> anyhow::Result<()> {
    let summary = live::summary(report);
    {
        let mut stdout = std::io::stdout().lock();
        if options.json {
            let json = serde_json::to_string_pretty(report).context("serializing the report")?;
            writeln!(stdout, "{json}")?;
        } else {
            if stdout.is_terminal() {
                // Replace the last live frame rather than printing the same table under it.
                write!(stdout, "{CLEAR_SCREEN}")?;
            }
            write!(stdout, "{summary}")?;
        }
        stdout.flush()?;
    }
    if report.window.stop_reason == StopReason::TargetExited {
        status!(
            "leakprobe: pid {} exited during the session; the report covers what was collected",
            report.target.pid
        );
    }
    if let Some(dir) = &options.out {
        let extra = report.write_to(dir, &summary)?;
        let names: Vec<String> =
            extra.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        status!(
            "leakprobe: wrote {}, summary.txt{}",
            dir.join("report.json").display(),
            names.iter().map(|n| format!(", {n}")).collect::<String>()
        );
    }
    Ok(())
}
