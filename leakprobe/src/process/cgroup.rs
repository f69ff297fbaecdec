//! Where a process runs, read from its `/proc/PID/cgroup`.
//!
//! The host-wide agent profiles Node.js processes of many containers at once, and labels its
//! metrics with the Kubernetes pod UID and the container id of each process. Both are in the
//! process's cgroup path, which the kubelet and the container runtimes name after them; this
//! module turns that text into a [`Placement`]. It only reads text: no cgroupfs walk, no runtime
//! or Kubernetes API call (the pod UID is the key to join with the API's pod list elsewhere).
//!
//! Each path component is looked at on its own:
//! - pod: `pod<uid>` (cgroupfs driver) and `…-pod<uid with underscores>.slice` (systemd driver,
//!   which escapes the UID's dashes as underscores);
//! - container: a bare 64-hex component (cgroupfs driver, `/docker/<id>`), and `<prefix><id>` with
//!   an optional `.scope` suffix for the prefixes `cri-containerd-`, `crio-`, `docker-` and
//!   `libpod-` (podman; no runtime named for it). `crio-conmon-<id>.scope` holds CRI-O's monitor
//!   process, not the container, and yields no container id.
//!
//! Ids are validated strictly (lowercase hex; 64 chars for a container id, 8-4-4-4-12 for a pod
//! UID) so that other path parts are never taken for one. Static pods, whose cgroup holds a 32-hex
//! config hash rather than a UUID, get no pod UID.
//!
//! Nesting (kind nodes, docker-in-docker): the pod is the last pod component of the path and the
//! container the last container component after it, so `/docker/<node>/kubepods/pod<uid>/<id>`
//! gives the pod's container, not the node's.
//!
//! Which line: cgroup v1 has one line per hierarchy, and hybrid hosts add an often empty `0::/`
//! line. Lines are tried in a fixed order, and the first that yields a pod or a container wins:
//! the v2 line (`0::`), then `name=systemd`, then `memory`, then `cpu`, then the others in file
//! order. The kubelet and the runtimes put a process at the same path on every hierarchy, so the
//! order matters only on odd hosts, where it keeps the answer the same for every process.

/// Where a process runs, from its cgroup path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Kubernetes pod UID (dashes, as the API shows it: 8-4-4-4-12), if the path holds one.
    pub pod_uid: Option<String>,
    /// Container id (64 hex chars), if the path holds one.
    pub container_id: Option<String>,
    /// Runtime that made the container scope, when it can be told: "containerd", "cri-o", "docker".
    /// Never set without a `container_id`.
    pub runtime: Option<&'static str>,
}

/// Container name prefixes (before the 64-hex id, with an optional `.scope` after it) and the
/// runtime each one tells.
const PREFIXES: [(&str, Option<&str>); 4] = [
    ("cri-containerd-", Some("containerd")),
    ("crio-", Some("cri-o")),
    ("docker-", Some("docker")),
    ("libpod-", None),
];

/// Parses /proc/PID/cgroup text (cgroup v1 lines `N:controllers:/path` and v2 `0::/path`).
///
/// Lines without two colons are skipped; see the module doc for which line wins. Never panics.
pub fn parse(proc_cgroup: &str) -> Placement {
    let mut lines: Vec<(u8, &str)> = proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (hierarchy, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some((rank(hierarchy, controllers), path))
        })
        .collect();
    lines.sort_by_key(|&(rank, _)| rank); // stable: file order within a rank
    lines
        .into_iter()
        .map(|(_, path)| parse_path(path))
        .find(|p| p.pod_uid.is_some() || p.container_id.is_some())
        .unwrap_or_default()
}

/// Reads /proc/PID/cgroup; Placement::default() if it cannot be read.
pub fn of_pid(pid: u32) -> Placement {
    match std::fs::read(format!("/proc/{pid}/cgroup")) {
        Ok(bytes) => parse(&String::from_utf8_lossy(&bytes)),
        Err(_) => Placement::default(),
    }
}

/// Order in which lines are tried: lower first.
fn rank(hierarchy: &str, controllers: &str) -> u8 {
    let has = |name: &str| controllers.split(',').any(|c| c == name);
    if hierarchy == "0" && controllers.is_empty() {
        0
    } else if has("name=systemd") {
        1
    } else if has("memory") {
        2
    } else if has("cpu") {
        3
    } else {
        4
    }
}

fn parse_path(path: &str) -> Placement {
    let mut placement = Placement::default();
    let mut parent = "";
    for part in path.split('/') {
        if let Some(uid) = pod_uid(part) {
            // A container seen before the pod (the kind node's own) is not the pod's.
            placement = Placement { pod_uid: Some(uid), ..Placement::default() };
        } else if let Some((id, runtime)) = container(part, parent) {
            placement.container_id = Some(id.to_owned());
            placement.runtime = runtime;
        }
        parent = part;
    }
    placement
}

/// The pod UID in one path component, with dashes.
fn pod_uid(part: &str) -> Option<String> {
    if let Some(slice) = part.strip_suffix(".slice") {
        let (_, uid) = slice.rsplit_once("-pod")?;
        is_uuid(uid, b'_').then(|| uid.replace('_', "-"))
    } else {
        let uid = part.strip_prefix("pod")?;
        is_uuid(uid, b'-').then(|| uid.to_owned())
    }
}

/// The container id in one path component, and the runtime if it can be told.
fn container<'a>(part: &'a str, parent: &str) -> Option<(&'a str, Option<&'static str>)> {
    if is_container_id(part) {
        return Some((part, (parent == "docker").then_some("docker")));
    }
    let name = part.strip_suffix(".scope").unwrap_or(part);
    PREFIXES.iter().find_map(|&(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_container_id(id).then_some((id, runtime))
    })
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

/// Lowercase 8-4-4-4-12 hex groups separated by `sep`.
fn is_uuid(s: &str, sep: u8) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == sep,
            _ => is_lower_hex(b),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const ID: &str = "4eed334aac98c3dd1b94e5a857ea26ac9f37f0506f40a5b88d1b781b293a213b";
    const ID2: &str = "896c917f67c01aca16ce2dd983971fd999c9811b7babde2112df3d7168dbb866";
    const UID: &str = "52d54d6a-5a4c-439c-acaa-5f0576358e2f";
    const UID_: &str = "52d54d6a_5a4c_439c_acaa_5f0576358e2f";

    fn placed(pod: Option<&str>, id: Option<&str>, runtime: Option<&'static str>) -> Placement {
        Placement { pod_uid: pod.map(str::to_owned), container_id: id.map(str::to_owned), runtime }
    }

    #[test]
    fn v2_systemd_containerd_burstable() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&text), placed(Some(UID), Some(ID), Some("containerd")));
    }

    #[test]
    fn v2_systemd_besteffort_and_guaranteed() {
        let besteffort = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&besteffort), placed(Some(UID), Some(ID), Some("containerd")));
        let guaranteed = format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(parse(&guaranteed), placed(Some(UID), Some(ID), Some("containerd")));
    }

    #[test]
    fn crio_scope_and_conmon() {
        let pod = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(parse(&format!("{pod}/crio-{ID}.scope\n")), placed(Some(UID), Some(ID), Some("cri-o")));
        // conmon watches the container from its own scope: the pod, but no container.
        assert_eq!(parse(&format!("{pod}/crio-conmon-{ID}.scope\n")), placed(Some(UID), None, None));
    }

    #[test]
    fn v1_kubelet_node_cgroupfs_docker() {
        // A cgroup v1 kubelet node (cgroupfs driver, dockershim) with systemd's hybrid `0::/` line.
        let path = format!("/kubepods/burstable/pod{UID}/{ID}");
        let text = format!(
            "12:pids:{path}\n11:hugetlb:{path}\n10:net_cls,net_prio:{path}\n9:perf_event:{path}\n\
             8:cpuset:{path}\n7:memory:{path}\n6:devices:{path}\n5:rdma:/\n4:blkio:{path}\n\
             3:freezer:{path}\n2:cpu,cpuacct:{path}\n1:name=systemd:{path}\n0::/\n"
        );
        assert_eq!(parse(&text), placed(Some(UID), Some(ID), None));
    }

    #[test]
    fn cgroupfs_besteffort_guaranteed_and_crio() {
        let besteffort = format!("0::/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(parse(&besteffort), placed(Some(UID), Some(ID), None));
        let guaranteed = format!("11:memory:/kubepods/pod{UID}/{ID}\n");
        assert_eq!(parse(&guaranteed), placed(Some(UID), Some(ID), None));
        let crio = format!("0::/kubepods/burstable/pod{UID}/crio-{ID}\n");
        assert_eq!(parse(&crio), placed(Some(UID), Some(ID), Some("cri-o")));
    }

    #[test]
    fn docker_v1_and_systemd_scope() {
        let v1 = format!(
            "12:memory:/docker/{ID}\n4:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"
        );
        assert_eq!(parse(&v1), placed(None, Some(ID), Some("docker")));
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse(&v2), placed(None, Some(ID), Some("docker")));
    }

    #[test]
    fn host_processes_have_no_placement() {
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/system.slice/nginx.service\n",
            "0::/\n",
            "12:memory:/user.slice\n1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n0::/\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
        ] {
            assert_eq!(parse(text), Placement::default(), "{text}");
        }
    }

    #[test]
    fn line_order_is_v2_systemd_memory_cpu() {
        let text = format!("4:cpu,cpuacct:/docker/{ID2}\n7:memory:/docker/{ID}\n");
        assert_eq!(parse(&text).container_id.as_deref(), Some(ID));
        let text = format!("7:memory:/docker/{ID2}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(parse(&text).container_id.as_deref(), Some(ID));
        let text = format!("1:name=systemd:/docker/{ID2}\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse(&text).container_id.as_deref(), Some(ID));
    }

    #[test]
    fn nested_kind_node_gives_the_pods_container() {
        let text = format!("0::/docker/{ID2}/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(parse(&text), placed(Some(UID), Some(ID), None));
        let pod_level = format!("0::/docker/{ID2}/kubepods/besteffort/pod{UID}\n");
        assert_eq!(parse(&pod_level), placed(Some(UID), None, None));
    }

    #[test]
    fn lookalike_ids_are_rejected() {
        for text in [
            format!("0::/docker/{}\n", ID.to_uppercase()),
            format!("0::/docker/{}\n", &ID[1..]),
            format!("0::/docker/{ID}0\n"),
            format!("0::/system.slice/docker-{ID}.service-x\n"),
            // a static pod's UID is a 32-hex config hash, not a UUID
            "0::/kubepods/burstable/pod9a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d\n".to_owned(),
            format!("0::/kubepods/pod{}\n", UID.to_uppercase()),
            format!("0::/kubepods/pod{UID_}\n"),
            format!("0::/kubepods.slice/kubepods-pod{UID}.slice\n"),
        ] {
            assert_eq!(parse(&text), Placement::default(), "{text}");
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for text in
            ["", "\n\n", ":", "::", ":::::", "0::", "no colons here", "\u{fffd}\u{fffd}:\u{fffd}:/\u{fffd}"]
        {
            assert_eq!(parse(text), Placement::default(), "{text:?}");
        }
        let long = format!("0::{}/{ID}\n", "/kubepods-pod".repeat(100_000));
        assert_eq!(parse(&long), placed(None, Some(ID), None));
        assert_eq!(parse(&"a".repeat(1 << 20)), Placement::default());
    }

    #[test]
    fn of_pid_reads_or_defaults() {
        let _ = of_pid(std::process::id());
        assert_eq!(of_pid(u32::MAX), Placement::default());
    }

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("/".to_owned()),
            Just("kubepods".to_owned()),
            Just("pod".to_owned()),
            Just("-pod".to_owned()),
            Just(".scope".to_owned()),
            Just(".slice".to_owned()),
            Just("-".to_owned()),
            Just("_".to_owned()),
            Just("docker".to_owned()),
            Just("cri-containerd-".to_owned()),
            Just("crio-".to_owned()),
            Just("crio-conmon-".to_owned()),
            "[0-9a-fA-F]{1,70}",
            "[0-9a-f]{64}",
            "[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}",
            "/pod[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{11,13}",
            "/kubepods-pod[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{11,13}\\.slice",
            "/(docker-|crio-)?[0-9a-f]{63,65}(\\.scope)?",
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        let head = prop_oneof![
            Just("0::"),
            Just("1:name=systemd:"),
            Just("7:memory:"),
            Just("2:cpu,cpuacct:"),
            Just("")
        ];
        (head, vec(piece(), 0..24)).prop_map(|(head, pieces)| format!("{head}{}", pieces.concat()))
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>(), bytes in vec(any::<u8>(), 0..512)) {
            let _ = parse(&text);
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn path_like_text_yields_only_valid_ids(lines in vec(line(), 0..6)) {
            let placement = parse(&lines.join("\n"));
            if let Some(uid) = &placement.pod_uid {
                prop_assert!(is_uuid(uid, b'-'), "{uid}");
            }
            if let Some(id) = &placement.container_id {
                prop_assert!(is_container_id(id), "{id}");
            }
            prop_assert!(placement.runtime.is_none() || placement.container_id.is_some());
        }
    }
}
