//! Generates the gRPC code from tollgate.proto with the protoc shipped inside the
//! `protoc-bin-vendored` crate: nothing is downloaded at build time.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Undecodable messages are INVALID_ARGUMENT (see src/codec.rs), not tonic's INTERNAL.
        .codec_path("crate::codec::TollgateCodec")
        .file_descriptor_set_path(out_dir.join("tollgate_descriptor.bin"))
        .compile_protos(&["tollgate.proto"], &["."])?;
    println!("cargo:rerun-if-changed=tollgate.proto");
    Ok(())
}
