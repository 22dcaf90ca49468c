//! Builds the kernel programs (`ebpf/programs`) for `bpfel-unknown-none` with the nightly
//! toolchain and `bpf-linker` (aya-build), into `OUT_DIR/egressd-ebpf`, which `loader.rs`
//! embeds. `cargo xtask setup` installs what this needs.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../ebpf/common/src");
    let package = Package {
        name: "egressd-ebpf",
        root_dir: "../ebpf/programs",
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).context(
        "building the eBPF programs failed: they need the nightly toolchain with rust-src \
         and bpf-linker on PATH; run `cargo xtask setup` to install them",
    )
}
