//! The target's resident memory, from `/proc/PID/status`, sampled every interval.

use std::fs;

use serde::Serialize;

use crate::memory::census::{CensusReport, IsolateHeap};

/// One reading of the target's RSS and its kinds (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rss {
    /// VmRSS.
    pub rss_bytes: u64,
    /// RssAnon: heap, stacks, anonymous mappings (V8's heap, malloc, Buffers).
    pub rss_anon_bytes: u64,
    /// RssFile: file-backed pages (the node binary's code, shared libraries).
    pub rss_file_bytes: u64,
    /// RssShmem: shared memory.
    pub rss_shmem_bytes: u64,
}

/// Reads one process's RSS again and again through one open `/proc/PID/status` (a GC trough
/// reads it every 25 ms: opening the file each time cost as much as reading it).
pub struct RssReader {
    pid: u32,
    file: Option<fs::File>,
    buf: Vec<u8>,
}

impl RssReader {
    /// A reader of `pid`'s RSS (the file is opened at the first reading).
    pub fn new(pid: u32) -> Self {
        Self { pid, file: None, buf: Vec::with_capacity(4096) }
    }

    /// The RSS now, or `None` when the process has exited.
    pub fn read(&mut self) -> Option<Rss> {
        use std::os::unix::fs::FileExt as _;
        if self.file.is_none() {
            self.file = fs::File::open(format!("/proc/{}/status", self.pid)).ok();
        }
        let file = self.file.as_ref()?;
        // The kernel writes the whole text anew for each read from offset 0.
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = file.read_at(&mut chunk, self.buf.len() as u64).ok()?;
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        parse_status(std::str::from_utf8(&self.buf).ok()?)
    }
}

/// Parses the RSS fields of a `/proc/PID/status` text (values in kB).
pub fn parse_status(status: &str) -> Option<Rss> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some(Rss {
        rss_bytes: field("VmRSS:")?,
        rss_anon_bytes: field("RssAnon:").unwrap_or(0),
        rss_file_bytes: field("RssFile:").unwrap_or(0),
        rss_shmem_bytes: field("RssShmem:").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tnode\nVmRSS:\t   51200 kB\nRssAnon:\t   30720 kB\nRssFile:\t   20480 kB\nRssShmem:\t       0 kB\n";
        let rss = parse_status(status).unwrap();
        assert_eq!(rss.rss_bytes, 50 * 1024 * 1024);
        assert_eq!(rss.rss_anon_bytes, 30 * 1024 * 1024);
        assert_eq!(rss.rss_file_bytes, 20 * 1024 * 1024);
        assert_eq!(parse_status("Name:\tkthreadd\n"), None, "kernel threads have no VmRSS");
        assert_eq!(parse_status("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn reads_our_own_rss() {
        let rss = RssReader::new(std::process::id()).read().unwrap();
        assert!(rss.rss_bytes > 0 && rss.rss_bytes >= rss.rss_anon_bytes);
    }

    /// One open file read again sees the RSS as it is then, not as it was at the first read.
    #[test]
    fn an_open_status_file_reads_the_rss_anew() {
        let mut reader = RssReader::new(std::process::id());
        let before = reader.read().unwrap();
        let grown: Vec<u8> = vec![1; 64 << 20];
        let after = reader.read().unwrap();
        assert!(after.rss_anon_bytes >= before.rss_anon_bytes + (60 << 20), "{before:?} {after:?}");
        assert_eq!(grown.iter().map(|&b| b as u64).sum::<u64>(), 64 << 20);
        assert_eq!(RssReader::new(u32::MAX).read(), None);
    }

    /// A trough whose lowest readings predate the last regular sample joins the samples after
    /// it when the target exits before another sample: the split is the regular sample's.
    #[test]
    fn the_split_is_the_latest_regular_sample_not_a_trough_that_joined_after_it() {
        let sample = |trough, t_s, native| Sample {
            trough,
            t_s,
            rss: Rss { rss_bytes: 100 << 20, ..Rss::default() },
            v8_heap_bytes: Some(10 << 20),
            v8_old_generation_bytes: None,
            v8_worker_heaps_bytes: None,
            external_bytes: Some(1 << 20),
            native_bytes: Some(native),
        };
        let samples = [sample(None, 1.0, 10), sample(None, 2.0, 30), sample(Some(4), 1.8, 20)];
        assert_eq!(MemoryReport::new(&samples).native_bytes, Some(30));
        assert_eq!(MemoryReport::new(&samples[2..]).native_bytes, Some(20), "only a trough");
    }
}

/// One sample of the memory split, in `report.memory.samples[]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// A GC trough: the lowest of each figure over the 400 ms after a main-thread mark-compact
    /// (while the ArrayBuffer sweeper frees what it released), with that GC's sequence number.
    /// What survives there is what is held.
    pub trough: Option<u32>,
    /// Seconds since the session started.
    pub t_s: f64,
    /// RSS and its kinds.
    #[serde(flatten)]
    pub rss: Rss,
    /// Committed V8 heap, when known.
    pub v8_heap_bytes: Option<u64>,
    /// Of it, all but the young generation (which V8 resizes under churn), when known: what the
    /// verdict reads as the V8 heap.
    pub v8_old_generation_bytes: Option<u64>,
    /// Worker threads' isolates, committed at each one's latest reading (absent without
    /// workers): not in `v8_heap_bytes`, and not native memory either.
    pub v8_worker_heaps_bytes: Option<u64>,
    /// External (Buffer/ArrayBuffer) bytes, when known.
    pub external_bytes: Option<u64>,
    /// Native bytes allocated since attach and held (estimated), with `--native`.
    pub native_bytes: Option<u64>,
}

impl Sample {
    /// Each figure at its lower of the two samples, at this sample's time.
    pub fn lowest(&self, other: &Sample) -> Sample {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Sample {
            trough: self.trough,
            t_s: self.t_s,
            rss: Rss {
                rss_bytes: self.rss.rss_bytes.min(other.rss.rss_bytes),
                rss_anon_bytes: self.rss.rss_anon_bytes.min(other.rss.rss_anon_bytes),
                rss_file_bytes: self.rss.rss_file_bytes.min(other.rss.rss_file_bytes),
                rss_shmem_bytes: self.rss.rss_shmem_bytes.min(other.rss.rss_shmem_bytes),
            },
            v8_heap_bytes: min(self.v8_heap_bytes, other.v8_heap_bytes),
            v8_old_generation_bytes: min(self.v8_old_generation_bytes, other.v8_old_generation_bytes),
            v8_worker_heaps_bytes: min(self.v8_worker_heaps_bytes, other.v8_worker_heaps_bytes),
            external_bytes: min(self.external_bytes, other.external_bytes),
            native_bytes: min(self.native_bytes, other.native_bytes),
        }
    }
}

/// `report.memory`: the latest split of RSS and its history.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// Latest RSS and its kinds.
    #[serde(flatten)]
    pub rss: Rss,
    /// Committed V8 heap (`heapTotal`). Null until V8's first GC after attach.
    pub v8_heap_bytes: Option<u64>,
    /// Buffer/ArrayBuffer backing stores.
    pub external_bytes: Option<u64>,
    /// malloc-family bytes allocated since attach and still held (estimated from sampling).
    /// Null without `--native`.
    pub native_bytes: Option<u64>,
    /// Resident file-backed pages: node's code and shared libraries (RssFile).
    pub code_bytes: u64,
    /// RSS not explained by the parts above (never negative: allocated-but-not-resident bytes
    /// can make the parts exceed RSS, and then this is 0).
    pub other_bytes: u64,
    /// RSS growth over the window (least squares).
    pub rss_growth_bytes_per_s: f64,
    /// V8 heap growth over the window (least squares; see `heap.baseline_growth_bytes_per_s`
    /// for the post-GC baseline, the better leak signal).
    pub v8_heap_growth_bytes_per_s: f64,
    /// External growth over the window (least squares).
    pub external_growth_bytes_per_s: f64,
    /// Samples, one per interval (thinned evenly past 512).
    /// Other isolates' (worker threads') heaps, from the latest heap census, included in
    /// `v8_heap_bytes` (absent before a census, and in agent mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v8_heap_other_isolates_bytes: Option<u64>,
    /// Each isolate's heap in the latest census.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub v8_heap_isolates: Vec<IsolateHeap>,
    pub samples: Vec<Sample>,
}

impl MemoryReport {
    /// Counts every isolate's heap in this split: the V8 heap there is the main isolate's
    /// (V8's own readings); the other isolates' committed bytes from the latest census are added
    /// to it and taken from `other`, and each isolate is listed.
    pub fn split_isolates(&mut self, census: &CensusReport) {
        if census.isolates.is_empty() {
            return;
        }
        let others: u64 = census.isolates.iter().filter(|i| !i.main).map(|i| i.committed_bytes).sum();
        if others > 0 {
            self.v8_heap_bytes = Some(self.v8_heap_bytes.unwrap_or(0) + others);
            self.other_bytes = self.other_bytes.saturating_sub(others);
        }
        self.v8_heap_other_isolates_bytes = Some(others);
        self.v8_heap_isolates = census.isolates.clone();
    }

    /// Splits the latest sample of `samples` into parts that sum to RSS, with `other` taking
    /// the remainder. A GC trough's lowest readings may have been taken before the last
    /// regular sample (and joined the samples after it, as when the target exited before a
    /// last sample): the latest regular sample is the end of the window.
    pub fn new(samples: &[Sample]) -> Self {
        let regular = samples.iter().rev().find(|s| s.trough.is_none());
        let latest = regular.or(samples.last()).copied().unwrap_or(Sample {
            trough: None,
            t_s: 0.0,
            rss: Rss::default(),
            v8_heap_bytes: None,
            v8_old_generation_bytes: None,
            v8_worker_heaps_bytes: None,
            external_bytes: None,
            native_bytes: None,
        });
        let code = latest.rss.rss_file_bytes;
        let explained = code + latest.v8_heap_bytes.unwrap_or(0) + latest.external_bytes.unwrap_or(0);
        let slope = |f: &dyn Fn(&Sample) -> Option<u64>| {
            let mut series = crate::books::series::Series::default();
            for s in samples {
                if let Some(v) = f(s) {
                    series.push(s.t_s, v as f64);
                }
            }
            series.slope()
        };
        MemoryReport {
            rss: latest.rss,
            v8_heap_bytes: latest.v8_heap_bytes,
            external_bytes: latest.external_bytes,
            native_bytes: latest.native_bytes,
            code_bytes: code,
            other_bytes: latest.rss.rss_bytes.saturating_sub(explained),
            rss_growth_bytes_per_s: slope(&|s| Some(s.rss.rss_bytes)),
            v8_heap_growth_bytes_per_s: slope(&|s| s.v8_heap_bytes),
            external_growth_bytes_per_s: slope(&|s| s.external_bytes),
            v8_heap_other_isolates_bytes: None,
            v8_heap_isolates: Vec::new(),
            samples: samples.to_vec(),
        }
    }
}

/// The window's thirds: (first, one third, two thirds, last) sample times.
pub fn thirds(samples: &[Sample]) -> Option<(f64, f64, f64, f64)> {
    let (first, last) = (samples.first()?.t_s, samples.last()?.t_s);
    let third = (last - first) / 3.0;
    (third > 0.0).then_some((first, first + third, first + 2.0 * third, last))
}
