//! Tollgate's wire format, generated from `proto/tollgate.proto` (package `tollgate.v1`).
//! Generated code stays generated: edit the `.proto`, never this crate's output.

pub mod codec;

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("tollgate.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tollgate_descriptor");
}

/// Response metadata key that carries the leader's address on UNAVAILABLE.
pub const LEADER_METADATA_KEY: &str = "tollgate-leader";

/// Most operations in one `Tollgate.Batch` call; the server answers an empty or larger batch
/// with INVALID_ARGUMENT as a whole. Equal to the proposer's commands per Raft entry, so a
/// full batch fits one entry.
pub const BATCH_OPS_MAX: usize = 1_024;

/// Largest `Tollgate.Batch` request a node decodes, in bytes. A valid operation is under
/// 1 KiB (five ids of at most 128 bytes, three amounts, a TTL), so a full batch of valid
/// operations fits; the client splits what it coalesced so that no call exceeds it.
pub const BATCH_REQUEST_BYTES_MAX: usize = 1024 * 1024;
