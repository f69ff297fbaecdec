//! `cargo xtask layout`: checks how the crates' files are laid out, and fails with a report
//! when a rule is broken. The crates checked are `leakprobe/src`, `leakprobe-ebpf/src` and
//! `xtask/src`.
//!
//! 1. No import circles: in the file-level module graph of each crate root (`graph.rs` says
//!    what a module and an edge are), no two modules reach each other. Each circle is reported
//!    with its modules and, for each edge inside it, one path that makes it and the file:line
//!    it is at, so a reader can see where to break it. Items under `#[cfg(test)]` are left out:
//!    test helpers may reach anywhere. `leakprobe-ebpf` has two crate roots, `src/lib.rs` (the
//!    types shared with userspace) and `src/main.rs` (the kernel programs), each with its own
//!    module tree; the programs name the lib as `leakprobe_ebpf::`, another crate, which is no
//!    edge. `leakprobe`'s `main.rs` names its lib as `leakprobe::` the same way.
//! 2. File size: a `.rs` file over [`MAX_LINES`] lines says why in its module doc comment, with
//!    a `//!` line starting with `Size:` (`//! Size: one job, …`).

mod graph;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// The crates checked: their source directories, from the workspace root.
const CRATES: [&str; 3] = ["leakprobe/src", "leakprobe-ebpf/src", "xtask/src"];
/// The crate root files looked for in each.
const ROOTS: [&str; 2] = ["lib.rs", "main.rs"];
/// Lines a file may have without saying why.
const MAX_LINES: usize = 600;

/// Checks the crates under the workspace root `workspace`, prints what breaks a rule (or a
/// summary when none does), and fails when one does.
pub fn check(workspace: &Path) -> anyhow::Result<()> {
    let (mut modules, mut edges, mut files, mut circles, mut oversized) = (0, 0, 0, 0, 0);
    for dir in CRATES {
        let sources = read_sources(&workspace.join(dir))?;
        for root in ROOTS.iter().map(Path::new).filter(|r| sources.contains_key(*r)) {
            let graph = graph::build(&sources, root)
                .with_context(|| format!("reading the modules of {dir}/{}", root.display()))?;
            modules += graph.files.len();
            edges += graph.edges.len();
            for circle in graph::circles(&graph) {
                circles += 1;
                print!("{}", report_circle(&graph, &circle, &format!("{dir}/{}", root.display()), dir));
            }
        }
        for (file, text) in &sources {
            files += 1;
            if let Some(lines) = unexplained_size(text) {
                oversized += 1;
                println!(
                    "layout: {dir}/{} has {lines} lines (over {MAX_LINES}) and no `//! Size:` line in its \
                     module doc saying why",
                    file.display()
                );
            }
        }
    }
    if circles + oversized > 0 {
        bail!(
            "layout: {circles} import circle(s), {oversized} file(s) over {MAX_LINES} lines without a \
             `//! Size:` note ({modules} modules, {edges} edges, {files} files checked)"
        );
    }
    println!(
        "layout: ok: {modules} modules, {edges} edges, {files} files checked; no import circles, no file \
         over {MAX_LINES} lines without a `//! Size:` note"
    );
    Ok(())
}

/// One circle: its modules, then each edge inside it with a path that makes it and where.
fn report_circle(graph: &graph::Graph, circle: &[graph::ModPath], root: &str, dir: &str) -> String {
    let names: Vec<String> = circle.iter().map(|m| graph::name(m)).collect();
    let mut out =
        format!("layout: import circle in {root}, {} modules: {}\n", circle.len(), names.join(", "));
    for ((from, to), example) in &graph.edges {
        if circle.contains(from) && circle.contains(to) {
            out += &format!(
                "    {} -> {}: {} at {dir}/{}:{}\n",
                graph::name(from),
                graph::name(to),
                example.path,
                example.file.display(),
                example.line
            );
        }
    }
    out
}

/// The line count of a file over [`MAX_LINES`] lines whose doc has no `//! Size:` line.
fn unexplained_size(text: &str) -> Option<usize> {
    let lines = text.lines().count();
    let explained = text
        .lines()
        .any(|l| l.trim_start().strip_prefix("//!").is_some_and(|doc| doc.trim_start().starts_with("Size:")));
    (lines > MAX_LINES && !explained).then_some(lines)
}

/// Every `.rs` file under `dir`, by its path relative to `dir`.
fn read_sources(dir: &Path) -> anyhow::Result<BTreeMap<PathBuf, String>> {
    let mut sources = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).with_context(|| format!("listing {}", next.display()))? {
            let path = entry.with_context(|| format!("listing {}", next.display()))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text =
                    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                sources.insert(
                    path.strip_prefix(dir).context("a file under its directory")?.to_path_buf(),
                    text,
                );
            }
        }
    }
    Ok(sources)
}
