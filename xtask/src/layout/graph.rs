//! The file-level module graph of one crate root, and its circles.
//!
//! A module is one file: `foo.rs`, or `foo/mod.rs`, with its inline `mod x { … }` blocks, is
//! module `foo`; its out-of-line children live in `foo/`. The tree is found by following
//! `mod x;` declarations from the root file, so each crate root (`lib.rs`, `main.rs`) has its
//! own tree.
//!
//! An edge `a -> b` means a file refers to another file's module:
//! - every `use` tree that starts with `crate::`, `super::` or `self::`, or with the name of a
//!   child module of the module it is in (`pub use child::X` in a parent is an edge to the
//!   child), nested braces and globs expanded;
//! - every path in the code (expressions, types, patterns, trait bounds, and the tokens of
//!   macro calls) that starts with `crate::`, `super::` or `self::`.
//!
//! Each path goes to the deepest module file it names: `crate::a::b::Item` to `a::b` if
//! `a/b.rs` (or `a/b/mod.rs`) exists, else to `a`.
//!
//! Not edges: `mod x;` declarations (a parent declaring its children is the tree itself), an
//! edge from a module to itself, paths in the code that start with a child's name
//! (`child::f()`) or a name brought in by `use` (the `use` is the edge), paths into other
//! crates (`::x`, `std::`, `leakprobe_ebpf::`), `pub(in …)` visibilities, and everything under
//! `#[cfg(test)]`: test helpers may reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use proc_macro2::{Span, TokenStream, TokenTree};
use syn::{
    spanned::Spanned as _,
    visit::{self, Visit},
    Attribute, ImplItem, Item, UseTree,
};

/// A module's path from its crate root (empty: the root).
pub type ModPath = Vec<String>;

/// Where an edge was seen: the path as written (use trees expanded), its file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub path: String,
    pub file: PathBuf,
    pub line: usize,
}

/// One crate root's module graph.
#[derive(Debug, Default)]
pub struct Graph {
    /// Each module's file (relative to the crate's `src/`), by module path.
    pub files: BTreeMap<ModPath, PathBuf>,
    /// Each edge (from, to) with the first place it was seen (files in module order, then
    /// position in the file).
    pub edges: BTreeMap<(ModPath, ModPath), Example>,
}

/// `a::b`, or `crate` for the root.
pub fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// Builds the graph of the module tree rooted at `root`; `sources` holds the crate's files by
/// path relative to its `src/`.
pub fn build(sources: &BTreeMap<PathBuf, String>, root: &Path) -> anyhow::Result<Graph> {
    let tree = discover(sources, root)?;
    let mut graph = Graph {
        files: tree.files.iter().map(|(m, (f, _))| (m.clone(), f.clone())).collect(),
        ..Graph::default()
    };
    for (module, (file, ast)) in &tree.files {
        let mut refs = Refs { current: module.clone(), children: &tree.children, found: Vec::new() };
        refs.visit_file(ast);
        for (target, path, line) in refs.found {
            let to = deepest(&graph.files, &target);
            if &to != module {
                graph.edges.entry((module.clone(), to)).or_insert_with(|| Example {
                    path,
                    file: file.clone(),
                    line,
                });
            }
        }
    }
    Ok(graph)
}

/// The strongly connected components of more than one module: each sorted, the list sorted.
pub fn circles(graph: &Graph) -> Vec<Vec<ModPath>> {
    let nodes: Vec<&ModPath> = graph.files.keys().collect();
    let index: BTreeMap<&ModPath, usize> = nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut next = vec![Vec::new(); nodes.len()];
    for (from, to) in graph.edges.keys() {
        if let (Some(&f), Some(&t)) = (index.get(from), index.get(to)) {
            next[f].push(t);
        }
    }
    let mut tarjan = Tarjan {
        next: &next,
        index: vec![None; nodes.len()],
        low: vec![0; nodes.len()],
        ..Tarjan::default()
    };
    for v in 0..nodes.len() {
        if tarjan.index[v].is_none() {
            tarjan.connect(v);
        }
    }
    let mut circles: Vec<Vec<ModPath>> = tarjan
        .components
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let mut modules: Vec<ModPath> = c.into_iter().map(|i| nodes[i].clone()).collect();
            modules.sort();
            modules
        })
        .collect();
    circles.sort();
    circles
}

/// Tarjan's strongly connected components over node indices.
#[derive(Default)]
struct Tarjan<'a> {
    next: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    stack: Vec<usize>,
    on_stack: BTreeSet<usize>,
    counter: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn connect(&mut self, v: usize) {
        self.index[v] = Some(self.counter);
        self.low[v] = self.counter;
        self.counter += 1;
        self.stack.push(v);
        self.on_stack.insert(v);
        for &w in &self.next[v] {
            match self.index[w] {
                None => {
                    self.connect(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack.contains(&w) => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack.remove(&w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

/// The deepest module file `path` names (the root if none deeper).
fn deepest(files: &BTreeMap<ModPath, PathBuf>, path: &[String]) -> ModPath {
    (0..=path.len()).rev().map(|n| &path[..n]).find(|p| files.contains_key(*p)).unwrap_or(&[]).to_vec()
}

/// A crate root's module tree.
#[derive(Default)]
struct Tree {
    /// Each module's file and its parsed contents.
    files: BTreeMap<ModPath, (PathBuf, syn::File)>,
    /// The child modules declared in each module, inline ones included (by their path).
    children: BTreeMap<ModPath, BTreeSet<String>>,
}

/// Follows the `mod x;` declarations (not under `#[cfg(test)]`) from `root`.
fn discover(sources: &BTreeMap<PathBuf, String>, root: &Path) -> anyhow::Result<Tree> {
    let mut tree = Tree::default();
    let mut queue = vec![(ModPath::new(), root.to_path_buf())];
    while let Some((module, file)) = queue.pop() {
        let text = sources.get(&file).with_context(|| format!("no file {}", file.display()))?;
        let ast = syn::parse_file(text).with_context(|| format!("parsing {}", file.display()))?;
        let parent = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let dir = if module.is_empty() || file.file_name().is_some_and(|f| f == "mod.rs") {
            parent
        } else {
            parent.join(file.file_stem().context("a module file has a name")?)
        };
        declared_mods(&ast.items, &module, &dir, sources, &mut tree.children, &mut queue)?;
        tree.files.insert(module, (file, ast));
    }
    Ok(tree)
}

/// Records the modules `items` declare in `module` (whose children live in `dir`), and queues
/// the files of the out-of-line ones.
fn declared_mods(
    items: &[Item],
    module: &ModPath,
    dir: &Path,
    sources: &BTreeMap<PathBuf, String>,
    children: &mut BTreeMap<ModPath, BTreeSet<String>>,
    queue: &mut Vec<(ModPath, PathBuf)>,
) -> anyhow::Result<()> {
    children.entry(module.clone()).or_default();
    for item in items {
        let Item::Mod(m) = item else { continue };
        if is_test(&m.attrs) {
            continue;
        }
        let name = m.ident.to_string();
        children.entry(module.clone()).or_default().insert(name.clone());
        let mut child = module.clone();
        child.push(name.clone());
        match &m.content {
            Some((_, items)) => declared_mods(items, &child, &dir.join(&name), sources, children, queue)?,
            None => {
                let candidates = [dir.join(format!("{name}.rs")), dir.join(&name).join("mod.rs")];
                let Some(file) = candidates.iter().find(|f| sources.contains_key(*f)) else {
                    bail!(
                        "module {} is declared but neither {} nor {} exists",
                        self::name(&child),
                        candidates[0].display(),
                        candidates[1].display()
                    );
                };
                queue.push((child, file.clone()));
            }
        }
    }
    Ok(())
}

/// Whether `attrs` hold a `#[cfg(…)]` that only holds in test builds.
fn is_test(attrs: &[Attribute]) -> bool {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .any(|a| a.parse_args::<syn::Meta>().is_ok_and(|m| needs_test(&m)))
}

/// Whether the cfg predicate `meta` can only hold when `test` does.
fn needs_test(meta: &syn::Meta) -> bool {
    let nested = |list: &syn::MetaList| {
        list.parse_args_with(syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
            .map(|p| p.into_iter().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    match meta {
        syn::Meta::Path(p) => p.is_ident("test"),
        syn::Meta::List(l) if l.path.is_ident("all") => nested(l).iter().any(needs_test),
        syn::Meta::List(l) if l.path.is_ident("any") => {
            let options = nested(l);
            !options.is_empty() && options.iter().all(needs_test)
        }
        _ => false,
    }
}

/// The attributes of an item, where it has any.
fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The paths one file refers to its crate by.
struct Refs<'a> {
    /// The module being read (with the inline modules entered so far).
    current: ModPath,
    children: &'a BTreeMap<ModPath, BTreeSet<String>>,
    /// Each path found: the module path it names from the root, as written, and its line.
    found: Vec<(ModPath, String, usize)>,
}

impl Refs<'_> {
    /// `segments` from the crate root, if they start in this crate: `crate`, `self`, `super`,
    /// or (for `use`, with `child_ok`) a child module of the current one.
    fn absolute(&self, segments: &[String], child_ok: bool) -> Option<ModPath> {
        let mut base = self.current.clone();
        let mut rest = segments;
        match segments.first()?.as_str() {
            "crate" => {
                base.clear();
                rest = &segments[1..];
            }
            "self" | "super" => {
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "self" => {}
                        "super" => {
                            base.pop()?;
                        }
                        _ => break,
                    }
                    rest = &rest[1..];
                }
            }
            first if child_ok && self.children.get(&self.current).is_some_and(|c| c.contains(first)) => {}
            _ => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn record(&mut self, segments: &[String], written: String, span: Span, child_ok: bool) {
        if let Some(target) = self.absolute(segments, child_ok) {
            self.found.push((target, written, span.start().line));
        }
    }

    /// Paths in a macro call's tokens: `crate`, `self` or `super` followed by `:: ident`s.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let punct = |i: usize| matches!(tokens.get(i), Some(TokenTree::Punct(p)) if p.as_char() == ':');
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => self.scan_tokens(g.stream()),
                TokenTree::Ident(first)
                    if ["crate", "self", "super"].contains(&first.to_string().as_str()) =>
                {
                    let mut segments = vec![first.to_string()];
                    while punct(i + 1) && punct(i + 2) {
                        let Some(TokenTree::Ident(next)) = tokens.get(i + 3) else { break };
                        segments.push(next.to_string());
                        i += 3;
                    }
                    // A lone `crate` (`pub(crate)` in a macro) or `self` names no other module.
                    if segments.len() > 1 {
                        self.record(&segments, segments.join("::"), first.span(), false);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// The paths a use tree imports, braces and globs expanded: (segments, as written, where).
fn expand(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String, Span)>) {
    let leaf = |prefix: &[String], last: &str| {
        let mut segments = prefix.to_vec();
        if last == "self" {
            return (segments, format!("{}::{{self}}", prefix.join("::")));
        }
        segments.push(last.to_string());
        let written = prefix.iter().map(String::as_str).chain([last]).collect::<Vec<_>>().join("::");
        (segments, written)
    };
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            expand(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) => {
            let (segments, written) = leaf(prefix, &n.ident.to_string());
            out.push((segments, written, n.ident.span()));
        }
        UseTree::Rename(r) => {
            let (segments, written) = leaf(prefix, &r.ident.to_string());
            out.push((segments, written, r.ident.span()));
        }
        UseTree::Glob(g) => out.push((prefix.clone(), format!("{}::*", prefix.join("::")), g.span())),
        UseTree::Group(g) => g.items.iter().for_each(|t| expand(t, prefix, out)),
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        if !is_test(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        let attrs: &[Attribute] = match item {
            ImplItem::Const(i) => &i.attrs,
            ImplItem::Fn(i) => &i.attrs,
            ImplItem::Type(i) => &i.attrs,
            ImplItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !is_test(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if let Some((_, items)) = &item.content {
            self.current.push(item.ident.to_string());
            items.iter().for_each(|i| self.visit_item(i));
            self.current.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if item.leading_colon.is_some() {
            return;
        }
        let mut paths = Vec::new();
        expand(&item.tree, &mut Vec::new(), &mut paths);
        for (segments, written, span) in paths {
            self.record(&segments, written, span, true);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            if let Some(first) = path.segments.first() {
                let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
                self.record(&segments, segments.join("::"), first.ident.span(), false);
            }
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.scan_tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }

    /// `pub(crate)`, `pub(super)`, `pub(in crate::a)` say who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}
}
