//! `cargo xtask image`: the agent's container image, built on this machine without a registry.
//!
//! 1. A Debian root filesystem made by `debootstrap --variant=minbase` from Debian's packages,
//!    of the host's own release (the binary is built on the host and links its glibc), trimmed
//!    of documentation, locales and apt's caches, and kept as a tarball in
//!    `/var/cache/leakprobe/rootfs/` (made once per machine).
//! 2. The tarball imported as the local base image `localhost/leakprobe-base:<release>`
//!    (`FROM scratch`, `ADD`), once per machine.
//! 3. leakprobe built here with cargo, its debug information stripped, and copied onto that base
//!    by `deploy/Containerfile.prebuilt`.
//!
//! Both images are built with `buildah bud --isolation chroot`. Neither runs a `RUN` step, so no
//! container runtime is needed, and nothing is downloaded but Debian's packages. CONTAINERS_CONF
//! points at a file that sets no default ulimits: buildah's defaults cannot be applied here.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{root, sh, target_dir};

/// The image `cargo xtask image` builds (the release binary).
pub const RELEASE_TAG: &str = "localhost/leakprobe:0.1.0";
/// The image `cargo xtask test` builds for tests/container.rs (the debug binary the tests use).
pub const TEST_TAG: &str = "localhost/leakprobe:test";
/// The most the release image may weigh, unpacked: the trimmed Debian base (~75 MiB) and the
/// binary (~30 MiB).
pub const SIZE_BUDGET: u64 = 130 << 20;

/// Which binary goes into the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `cargo build --release`: the image to deploy.
    Release,
    /// The debug binary, for the container test (no second, release build in CI).
    Test,
}

/// Builds the image for `profile`; returns its tag.
pub fn build(profile: Profile) -> anyhow::Result<&'static str> {
    for tool in ["debootstrap", "buildah"] {
        if !Path::new("/usr/sbin").join(tool).exists() && !Path::new("/usr/bin").join(tool).exists() {
            bail!("{tool} is not installed: run `cargo xtask setup`");
        }
    }
    let release = host_release()?;
    let conf = write_containers_conf()?;
    let base = base_image(&release, &conf)?;

    let (args, binary, tag): (&[&str], &str, &str) = match profile {
        Profile::Release => (&["build", "--release", "--locked", "-p", "leakprobe"], "release", RELEASE_TAG),
        Profile::Test => (&["build", "--locked", "-p", "leakprobe"], "debug", TEST_TAG),
    };
    sh(Command::new("cargo").args(args))?;
    let context = root().join("target/image/context");
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let copy = context.join("leakprobe");
    // The debug information is what makes a binary big; the image does not need it.
    sh(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(target_dir().join(binary).join("leakprobe"))
        .arg(&copy))?;
    // The image this replaces would be left behind untagged.
    let _ = buildah(&conf).args(["rmi", tag]).output();
    sh(buildah(&conf)
        .args(["bud", "--isolation", "chroot", "--pull=never", "--layers=false"])
        .arg(format!("--build-arg=BASE={base}"))
        .args(["-f", "deploy/Containerfile.prebuilt", "-t", tag])
        .arg(&context))?;

    let size = image_size(&conf, tag)?;
    eprintln!("xtask: image {tag}: {:.1} MiB unpacked (base {base})", size as f64 / (1 << 20) as f64);
    if profile == Profile::Release && size > SIZE_BUDGET {
        bail!("image {tag} is {size} bytes, over its budget of {SIZE_BUDGET} bytes");
    }
    Ok(tag)
}

/// The host's Debian release (`VERSION_CODENAME`), which the base image is made of.
fn host_release() -> anyhow::Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: is this Debian?")
}

/// The CONTAINERS_CONF file buildah runs with.
fn write_containers_conf() -> anyhow::Result<PathBuf> {
    let dir = root().join("target/image");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("containers.conf");
    fs::write(&conf, "[containers]\ndefault_ulimits = []\n").context("writing containers.conf")?;
    Ok(conf)
}

/// `buildah` with the project's containers.conf.
pub fn buildah(conf: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.env("CONTAINERS_CONF", conf);
    cmd
}

/// Makes (once) the debootstrap'd root filesystem and the base image; returns the image's name.
fn base_image(release: &str, conf: &Path) -> anyhow::Result<String> {
    let name = format!("localhost/leakprobe-base:{release}");
    if buildah(conf).args(["inspect", "--type", "image", &name]).output().is_ok_and(|o| o.status.success()) {
        return Ok(name);
    }
    let cache = PathBuf::from("/var/cache/leakprobe/rootfs").join(release);
    let tarball = cache.join("rootfs.tar");
    if !tarball.is_file() {
        debootstrap(release, &cache, &tarball)?;
    }
    fs::write(cache.join("Containerfile"), "FROM scratch\nADD rootfs.tar /\n")
        .context("writing Containerfile")?;
    sh(buildah(conf).args(["bud", "--isolation", "chroot", "--layers=false", "-t", &name]).arg(&cache))?;
    Ok(name)
}

/// `debootstrap --variant=minbase`, trimmed, as a tarball.
fn debootstrap(release: &str, cache: &Path, tarball: &Path) -> anyhow::Result<()> {
    let dir = cache.join("rootfs.partial");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    sh(Command::new("debootstrap")
        .args(["--variant=minbase", release])
        .arg(&dir)
        .arg("http://deb.debian.org/debian"))?;
    for trimmed in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/cache/apt",
        "var/lib/apt/lists",
    ] {
        let path = dir.join(trimmed);
        if path.is_dir() {
            for entry in fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))? {
                let entry = entry?.path();
                let removed =
                    if entry.is_dir() { fs::remove_dir_all(&entry) } else { fs::remove_file(&entry) };
                removed.with_context(|| format!("removing {}", entry.display()))?;
            }
        }
    }
    let partial = cache.join("rootfs.tar.partial");
    sh(Command::new("tar").arg("-C").arg(&dir).arg("-cf").arg(&partial).arg("."))?;
    fs::rename(&partial, tarball).with_context(|| format!("writing {}", tarball.display()))?;
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

/// The size of an image's root filesystem, unpacked, in bytes: `du` over a working container's
/// mount of it.
fn image_size(conf: &Path, tag: &str) -> anyhow::Result<u64> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = buildah(conf).args(args).output().context("running buildah")?;
        if !out.status.success() {
            bail!("buildah {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let container = run(&["from", "--pull=never", tag])?;
    let measured = run(&["mount", &container]).and_then(|dir| {
        let out = Command::new("du").args(["-sb", &dir]).output().context("running du")?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("du -sb {dir}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    });
    let _ = run(&["umount", &container]);
    let _ = run(&["rm", &container]);
    measured
}
