//! Generates the etcd KV client the benchmark's etcd peer uses, from the subset of etcd's
//! API in `bench/etcd/kv.proto`, with the protoc shipped inside `protoc-bin-vendored`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../bench/etcd");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(
            &[proto_dir.join("kv.proto")],
            std::slice::from_ref(&proto_dir),
        )?;
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("kv.proto").display()
    );
    Ok(())
}
