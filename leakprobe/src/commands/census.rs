//! `leakprobe census --pid N`: one census of a running node process's V8 heaps, read from
//! `/proc/PID/mem` without stopping it (see [`crate::v8::heap`]), printed as a table or JSON.

use anyhow::Context as _;

use crate::{
    outputs::census::{render, render_growth, render_retainers},
    process::target::Target,
    v8::heap::{
        census::{growing_types, growth, named_types, Census, Limits},
        reader::HeapReader,
    },
};

/// What `leakprobe census` was asked for.
#[derive(Clone, Debug)]
pub struct CensusOptions {
    /// Target process.
    pub pid: u32,
    /// Types listed per isolate.
    pub top: usize,
    /// Print JSON instead of the table.
    pub json: bool,
    /// Caps (of each census).
    pub limits: Limits,
    /// Take a second census this long after the first, and print what grew in between.
    pub again_after: Option<std::time::Duration>,
    /// Also find what holds the objects of these types (constructor, function or label).
    pub retainers_of: Vec<String>,
}

/// Reads one census of `pid`'s heaps.
pub fn take(pid: u32, limits: Limits) -> anyhow::Result<(Target, Census)> {
    let target = Target::resolve(pid)?;
    let census = HeapReader::open(&target)?.census(limits)?;
    Ok((target, census))
}

/// Runs `leakprobe census`.
pub fn run(opts: &CensusOptions) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let target = Target::resolve(opts.pid)?;
    let mut probe = HeapReader::open(&target)?;
    let census = probe.census(opts.limits)?;
    if census.pages_found == 0 {
        anyhow::bail!(
            "no V8 heap page found in pid {}: its page headers are not of node 18–24's shapes",
            opts.pid
        );
    }
    let Some(after) = opts.again_after else {
        let wanted: Vec<_> = opts.retainers_of.iter().flat_map(|n| named_types(&census, n)).collect();
        let found = match wanted.is_empty() {
            true => None,
            false => Some(probe.retainers(&census, &wanted, opts.limits)?),
        };
        match opts.json {
            true => {
                let mut value = serde_json::to_value(&census).context("writing JSON")?;
                if let Some(found) = &found {
                    value["retainers"] = serde_json::to_value(found).context("writing JSON")?;
                }
                println!("{}", serde_json::to_string_pretty(&value).context("writing JSON")?);
            }
            false => {
                print!("{}", render(&target, &census, opts.top));
                if let Some(found) = &found {
                    print!("{}", render_retainers(found));
                }
            }
        }
        return Ok(());
    };
    std::thread::sleep(after.saturating_sub(started.elapsed()));
    let seconds = started.elapsed().as_secs_f64();
    let second = probe.census(opts.limits).context("taking the second census")?;
    let growth = growth(&census, &second, seconds);
    let mut wanted = growing_types(&growth, RETAINED_TYPES);
    wanted.extend(opts.retainers_of.iter().flat_map(|n| named_types(&second, n)));
    let mut seen = std::collections::HashSet::new();
    wanted.retain(|key| seen.insert(key.clone()));
    let found = probe.retainers(&second, &wanted, opts.limits).context("searching retainers")?;
    match opts.json {
        true => {
            let both = serde_json::json!({
                "first": census,
                "second": second,
                "seconds": seconds,
                "growth": growth,
                "retainers": found,
            });
            println!("{}", serde_json::to_string_pretty(&both).context("writing JSON")?);
        }
        false => {
            print!("{}", render(&target, &second, opts.top));
            print!("{}", render_growth(&growth, seconds, opts.top));
            print!("{}", render_retainers(&found));
        }
    }
    Ok(())
}

/// Growing types whose retainers `leakprobe census --again-after` looks for.
const RETAINED_TYPES: usize = 3;
