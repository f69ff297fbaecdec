//! leakprobe's kernel programs. This binary is built for `bpfel-unknown-none` by leakprobe's
//! build.rs (aya-build) and embedded in the leakprobe executable.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod stacks;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic; this is never called.
    unsafe { core::hint::unreachable_unchecked() }
}

/// On the host this crate is only a library of shared types; its binary exists for the bpf target.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "leakprobe-ebpf is an eBPF object: build it for bpfel-unknown-none (leakprobe's build.rs does)"
    );
    std::process::exit(2);
}
