//! The edge's last line of defence against a hostile peer on the network: transport limits,
//! statuses for undecodable messages, and a node that never pretends to be healthy.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_server::grpc::STREAMS_PER_CONNECTION_MAX;
use tonic::Code;

use common::raw::call_raw;
use common::{tenant_with_budget, used_tokens, TestCluster};

/// How long a test waits for a node's answer before it calls the node stuck: a guard
/// against hanging, never a wait for a race to settle.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// HTTP/2 frame types and codes this test speaks (RFC 9113 §6, §7).
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn write_frame(socket: &mut TcpStream, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let length = u32::try_from(payload.len()).expect("small frame");
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    socket.write_all(&frame).await.expect("write frame");
}

async fn read_frame(socket: &mut TcpStream) -> Frame {
    let mut header = [0u8; 9];
    tokio::time::timeout(ANSWER_WAIT, socket.read_exact(&mut header))
        .await
        .expect("the node answers")
        .expect("read frame header");
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    socket.read_exact(&mut payload).await.expect("read frame");
    Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    }
}

/// A gRPC request's header block in HPACK, literals only (RFC 7541 §6.1, §6.2.2).
fn grpc_headers(path: &str) -> Vec<u8> {
    let literal = |index: u8, value: &str| {
        let mut bytes = vec![index, u8::try_from(value.len()).expect("short value")];
        bytes.extend_from_slice(value.as_bytes());
        bytes
    };
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend(literal(0x04, path)); // :path
    block.extend(literal(0x01, "localhost")); // :authority
    block.extend([0x0f, 0x10]); // content-type (static index 31)
    block.extend(&literal(0, "application/grpc")[1..]);
    block.extend([0x00, 0x02]);
    block.extend_from_slice(b"te");
    block.extend(&literal(0, "trailers")[1..]);
    block
}

/// Connects, exchanges SETTINGS, and returns the node's advertised stream bound.
async fn handshake(addr: &str) -> (TcpStream, Option<u32>) {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.write_all(PREFACE).await.expect("preface");
    write_frame(&mut socket, FRAME_SETTINGS, 0, 0, &[]).await;
    loop {
        let frame = read_frame(&mut socket).await;
        if frame.kind != FRAME_SETTINGS || frame.flags & FLAG_ACK != 0 {
            continue;
        }
        let streams_max = frame.payload.chunks_exact(6).find_map(|setting| {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            (id == SETTINGS_MAX_CONCURRENT_STREAMS)
                .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
        });
        write_frame(&mut socket, FRAME_SETTINGS, FLAG_ACK, 0, &[]).await;
        return (socket, streams_max);
    }
}

#[tokio::test]
async fn streams_beyond_the_bound_are_refused_before_any_body_is_read() {
    const EXTRA: u32 = 4;
    let cluster = TestCluster::start(1).await;
    let addr = cluster.cluster.endpoints()[0].clone();
    let (mut socket, streams_max) = handshake(&addr).await;
    assert_eq!(streams_max, Some(STREAMS_PER_CONNECTION_MAX));

    // Every stream is opened and never finished, as an attacker holding memory would.
    let headers = grpc_headers("/tollgate.v1.Tollgate/Batch");
    let streams: Vec<u32> = (0..STREAMS_PER_CONNECTION_MAX + EXTRA)
        .map(|i| 2 * i + 1)
        .collect();
    for &stream in &streams {
        write_frame(
            &mut socket,
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            stream,
            &headers,
        )
        .await;
    }

    let mut refused = Vec::new();
    while refused.len() < EXTRA as usize {
        let frame = read_frame(&mut socket).await;
        if frame.kind == FRAME_RST_STREAM {
            let code = u32::from_be_bytes(frame.payload[..4].try_into().expect("4-byte code"));
            assert_eq!(code, REFUSED_STREAM, "stream {} reset", frame.stream);
            refused.push(frame.stream);
        }
    }
    let beyond_bound = &streams[STREAMS_PER_CONNECTION_MAX as usize..];
    assert_eq!(
        refused, beyond_bound,
        "exactly the streams beyond the bound are refused"
    );
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_invalid_argument_and_changes_nothing() {
    let test = TestCluster::start(1).await;
    tenant_with_budget(&test.client, "acme", 1_000).await;
    let before = used_tokens(&test.client, "acme").await;
    let addr = test.cluster.endpoints()[0].clone();
    // A varint that never ends, a field of wire type 7 (none exists), a length past the end.
    let garbage: [&[u8]; 3] = [&[0xff; 16], &[0x0f, 0x01], &[0x0a, 0x7f, 0x01]];
    let paths = [
        "/tollgate.v1.Tollgate/Reserve",
        "/tollgate.v1.Tollgate/Record",
        "/tollgate.v1.Tollgate/Batch",
        "/tollgate.v1.Admin/PutTenant",
        "/tollgate.v1.Admin/PutLimit",
    ];
    for path in paths {
        for bytes in garbage {
            let answer = call_raw(&addr, path, bytes.to_vec()).await;
            let status = answer.expect_err("garbage is refused");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{path} {bytes:?}: {status:?}"
            );
        }
    }
    assert_eq!(used_tokens(&test.client, "acme").await, before);
}
