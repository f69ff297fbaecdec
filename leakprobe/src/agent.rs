//! `leakprobe agent`: every node process on the host, watched with the default probes, as
//! Prometheus metrics.
//!
//! One loop drives everything: a scan of `/proc` every few seconds attaches to new node
//! processes and drops the sessions of those that exited (which detaches their probes and
//! removes their series); each session's events are read every 100 ms and its memory sampled
//! every interval. `/metrics` and `/healthz` are served beside it.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use regex::Regex;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
};

use crate::{
    cgroup,
    discover::{self, Process},
    metrics::{Metrics, TargetLabels},
    privilege,
    session::{Options, Session},
    target::Target,
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
}

/// How often each session's events are read.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// One watched process.
struct Watched {
    process: Process,
    labels: TargetLabels,
    session: Session,
}

/// Runs until SIGTERM or SIGINT, then detaches from everything and returns.
pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    privilege::check()?;
    let metrics = Arc::new(Mutex::new(Metrics::new()?));
    let listener = TcpListener::bind(options.metrics)
        .await
        .with_context(|| format!("cannot listen on {} for /metrics", options.metrics))?;
    let local = listener.local_addr().context("reading the metrics address")?;
    // On the runtime's worker thread: the loop below blocks while it attaches.
    tokio::spawn(serve(listener, Arc::clone(&metrics)));
    status!("leakprobe agent: serving /metrics and /healthz on http://{local}");

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut scan = tokio::time::interval(options.scan_every);
    let mut poll = tokio::time::interval(POLL_EVERY);
    let mut sample = tokio::time::interval(options.interval);
    for t in [&mut scan, &mut poll, &mut sample] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let node_name = std::env::var("NODE_NAME").unwrap_or_default();
    let mut watched: HashMap<u32, Watched> = HashMap::new();
    // Processes (pid, start time) that are not node or failed to attach: not retried.
    let mut passed: HashSet<(u32, u64)> = HashSet::new();

    loop {
        tokio::select! {
            _ = scan.tick() => {
                forget_exited(&mut watched, &metrics);
                // Attaching takes a while (reading node's symbols, loading programs): the
                // metrics stay served meanwhile, from their own thread.
                attach_new(&options, &node_name, &mut watched, &mut passed, &metrics);
                lock(&metrics).set_targets(watched.len());
            }
            _ = poll.tick() => {
                let m = lock(&metrics);
                for w in watched.values_mut() {
                    w.session.poll();
                    m.observe_pauses(&w.labels, &w.session.take_pauses());
                }
            }
            _ = sample.tick() => {
                let mut m = lock(&metrics);
                for w in watched.values_mut() {
                    w.session.sample();
                    m.update(&w.labels, &w.session.memory(), w.session.events_read(), &w.session.drops());
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
    metrics: &Mutex<Metrics>,
) {
    // Forget processes that are gone (their pid may come back as another process).
    passed.retain(|(pid, start)| discover::start_time(*pid) == Some(*start));
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
                let missing: Vec<&str> =
                    session.probes().iter().filter(|p| !p.attached).map(|p| p.name).collect();
                status!(
                    "leakprobe agent: watching pid {} ({}, node {}){}",
                    process.pid,
                    process.comm,
                    session.target().node_version.as_deref().unwrap_or("version unknown"),
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!("; probes missing: {}", missing.join(", "))
                    }
                );
                watched.insert(process.pid, Watched { process, labels, session });
            }
            Err(e) => {
                lock(metrics).attach_error();
                status!("leakprobe agent: cannot watch pid {} ({}): {e:#}", process.pid, process.comm);
            }
        }
    }
}

fn attach(process: &Process, options: &AgentOptions) -> anyhow::Result<Session> {
    let target = Target::resolve(process.pid)?;
    Session::attach(target, &Options::fleet(process.pid, options.native, options.interval))
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

fn lock(m: &Mutex<Metrics>) -> std::sync::MutexGuard<'_, Metrics> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves `/metrics` and `/healthz` until the process ends.
async fn serve(listener: TcpListener, metrics: Arc<Mutex<Metrics>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(req.uri().path(), &metrics)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond(path: &str, metrics: &Mutex<Metrics>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", lock(metrics).encode()),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "leakprobe agent: try /metrics or /healthz\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}
