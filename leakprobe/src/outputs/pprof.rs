//! The report's stack profiles as gzipped pprof protobuf, for `go tool pprof`, Pyroscope,
//! speedscope and anything else that reads
//! [profile.proto](https://github.com/google/pprof/blob/main/proto/profile.proto).
//!
//! | File | Sample type | Data |
//! | --- | --- | --- |
//! | `allocated.pb.gz` | `space/bytes` | `stacks[].allocated_bytes` |
//! | `outstanding.pb.gz` | `space/bytes` | `stacks[].outstanding_bytes` |
//! | `gc-triggers.pb.gz` | `pauses/count` | `gc.trigger_stacks[].pauses` |
//! | `heap-samples.pb.gz` | `samples/count` | `heap.allocation_samples[].samples` |
//!
//! As with the flamegraphs, a profile without samples writes no file (and removes a stale one).
//! Each stack gets its category (`[external]`, ...) as root frame and as the sample label
//! `category`, so `-tagfocus category=external` works too. Addresses of frames are kept; the
//! frames come symbolized, so there is one mapping (the target's executable, over the whole
//! address space) marked as having functions, file names and line numbers.

use std::{
    collections::HashMap,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use flate2::{write::GzEncoder, Compression};
use prost::Message as _;
use serde_json::Value;

use crate::outputs::{
    flamegraph::{put, OutputFile},
    folded::{category_label, stack_values, title, StackValue},
};

/// `perftools.profiles.Profile` (fields 1–14).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// What each sample value means.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Binaries (one, marked symbolized).
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Program locations.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions referenced by locations.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Strings; index 0 is always "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Regexp of frames to drop (string index).
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Regexp of frames to keep (string index).
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// Collection start, nanoseconds since the epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// Collection length.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// Kind of events between sampled occurrences.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// Events between sampled occurrences.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indices).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// Preferred sample type (string index).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `perftools.profiles.ValueType`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    /// String index, e.g. "space".
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// String index, e.g. "bytes".
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `perftools.profiles.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Location ids, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per sample type.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// `perftools.profiles.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// String index.
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String index (string labels).
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// Numeric labels.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// String index of `num`'s unit.
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// `perftools.profiles.Mapping`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    /// Nonzero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Load address.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// End of the mapped range.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// String index of the file name.
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// String index of the build id.
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Symbolization state.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// Symbolization state.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Symbolization state.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Symbolization state.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// `perftools.profiles.Location`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    /// Nonzero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Mapping id (1), 0 when unknown.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// Instruction address.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Function and line (one per inlined function; leakprobe writes one).
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    /// Several symbols at one address.
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// `perftools.profiles.Line`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    /// Function id.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Source line, 0 when unknown.
    #[prost(int64, tag = "2")]
    pub line: i64,
}

/// `perftools.profiles.Function`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Nonzero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// String index of the name.
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// String index of the system (e.g. mangled) name.
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// String index of the source file.
    #[prost(int64, tag = "4")]
    pub filename: i64,
    /// Starting line in the source file.
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

impl Profile {
    /// The string at `index`, "" when out of range.
    pub fn string(&self, index: i64) -> &str {
        usize::try_from(index).ok().and_then(|i| self.string_table.get(i)).map_or("", String::as_str)
    }
}

/// Builds one profile: interns strings, functions and locations.
#[derive(Default)]
pub struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<(u64, u64, i64), u64>,
}

impl Builder {
    /// A profile with one sample type, e.g. `("space", "bytes")`.
    pub fn new(sample_type: &str, unit: &str) -> Self {
        let mut b = Builder::default();
        b.intern("");
        let value_type = ValueType { r#type: b.intern(sample_type), unit: b.intern(unit) };
        b.profile.sample_type = vec![value_type.clone()];
        b.profile.default_sample_type = value_type.r#type;
        b.profile.period_type = Some(value_type);
        b.profile.period = 1;
        b
    }

    /// The string table index of `s`.
    pub fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let key = (self.intern(name), file.map_or(0, |f| self.intern(f)));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name: key.0,
            system_name: key.0,
            filename: key.1,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    fn location(&mut self, address: u64, function_id: u64, line: i64) -> u64 {
        let key = (address, function_id, line);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id: if self.profile.mapping.is_empty() { 0 } else { 1 },
            address,
            line: vec![Line { function_id, line }],
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    /// Adds one stack (innermost frame first) with its value.
    pub fn add(&mut self, stack: &StackValue<'_>) {
        self.add_labelled(stack, &[]);
    }

    /// Adds one stack with its value and `labels` (key, value) on its sample besides its
    /// category.
    pub fn add_labelled(&mut self, stack: &StackValue<'_>, labels: &[(&str, &str)]) {
        let mut ids = Vec::with_capacity(stack.frames.len() + 1);
        for frame in &stack.frames {
            let function = self.function(frame.name, frame.file);
            let line = frame.line.unwrap_or(0);
            ids.push(self.location(frame.addr.unwrap_or(0), function, line));
        }
        let mut label = Vec::new();
        if let Some(category) = stack.category {
            let function = self.function(&category_label(category), None);
            ids.push(self.location(0, function, 0));
            label.push(Label {
                key: self.intern("category"),
                str: self.intern(category),
                num: 0,
                num_unit: 0,
            });
        }
        for (key, value) in labels {
            label.push(Label { key: self.intern(key), str: self.intern(value), num: 0, num_unit: 0 });
        }
        let value = vec![i64::try_from(stack.value).unwrap_or(i64::MAX)];
        self.profile.sample.push(Sample { location_id: ids, value, label });
    }

    /// Adds a comment line.
    pub fn comment(&mut self, text: &str) {
        let i = self.intern(text);
        self.profile.comment.push(i);
    }

    /// The window and the target's executable, from the report.
    pub fn target(&mut self, report: &Value) {
        let secs = |p: &str| report.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
        self.profile.time_nanos = (secs("/window/start_unix_s") * 1e9) as i64;
        self.profile.duration_nanos = (secs("/window/duration_s") * 1e9) as i64;
        let exe = report.pointer("/target/exe").and_then(Value::as_str).unwrap_or("node");
        let filename = self.intern(exe);
        // One mapping over the whole address space, marked symbolized, so that readers do not
        // try to symbolize the addresses again (pprof: "Main binary filename not available").
        self.profile.mapping = vec![Mapping {
            id: 1,
            memory_start: 0,
            memory_limit: u64::MAX,
            file_offset: 0,
            filename,
            build_id: 0,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: false,
        }];
        for location in &mut self.profile.location {
            location.mapping_id = 1;
        }
    }

    /// The finished profile.
    pub fn finish(self) -> Profile {
        self.profile
    }
}

/// A profile of `stacks` with one sample type, or `None` when there are no samples.
pub fn build(
    report: &Value,
    stacks: &[StackValue<'_>],
    sample_type: (&str, &str),
    what: &str,
) -> Option<Profile> {
    if stacks.is_empty() {
        return None;
    }
    let mut b = Builder::new(sample_type.0, sample_type.1);
    b.target(report);
    b.comment(&title(what, report));
    b.comment(concat!("written by leakprobe ", env!("CARGO_PKG_VERSION")));
    for stack in stacks {
        b.add(stack);
    }
    Some(b.finish())
}

/// The profile, protobuf-encoded and gzipped (as pprof stores profiles on disk).
pub fn encode_gz(profile: &Profile) -> io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

/// One of the profiles a report makes.
pub struct ProfileKind {
    /// Its name (`outstanding`): the file is `<name>.pb.gz`, the agent's path `/pprof/<name>`.
    pub name: &'static str,
    /// Where its stacks are in the report, and the field of each that is its value.
    stacks: (&'static str, &'static str),
    /// Its sample type and unit.
    sample_type: (&'static str, &'static str),
    /// What it shows, for its title.
    what: &'static str,
}

/// The profiles a report makes: name, where its stacks are and the field of each that is its
/// value, its sample type and unit, what it shows.
#[rustfmt::skip]
pub const PROFILES: [ProfileKind; 4] = [
    kind("allocated", "/stacks", "allocated_bytes", "space", "bytes", "Bytes allocated since attach by stack"),
    kind("outstanding", "/stacks", "outstanding_bytes", "space", "bytes", "Bytes outstanding by allocation stack"),
    kind("gc-triggers", "/gc/trigger_stacks", "pauses", "pauses", "count", "GC pauses by triggering stack"),
    kind("heap-samples", "/heap/allocation_samples", "samples", "samples", "count", "JS heap allocation samples by stack"),
];

const fn kind(
    name: &'static str,
    stacks: &'static str,
    field: &'static str,
    sample_type: &'static str,
    unit: &'static str,
    what: &'static str,
) -> ProfileKind {
    ProfileKind { name, stacks: (stacks, field), sample_type: (sample_type, unit), what }
}

/// One profile of several processes' reports, each sample labelled with its process's
/// `labels` (`pid`, `pod_uid`, ...): what the agent serves on `/pprof/<name>`. `None` when no
/// report has a sample.
pub fn merged(kind: &ProfileKind, reports: &[(Vec<(&str, &str)>, &Value)]) -> Option<Profile> {
    let first = reports.first()?.1;
    let mut b = Builder::new(kind.sample_type.0, kind.sample_type.1);
    b.target(first);
    b.comment(&format!("{} ({} processes)", kind.what, reports.len()));
    b.comment(concat!("written by leakprobe ", env!("CARGO_PKG_VERSION")));
    let mut any = false;
    for (labels, report) in reports {
        for stack in stack_values(report, kind.stacks.0, kind.stacks.1) {
            b.add_labelled(&stack, labels);
            any = true;
        }
    }
    any.then(|| b.finish())
}

/// Writes every profile of `report` into `dir` (which must exist) and returns the files
/// written. Profiles without samples write nothing (and remove a stale file of that name).
pub fn write_all(report: &Value, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (file, bytes) in profiles_gz(report)? {
        written.extend(put(dir, &file, bytes)?);
    }
    Ok(written)
}

/// Every profile of `report` in memory, gzipped, by file name (`None`: no samples, no file).
pub fn profiles_gz(report: &Value) -> anyhow::Result<Vec<OutputFile>> {
    let mut files = Vec::new();
    for kind in &PROFILES {
        let stacks = stack_values(report, kind.stacks.0, kind.stacks.1);
        let bytes = match build(report, &stacks, kind.sample_type, kind.what) {
            Some(profile) => Some(encode_gz(&profile).context("compressing a profile")?),
            None => None,
        };
        files.push((format!("{}.pb.gz", kind.name), bytes));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::{fs, io::Read as _};

    use flate2::read::GzDecoder;
    use serde_json::json;

    use super::*;

    fn report() -> Value {
        json!({
            "target": {"pid": 42, "node_version": "v22.1.0"},
            "window": {"start_unix_s": 1700000000.5, "duration_s": 30.0},
            "stacks": [
                {"category": "external", "allocated_bytes": 300, "outstanding_bytes": 200,
                 "outstanding_mid_bytes": 100,
                 "frames": [
                    {"name": "malloc", "kind": "native", "addr": "0x7f00", "file": null, "line": null},
                    {"name": "renderInvoice", "kind": "js", "addr": "0x1234",
                     "file": "billing/pdf.js", "line": 88}]},
                {"category": "native", "allocated_bytes": 50, "outstanding_bytes": 0,
                 "outstanding_mid_bytes": 0,
                 "frames": [
                    {"name": "malloc", "kind": "native", "addr": "0x7f00", "file": null, "line": null},
                    {"name": "renderInvoice", "kind": "js", "addr": "0x1300",
                     "file": "billing/pdf.js", "line": 91}]}
            ]
        })
    }

    fn decode(bytes: &[u8]) -> Profile {
        let mut raw = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut raw).unwrap();
        Profile::decode(raw.as_slice()).unwrap()
    }

    /// Root-first function names of a sample.
    fn names(p: &Profile, s: &Sample) -> Vec<String> {
        s.location_id
            .iter()
            .rev()
            .map(|&id| {
                let loc = &p.location[id as usize - 1];
                assert_eq!(loc.id, id);
                let f = &p.function[loc.line[0].function_id as usize - 1];
                let mut n = p.string(f.name).to_string();
                if f.filename != 0 {
                    n += &format!(" {}:{}", p.string(f.filename), loc.line[0].line);
                }
                n
            })
            .collect()
    }

    #[test]
    fn encodes_and_decodes_with_totals_and_a_sane_string_table() {
        let r = report();
        let stacks = stack_values(&r, "/stacks", "allocated_bytes");
        let profile = build(&r, &stacks, ("space", "bytes"), "Bytes allocated").unwrap();
        let p = decode(&encode_gz(&profile).unwrap());
        assert_eq!(p, profile);

        assert_eq!(p.string_table[0], "");
        let mut unique = p.string_table.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), p.string_table.len(), "strings are interned once");
        for i in [p.sample_type[0].r#type, p.sample_type[0].unit, p.default_sample_type] {
            assert!((i as usize) < p.string_table.len());
        }
        assert_eq!(p.string(p.sample_type[0].r#type), "space");
        assert_eq!(p.string(p.sample_type[0].unit), "bytes");

        let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 350);
        assert_eq!(p.time_nanos, 1_700_000_000_500_000_000);
        assert_eq!(p.duration_nanos, 30_000_000_000);
        // Ids start at 1 and are dense.
        for (i, l) in p.location.iter().enumerate() {
            assert_eq!(l.id, i as u64 + 1);
        }
        for (i, f) in p.function.iter().enumerate() {
            assert_eq!(f.id, i as u64 + 1);
        }
        assert_eq!(p.mapping.len(), 1);
        assert!(p.mapping[0].id == 1 && p.mapping[0].has_functions && p.mapping[0].has_line_numbers);
        assert!(p.location.iter().all(|l| l.mapping_id == 1));
        assert_eq!(names(&p, &p.sample[0]), ["[external]", "renderInvoice billing/pdf.js:88", "malloc"]);
        assert_eq!(names(&p, &p.sample[1]), ["[native]", "renderInvoice billing/pdf.js:91", "malloc"]);
        // malloc at one address is one location; renderInvoice is one function at two lines.
        assert_eq!(p.sample[0].location_id[0], p.sample[1].location_id[0]);
        assert_eq!(p.function.iter().filter(|f| p.string(f.name) == "renderInvoice").count(), 1);
        let label = &p.sample[0].label[0];
        assert_eq!((p.string(label.key), p.string(label.str)), ("category", "external"));
        assert!(p.comment.iter().any(|&c| p.string(c).contains("pid 42, node v22.1.0")));
    }

    #[test]
    fn several_processes_make_one_profile_whose_samples_say_which() {
        let one = report();
        let two = report();
        let kind = PROFILES.iter().find(|k| k.name == "outstanding").unwrap();
        let p = merged(kind, &[(vec![("pid", "11")], &one), (vec![("pid", "22")], &two)]).unwrap();
        let pids: Vec<&str> = p
            .sample
            .iter()
            .flat_map(|s| s.label.iter().filter(|l| p.string(l.key) == "pid").map(|l| p.string(l.str)))
            .collect();
        assert!(pids.contains(&"11") && pids.contains(&"22"), "{pids:?}");
        assert_eq!(pids.len(), p.sample.len(), "every sample says its process");
        assert!(merged(kind, &[]).is_none());
    }

    #[test]
    fn writes_files_and_skips_empty_profiles() {
        let dir = std::env::temp_dir().join(format!("leakprobe-pprof-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("gc-triggers.pb.gz"), "stale").unwrap();
        let written = write_all(&report(), &dir).unwrap();
        assert_eq!(written, [dir.join("allocated.pb.gz"), dir.join("outstanding.pb.gz")]);
        assert!(!dir.join("gc-triggers.pb.gz").exists());
        let p = decode(&fs::read(dir.join("outstanding.pb.gz")).unwrap());
        assert_eq!(p.sample.len(), 1, "0 bytes outstanding is no sample");
        assert_eq!(p.sample[0].value, [200]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
