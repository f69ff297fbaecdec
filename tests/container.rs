//! The agent run the way deploy/kubernetes/daemonset.yaml runs it, from the image.
//!
//! Everything the pod gets is read from the manifest, not copied here: the container's command
//! and arguments, its environment, `hostPID`, `readOnlyRootFilesystem`, `allowPrivilegeEscalation`,
//! `runAsUser`, the capabilities it adds, and its volumes. The root filesystem is the image's,
//! `localhost/leakprobe:test`, which `cargo xtask test` builds first (`cargo xtask image
//! --debug`), mounted with buildah.
//!
//! `podman run` cannot start containers on this machine (its cgroup v1 layout, with crun and runc
//! alike), so the test does what the runtime would: new mount, UTS and IPC namespaces
//! (`unshare`), the host's PID namespace (hostPID), a fresh /proc and /sys, the manifest's host
//! paths bound where it mounts them (read-only where it says so), the image's root filesystem
//! bound read-only, `chroot` into it, and `setpriv` with exactly the manifest's capabilities and
//! no-new-privs. The pod's network namespace is left out, so that /metrics is reached on
//! loopback; the test changes the metrics port and adds `--match` (its own processes only) and
//! quicker scans to the manifest's arguments, and nothing else.
//!
//! Two node processes are watched: one on the host, as root, and one in its own mount and PID
//! namespaces, as another user, in a kubelet-style pod cgroup, started from a path that exists
//! only in its mount namespace: the container paths (`/proc/PID/root`, cgroup labels) are
//! exercised. Then each capability is left out in turn, and the agent must say so: an error, a
//! 503 `/healthz`, or a `leakprobe_probes_up` series at 0.

mod common;

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// The image tests run the agent from (built by `cargo xtask image --debug`).
const IMAGE: &str = "localhost/leakprobe:test";

/// The pod's node name, which the manifest takes from the downward API.
const NODE_NAME: &str = "container-test-node";

/// The uid of the namespaced node process (nobody): another user than the agent.
const OTHER_UID: &str = "65534";

/// What the DaemonSet gives its container.
#[derive(Debug)]
struct Pod {
    /// `command` then `args`.
    argv: Vec<String>,
    /// Environment: plain values, and `fieldRef: spec.nodeName` as [`NODE_NAME`].
    env: Vec<(String, String)>,
    host_pid: bool,
    read_only_root: bool,
    no_new_privs: bool,
    run_as_user: u64,
    /// `capabilities.add`, as the manifest spells them (`SYS_ADMIN`).
    capabilities: Vec<String>,
    /// Host paths and where they are mounted, and whether read-only.
    mounts: Vec<(PathBuf, PathBuf, bool)>,
}

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml")
}

/// The DaemonSet, parsed by PyYAML (which `cargo xtask setup` installs with kubernetes-validate).
fn daemonset() -> Value {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get('kind') == 'DaemonSet']\n\
                  json.dump(docs, sys.stdout)";
    let out = Command::new("python3").args(["-c", script]).arg(manifest()).output().expect("running python3");
    assert!(out.status.success(), "reading the DaemonSet: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(docs.len(), 1, "daemonset.yaml holds one DaemonSet");
    docs.into_iter().next().unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect()).unwrap_or_default()
}

impl Pod {
    fn from_manifest() -> Pod {
        let ds = daemonset();
        let spec = &ds["spec"]["template"]["spec"];
        let containers = spec["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        let security = &c["securityContext"];
        assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"], "the test starts from no capability");
        let mut argv = strings(&c["command"]);
        argv.extend(strings(&c["args"]));
        let env = c["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        let name = e["name"].as_str().unwrap().to_string();
                        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                            (Value::String(v), _) => v.clone(),
                            (_, Value::String(f)) if f == "spec.nodeName" => NODE_NAME.to_string(),
                            other => panic!("env {name}: the test does not know {other:?}"),
                        };
                        (name, value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        let mounts = c["volumeMounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        let name = m["name"].as_str().unwrap();
                        let volume =
                            volumes.iter().find(|v| v["name"] == name).expect("a volume for each mount");
                        let host = volume["hostPath"]["path"].as_str().expect("hostPath volumes only");
                        (
                            PathBuf::from(host),
                            PathBuf::from(m["mountPath"].as_str().unwrap()),
                            m["readOnly"] == true,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Pod {
            argv,
            env,
            host_pid: spec["hostPID"] == true,
            read_only_root: security["readOnlyRootFilesystem"] == true,
            no_new_privs: security["allowPrivilegeEscalation"] == false,
            run_as_user: security["runAsUser"].as_u64().unwrap_or(0),
            capabilities: strings(&security["capabilities"]["add"]),
            mounts,
        }
    }
}

/// The image's root filesystem, mounted by buildah for as long as this lives.
struct Rootfs {
    container: String,
    path: PathBuf,
}

fn buildah(args: &[&str]) -> String {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image/containers.conf");
    let out = Command::new("buildah")
        .args(args)
        .env("CONTAINERS_CONF", conf)
        .output()
        .expect("running buildah (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "buildah {}: {} (does `cargo xtask image --debug` build {IMAGE}?)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Rootfs {
    fn mount() -> Rootfs {
        let container = buildah(&["from", "--pull=never", IMAGE]);
        let path = PathBuf::from(buildah(&["mount", &container]));
        assert!(path.join("usr/local/bin/leakprobe").is_file(), "the image has no leakprobe");
        Rootfs { container, path }
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = Command::new("buildah").args(["umount", &self.container]).output();
        let _ = Command::new("buildah").args(["rm", &self.container]).output();
    }
}

/// A shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The agent in its "container": `capabilities` are the ones it gets (the manifest's, or fewer).
struct Agent {
    child: Child,
    stderr: Lines,
    addr: String,
}

impl Agent {
    fn start(pod: &Pod, rootfs: &Rootfs, capabilities: &[String], pattern: &str) -> Agent {
        assert!(pod.host_pid, "the agent runs in the host PID namespace: the test does not make one");
        let root = rootfs.path.to_str().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut script = String::from("set -e\n");
        let r = quote(root);
        script += &format!("mount --bind {r} {r}\n");
        script += &format!("mount -t proc proc {r}/proc\n");
        script += &format!("mount -t sysfs sysfs {r}/sys\nmount -o remount,bind,ro {r}/sys\n");
        script += &format!("mount -t tmpfs -o mode=755,nosuid tmpfs {r}/dev\n");
        script += &format!("touch {r}/dev/null\nmount --bind /dev/null {r}/dev/null\n");
        for (host, inside, read_only) in &pod.mounts {
            let host = host.to_str().unwrap();
            // The node's tracefs: hosts mount it at boot; this one may not have, so it is mounted
            // here, in the test's own mount namespace.
            if host == "/sys/kernel/tracing" {
                script +=
                    "mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing\n";
            }
            let target = format!("{root}{}", inside.display());
            script += &format!("mount --rbind {} {}\n", quote(host), quote(&target));
            if *read_only {
                script += &format!("mount -o remount,bind,ro {}\n", quote(&target));
            }
        }
        if pod.read_only_root {
            script += &format!("mount -o remount,bind,ro {r}\n");
        }
        script += "hostname leakprobe-pod\n";
        let bounding: Vec<String> = std::iter::once("-all".to_string())
            .chain(capabilities.iter().map(|c| format!("+{}", c.to_lowercase())))
            .collect();
        let mut argv = pod.argv.clone();
        // The manifest's --metrics address, on a free loopback port (no pod network here).
        let at = argv.iter().position(|a| a == "--metrics").expect("the manifest passes --metrics");
        argv[at + 1] = format!("127.0.0.1:{port}");
        argv.extend([format!("--match={pattern}"), "--scan-every=500ms".into(), "--interval=500ms".into()]);
        let env: Vec<String> = pod.env.iter().map(|(k, v)| quote(&format!("{k}={v}"))).collect();
        script += &format!(
            "exec chroot {r} /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin {} /usr/bin/setpriv --reuid={uid} \
             --regid={uid} --clear-groups --bounding-set={} --inh-caps=-all {} -- {}\n",
            env.join(" "),
            bounding.join(","),
            if pod.no_new_privs { "--no-new-privs" } else { "" },
            argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
            uid = pod.run_as_user,
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--uts", "--ipc", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting unshare");
        let stderr = Lines::new(child.stderr.take().unwrap());
        Agent { child, stderr, addr: format!("127.0.0.1:{port}") }
    }

    /// Waits until it serves, or until it exits (then its status).
    fn serving(&mut self) -> Result<(), (std::process::ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.stderr.for_a_while(Duration::from_millis(200));
            if self.stderr.seen.iter().any(|l| l.contains("serving")) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err((status, self.stderr.rest().to_vec()));
            }
            assert!(Instant::now() < deadline, "the agent did not serve: {:?}", self.stderr.seen);
        }
    }

    /// GET `path`: (HTTP status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", &format!("http://{}{path}", self.addr)])
            .output()
            .expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Polls until `ok(status of /healthz, /metrics)` holds; returns both.
    fn until(&mut self, what: &str, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (health, _) = self.get("/healthz");
            let (_, metrics) = self.get("/metrics");
            if ok(health, &metrics) {
                return (health, metrics);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; /healthz {health}; log: {:#?}\n{metrics}",
                self.stderr.seen
            );
            self.stderr.for_a_while(Duration::from_millis(300));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child (unshare, which exec'd sh, then chroot, then the agent).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if wait_timeout(&mut self.child, Duration::from_secs(20)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A node process in its own mount and PID namespaces, as another user, in a kubelet-style pod
/// cgroup, its binary and script at paths only its mount namespace has (`/mnt`, a tmpfs there).
struct NamespacedNode {
    child: Child,
    _stdout: Lines,
    /// Its pid on the host.
    pid: u32,
    cgroup: PathBuf,
}

/// The pod and container ids of [`NamespacedNode`]'s cgroup (cgroupfs driver naming).
const POD_UID: &str = "0c3d1a2b-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const CONTAINER_ID: &str = "5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17";

impl NamespacedNode {
    /// `token` must be an argument no other node process has: it finds the pid.
    fn start(token: &str) -> NamespacedNode {
        let node = official_node(22);
        // The pids hierarchy of a cgroup v1 host (this project's machines), or the v2 tree.
        let hierarchy = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .into_iter()
            .find(|h| Path::new(h).join("cgroup.procs").exists())
            .expect("a cgroup hierarchy");
        let cgroup = PathBuf::from(format!("{hierarchy}/kubepods/besteffort/pod{POD_UID}/{CONTAINER_ID}"));
        fs::create_dir_all(&cgroup).unwrap_or_else(|e| panic!("creating {}: {e}", cgroup.display()));
        let script = format!(
            // The fixture is copied in too: the checkout may not be readable by that user.
            "set -e\necho $$ > {procs}\nmount -t tmpfs tmpfs /mnt\ntouch /mnt/node\nmount --bind {node} /mnt/node\n\
             cp {fixture} /mnt/fleet-member.js\nchmod 644 /mnt/fleet-member.js\n\
             exec setpriv --reuid={OTHER_UID} --regid={OTHER_UID} --clear-groups /mnt/node {token} /mnt/fleet-member.js\n",
            procs = quote(cgroup.join("cgroup.procs").to_str().unwrap()),
            node = quote(node.to_str().unwrap()),
            fixture = quote(fixture("fleet-member.js").to_str().unwrap()),
        );
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .current_dir("/")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting unshare");
        let mut stdout = Lines::new(child.stdout.take().unwrap());
        stdout.wait_for("READY", Duration::from_secs(30));
        let pid = pid_with_arg(token).expect("the namespaced node's host pid");
        NamespacedNode { child, _stdout: stdout, pid, cgroup }
    }
}

impl Drop for NamespacedNode {
    fn drop(&mut self) {
        // SAFETY: killing the node (pid 1 of its namespace: all of it goes).
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::remove_dir(&self.cgroup).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        for dir in self.cgroup.ancestors().skip(1).take(3) {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The host pid of the node process whose command line holds `arg`.
fn pid_with_arg(arg: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "node" && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())).then_some(pid)
    })
}

/// GC pauses counted for `pid` (all kinds), if it has the series.
fn gc_pauses(metrics: &str, pid: u32) -> Option<f64> {
    let pid = pid_label(pid);
    let counts: Vec<f64> = ["scavenge", "minor_ms", "mark_compact"]
        .iter()
        .filter_map(|k| {
            metric(metrics, "leakprobe_gc_pause_seconds_count", &[&pid, &format!("kind=\"{k}\"")])
        })
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// With exactly the manifest's privileges, the agent in the image measures GC pauses of a node
/// process on the host and of one in its own namespaces, as another user, with its pod and
/// container labels; every probe family is up, and /healthz is ok.
#[test]
fn agent_with_the_manifests_privileges_measures_host_and_namespaced_node() {
    let pod = Pod::from_manifest();
    let rootfs = Rootfs::mount();
    let host_node = Node::start(&system_node(), &["--inspect-port=19411"], "fleet-member.js");
    let namespaced = NamespacedNode::start("--inspect-port=19412");
    assert_ne!(namespaced.pid, host_node.pid());

    let pattern = "--inspect-port=1941[12] .*fleet-member";
    let mut agent = Agent::start(&pod, &rootfs, &pod.capabilities, pattern);
    if let Err((status, log)) = agent.serving() {
        panic!("the agent with the manifest's privileges exited ({status}): {log:#?}");
    }
    let pids = [host_node.pid(), namespaced.pid];
    let v8_heap =
        |m: &str, pid: u32| metric(m, "leakprobe_memory_bytes", &[&pid_label(pid), "area=\"v8_heap\""]);
    let (health, metrics) = agent.until("GC pauses and V8 heaps of both node processes", |_, m| {
        pids.iter().all(|p| gc_pauses(m, *p).is_some_and(|n| n > 0.0) && v8_heap(m, *p).is_some())
    });
    assert_eq!(health, 200, "{:?}", agent.get("/healthz"));
    for pid in pids {
        for family in ["gc", "heap", "external", "syscalls"] {
            assert_eq!(probes_up(&metrics, pid, family), Some(1.0), "pid {pid} {family}:\n{metrics}");
        }
    }
    let ns = pid_label(namespaced.pid);
    let labels =
        [ns.as_str(), &format!("pod_uid=\"{POD_UID}\""), &format!("container_id=\"{CONTAINER_ID}\"")];
    assert!(
        metric(&metrics, "leakprobe_probes_up", &labels).is_some(),
        "the namespaced node lacks its pod and container labels:\n{metrics}"
    );
    assert!(
        metrics.contains(&format!("node=\"{NODE_NAME}\"")),
        "NODE_NAME from the manifest's env:\n{metrics}"
    );
    assert!(metrics.contains("node_version=\"v22."), "{metrics}");
}

/// Each capability the manifest adds is needed: without it, the agent watching the namespaced
/// node (another user's process) fails with an error, or reports itself degraded, never
/// empty and green.
#[test]
fn each_capability_left_out_gives_an_error_or_a_degraded_status() {
    let pod = Pod::from_manifest();
    assert!(!pod.capabilities.is_empty());
    let rootfs = Rootfs::mount();
    let token = "--inspect-port=19413";
    let namespaced = NamespacedNode::start(token);
    for left_out in &pod.capabilities {
        let fewer: Vec<String> = pod.capabilities.iter().filter(|c| *c != left_out).cloned().collect();
        let mut agent = Agent::start(&pod, &rootfs, &fewer, &format!("{token} .*fleet-member"));
        let verdict = match agent.serving() {
            Err((status, log)) => {
                assert!(!status.success(), "without {left_out}: exited 0: {log:?}");
                let errors: Vec<&String> = log.iter().filter(|l| l.contains("error:")).collect();
                assert_eq!(errors.len(), 1, "without {left_out}: one error line: {log:#?}");
                format!("exit {status}: {}", errors[0])
            }
            Ok(()) => {
                let pid = namespaced.pid;
                let (health, metrics) = agent.until("a degraded status", |h, m| {
                    h == 503
                        || ["gc", "heap", "external", "syscalls"]
                            .iter()
                            .any(|f| probes_up(m, pid, f) == Some(0.0))
                });
                let down: Vec<&str> = ["gc", "heap", "external", "syscalls"]
                    .into_iter()
                    .filter(|f| probes_up(&metrics, pid, f) == Some(0.0))
                    .collect();
                format!("/healthz {health} {:?}; families down: {down:?}", agent.get("/healthz").1.trim())
            }
        };
        eprintln!("without CAP_{left_out}: {verdict}");
    }
}
