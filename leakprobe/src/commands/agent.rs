//! `leakprobe agent`: every node process on the host, watched with the default probes, as
//! Prometheus metrics.
//!
//! One loop drives everything: a scan of `/proc` every few seconds attaches to new node
//! processes and drops the sessions of those that exited (which detaches their probes and
//! removes their series); each session's events are read every 100 ms and its memory sampled
//! every interval; every `--judge-every`, each process is judged as a profiling session
//! judges it (what grows at GC troughs, the suspects, the heap census's growing types and
//! their holders, all since the agent attached) and the verdict replaces its verdict series.
//! `/metrics`, `/healthz` and `/incident` ([`incident`]) are served beside it.
//!
//! Nothing degrades silently: each target's probe families are a `leakprobe_probes_up` series,
//! and `/healthz` answers 503 when node processes are there but none has its GC probes.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use regex::Regex;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
};

pub mod health;
pub mod incident;

use self::incident::{Want, Which};

use self::health::{Health, Tally};
use crate::{
    error::Error,
    kernel::privilege,
    kernel::status,
    kernel::table::Family,
    outputs::metrics::{Metrics, TargetLabels, TARGET_LABELS},
    process::cgroup,
    process::discover::{self, Process},
    process::target::Target,
    session::{Options, Session},
};

/// What `leakprobe agent` was asked for.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Where `/metrics` and `/healthz` are served.
    pub metrics: SocketAddr,
    /// Which processes to watch (on `comm` or the command line).
    pub pattern: Regex,
    /// Also follow libc's malloc family in every process.
    pub native: bool,
    /// How often memory is sampled.
    pub interval: Duration,
    /// How often `/proc` is scanned for new processes.
    pub scan_every: Duration,
    /// Most processes watched at once (beyond: logged, counted as attach errors).
    pub max_targets: usize,
    /// How often each process is judged (`None`: `--no-verdict`, memory and GC metrics only).
    pub judge_every: Option<Duration>,
    /// The heap censuses' CPU budget, a share of each process's own CPU time since attach.
    pub census_budget: f64,
    /// The verdict's rolling window ([`Options::window`]).
    pub window: Duration,
}

/// How often each session's events are read.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// One watched process.
struct Watched {
    process: Process,
    labels: TargetLabels,
    session: Session,
    /// Whether its GC probes are attached.
    has_gc: bool,
    /// Its latest full report, as JSON, and when it was built: what `/pprof/<profile>` reads
    /// for [`PROFILE_FRESH`] (a scraper asks for each profile in turn, and Parca and
    /// Pyroscope may both scrape), instead of naming every stack of every process per request.
    profiled: Option<(Instant, serde_json::Value)>,
}

/// How long a process's report serves `/pprof/<profile>` requests.
const PROFILE_FRESH: Duration = Duration::from_secs(30);

impl Watched {
    /// Whether its report for `/pprof` is missing or older than [`PROFILE_FRESH`].
    fn profile_stale(&self) -> bool {
        self.profiled.as_ref().is_none_or(|(at, _)| at.elapsed() >= PROFILE_FRESH)
    }
}

/// Runs until SIGTERM or SIGINT, then detaches from everything and returns.
pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    privilege::check()?;
    let metrics = Arc::new(Mutex::new(Metrics::new()?));
    let health = Arc::new(Mutex::new(Health::Ok));
    let listener = TcpListener::bind(options.metrics)
        .await
        .with_context(|| format!("cannot listen on {} for /metrics", options.metrics))?;
    let local = listener.local_addr().context("reading the metrics address")?;
    let (incidents, mut asked) = mpsc::channel::<incident::Request>(incident::MAX_IN_FLIGHT);
    let served = Served {
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        incidents,
        in_flight: Arc::new(AtomicUsize::new(0)),
    };
    // On the runtime's worker thread: the loop below blocks while it attaches.
    tokio::spawn(serve(listener, served));
    status!("leakprobe agent: serving /metrics and /healthz on http://{local}");

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut scan = tokio::time::interval(options.scan_every);
    let mut poll = tokio::time::interval(POLL_EVERY);
    let mut sample = tokio::time::interval(options.interval);
    // Without the verdict, this never fires (an hour apart, and nothing is judged).
    let mut judge = tokio::time::interval(options.judge_every.unwrap_or(Duration::from_secs(3600)));
    for t in [&mut scan, &mut poll, &mut sample, &mut judge] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let node_name = std::env::var("NODE_NAME").unwrap_or_default();
    let mut watched: HashMap<u32, Watched> = HashMap::new();
    // Processes (pid, start time) that are not node or failed to attach: not retried.
    let mut passed: HashSet<(u32, u64)> = HashSet::new();
    // Node processes (pid, start time) the agent could not attach to, and why: /healthz counts them.
    let mut failed: HashMap<(u32, u64), String> = HashMap::new();
    // Incidents whose window is not over yet.
    let mut pending: Vec<incident::Request> = Vec::new();

    loop {
        tokio::select! {
            _ = scan.tick() => {
                // A process that exited answers its incidents with what was collected.
                let exited: Vec<u32> =
                    watched.iter().filter(|(_, w)| !w.process.alive()).map(|(pid, _)| *pid).collect();
                answer_incidents(&mut pending, &mut watched, |r| r.pid().is_some_and(|p| exited.contains(&p)));
                forget_exited(&mut watched, &metrics);
                // Attaching takes a while (reading node's symbols, loading programs): the
                // metrics stay served meanwhile, from their own thread.
                attach_new(&options, &node_name, &mut watched, &mut passed, &mut failed, &metrics);
                lock(&metrics).set_targets(watched.len());
                let tally = Tally {
                    watched: watched.len(),
                    with_gc: watched.values().filter(|w| w.has_gc).count(),
                    failed: failed.iter().map(|((pid, _), e)| (*pid, e.clone())).collect(),
                };
                let verdict = Health::of(&tally);
                let mut current = lock(&health);
                if *current != verdict {
                    match &verdict {
                        Health::Ok => status!("leakprobe agent: healthy"),
                        Health::Degraded(why) => status!("leakprobe agent: degraded: {why}"),
                    }
                    *current = verdict;
                }
            }
            _ = poll.tick() => {
                let m = lock(&metrics);
                for w in watched.values_mut() {
                    w.session.poll();
                    m.observe_pauses(&w.labels, &w.session.take_pauses());
                }
                drop(m);
                let now = Instant::now();
                answer_incidents(&mut pending, &mut watched, |r| r.due <= now);
            }
            Some(mut request) = asked.recv() => {
                // An incident's process, found by pid, pod or container, is a pid from here on.
                if let Want::Incident(which) = &request.want {
                    let candidates: Vec<(u32, &str, &str)> = watched
                        .iter()
                        .map(|(pid, w)| (*pid, w.labels.pod_uid(), w.labels.container_id()))
                        .collect();
                    match incident::resolve(which, &candidates) {
                        Ok(pid) => request.want = Want::Incident(Which::Pid(pid)),
                        Err(why) => {
                            let _ = request.reply.send(Err(why));
                            continue;
                        }
                    }
                }
                match request.pid().filter(|pid| !watched.contains_key(pid)) {
                    None => pending.push(request),
                    Some(pid) => {
                        let why = format!("pid {pid} is not watched by this agent (see its log)\n");
                        let _ = request.reply.send(Err((StatusCode::NOT_FOUND, why)));
                    }
                }
            }
            _ = sample.tick() => {
                let mut m = lock(&metrics);
                for w in watched.values_mut() {
                    w.session.sample();
                    m.update(&w.labels, &w.session.memory(), w.session.events_read(), &w.session.drops());
                    // A report no scrape will read again is not kept.
                    if w.profile_stale() {
                        w.profiled = None;
                    }
                }
            }
            _ = judge.tick(), if options.judge_every.is_some() => {
                for w in watched.values_mut() {
                    let report = w.session.judge();
                    lock(&metrics).set_verdict(&w.labels, &report);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let n = watched.len();
    // Dropping the sessions detaches their probes and unloads their programs.
    drop(watched);
    status!("leakprobe agent: stopped; detached from {n} processes");
    Ok(())
}

/// Answers the pending incidents `due` picks: each process's incident folder, from what its
/// session collected, as a `.tar.gz`.
fn answer_incidents(
    pending: &mut Vec<incident::Request>,
    watched: &mut HashMap<u32, Watched>,
    due: impl Fn(&incident::Request) -> bool,
) {
    let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(pending).into_iter().partition(|r| due(r));
    *pending = waiting;
    for request in ready {
        let failed = |what: &str, e: anyhow::Error| {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("building {what}: {e:#}\n"))
        };
        let answer = match request.want {
            Want::Incident(Which::Pod(_) | Which::Container(_)) => {
                Err((StatusCode::INTERNAL_SERVER_ERROR, "an incident's process was not resolved\n".into()))
            }
            Want::Incident(Which::Pid(pid)) => match watched.get_mut(&pid) {
                Some(w) => {
                    let answer =
                        incident::archive(&w.session.incident(), pid).map_err(|e| failed("the incident", e));
                    if answer.is_ok() {
                        status!("leakprobe agent: incident of pid {pid} served");
                    }
                    answer
                }
                None => Err((StatusCode::GONE, format!("pid {pid} is no longer watched\n"))),
            },
            Want::Profile(kind, pid) => {
                let mut reports: Vec<(Vec<(&str, &str)>, &serde_json::Value)> = Vec::new();
                for w in watched.values_mut().filter(|w| pid.is_none_or(|p| p == w.process.pid)) {
                    if w.profile_stale() {
                        match serde_json::to_value(w.session.incident()) {
                            Ok(report) => w.profiled = Some((Instant::now(), report)),
                            Err(e) => {
                                status!("leakprobe agent: serializing pid {}'s report: {e}", w.process.pid)
                            }
                        }
                    }
                    let Some((_, report)) = &w.profiled else { continue };
                    let labels = TARGET_LABELS.iter().copied().zip(w.labels.0.iter().map(String::as_str));
                    reports.push((labels.filter(|(_, v)| !v.is_empty()).collect(), report));
                }
                match incident::profile(kind, &reports) {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => Err((StatusCode::NOT_FOUND, format!("no {} samples yet\n", kind.name))),
                    Err(e) => Err(failed("the profile", e)),
                }
            }
        };
        let _ = request.reply.send(answer);
    }
}

/// Drops the sessions of processes that exited, and their series.
fn forget_exited(watched: &mut HashMap<u32, Watched>, metrics: &Mutex<Metrics>) {
    watched.retain(|pid, w| {
        let alive = w.process.alive();
        if !alive {
            lock(metrics).remove(&w.labels);
            status!("leakprobe agent: pid {pid} ({}) exited", w.process.comm);
        }
        alive
    });
}

/// Attaches to node processes not seen before.
fn attach_new(
    options: &AgentOptions,
    node_name: &str,
    watched: &mut HashMap<u32, Watched>,
    passed: &mut HashSet<(u32, u64)>,
    failed: &mut HashMap<(u32, u64), String>,
    metrics: &Mutex<Metrics>,
) {
    // Forget processes that are gone (their pid may come back as another process).
    passed.retain(|(pid, start)| discover::start_time(*pid) == Some(*start));
    failed.retain(|(pid, start), _| discover::start_time(*pid) == Some(*start));
    for process in discover::processes() {
        let key = (process.pid, process.start_time);
        if watched.contains_key(&process.pid) || passed.contains(&key) || !process.matches(&options.pattern) {
            continue;
        }
        passed.insert(key);
        if watched.len() >= options.max_targets {
            lock(metrics).attach_error();
            status!(
                "leakprobe agent: not watching pid {} ({}): already watching --max-targets {}",
                process.pid,
                process.comm,
                options.max_targets
            );
            continue;
        }
        match attach(&process, options) {
            Ok(session) => {
                passed.remove(&key);
                let labels = labels(&process, &session, node_name);
                let families = family_status(&session, options.native);
                lock(metrics).set_probes_up(&labels, &families);
                let has_gc = families.iter().any(|(f, up)| *f == "gc" && *up);
                let missing: Vec<&str> =
                    session.probes().iter().filter(|p| !p.attached).map(|p| p.name).collect();
                let first_error = session.probes().iter().find_map(|p| p.error.as_deref());
                status!(
                    "leakprobe agent: watching pid {} ({}, node {}){}{}",
                    process.pid,
                    process.comm,
                    session.target().node_version.as_deref().unwrap_or("version unknown"),
                    match (missing.is_empty(), first_error) {
                        (true, _) => String::new(),
                        (false, Some(e)) => format!(
                            "; probes missing: {} (first error: {e}{})",
                            missing.join(", "),
                            status::hint(e)
                        ),
                        (false, None) => format!("; probes missing: {}", missing.join(", ")),
                    },
                    match session.external_counter_error() {
                        Some(e) => format!("; node's external-memory counter unreadable: {e}"),
                        None => String::new(),
                    }
                );
                watched.insert(process.pid, Watched { process, labels, session, has_gc, profiled: None });
            }
            Err(e) => {
                lock(metrics).attach_error();
                status!("leakprobe agent: cannot watch pid {} ({}): {e:#}", process.pid, process.comm);
                // A process that is not node (the pattern matched something else) is no
                // failure to measure.
                if !matches!(e.downcast_ref::<Error>(), Some(Error::NotNode { .. })) {
                    failed.insert(key, format!("{e:#}"));
                }
            }
        }
    }
}

fn attach(process: &Process, options: &AgentOptions) -> anyhow::Result<Session> {
    let target = Target::resolve(process.pid)?;
    let judge = options.judge_every.is_some();
    Session::attach(
        target,
        &Options::agent(
            process.pid,
            options.native,
            options.interval,
            judge,
            options.census_budget,
            options.window,
        ),
    )
}

/// Each family the agent attaches, and whether it measures: every probe attached, and for
/// external, node's counter readable (the default view's external bytes come from it).
fn family_status(session: &Session, native: bool) -> Vec<(&'static str, bool)> {
    crate::session::agent_families(native)
        .into_iter()
        .map(|family| {
            let mut up = status::family_attached(session.probes(), family);
            if family == Family::External {
                up &= session.external_counter_error().is_none();
            }
            (status::family_name(family), up)
        })
        .collect()
}

/// The series labels of a process.
fn labels(process: &Process, session: &Session, node_name: &str) -> TargetLabels {
    let placement = cgroup::of_pid(process.pid);
    TargetLabels([
        process.pid.to_string(),
        process.comm.clone(),
        session.target().node_version.clone().unwrap_or_default(),
        placement.pod_uid.unwrap_or_default(),
        placement.container_id.unwrap_or_default(),
        node_name.to_string(),
    ])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the HTTP side shares with the agent's loop.
#[derive(Clone)]
struct Served {
    metrics: Arc<Mutex<Metrics>>,
    health: Arc<Mutex<Health>>,
    /// Incidents asked for, to the loop (which owns the sessions).
    incidents: mpsc::Sender<incident::Request>,
    /// Incidents being built.
    in_flight: Arc<AtomicUsize>,
}

/// Serves `/metrics`, `/healthz`, `/livez` and `/incident` until the process ends.
async fn serve(listener: TcpListener, served: Served) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let served = served.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let served = served.clone();
                async move {
                    let (path, query) = (req.uri().path(), req.uri().query());
                    let response = match path.strip_prefix("/pprof/") {
                        _ if path == "/incident" => match incident::parse_query(query) {
                            Ok((which, window)) => ask(&served, Want::Incident(which), window).await,
                            Err(why) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{why}\n")),
                        },
                        Some(name) => match (incident::profile_kind(name), profile_pid(query)) {
                            (Some(kind), Ok(pid)) => ask(&served, Want::Profile(kind, pid), Duration::ZERO).await,
                            (None, _) => text(StatusCode::NOT_FOUND, "text/plain", format!("no profile {name:?}: try allocated, outstanding, gc-triggers or heap-samples\n")),
                            (_, Err(why)) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{why}\n")),
                        },
                        None => respond(path, &served.metrics, &served.health),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Counts one incident in flight for as long as it lives (also when its client goes away).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `/pprof/<name>`'s optional `pid=N`.
fn profile_pid(query: Option<&str>) -> Result<Option<u32>, String> {
    match query.unwrap_or_default().split('&').find_map(|p| p.strip_prefix("pid=")) {
        Some(v) => v.parse().map(Some).map_err(|_| format!("pid={v:?} is not a process id")),
        None => Ok(None),
    }
}

/// Hands `want` to the agent's loop and answers what it built once `window` is over: the
/// incident folder as a `.tar.gz`, or a gzipped pprof profile; 404 for a process not watched,
/// 429 when [`incident::MAX_IN_FLIGHT`] are being built.
async fn ask(served: &Served, want: Want, window: Duration) -> Response<Full<Bytes>> {
    let pid = match want {
        Want::Incident(Which::Pid(pid)) => Some(pid),
        _ => None,
    };
    let _guard = InFlight(Arc::clone(&served.in_flight));
    if served.in_flight.fetch_add(1, Ordering::SeqCst) >= incident::MAX_IN_FLIGHT {
        let why = format!("{} incidents are being built already: try again later\n", incident::MAX_IN_FLIGHT);
        return text(StatusCode::TOO_MANY_REQUESTS, "text/plain", why);
    }
    let (reply, answer) = oneshot::channel();
    let request = incident::Request { want, due: Instant::now() + window, reply };
    let stopping = (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n".to_string());
    let answer = match served.incidents.send(request).await {
        Ok(()) => answer.await.unwrap_or(Err(stopping)),
        Err(_) => Err(stopping),
    };
    match answer {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            let headers = response.headers_mut();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/gzip"),
            );
            let name = pid.map(|pid| format!("attachment; filename=\"leakprobe-incident-{pid}.tar.gz\""));
            if let Some(v) = name.and_then(|n| n.parse().ok()) {
                headers.insert(hyper::header::CONTENT_DISPOSITION, v);
            }
            response
        }
        Err((status, why)) => text(status, "text/plain", why),
    }
}

/// A response of `body` with `status`.
fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// `/healthz`: 200 `ok`, or 503 `degraded: why` (see [`Health::of`]); `/livez`: 200 while
/// the agent serves.
fn respond(path: &str, metrics: &Mutex<Metrics>, health: &Mutex<Health>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", lock(metrics).encode()),
        "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/healthz" => match &*lock(health) {
            Health::Ok => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Health::Degraded(why) => {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("degraded: {why}\n"))
            }
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "leakprobe agent: try /metrics, /healthz, /livez or /incident?pid=N&seconds=60\n".to_string(),
        ),
    };
    text(status, content_type, body)
}
