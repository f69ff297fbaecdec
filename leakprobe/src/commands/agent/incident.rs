//! Incidents and profiles on demand.
//!
//! - `GET /incident?pid=N&seconds=S` (or `pod=UID`, `container=ID` for a pod's or container's
//!   one node process) answers, after `S` more seconds of watching, the incident
//!   folder `leakprobe --pid N --out DIR` would write (report.json, summary.txt, the flamegraph
//!   SVGs, the pprof profiles, census.txt) as a `.tar.gz`, built from everything the agent
//!   collected since it attached to the process.
//! - `GET /pprof/<profile>[?pid=N]` answers one pprof profile (`allocated`, `outstanding`,
//!   `gc-triggers`, `heap-samples`) of every watched process (or of one), each sample labelled
//!   with its process's `pid`, `comm`, `pod_uid`, `container_id`: what Parca and Pyroscope
//!   scrape.
//!
//! The HTTP side parses the request ([`parse_query`]) and hands it to the agent's loop, which
//! owns the sessions; the loop answers when the window is over ([`archive`], [`profile`]). At
//! most [`MAX_IN_FLIGHT`] are built at once (more: 429).

use std::{
    io::Write as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use hyper::StatusCode;
use tokio::sync::oneshot;

use crate::outputs::{
    live,
    pprof::{self, ProfileKind, PROFILES},
    report::{incident_files, Report},
};

/// Incidents built at once, at most.
pub const MAX_IN_FLIGHT: usize = 2;
/// The window an incident watches when the request does not say.
pub const DEFAULT_SECONDS: u64 = 60;
/// The longest window an incident may ask for.
pub const MAX_SECONDS: u64 = 600;

/// What an incident request answers: the archive, or a status and one line saying why not.
pub type Answer = Result<Vec<u8>, (StatusCode, String)>;

/// Which process an incident is about: by pid, or by the pod or container it runs in (as
/// the metrics' `pod_uid` and `container_id` say; a container id may be cut short).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    Pid(u32),
    Pod(String),
    Container(String),
}

/// The pid `which` names among the `watched` processes (pid, pod uid, container id): exactly
/// one, or why not (404: none; 409: a pod or container with several node processes).
pub fn resolve(which: &Which, watched: &[(u32, &str, &str)]) -> Result<u32, (StatusCode, String)> {
    let found: Vec<u32> = watched
        .iter()
        .filter(|(pid, pod, container)| match which {
            Which::Pid(p) => pid == p,
            Which::Pod(uid) => !pod.is_empty() && pod == uid,
            Which::Container(id) => !container.is_empty() && container.starts_with(id.as_str()),
        })
        .map(|(pid, _, _)| *pid)
        .collect();
    let what = match which {
        Which::Pid(pid) => format!("pid {pid}"),
        Which::Pod(uid) => format!("pod {uid}"),
        Which::Container(id) => format!("container {id}"),
    };
    match found[..] {
        [pid] => Ok(pid),
        [] => Err((StatusCode::NOT_FOUND, format!("{what} is not watched by this agent (see its log)\n"))),
        _ => Err((
            StatusCode::CONFLICT,
            format!("{what} has {} node processes ({found:?}): ask by pid\n", found.len()),
        )),
    }
}

/// What a request wants.
pub enum Want {
    /// The incident folder of one process.
    Incident(Which),
    /// A profile of every watched process, or of one.
    Profile(&'static ProfileKind, Option<u32>),
}

/// One request, on its way from the HTTP side to the agent's loop.
pub struct Request {
    /// What it wants.
    pub want: Want,
    /// When its window ends.
    pub due: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
}

impl Request {
    /// The one process it is about, if one.
    pub fn pid(&self) -> Option<u32> {
        match self.want {
            Want::Incident(Which::Pid(pid)) => Some(pid),
            Want::Incident(_) => None,
            Want::Profile(_, pid) => pid,
        }
    }
}

/// The profile `/pprof/<name>` serves, if there is one of that name.
pub fn profile_kind(name: &str) -> Option<&'static ProfileKind> {
    PROFILES.iter().find(|k| k.name == name)
}

/// One profile of `reports` (each a report as JSON, with its process's labels),
/// protobuf-encoded and gzipped; `None` when no process has a sample in it yet.
pub fn profile(
    kind: &ProfileKind,
    reports: &[(Vec<(&str, &str)>, &serde_json::Value)],
) -> anyhow::Result<Option<Vec<u8>>> {
    pprof::merged(kind, reports).map(|p| pprof::encode_gz(&p).context("compressing the profile")).transpose()
}

/// Reads `pid=N` (or `pod=UID`, `container=ID`) and `seconds=S` (default [`DEFAULT_SECONDS`],
/// 0 to [`MAX_SECONDS`]) from a query string; the error is the line a 400 answers.
pub fn parse_query(query: Option<&str>) -> Result<(Which, Duration), String> {
    let mut which = None;
    let mut seconds = DEFAULT_SECONDS;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "pid" => {
                let pid = value.parse::<u32>().map_err(|_| format!("pid={value:?} is not a process id"))?;
                which = Some(Which::Pid(pid));
            }
            "pod" | "container" if value.is_empty() => return Err(format!("{key}= names nothing")),
            "pod" => which = Some(Which::Pod(value.to_string())),
            "container" => which = Some(Which::Container(value.to_string())),
            "seconds" => {
                seconds =
                    value.parse().map_err(|_| format!("seconds={value:?} is not a number of seconds"))?;
                if seconds > MAX_SECONDS {
                    return Err(format!("seconds={seconds} is more than {MAX_SECONDS}"));
                }
            }
            _ => {
                return Err(format!(
                    "unknown parameter {key:?} (try pid=N&seconds=S, or pod=UID, container=ID)"
                ))
            }
        }
    }
    let which = which.ok_or("which process? try /incident?pid=N&seconds=60 (or pod=UID, container=ID)")?;
    Ok((which, Duration::from_secs(seconds)))
}

/// The incident folder of `report` as a `.tar.gz` (one directory, `incident-<pid>/`), built in
/// memory: the agent's container has a read-only root filesystem.
pub fn archive(report: &Report, pid: u32) -> anyhow::Result<Vec<u8>> {
    let files = incident_files(report, &live::summary(report))?;
    pack(&format!("incident-{pid}"), &files)
}

/// `files` (name, contents) as a `.tar.gz` under `dir/`.
fn pack(dir: &str, files: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_cksum();
        tar.append_data(&mut header, format!("{dir}/{name}"), &bytes[..])
            .with_context(|| format!("archiving {name}"))?;
    }
    let mut gz = tar.into_inner().context("finishing the archive")?;
    gz.flush().context("compressing the archive")?;
    gz.finish().context("compressing the archive")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_says_which_process_and_how_long() {
        assert_eq!(parse_query(Some("pid=42&seconds=30")), Ok((Which::Pid(42), Duration::from_secs(30))));
        assert_eq!(parse_query(Some("pid=42")), Ok((Which::Pid(42), Duration::from_secs(DEFAULT_SECONDS))));
        assert_eq!(
            parse_query(Some("pod=9f1c&seconds=5")),
            Ok((Which::Pod("9f1c".into()), Duration::from_secs(5)))
        );
        assert!(parse_query(Some("container=")).unwrap_err().contains("names nothing"));
        assert!(parse_query(None).unwrap_err().contains("which process"));
        assert!(parse_query(Some("pid=x")).unwrap_err().contains("not a process id"));
        assert!(parse_query(Some("pid=1&seconds=9999")).unwrap_err().contains("more than 600"));
        assert!(parse_query(Some("node=a")).unwrap_err().contains("unknown parameter"));
    }

    /// A pod or container names its one node process; one with two is ambiguous, one the agent
    /// does not watch is not found, and a container id may be cut short.
    #[test]
    fn a_pod_or_container_names_its_one_process() {
        let watched =
            [(10, "pod-a", "c0ffee11"), (11, "pod-b", "deadbeef"), (12, "pod-b", "feedface"), (13, "", "")];
        assert_eq!(resolve(&Which::Pod("pod-a".into()), &watched), Ok(10));
        assert_eq!(resolve(&Which::Container("deadb".into()), &watched), Ok(11));
        assert_eq!(resolve(&Which::Pid(13), &watched), Ok(13));
        let (status, why) = resolve(&Which::Pod("pod-b".into()), &watched).unwrap_err();
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(why.contains("2 node processes ([11, 12])"), "{why}");
        assert_eq!(resolve(&Which::Pod("".into()), &watched).unwrap_err().0, StatusCode::NOT_FOUND);
        assert_eq!(resolve(&Which::Pid(99), &watched).unwrap_err().0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_folder_packs_under_its_name() {
        let bytes = pack("incident-7", &[("summary.txt".into(), b"hello\n".to_vec())]).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["incident-7/summary.txt"]);
    }
}
