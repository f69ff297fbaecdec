//! The census of a V8 heap, as a model: objects counted by type ([`Kind`] and label), per
//! isolate, with a sample of each type's addresses; what grew between two censuses
//! ([`growth`]); and which types are worth a retainer search. Taking one is
//! [`crate::v8::heap::take`].

use std::{collections::HashMap, time::Duration};

use serde::Serialize;

/// What kind of thing a census line counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A JavaScript object, named by its constructor.
    Object,
    /// A JavaScript array.
    Array,
    /// A function (closure), named by its function.
    Closure,
    /// A string.
    String,
    /// An ArrayBuffer (its backing store is outside the heap: `external_bytes`).
    ArrayBuffer,
    /// A JavaScript object that wraps a native (C++) object, made from one of the embedder's
    /// API templates (node's handles: a zlib stream's `Zlib`, a cipher's `CipherBase`, a
    /// socket's `TCP`): what it keeps is mostly native memory, outside the heap.
    Handle,
    /// A scope's context (closure variables).
    Context,
    /// One of V8's internal objects (code, arrays, maps, ...), named by its type.
    System,
}

/// Objects of one type in one isolate's heap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    /// What it counts.
    pub kind: Kind,
    /// The name a heap snapshot gives it: constructor, function or type name.
    pub name: String,
    /// The name shown: for plain objects with their property names (`Object {id, ts}`), for
    /// closures with where the function is (`handler (app.js:12)`).
    pub label: String,
    /// Objects counted.
    pub count: u64,
    /// Their bytes in the heap (shallow size).
    pub bytes: u64,
    /// Bytes outside the heap they hold (ArrayBuffer backing stores).
    pub external_bytes: u64,
}

/// One isolate's heap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IsolateCensus {
    /// Address of its `v8::internal::Heap` (tells isolates apart).
    pub heap: String,
    /// Bytes of all its pages (old, young and large-object spaces): what its heap commits.
    pub committed_bytes: u64,
    /// Old-generation pages walked.
    pub pages: u64,
    /// Young-generation pages (not walked).
    pub young_pages: u64,
    /// Bytes of the young-generation pages.
    pub young_bytes: u64,
    /// Bytes of objects counted.
    pub object_bytes: u64,
    /// Objects counted.
    pub objects: u64,
    /// Free space (V8's free-list entries and fillers) seen on walked pages, where the type is known.
    pub free_bytes: u64,
    /// By type, most bytes first.
    pub types: Vec<TypeCount>,
    /// The user's scripts it compiled (not node's own), by name, at most 16: a worker's isolate
    /// is told by the file it runs.
    pub scripts: Vec<String>,
}

/// Bounds of one census.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes read from the target.
    pub max_bytes: u64,
    /// Longest time spent.
    pub max_time: Duration,
}

/// Why a census stopped before the end of the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// It read `max_bytes`.
    SizeCap,
    /// It ran `max_time`.
    TimeCap,
}

/// A census of every isolate's heap in one process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Census {
    /// One per isolate, most bytes first.
    pub isolates: Vec<IsolateCensus>,
    /// A sample of each type's objects, by (isolate heap, kind, label): tagged addresses with
    /// the map word each had, for [`crate::v8::heap::retainers`] (not written out).
    #[serde(skip)]
    pub samples: HashMap<(String, Kind, String), Vec<(u64, u64)>>,
    /// Page headers found.
    pub pages_found: u64,
    /// Pages whose object area could not be read (freed while the census ran).
    pub unreadable_pages: u64,
    /// Bytes of walked pages that did not parse as objects (torn reads, types whose size this
    /// reader does not know): skipped, not counted under any type.
    pub unparsed_bytes: u64,
    /// Times the walk had to look ahead for the next object.
    pub resyncs: u64,
    /// Objects of types whose size this reader does not know, sized by where the next run of
    /// objects starts (counted under their type).
    pub sized_by_lookahead: u64,
    /// Where the walk had to look ahead, by the type of the object it could not size (`(no
    /// map)` when the word there was not a map), most first (at most 10).
    pub unparsed_at: Vec<(String, u64)>,
    /// Bytes read from the target.
    pub bytes_read: u64,
    /// Wall time spent.
    pub elapsed_ms: f64,
    /// Set when a cap stopped it before every page was walked.
    pub stopped_early: Option<Stopped>,
    /// Pages left unwalked because of the cap.
    pub pages_not_walked: u64,
}

impl Census {
    /// Counts of `name` (a constructor, function or type name) summed over kinds and isolates.
    pub fn count_named(&self, name: &str) -> u64 {
        self.isolates.iter().flat_map(|i| &i.types).filter(|t| t.name == name).map(|t| t.count).sum()
    }
}

/// How one type changed between two censuses of the same process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Growth {
    /// The isolate (its `Heap` address).
    pub heap: String,
    /// What it counts.
    pub kind: Kind,
    /// As in [`TypeCount`].
    pub name: String,
    /// As in [`TypeCount`].
    pub label: String,
    /// Objects in the later census.
    pub count: u64,
    /// Objects gained (negative: lost).
    pub count_delta: i64,
    /// Bytes gained.
    pub bytes_delta: i64,
    /// Objects gained per second.
    pub count_per_s: f64,
}

/// The types whose count changed from `before` to `after`, `seconds` apart, most objects
/// gained first (types present in only one of them count from zero).
pub fn growth(before: &Census, after: &Census, seconds: f64) -> Vec<Growth> {
    type Key<'a> = (&'a str, Kind, &'a str);
    let mut old: HashMap<Key, (&TypeCount, &str)> = HashMap::new();
    for iso in &before.isolates {
        for t in &iso.types {
            old.insert((iso.heap.as_str(), t.kind, t.label.as_str()), (t, t.name.as_str()));
        }
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for iso in &after.isolates {
        for t in &iso.types {
            let key = (iso.heap.as_str(), t.kind, t.label.as_str());
            seen.insert(key);
            let (count, bytes) = old.get(&key).map_or((0, 0), |(o, _)| (o.count, o.bytes));
            out.push(Growth {
                heap: iso.heap.clone(),
                kind: t.kind,
                name: t.name.clone(),
                label: t.label.clone(),
                count: t.count,
                count_delta: t.count as i64 - count as i64,
                bytes_delta: t.bytes as i64 - bytes as i64,
                count_per_s: 0.0,
            });
        }
    }
    for (key, (t, name)) in &old {
        if !seen.contains(key) {
            out.push(Growth {
                heap: key.0.to_string(),
                kind: t.kind,
                name: name.to_string(),
                label: t.label.clone(),
                count: 0,
                count_delta: -(t.count as i64),
                bytes_delta: -(t.bytes as i64),
                count_per_s: 0.0,
            });
        }
    }
    out.retain(|g| g.count_delta != 0);
    for g in &mut out {
        g.count_per_s = match seconds > 0.0 {
            true => g.count_delta as f64 / seconds,
            false => 0.0,
        };
    }
    out.sort_by(|a, b| {
        b.count_delta.cmp(&a.count_delta).then(a.label.cmp(&b.label)).then(a.heap.cmp(&b.heap))
    });
    out
}

/// Objects of each type whose address a census keeps, for [`crate::v8::heap::retainers`].
pub const SAMPLES: usize = 24;

/// The types whose retainers are worth a search: the `top` growing types of the program's
/// values (objects, among them Promises and Timeouts, arrays, closures, strings, ArrayBuffers,
/// native handles; not V8's internal ones), taken in turn by objects gained and by bytes gained, so that a few
/// large objects growing are searched beside many small ones.
pub fn growing_types(growth: &[Growth], top: usize) -> Vec<(String, Kind, String)> {
    let values: Vec<&Growth> = growth
        .iter()
        .filter(|g| {
            g.count_delta > 0
                && matches!(
                    g.kind,
                    Kind::Object
                        | Kind::Array
                        | Kind::Closure
                        | Kind::String
                        | Kind::ArrayBuffer
                        | Kind::Handle
                )
        })
        .collect();
    let mut by_bytes = values.clone();
    by_bytes.sort_by(|a, b| b.bytes_delta.cmp(&a.bytes_delta).then(a.label.cmp(&b.label)));
    let mut wanted: Vec<(String, Kind, String)> = Vec::new();
    for g in values.iter().zip(by_bytes.iter()).flat_map(|(a, b)| [*a, *b]) {
        let key = (g.heap.clone(), g.kind, g.label.clone());
        if wanted.len() < top && !wanted.contains(&key) {
            wanted.push(key);
        }
    }
    wanted
}

/// The types of `census` named `name` (a constructor, function or type name, or a label), in
/// every isolate.
pub fn named_types(census: &Census, name: &str) -> Vec<(String, Kind, String)> {
    census
        .isolates
        .iter()
        .flat_map(|i| i.types.iter().map(move |t| (i, t)))
        .filter(|(_, t)| t.name == name || t.label == name)
        .map(|(i, t)| (i.heap.clone(), t.kind, t.label.clone()))
        .collect()
}
