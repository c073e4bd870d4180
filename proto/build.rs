//! Generates the Rust code and the file descriptor set of `audit.v1` with protox, so no system
//! `protoc` is needed.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["audit/v1/entry.proto", "audit/v1/service.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("audit_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Deterministic map order, so an entry always encodes to the same bytes.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
