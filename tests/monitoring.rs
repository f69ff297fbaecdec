//! The alert rules and the Grafana dashboard in deploy/monitoring, checked with Prometheus's own
//! tools; no eBPF is loaded here.
//!
//! - `promtool check rules` on the PrometheusRule's rule group, and `promtool test rules` with
//!   `leakprobe-rules.test.yaml`, which makes every alert fire and shows it quiet on a healthy
//!   process. Each alert is then broken two ways (never true, and its threshold removed) to show
//!   that the unit tests notice.
//! - `recorded.om`, an hour of series shaped like the agent's exposition, is checked against
//!   what [`Metrics`] really encodes (names, types, label names, the values of `area`, `kind`,
//!   `family`, `reason` and `le`), then backfilled into a real Prometheus (`promtool tsdb
//!   create-blocks-from openmetrics`) that also loads the rules. Every panel of the dashboard must
//!   return data over that hour, and every rule must load and evaluate.
//!
//! promtool and prometheus come from Debian's `prometheus` package, which `cargo xtask setup`
//! installs. YAML is read with PyYAML, as in tests/deploy.rs, so this test adds no crate.

#[path = "common/yaml.rs"]
mod yaml;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use leakprobe::{
    memory::{
        gc::GcKind,
        rss::{MemoryReport, Rss, Sample},
    },
    outputs::metrics::{Metrics, TargetLabels, FAMILIES},
};
use leakprobe_ebpf::drops::DropReason;
use serde_json::Value;
use yaml::yaml_documents;

/// The rule group promtool reads, written from the PrometheusRule's `spec`; the name
/// `leakprobe-rules.test.yaml` gives in its `rule_files`.
const RULE_GROUP_FILE: &str = "leakprobe.rules.yaml";

/// Labels Prometheus adds to every scraped series (the agent does not export them).
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

/// Labels whose values come from fixed sets in the agent.
const ENUMERATED_LABELS: [&str; 5] = ["area", "kind", "family", "reason", "le"];

/// The processes of `recorded.om`: one that leaks (V8 heap growing about 48 KiB/s, mark-compacts
/// slowing down from 60 to 250 ms, its external probes down, events lost around minute 40) and a
/// healthy one.
const LEAKING_PID: &str = "24310";
const HEALTHY_PID: &str = "1873";

/// A file of deploy/monitoring.
fn monitoring(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring").join(name)
}

/// A program on `PATH`; fails the test, saying how to install it, if it is not there.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (not on PATH): run `cargo xtask setup`, which installs Debian's \
                 prometheus package (prometheus and promtool)"
            )
        })
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// An empty directory named after `tag` and this test process.
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("leakprobe-test-monitoring-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }

    /// A path in it.
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The PrometheusRule of leakprobe-rules.yaml.
fn prometheus_rule() -> Value {
    let docs = yaml_documents(&monitoring("leakprobe-rules.yaml"));
    assert_eq!(docs.len(), 1, "leakprobe-rules.yaml should hold one document, the PrometheusRule");
    docs.into_iter().next().unwrap()
}

/// The alerting rules of the PrometheusRule's groups.
fn alerts(spec: &Value) -> Vec<&Value> {
    spec["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

/// Writes a rule group (JSON is YAML) where promtool will look for it.
fn write_rule_group(dir: &Scratch, spec: &Value) -> PathBuf {
    let path = dir.join(RULE_GROUP_FILE);
    fs::write(&path, serde_json::to_string_pretty(spec).unwrap()).unwrap();
    path
}

/// Runs promtool; whether it succeeded, and what it printed.
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(tool("promtool")).args(args).output().expect("running promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `promtool test rules` on the unit tests, against `spec` as the rule group.
fn unit_test(spec: &Value) -> (bool, String) {
    let dir = Scratch::new("unit");
    write_rule_group(&dir, spec);
    let tests = dir.join("leakprobe-rules.test.yaml");
    fs::copy(monitoring("leakprobe-rules.test.yaml"), &tests).unwrap();
    promtool(&["test", "rules", tests.to_str().unwrap()])
}

/// One sample line of the Prometheus text format or OpenMetrics: name, labels, value and the
/// timestamp, if any.
#[derive(Debug)]
struct Line {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
    timestamp: Option<f64>,
}

/// Fails the test on a line that is not a sample.
fn malformed<T>(line: &str) -> T {
    panic!("not a sample line: {line:?}")
}

/// Parses a sample line (label values without escapes other than `\"` and `\\`).
fn parse_line(line: &str) -> Line {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| malformed(line));
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next().unwrap_or_else(|| malformed(line));
            match c {
                '}' => break,
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next().unwrap_or_else(|| malformed(line));
                        match c {
                            '"' => break,
                            '\\' => value.push(chars.next().unwrap_or_else(|| malformed(line)).1),
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        let end = chars.next().map_or(inner.len(), |(i, _)| i);
        rest = &inner[end..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| malformed(line));
    let timestamp = fields.next().map(|t| t.parse().unwrap_or_else(|_| malformed(line)));
    Line { name, labels, value, timestamp }
}

/// An exposition: `# TYPE`s by sample-family name, and the sample lines.
struct Exposition {
    types: BTreeMap<String, String>,
    lines: Vec<Line>,
}

/// Parses the Prometheus text format or OpenMetrics.
fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') {
            lines.push(parse_line(line));
        }
    }
    Exposition { types, lines }
}

/// What the agent's [`Metrics`] encode with every family populated: every GC kind, every memory
/// area (a process with `--native`), every probe family, every drop reason.
fn real_exposition() -> Exposition {
    let mut metrics = Metrics::new().expect("creating the agent's metrics");
    let labels = TargetLabels(
        ["4242", "node", "v22.11.0", "7c1e0b52-9d4f-4a51-8a43-2f0e6b1d9a10", "3f9a1c2e", "worker-1"]
            .map(String::from),
    );
    let pauses: Vec<(GcKind, f64)> = GcKind::ALL.iter().map(|k| (*k, 0.002)).collect();
    metrics.observe_pauses(&labels, &pauses);
    let families: Vec<(&str, bool)> = FAMILIES.iter().map(|f| (*f, true)).collect();
    metrics.set_probes_up(&labels, &families);
    let sample = |t_s: f64, mib: u64| Sample {
        trough: None,
        t_s,
        rss: Rss { rss_bytes: (200 + mib) << 20, rss_file_bytes: 40 << 20, ..Rss::default() },
        v8_heap_bytes: Some(mib << 20),
        v8_old_generation_bytes: None,
        v8_worker_heaps_bytes: None,
        external_bytes: Some(10 << 20),
        native_bytes: Some(5 << 20),
    };
    let memory = MemoryReport::new(&[sample(0.0, 50), sample(5.0, 51)]);
    let drops: BTreeMap<&'static str, u64> = DropReason::ALL.iter().map(|r| (r.name(), 1)).collect();
    metrics.update(&labels, &memory, 100, &drops);
    metrics.attach_error();
    metrics.set_targets(1);
    parse_exposition(&metrics.encode())
}

/// The label names of `line` without the scrape's.
fn agent_label_names(line: &Line) -> BTreeSet<&str> {
    line.labels.keys().map(String::as_str).filter(|k| !SCRAPE_LABELS.contains(k)).collect()
}

/// Every `leakprobe_*` metric name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("leakprobe_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The PrometheusRule is one valid rule group (`promtool check rules`) of alerts on metrics the
/// agent exports, each with a severity and a summary and description that say what to run next.
/// A broken expression is rejected, so the check can fail.
#[test]
fn rules_are_a_valid_rule_group_of_actionable_alerts_on_the_agents_metrics() {
    let rule = prometheus_rule();
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "leakprobe", "beside the agent (deploy/kubernetes)");
    let spec = &rule["spec"];

    let dir = Scratch::new("check");
    let file = write_rule_group(&dir, spec);
    let (ok, text) = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(ok, "promtool check rules rejects the PrometheusRule's spec:\n{text}");
    let n = alerts(spec).len();
    assert!(text.contains(&format!("SUCCESS: {n} rules found")), "{text}");

    let exported: BTreeSet<String> = real_exposition().lines.into_iter().map(|l| l.name).collect();
    let mut names = BTreeSet::new();
    for alert in alerts(spec) {
        let name = alert["alert"].as_str().unwrap_or_else(|| panic!("a rule that is not an alert: {alert}"));
        assert!(names.insert(name), "alert {name} twice");
        let expr = alert["expr"].as_str().unwrap();
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{name}: no leakprobe metric in {expr}");
        for metric in &used {
            assert!(exported.contains(metric), "{name}: the agent exports no {metric} ({expr})");
        }
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["info", "warning", "critical"].contains(&severity), "{name}: severity {severity:?}");
        let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
        let description = alert["annotations"]["description"].as_str().unwrap_or_default();
        assert!(!summary.is_empty(), "{name}: no summary");
        assert!(
            description.contains("sudo leakprobe ") && description.contains("--pid "),
            "{name}: the description should say which leakprobe command to run next: {description}"
        );
    }
    for wanted in
        ["LeakprobeV8HeapGrowing", "LeakprobeGcPauseP99High", "LeakprobeProbesDown", "LeakprobeEventsDropped"]
    {
        assert!(names.contains(wanted), "no alert {wanted}: {names:?}");
    }

    let mut broken = spec.clone();
    broken["groups"][0]["rules"][0]["expr"] = "rate(leakprobe_drops_total[10m]".into();
    write_rule_group(&dir, &broken);
    let (ok, text) = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(!ok, "promtool check rules accepted an unbalanced expression:\n{text}");
}

/// `promtool test rules`: every alert fires on the series of a process that misbehaves (with its
/// labels and annotations as written in the test file) and stays quiet on a healthy one. Then,
/// alert by alert, an expression that is never true, and one without its threshold (true for
/// every process), must each fail the unit tests, naming the alert: each alert's firing case and
/// its quiet case are both tested.
#[test]
fn every_alert_fires_on_a_misbehaving_process_and_not_on_a_healthy_one() {
    let spec = prometheus_rule()["spec"].clone();
    let (ok, text) = unit_test(&spec);
    assert!(ok && text.contains("SUCCESS"), "promtool test rules failed:\n{text}");

    for (i, alert) in alerts(&spec).iter().enumerate() {
        let name = alert["alert"].as_str().unwrap();
        let expr = alert["expr"].as_str().unwrap();
        let cut = expr.rfind(" > ").or_else(|| expr.rfind(" == "));
        let cut = cut.unwrap_or_else(|| panic!("{name}: expected `... > N` or `... == N`: {expr}"));
        let never = format!("({expr}) unless on() vector(1)");
        for (how, mutated) in [("never true", never), ("without its threshold", expr[..cut].to_string())] {
            let mut broken = spec.clone();
            broken["groups"][0]["rules"][i]["expr"] = mutated.clone().into();
            let (ok, text) = unit_test(&broken);
            assert!(!ok, "the unit tests still pass with {name}'s expression {how} ({mutated})\n{text}");
            assert!(
                text.contains(&format!("alertname: {name},")),
                "with {name}'s expression {how}, promtool should report {name}:\n{text}"
            );
        }
    }
}

/// `recorded.om` holds what the agent exports: every family's name and type, and every series'
/// label names (plus the scrape's `instance` and `job`), are those [`Metrics`] encode; `area`,
/// `kind`, `family`, `reason` and `le` take only values the agent gives them; each histogram
/// sample has every bucket; counters never go down; and it spans most of an hour.
#[test]
fn recorded_series_are_shaped_like_the_agents_exposition() {
    let real = real_exposition();
    let mut real_labels: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut real_values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in &real.lines {
        let names = agent_label_names(line);
        let known = real_labels.entry(&line.name).or_insert_with(|| names.clone());
        assert_eq!(*known, names, "the agent's own {} series differ in labels", line.name);
        for label in ENUMERATED_LABELS {
            if let Some(v) = line.labels.get(label) {
                real_values.entry(label).or_default().insert(v);
            }
        }
    }
    let buckets = &real_values["le"];

    let text = fs::read_to_string(monitoring("recorded.om")).unwrap();
    assert_eq!(text.lines().last(), Some("# EOF"), "OpenMetrics ends with # EOF");
    let recorded = parse_exposition(&text);
    for (family, kind) in &recorded.types {
        // OpenMetrics names a counter's family without `_total`; the text format with it.
        let exposed = if kind == "counter" { format!("{family}_total") } else { family.clone() };
        assert_eq!(real.types.get(&exposed), Some(kind), "recorded.om: # TYPE {family} {kind}");
    }
    let mut histograms: BTreeMap<(String, BTreeMap<String, String>, u64), BTreeSet<String>> = BTreeMap::new();
    let mut counters: BTreeMap<(String, BTreeMap<String, String>), f64> = BTreeMap::new();
    let (mut first, mut last) = (f64::MAX, f64::MIN);
    let mut pids = BTreeSet::new();
    for line in &recorded.lines {
        let wanted = real_labels
            .get(line.name.as_str())
            .unwrap_or_else(|| panic!("the agent exports no {}", line.name));
        assert_eq!(&agent_label_names(line), wanted, "recorded.om: {line:?}");
        for label in SCRAPE_LABELS {
            assert!(line.labels.contains_key(label), "recorded.om: no {label} on {line:?}");
        }
        for label in ENUMERATED_LABELS {
            if let Some(v) = line.labels.get(label) {
                assert!(
                    real_values[label].contains(v.as_str()),
                    "recorded.om: the agent never sets {label}={v:?}"
                );
            }
        }
        let t = line.timestamp.unwrap_or_else(|| panic!("recorded.om: no timestamp on {line:?}"));
        (first, last) = (first.min(t), last.max(t));
        pids.extend(line.labels.get("pid").cloned());
        if let Some(le) = line.labels.get("le") {
            let mut series = line.labels.clone();
            series.remove("le");
            histograms.entry((line.name.clone(), series, t as u64)).or_default().insert(le.clone());
        }
        if line.name.ends_with("_total") || line.name.ends_with("_count") || line.name.ends_with("_bucket") {
            let previous = counters.insert((line.name.clone(), line.labels.clone()), line.value);
            assert!(previous.is_none_or(|p| p <= line.value), "recorded.om: a counter goes down at {line:?}");
        }
    }
    assert!(!histograms.is_empty(), "recorded.om has no GC pause histogram");
    for ((name, series, t), les) in &histograms {
        let les: BTreeSet<&str> = les.iter().map(String::as_str).collect();
        assert_eq!(&les, buckets, "recorded.om: {name} {series:?} at {t} lacks buckets");
    }
    assert!(last - first >= 50.0 * 60.0, "recorded.om spans {} s, not most of an hour", last - first);
    assert_eq!(pids, BTreeSet::from([HEALTHY_PID.to_string(), LEAKING_PID.to_string()]));
}

/// A Prometheus server on a scratch TSDB, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Starts prometheus on `tsdb` with `config`, and waits until it is ready.
    fn start(config: &Path, tsdb: &Path, log: PathBuf) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            // The recorded hour is in the past: keep it whatever today's date.
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting prometheus");
        let mut server = Prometheus { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.get("/-/ready").is_none_or(|b| !b.contains("Ready")) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", server.log());
            }
            assert!(Instant::now() < deadline, "prometheus not ready after 60 s:\n{}", server.log());
            thread::sleep(Duration::from_millis(250));
        }
        server
    }

    /// What prometheus printed.
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` with URL-encoded `params`, with curl.
    fn curl(&self, path: &str, params: &[(&str, &str)]) -> std::process::Output {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "30", "-G", &format!("http://127.0.0.1:{}{path}", self.port)]);
        for (k, v) in params {
            curl.args(["--data-urlencode", &format!("{k}={v}")]);
        }
        curl.output().expect("running curl (run `cargo xtask setup`)")
    }

    /// GET `path`; the body, or None if the request failed.
    fn get(&self, path: &str) -> Option<String> {
        let out = self.curl(path, &[]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An API call's `data`; fails the test with Prometheus's error if it did not succeed.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let out = self.curl(path, params);
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{path} {params:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        });
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every query target of the dashboard's panels (rows' nested panels included): panel title,
/// target.
fn dashboard_targets(panels: &Value, out: &mut Vec<(String, Value)>) {
    for panel in panels.as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            dashboard_targets(&panel["panels"], out);
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?}: not on the datasource variable"
        );
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for target in targets {
            out.push((title.clone(), target.clone()));
        }
    }
}

/// `expr` with Grafana's variables replaced as Grafana would over `range_s` seconds of series
/// `step_s` apart, and the dashboard's own variables by their "All" value.
fn substitute(expr: &str, variables: &BTreeMap<String, String>, step_s: u64, range_s: u64) -> String {
    let mut expr = expr
        .replace("$__rate_interval", &format!("{}s", 4 * step_s))
        .replace("$__interval", &format!("{step_s}s"))
        .replace("$__range", &format!("{range_s}s"));
    for (name, value) in variables {
        expr = expr.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    assert!(!expr.contains('$'), "a variable the dashboard does not define: {expr}");
    expr
}

/// Whether a query_range result has at least one series with a number (not NaN) in it.
fn has_data(data: &Value) -> bool {
    data["result"].as_array().is_some_and(|series| {
        series.iter().any(|s| {
            s["values"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|p| p[1].as_str().and_then(|x| x.parse::<f64>().ok()).is_some_and(|x| !x.is_nan()))
            })
        })
    })
}

/// A real Prometheus, with `recorded.om` backfilled into its TSDB and the rule group loaded:
/// every dashboard panel's query evaluates over the recorded hour and returns data; the
/// dashboard's variable queries find values; every rule loads and evaluates (health `ok`); and
/// on the recorded hour, the alerts' expressions pick the leaking process (V8 heap growth, GC
/// pauses, probes down, events lost) or the agent whose attach error it holds, never the healthy
/// process.
#[test]
fn dashboard_panels_and_rules_work_on_recorded_series_in_a_real_prometheus() {
    // Before anything else, so that a missing tool is what the failure says.
    tool("promtool");
    tool("prometheus");
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(monitoring("grafana-dashboard.json")).unwrap())
            .expect("grafana-dashboard.json is not JSON");
    assert!(dashboard["schemaVersion"].as_u64() >= Some(36), "schemaVersion: {}", dashboard["schemaVersion"]);
    let templating = dashboard["templating"]["list"].as_array().expect("templating.list");
    let datasource = templating.iter().find(|v| v["name"] == "datasource").expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let mut variables = BTreeMap::new();
    let mut variable_queries = Vec::new();
    for v in templating.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap().to_string();
        assert_eq!(v["includeAll"], true, "variable {name}");
        variables.insert(name.clone(), v["allValue"].as_str().unwrap_or(".*").to_string());
        let query = v["query"]["query"].as_str().or_else(|| v["query"].as_str()).unwrap().to_string();
        variable_queries.push((name, query));
    }

    let recorded = parse_exposition(&fs::read_to_string(monitoring("recorded.om")).unwrap());
    let mut times: Vec<u64> = recorded.lines.iter().filter_map(|l| l.timestamp).map(|t| t as u64).collect();
    times.sort_unstable();
    times.dedup();
    let (start, end) = (times[0], *times.last().unwrap());
    let step = times.windows(2).map(|w| w[1] - w[0]).min().expect("more than one timestamp");

    let dir = Scratch::new("prometheus");
    let tsdb = dir.join("tsdb");
    let (ok, text) = promtool(&[
        "tsdb",
        "create-blocks-from",
        "openmetrics",
        monitoring("recorded.om").to_str().unwrap(),
        tsdb.to_str().unwrap(),
    ]);
    assert!(ok, "promtool could not backfill recorded.om:\n{text}");
    let spec = prometheus_rule()["spec"].clone();
    let rules = write_rule_group(&dir, &spec);
    let config = dir.join("prometheus.yml");
    fs::write(&config, format!("global:\n  evaluation_interval: 1s\nrule_files:\n  - {}\n", rules.display()))
        .unwrap();
    let prometheus = Prometheus::start(&config, &tsdb, dir.join("prometheus.log"));

    // The rules: all loaded, all evaluated without error.
    let wanted: BTreeSet<&str> = alerts(&spec).iter().map(|a| a["alert"].as_str().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let data = prometheus.api("/api/v1/rules", &[]);
        let loaded: Vec<&Value> =
            data["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
        let names: BTreeSet<&str> = loaded.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, wanted, "the rules Prometheus loaded");
        for r in &loaded {
            assert_ne!(r["health"], "err", "rule {} fails: {}", r["name"], r["lastError"]);
        }
        if loaded.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "rules not evaluated after 30 s: {data}");
        thread::sleep(Duration::from_millis(250));
    }

    let range = |expr: &str| {
        let (start, end, step) = (start.to_string(), end.to_string(), step.to_string());
        prometheus
            .api("/api/v1/query_range", &[("query", expr), ("start", &start), ("end", &end), ("step", &step)])
    };

    // Every panel: valid PromQL, with data over the recorded hour.
    let mut targets = Vec::new();
    dashboard_targets(&dashboard["panels"], &mut targets);
    assert!(targets.len() >= 8, "the dashboard has {} queries", targets.len());
    for (title, target) in &targets {
        let expr =
            target["expr"].as_str().unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
        let query = substitute(expr, &variables, step, end - start);
        let data = range(&query);
        assert!(has_data(&data), "panel {title:?}: no data over the recorded hour for {query}: {data}");
    }
    // Every variable: `label_values(SELECTOR, LABEL)` finds values.
    for (name, query) in &variable_queries {
        let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')'));
        let (selector, label) =
            inner.and_then(|q| q.rsplit_once(',')).unwrap_or_else(|| panic!("variable {name}: {query}"));
        let selector = substitute(selector.trim(), &variables, step, end - start);
        let (start, end) = (start.to_string(), end.to_string());
        let values = prometheus.api(
            &format!("/api/v1/label/{}/values", label.trim()),
            &[("match[]", &selector), ("start", &start), ("end", &end)],
        );
        assert!(values.as_array().is_some_and(|v| !v.is_empty()), "variable {name}: no values for {query}");
    }

    // The alerts' expressions on the recorded hour.
    let expected: [(&str, &str, &[&str]); 6] = [
        ("LeakprobeV8HeapGrowing", "pid", &[LEAKING_PID]),
        ("LeakprobeExternalMemoryGrowing", "pid", &[]),
        ("LeakprobeGcPauseP99High", "pid", &[LEAKING_PID]),
        ("LeakprobeProbesDown", "pid", &[LEAKING_PID]),
        ("LeakprobeEventsDropped", "pid", &[LEAKING_PID]),
        ("LeakprobeAttachErrors", "instance", &["10.0.1.5:9464"]),
    ];
    assert_eq!(
        expected.iter().map(|e| e.0).collect::<BTreeSet<_>>(),
        wanted,
        "an alert this test does not cover"
    );
    for (name, label, picked) in expected {
        let alert = alerts(&spec).into_iter().find(|a| a["alert"] == name).unwrap();
        let data = range(alert["expr"].as_str().unwrap());
        let got: BTreeSet<&str> =
            data["result"].as_array().unwrap().iter().filter_map(|s| s["metric"][label].as_str()).collect();
        assert_eq!(got, picked.iter().copied().collect(), "{name} over the recorded hour");
        assert!(!got.contains(HEALTHY_PID));
    }
    drop(prometheus);
}
