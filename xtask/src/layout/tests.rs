//! The module graph and the size rule on small in-memory crates.

use std::{collections::BTreeMap, path::PathBuf};

use super::{
    graph::{self, Graph, ModPath},
    unexplained_size, MAX_LINES,
};

/// A crate from (path under src/, text) pairs.
fn sources(files: &[(&str, &str)]) -> BTreeMap<PathBuf, String> {
    files.iter().map(|(path, text)| (PathBuf::from(path), text.to_string())).collect()
}

fn build(files: &[(&str, &str)]) -> Graph {
    graph::build(&sources(files), "lib.rs".as_ref()).expect("the test crate builds")
}

fn module(path: &str) -> ModPath {
    if path == "crate" {
        Vec::new()
    } else {
        path.split("::").map(str::to_string).collect()
    }
}

/// The edges as `from -> to` strings.
fn edges(graph: &Graph) -> Vec<String> {
    graph.edges.keys().map(|(from, to)| format!("{} -> {}", graph::name(from), graph::name(to))).collect()
}

fn circles(graph: &Graph) -> Vec<Vec<String>> {
    graph::circles(graph).iter().map(|c| c.iter().map(|m| graph::name(m)).collect()).collect()
}

#[test]
fn finds_a_circle_with_where_each_edge_is() {
    let graph = build(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::b::B;\npub struct A;\n"),
        ("b.rs", "pub struct B;\n\nfn f() -> crate::a::A {\n    crate::a::A\n}\n"),
        ("c.rs", "use crate::a::A;\n"),
    ]);
    assert_eq!(edges(&graph), ["a -> b", "b -> a", "c -> a"]);
    assert_eq!(circles(&graph), [["a", "b"]]);
    let example = &graph.edges[&(module("b"), module("a"))];
    assert_eq!(
        (example.path.as_str(), example.file.to_str(), example.line),
        ("crate::a::A", Some("b.rs"), 3)
    );
    let example = &graph.edges[&(module("a"), module("b"))];
    assert_eq!((example.path.as_str(), example.line), ("crate::b::B", 1));
}

#[test]
fn a_longer_circle_is_one_component() {
    let graph = build(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "fn f() { crate::b::g() }\n"),
        ("b.rs", "pub fn g() { super::c::h() }\n"),
        ("c.rs", "pub fn h() { let _ = format!(\"{}\", crate::a::NAME); }\n"),
    ]);
    assert_eq!(circles(&graph), [["a", "b", "c"]]);
}

#[test]
fn a_re_export_of_a_child_is_an_edge_to_it() {
    let graph = build(&[
        ("lib.rs", "mod v8;\n"),
        ("v8.rs", "mod code;\npub use code::Code;\npub struct Heap;\n"),
        ("v8/code.rs", "pub struct Code;\nfn f(_: &super::Heap) {}\n"),
    ]);
    assert_eq!(edges(&graph), ["v8 -> v8::code", "v8::code -> v8"]);
    assert_eq!(circles(&graph), [["v8", "v8::code"]]);
}

#[test]
fn a_mod_declaration_is_no_edge() {
    let graph = build(&[
        ("lib.rs", "mod a;\npub fn helper() {}\n"),
        ("a.rs", "mod inner;\nfn f() { crate::helper() }\n"),
        ("a/inner/mod.rs", "pub fn g() {}\n"),
    ]);
    assert_eq!(edges(&graph), ["a -> crate"]);
    assert_eq!(graph.files[&module("a::inner")], PathBuf::from("a/inner/mod.rs"));
    assert!(circles(&graph).is_empty());
}

#[test]
fn code_under_cfg_test_is_left_out() {
    let graph = build(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "pub struct A;\n"),
        (
            "b.rs",
            "use crate::a::A;\n#[cfg(test)]\nmod tests;\n#[cfg(all(test, feature = \"x\"))]\nuse crate::a::B;\n",
        ),
        (
            "a/more.rs",
            "this file is not in the tree: b's tests module is test-only and has no file at b/tests.rs",
        ),
    ]);
    assert_eq!(edges(&graph), ["b -> a"]);
    let graph = build(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "pub struct A;\nfn f() { crate::b::g() }\n"),
        (
            "b.rs",
            "pub fn g() {}\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\nstruct S;\nimpl S {\n    \
             #[cfg(test)]\n    fn helper() -> crate::a::A { crate::a::A }\n}\n#[cfg(test)]\nuse crate::a::A;\n",
        ),
    ]);
    assert_eq!(edges(&graph), ["a -> b"]);
    assert!(circles(&graph).is_empty());
}

#[test]
fn nested_braces_and_globs_are_expanded_to_the_deepest_module() {
    let graph = build(&[
        ("lib.rs", "mod a;\nmod d;\nmod x;\n"),
        ("a.rs", "pub mod b;\npub mod c;\npub struct E;\n"),
        ("a/b.rs", "pub struct C;\n"),
        ("a/c.rs", "pub struct F;\n"),
        ("d.rs", "pub struct D;\n"),
        (
            "x.rs",
            "use crate::{\n    a::{b::{self, C as Renamed}, E},\n    d::*,\n};\nuse self::inner::Y;\nmod inner {\n    \
             pub struct Y;\n    use super::super::a::c::F;\n}\n",
        ),
    ]);
    assert_eq!(edges(&graph), ["x -> a", "x -> a::b", "x -> a::c", "x -> d"]);
    let example = &graph.edges[&(module("x"), module("a::b"))];
    assert_eq!((example.path.as_str(), example.line), ("crate::a::b::{self}", 2));
    assert_eq!(graph.edges[&(module("x"), module("d"))].path, "crate::d::*");
    assert_eq!(graph.edges[&(module("x"), module("a::c"))].line, 8);
}

#[test]
fn other_crates_visibility_and_child_calls_are_no_edges() {
    let graph = build(&[
        ("lib.rs", "mod a;\nmod b;\nfn f() { a::g(); }\n"),
        ("a.rs", "use std::fmt;\nuse ::other::X;\npub(crate) fn g() {}\npub(in crate::b) struct S;\n"),
        ("b.rs", "use leakprobe_ebpf::Event;\n"),
    ]);
    assert!(edges(&graph).is_empty(), "{:?}", edges(&graph));
}

#[test]
fn each_crate_root_has_its_own_tree() {
    let files = sources(&[
        ("lib.rs", "pub mod shared;\n"),
        ("shared.rs", "pub struct Event;\n"),
        ("main.rs", "mod probes;\nmod maps;\n"),
        ("probes.rs", "use leakprobe_ebpf::shared::Event;\nuse crate::maps::M;\n"),
        ("maps.rs", "pub struct M;\nfn f() { crate::probes::p() }\n"),
    ]);
    let lib = graph::build(&files, "lib.rs".as_ref()).unwrap();
    assert_eq!(lib.files.keys().map(|m| graph::name(m)).collect::<Vec<_>>(), ["crate", "shared"]);
    assert!(lib.edges.is_empty());
    let main = graph::build(&files, "main.rs".as_ref()).unwrap();
    assert_eq!(circles(&main), [["maps", "probes"]]);
}

#[test]
fn a_missing_module_file_is_an_error() {
    let error = graph::build(&sources(&[("lib.rs", "mod gone;\n")]), "lib.rs".as_ref()).unwrap_err();
    assert!(error.to_string().contains("gone.rs"), "{error}");
}

#[test]
fn a_long_file_says_why_in_its_doc() {
    let body = "fn f() {}\n".repeat(MAX_LINES);
    assert_eq!(unexplained_size(&body), None, "{MAX_LINES} lines are allowed");
    let long = format!("//! A module.\n{body}");
    assert_eq!(unexplained_size(&long), Some(MAX_LINES + 1));
    let explained = format!("//! A module.\n//!\n//! Size: one job, the parser's states.\n{body}");
    assert_eq!(unexplained_size(&explained), None);
    let not_doc = format!("// Size: a plain comment is not the doc.\n{body}");
    assert_eq!(unexplained_size(&not_doc), Some(MAX_LINES + 1));
}
