//! The Kubernetes manifests in deploy/kubernetes, checked offline; no eBPF is loaded here.
//!
//! Built-in resources are validated against the Kubernetes OpenAPI schemas bundled in the PyPI
//! package kubernetes-validate (installed by `cargo xtask setup`), in strict mode, so that an
//! unknown or misspelled field fails. The PodMonitor (a CRD, which the validator has no schema
//! for) and the kustomization are checked by shape. YAML is read with the validator's own
//! dependency, PyYAML, so this test adds no crate.

#[path = "common/yaml.rs"]
mod yaml;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;
use yaml::yaml_documents;

/// The Kubernetes versions every built-in resource must validate against: the oldest the
/// manifests target, and the newest the pinned validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.31", "1.37"];

/// Files that are not Kubernetes built-in resources, so are checked by shape instead.
const NOT_BUILT_IN: [&str; 2] = ["kustomization.yaml", "podmonitor.yaml"];

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn manifest(name: &str) -> PathBuf {
    manifests().join(name)
}

/// Every `*.yaml` in deploy/kubernetes, by file name.
fn yaml_files() -> BTreeSet<String> {
    fs::read_dir(manifests())
        .unwrap_or_else(|e| panic!("{}: {e}", manifests().display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect()
}

fn python(args: &[&str]) -> Output {
    Command::new("python3").args(args).output().expect("running python3 (run `cargo xtask setup`)")
}

/// Runs kubernetes-validate; fails the test, saying how to install it, if it is not there.
fn kubernetes_validate(args: &[&str]) -> (bool, String) {
    let version = python(&["-m", "kubernetes_validate", "--version"]);
    assert!(
        version.status.success(),
        "kubernetes-validate is not installed for python3: run `cargo xtask setup`\n{}",
        String::from_utf8_lossy(&version.stderr)
    );
    let mut all = vec!["-m", "kubernetes_validate"];
    all.extend(args);
    let out = python(&all);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Strict validation of `file` against every version in [`KUBERNETES_VERSIONS`].
fn validate_strict(file: &Path) -> (bool, String) {
    let mut args = vec!["--strict"];
    for v in KUBERNETES_VERSIONS {
        args.extend(["-k", v]);
    }
    let file = file.to_str().unwrap();
    args.push(file);
    kubernetes_validate(&args)
}

/// The one document of `file` of kind `kind`.
fn document(file: &str, kind: &str) -> Value {
    let docs: Vec<Value> =
        yaml_documents(&manifest(file)).into_iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(docs.len(), 1, "{file} should hold exactly one {kind}");
    docs.into_iter().next().unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// The agent's one container in the DaemonSet.
fn agent_container(daemonset: &Value) -> &Value {
    let containers = daemonset["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "the DaemonSet runs one container, the agent");
    &containers[0]
}

/// Every built-in resource (Namespace, ServiceAccount, DaemonSet, Service) passes strict schema
/// validation for Kubernetes 1.31 and 1.37: every field exists where it is written, with the
/// right type. Each document must be reported as passed, since the validator only warns, and
/// exits 0, for a kind it has no schema for.
#[test]
fn built_in_resources_validate_strictly_against_the_kubernetes_schemas() {
    let files: Vec<String> =
        yaml_files().into_iter().filter(|f| !NOT_BUILT_IN.contains(&f.as_str())).collect();
    for expected in ["namespace.yaml", "serviceaccount.yaml", "daemonset.yaml", "service.yaml"] {
        assert!(files.iter().any(|f| f == expected), "deploy/kubernetes/{expected} is missing");
    }
    for file in &files {
        let path = manifest(file);
        let (ok, text) = validate_strict(&path);
        assert!(ok, "{file} does not validate:\n{text}");
        assert!(!text.contains("WARN"), "{file}: the validator could not check everything:\n{text}");
        let documents = yaml_documents(&path).len();
        assert!(documents > 0, "{file} holds no resource");
        let passed = text.matches(" passed for resource ").count();
        assert_eq!(
            passed,
            documents * KUBERNETES_VERSIONS.len(),
            "{file}: not every resource was checked:\n{text}"
        );
    }
}

/// The check above can fail: the DaemonSet with `hostPID` misspelled `hostPid` (which a
/// lenient check, and an API server without field validation, would silently drop, leaving
/// the agent blind to other containers' processes) is rejected, naming the field.
#[test]
fn strict_validation_rejects_a_misspelled_field() {
    let original = fs::read_to_string(manifest("daemonset.yaml")).unwrap();
    assert!(original.contains("hostPID: true"), "daemonset.yaml should set hostPID: true");
    let dir = std::env::temp_dir().join(format!("leakprobe-test-deploy-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("daemonset.yaml");
    fs::write(&broken, original.replace("hostPID: true", "hostPid: true")).unwrap();

    let (ok, text) = validate_strict(&broken);
    let _ = fs::remove_dir_all(&dir);
    assert!(!ok, "a misspelled field passed strict validation:\n{text}");
    assert!(text.contains("hostPid"), "the rejection should name the field:\n{text}");
}

/// The DaemonSet gives the agent what it needs and no more: the host PID namespace, all
/// capabilities dropped and a few added back, never privileged mode or privilege escalation.
/// Which capabilities, and that each is needed, is checked by running the agent with them
/// (tests/container.rs); here, that both READMEs explain every one of them and no other.
#[test]
fn daemonset_runs_unprivileged_with_host_pid_and_documented_capabilities() {
    let ds = document("daemonset.yaml", "DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "the agent must see every process of the node");

    let security = &agent_container(&ds)["securityContext"];
    assert_ne!(security["privileged"], true, "the agent must not run privileged");
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(pod["automountServiceAccountToken"], false, "the agent uses no Kubernetes API");

    let add: BTreeSet<&str> = strings(&security["capabilities"]["add"]).into_iter().collect();
    assert!(!add.is_empty(), "the agent needs capabilities");
    for readme in ["README.md", "deploy/README.md"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(readme);
        let text = fs::read_to_string(&path).unwrap();
        // Rows of the capability table: "| `NAME` | why |".
        let documented: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("| `CAP_"))
            .filter_map(|l| l.split_once("` |"))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(documented, add, "{readme}'s capability table and the DaemonSet's capabilities differ");
    }
}

/// The agent is wired to its node and to Prometheus: it runs `agent --metrics 0.0.0.0:9464`,
/// learns its node name from the downward API, and the port named `metrics` (9464) is the one
/// its health probes, the Service and the PodMonitor use.
#[test]
fn metrics_port_lines_up_from_agent_to_service_and_podmonitor() {
    let ds = document("daemonset.yaml", "DaemonSet");
    let container = agent_container(&ds);
    assert_eq!(strings(&container["args"]), ["agent", "--metrics", "0.0.0.0:9464"]);
    let node_name = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "NODE_NAME");
    assert_eq!(node_name.expect("env NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let ports = container["ports"].as_array().unwrap();
    assert!(ports.iter().any(|p| p["name"] == "metrics" && p["containerPort"] == 9464), "{ports:?}");
    // Ready while measuring; alive while serving (a degraded agent is not restarted in a loop).
    for (probe, path) in [("readinessProbe", "/healthz"), ("livenessProbe", "/livez")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];

    let service = document("service.yaml", "Service");
    assert_eq!(service["spec"]["clusterIP"], "None", "the Service is headless: one target per pod");
    assert_eq!(&service["spec"]["selector"], pod_labels);
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(port["port"], 9464);
    assert_eq!(port["targetPort"], "metrics");

    let monitor = document("podmonitor.yaml", "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(&monitor["spec"]["selector"]["matchLabels"], pod_labels);
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], "metrics");
    assert_eq!(endpoints[0]["path"], "/metrics");
    assert_eq!(endpoints[0]["interval"], "15s");
}

/// `kubectl apply -k deploy/kubernetes` gets everything: the kustomization lists every manifest
/// in the folder and nothing that is not there, puts them in namespace `leakprobe` with the
/// `app.kubernetes.io/name: leakprobe` label, and points the DaemonSet's image at the registry.
#[test]
fn kustomization_lists_every_manifest_and_sets_namespace_labels_and_image() {
    let k = document("kustomization.yaml", "Kustomization");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["namespace"], "leakprobe");

    let listed: BTreeSet<String> = strings(&k["resources"]).into_iter().map(String::from).collect();
    for r in &listed {
        assert!(manifest(r).is_file(), "kustomization.yaml lists {r}, which does not exist");
    }
    let mut on_disk = yaml_files();
    on_disk.remove("kustomization.yaml");
    assert_eq!(listed, on_disk, "kustomization.yaml's resources and the manifests on disk differ");

    let labels = k["labels"].as_array().expect("labels");
    assert!(
        labels.iter().any(|l| l["pairs"]["app.kubernetes.io/name"] == "leakprobe"),
        "labels should set app.kubernetes.io/name: leakprobe: {labels:?}"
    );

    let ds = document("daemonset.yaml", "DaemonSet");
    let image = agent_container(&ds)["image"].as_str().unwrap();
    let images = k["images"].as_array().expect("images");
    let rule =
        images.iter().find(|i| i["name"] == image).unwrap_or_else(|| panic!("no images: rule for {image}"));
    assert_eq!(rule["newName"], "ghcr.io/leakprobe/leakprobe");
    assert_eq!(rule["newTag"], "0.1.0");

    // Every resource lands in the leakprobe namespace even without kustomize.
    for file in on_disk {
        for doc in yaml_documents(&manifest(&file)) {
            if doc["kind"] != "Namespace" {
                assert_eq!(doc["metadata"]["namespace"], "leakprobe", "{file}: {}", doc["kind"]);
            }
        }
    }
}
