//! What the verdict reads and `report.json` lists about allocation sites: a suspect (a logical
//! site, its bytes, its raw stacks and why it is one), its category and source, and one
//! stack's bytes for the flamegraphs. The books that produce them are in [`crate::books::tracker`]
//! and the families; [`crate::verdict`] judges them.

use serde::Serialize;

use crate::{stacks::frame::Frame, v8::heap::contents::Container};

/// Suspects listed at most.
pub const MAX_SUSPECTS: usize = 20;

/// Memory category of an allocation stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// ArrayBuffer/Buffer backing stores.
    External,
    /// V8 heap: large objects (one per page), by the stack that allocated them.
    V8Heap,
    /// libc malloc family (`--native`).
    Native,
    /// Anonymous memory mappings (`mmap`), for RSS growth attribution.
    Mapping,
}

impl Category {
    /// Whether the GC frees this category's garbage (the V8 heap, external memory): between
    /// full GCs it holds garbage too, so its growth is read at GC troughs.
    pub fn collected(self) -> bool {
        matches!(self, Category::V8Heap | Category::External)
    }
}

/// What a suspect's bytes were measured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Allocations followed to their frees (`--alloc-stacks`, `--native`, V8's large objects):
    /// bytes outstanding.
    Allocations,
    /// Sampled page faults: bytes first touched.
    PageFaults,
    /// Anonymous mappings: bytes mapped.
    Mappings,
    /// Large arrays the site allocated, read in the target's heap: their elements times the
    /// bytes each keeps ([`crate::memory::containers`]).
    Holds,
}

/// One raw stack of a suspect's site.
#[derive(Clone, Debug, Serialize)]
pub struct Variant {
    /// The kernel's stack id.
    pub stack_id: i64,
    /// Its bytes (outstanding, or first touched, as the suspect's).
    pub bytes: i64,
    /// Its floor growth (as the suspect's).
    pub floor_growth_bytes: f64,
}

/// Why a suspect is one: its category's growth at GC troughs, and its share of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evidence {
    /// GC troughs (samples right after a main-thread mark-compact) the category's growth was
    /// read at, in the later two thirds of the window; with fewer than three, the growth is
    /// read from the floors of every sample instead (`method`).
    pub troughs: usize,
    /// `troughs` or `floors`.
    pub method: &'static str,
    /// The category's growth over the later two thirds of the window.
    pub category_growth_bytes_per_s: f64,
    /// The site's growth rate over the last third, as a share of the category's growth
    /// (can pass 1 for first touches: memory touched and freed again counts too).
    pub explained_share: f64,
    /// The worker thread whose isolate's verdict it was judged under (absent: the main
    /// isolate's, or a category of the whole process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
}

/// One suspect in `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Suspect {
    /// Memory category.
    pub category: Category,
    /// What the bytes were measured from.
    pub source: Source,
    /// The logical site: its frames' functions, scripts and lines.
    pub site: String,
    /// Bytes from this stack still held at the end of the window (allocated since attach).
    pub outstanding_bytes: i64,
    /// Least-squares growth rate over the window.
    pub growth_bytes_per_s: f64,
    /// Growth of the floor (lowest outstanding value) from the middle to the last third of the
    /// window: what survived the GC grew by this much.
    pub floor_growth_bytes: f64,
    /// Allocation stack, innermost frame first (the site's largest variant).
    pub frames: Vec<Frame>,
    /// Why it is a suspect (null for growing mappings, which are judged on their own).
    pub evidence: Option<Evidence>,
    /// The raw stacks of the site, largest first.
    pub variants: Vec<Variant>,
    /// For a [`Source::Holds`] site: its largest container's elements and what each keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds: Option<Held>,
}

impl Suspect {
    /// A site with no variant yet.
    pub fn site(category: Category, source: Source, site: String) -> Self {
        Suspect {
            category,
            source,
            site,
            outstanding_bytes: 0,
            growth_bytes_per_s: 0.0,
            floor_growth_bytes: 0.0,
            frames: Vec::new(),
            evidence: None,
            variants: Vec::new(),
            holds: None,
        }
    }

    /// Adds one raw stack of the site (its frames, and its bytes and floor growth to the
    /// site's): the site reads as its largest variant.
    pub fn add_variant(&mut self, frames: Vec<Frame>, variant: Variant) {
        if self.variants.iter().all(|v| v.bytes < variant.bytes) {
            self.frames = frames;
        }
        self.outstanding_bytes += variant.bytes;
        self.floor_growth_bytes += variant.floor_growth_bytes;
        self.variants.push(variant);
    }
}

/// One allocation stack's bytes, in `report.stacks[]` (what the flamegraphs are drawn from).
#[derive(Clone, Debug, Serialize)]
pub struct StackProfile {
    /// Memory category.
    pub category: Category,
    /// Allocation stack, innermost frame first.
    pub frames: Vec<Frame>,
    /// Bytes allocated from this stack since attach (null for mappings, which are books of
    /// what is mapped now).
    pub allocated_bytes: Option<u64>,
    /// Bytes from this stack still held at the end of the window.
    pub outstanding_bytes: i64,
    /// Bytes from this stack held at the middle of the window.
    pub outstanding_mid_bytes: i64,
}

/// What a growing container site holds, in `report.suspects[].holds`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Held {
    /// What the container is: `array`, `map` or `set`.
    pub container: Container,
    /// Elements (a Map's or Set's: entries) in the site's largest container at the last reading.
    pub elements: u64,
    /// Estimated bytes an element keeps on its own.
    pub bytes_per_element: f64,
    /// The isolate's heap the container lives in (its page's header says), as the heap census
    /// names isolates: a worker's array is judged with that worker's heap.
    pub heap: Option<String>,
}
