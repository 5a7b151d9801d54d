//! Tollgate's wire format, generated from `proto/tollgate.proto` (package `tollgate.v1`).
//! Generated code stays generated: edit the `.proto`, never this crate's output.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("tollgate.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tollgate_descriptor");
}

/// Response metadata key that carries the leader's address on UNAVAILABLE.
pub const LEADER_METADATA_KEY: &str = "tollgate-leader";
