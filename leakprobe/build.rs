//! Builds leakprobe-ebpf for the bpf target (aya-build) so that `cargo build` yields one
//! self-contained executable with the kernel object embedded.
use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "leakprobe-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../leakprobe-ebpf"),
        ..Default::default()
    };
    // The machine's stable toolchain with RUSTC_BOOTSTRAP=1 (set in .cargo/config.toml) builds
    // core for the bpf target; see README "Building".
    aya_build::build_ebpf([ebpf], Toolchain::Custom("stable"))
        .context("building the eBPF programs (run `cargo xtask setup` to install bpf-linker and rust-src)")
}
