//! Coalescing: concurrent reserve, commit, release and record calls to one node, with one
//! token, leave as one `Tollgate.Batch` RPC instead of one HTTP/2 request each.
//!
//! A task per (node, token) takes whatever operations wait (up to `BATCH_OPS_MAX`), sends
//! them as one batch, and hands each operation its own answer as the
//! `Result<Response<T>, Status>` its unary RPC would have given, so the retry loop in
//! `client.rs` treats both alike: a per-operation UNAVAILABLE carries the leader hint in
//! `tollgate-leader` metadata, a failure of the whole RPC reaches every operation in it. This
//! module never retries and never waits for company: a lone operation leaves at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tollgate_proto::v1;
use tollgate_proto::v1::batch_op::Op;
use tollgate_proto::v1::batch_result::Result as Answer;
use tollgate_proto::v1::tollgate_client::TollgateClient;
use tollgate_proto::{BATCH_OPS_MAX, BATCH_REQUEST_BYTES_MAX, LEADER_METADATA_KEY};
use tonic::{Code, Response, Status};

use crate::channel::AuthChannel;

/// Batches one coalescer has sent and not yet had answered. Few on purpose, as in the
/// server's proposer: while they are out, operations pile up into the next, larger batch.
pub const COALESCER_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Operations waiting for a batch, per (node, token): enough for every slot in flight to
/// be refilled with a full batch. A full queue answers UNAVAILABLE at once (see
/// [`Coalescer::submit`]) rather than letting callers wait without bound.
pub const COALESCER_QUEUE_OPS_MAX: usize = BATCH_OPS_MAX * COALESCER_BATCHES_IN_FLIGHT_MAX;

/// One of the four operations a batch carries, and the response that answers it.
pub(crate) trait Coalesced {
    /// The unary RPC's response.
    type Response;
    /// The operation's name, for errors.
    const NAME: &'static str;
    fn into_op(self) -> Op;
    /// The response if `answer` is of this operation's kind.
    fn from_answer(answer: Answer) -> Option<Self::Response>;
    /// The operation as its own unary RPC, when the client does not coalesce.
    fn unary(
        self,
        client: TollgateClient<AuthChannel>,
    ) -> impl Future<Output = Result<Response<Self::Response>, Status>> + Send;
}

macro_rules! coalesced {
    ($request:ty, $response:ty, $variant:ident, $method:ident) => {
        impl Coalesced for $request {
            type Response = $response;
            const NAME: &'static str = stringify!($method);
            fn into_op(self) -> Op {
                Op::$variant(self)
            }
            fn from_answer(answer: Answer) -> Option<$response> {
                match answer {
                    Answer::$variant(response) => Some(response),
                    _ => None,
                }
            }
            fn unary(
                self,
                mut client: TollgateClient<AuthChannel>,
            ) -> impl Future<Output = Result<Response<$response>, Status>> + Send {
                async move { client.$method(self).await }
            }
        }
    };
}

coalesced!(v1::ReserveRequest, v1::ReserveResponse, Reserve, reserve);
coalesced!(v1::CommitRequest, v1::CommitResponse, Commit, commit);
coalesced!(v1::ReleaseRequest, v1::ReleaseResponse, Release, release);
coalesced!(v1::RecordRequest, v1::RecordResponse, Record, record);

type Reply = oneshot::Sender<Result<Answer, Status>>;

struct Pending {
    op: v1::BatchOp,
    reply: Reply,
}

/// The sending end of one coalescer: cheap to clone. The task ends once every clone is
/// dropped and the operations already queued have been sent.
#[derive(Clone, Debug)]
pub(crate) struct Coalescer {
    queue: mpsc::Sender<Pending>,
}

impl Coalescer {
    /// Starts the task that sends batches with `send`, each given at most `batch_timeout`.
    /// Must run inside a tokio runtime.
    pub(crate) fn start<S, Fut>(send: S, batch_timeout: Duration) -> Coalescer
    where
        S: Fn(v1::BatchRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<v1::BatchResponse, Status>> + Send + 'static,
    {
        let (queue, receiver) = mpsc::channel(COALESCER_QUEUE_OPS_MAX);
        tokio::spawn(run(Arc::new(send), batch_timeout, receiver));
        Coalescer { queue }
    }

    /// True once the task has ended (its runtime shut down): the pool then starts another.
    pub(crate) fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Sends `request` in the next batch and returns its own answer, as its unary RPC would.
    ///
    /// Never blocks on a full queue: with [`COALESCER_QUEUE_OPS_MAX`] operations already waiting, this
    /// answers UNAVAILABLE at once, which the retry loop retries with backoff inside the
    /// deadline (and, as for any UNAVAILABLE without a hint, asks the next node for the
    /// leader). The same for a coalescer whose task has ended. Dropping the returned future
    /// (an attempt timeout) is safe: the operation is skipped if it has not left yet, and its
    /// answer is discarded if it has.
    pub(crate) async fn submit<R: Coalesced>(
        &self,
        request: R,
    ) -> Result<Response<R::Response>, Status> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            op: v1::BatchOp {
                op: Some(request.into_op()),
            },
            reply,
        };
        if let Err(error) = self.queue.try_send(pending) {
            return Err(match error {
                mpsc::error::TrySendError::Full(_) => Status::unavailable(format!(
                    "this client already has {COALESCER_QUEUE_OPS_MAX} operations (COALESCER_QUEUE_OPS_MAX) waiting for this node"
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    Status::unavailable("this client's batching task for the node has ended")
                }
            });
        }
        let answer = answer.await.map_err(|_| {
            Status::unavailable("the batch carrying this operation ended without an answer")
        })??;
        match answer {
            Answer::Error(error) => Err(error_status(error)),
            other => R::from_answer(other).map(Response::new).ok_or_else(|| {
                Status::internal(format!(
                    "the server answered a batched {} with another operation's result",
                    R::NAME
                ))
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn same_queue(&self, other: &Coalescer) -> bool {
        self.queue.same_channel(&other.queue)
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// One operation's error as the status its unary RPC would have returned, leader hint
/// included.
fn error_status(error: v1::BatchError) -> Status {
    let mut status = Status::new(Code::from(error.code), error.message);
    if !error.leader.is_empty() {
        match error.leader.parse() {
            Ok(leader) => {
                status.metadata_mut().insert(LEADER_METADATA_KEY, leader);
            }
            Err(_) => tracing::warn!(hint = %error.leader, "ignoring unusable leader hint"),
        }
    }
    status
}

async fn run<S, Fut>(send: Arc<S>, batch_timeout: Duration, mut receiver: mpsc::Receiver<Pending>)
where
    S: Fn(v1::BatchRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<v1::BatchResponse, Status>> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(COALESCER_BATCHES_IN_FLIGHT_MAX));
    let mut waiting = Vec::with_capacity(BATCH_OPS_MAX);
    loop {
        // Waiting for a free slot first lets operations pile up in the queue meanwhile: that
        // is what makes batches grow under load.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        if receiver.recv_many(&mut waiting, BATCH_OPS_MAX).await == 0 {
            return;
        }
        // A caller that gave up (its attempt timed out) wants no answer; its retry, if any,
        // comes as a new operation with the same request id.
        waiting.retain(|pending| !pending.reply.is_closed());
        let permit = Arc::new(permit);
        while !waiting.is_empty() {
            let (ops, replies) = take_batch(&mut waiting);
            tokio::spawn(send_batch(
                Arc::clone(&send),
                batch_timeout,
                ops,
                replies,
                Arc::clone(&permit),
            ));
        }
    }
}

/// Takes operations from the front of `waiting` while the request stays within
/// `BATCH_REQUEST_BYTES_MAX`; always at least one, so an operation too large on its own
/// travels alone and only it is refused.
fn take_batch(waiting: &mut Vec<Pending>) -> (Vec<v1::BatchOp>, Vec<Reply>) {
    let mut bytes: usize = 0;
    let mut count = 0;
    for pending in waiting.iter() {
        let len = pending.op.encoded_len();
        // The field tag (1 byte) and the length prefix of a repeated message.
        let op_bytes = 1 + prost::length_delimiter_len(len) + len;
        if count > 0 && bytes.saturating_add(op_bytes) > BATCH_REQUEST_BYTES_MAX {
            break;
        }
        bytes = bytes.saturating_add(op_bytes);
        count += 1;
    }
    debug_assert!((1..=BATCH_OPS_MAX).contains(&count));
    waiting
        .drain(..count)
        .map(|pending| (pending.op, pending.reply))
        .unzip()
}

async fn send_batch<S, Fut>(
    send: Arc<S>,
    batch_timeout: Duration,
    ops: Vec<v1::BatchOp>,
    replies: Vec<Reply>,
    permit: Arc<OwnedSemaphorePermit>,
) where
    S: Fn(v1::BatchRequest) -> Fut,
    Fut: Future<Output = Result<v1::BatchResponse, Status>>,
{
    let ops_len = ops.len();
    let result = match tokio::time::timeout(batch_timeout, send(v1::BatchRequest { ops })).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Status::deadline_exceeded(format!(
            "batch of {ops_len} operation(s): no answer within {} ms",
            batch_timeout.as_millis()
        ))),
    };
    drop(permit);
    let results = result.and_then(|response| {
        if response.results.len() == ops_len {
            Ok(response.results)
        } else {
            Err(Status::internal(format!(
                "the server answered {} results to a batch of {ops_len} operations",
                response.results.len()
            )))
        }
    });
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let answer = result
                    .result
                    .ok_or_else(|| Status::internal("the server's batch result is empty"));
                // The caller may have given up meanwhile; then nobody needs the answer.
                let _ = reply.send(answer);
            }
        }
        // The whole RPC failed (transport, timeout, a status for the batch) or its answer
        // does not match it: every operation in it gets that status, metadata and leader
        // hint included.
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::channel::leader_hint;

    /// A fake node: records each batch's operation count, waits for the gate, then answers
    /// each reserve with a grant whose reservation id is parsed from its request id, and a
    /// request id starting with `bad` with INVALID_ARGUMENT.
    #[derive(Clone)]
    struct FakeNode {
        gate: Arc<Semaphore>,
        batches: Arc<Mutex<Vec<usize>>>,
        sent: mpsc::UnboundedSender<usize>,
    }

    impl FakeNode {
        fn new() -> (FakeNode, mpsc::UnboundedReceiver<usize>) {
            let (sent, batches_sent) = mpsc::unbounded_channel();
            let node = FakeNode {
                gate: Arc::new(Semaphore::new(0)),
                batches: Arc::new(Mutex::new(Vec::new())),
                sent,
            };
            (node, batches_sent)
        }

        fn coalescer(&self) -> Coalescer {
            let node = self.clone();
            Coalescer::start(
                move |request| {
                    let node = node.clone();
                    async move { node.answer(request).await }
                },
                Duration::from_secs(30),
            )
        }

        async fn answer(&self, request: v1::BatchRequest) -> Result<v1::BatchResponse, Status> {
            self.batches.lock().unwrap().push(request.ops.len());
            let _ = self.sent.send(request.ops.len());
            self.gate.acquire().await.unwrap().forget();
            let results = request
                .ops
                .into_iter()
                .map(|op| {
                    let Some(Op::Reserve(reserve)) = op.op else {
                        panic!("the tests send reserves only");
                    };
                    let answer = if reserve.request_id.starts_with("bad") {
                        Answer::Error(v1::BatchError {
                            code: Code::InvalidArgument.into(),
                            message: format!("{} is bad", reserve.request_id),
                            leader: String::new(),
                        })
                    } else {
                        Answer::Reserve(granted(reserve.request_id.parse().unwrap()))
                    };
                    v1::BatchResult {
                        result: Some(answer),
                    }
                })
                .collect();
            Ok(v1::BatchResponse { results })
        }

        fn open(&self) {
            self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }

        fn batches(&self) -> Vec<usize> {
            self.batches.lock().unwrap().clone()
        }
    }

    fn granted(reservation_id: u64) -> v1::ReserveResponse {
        v1::ReserveResponse {
            decision: Some(v1::reserve_response::Decision::Granted(v1::Granted {
                reservation_id,
                expires_at_ms: 0,
                tightest: None,
            })),
            applied: None,
        }
    }

    fn reserve(request_id: impl Into<String>) -> v1::ReserveRequest {
        v1::ReserveRequest {
            request_id: request_id.into(),
            tenant: "acme".into(),
            ..Default::default()
        }
    }

    fn reservation_id(response: Response<v1::ReserveResponse>) -> u64 {
        match response.into_inner().decision {
            Some(v1::reserve_response::Decision::Granted(granted)) => granted.reservation_id,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    /// Occupies every slot in flight with a one-operation batch held at the fake node's
    /// gate, so that what is submitted next waits in the queue. Each is submitted only once
    /// the previous one has left, so none of them share a batch.
    async fn fill_slots(
        coalescer: &Coalescer,
        batches_sent: &mut mpsc::UnboundedReceiver<usize>,
    ) -> Vec<tokio::task::JoinHandle<Result<Response<v1::ReserveResponse>, Status>>> {
        let mut held = Vec::new();
        for slot in 0..COALESCER_BATCHES_IN_FLIGHT_MAX {
            let coalescer = coalescer.clone();
            held.push(tokio::spawn(async move {
                coalescer
                    .submit(reserve(format!("{}", 1_000_000 + slot)))
                    .await
            }));
            assert_eq!(batches_sent.recv().await, Some(1));
        }
        held
    }

    /// Waits until `count` operations are queued: they were submitted by spawned tasks.
    async fn until_queued(coalescer: &Coalescer, count: usize) {
        while coalescer.queued() < count {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn concurrent_operations_share_one_batch_and_each_gets_its_own_answer() {
        const OPS: u64 = 300;
        let (node, mut batches_sent) = FakeNode::new();
        let coalescer = node.coalescer();
        let held = fill_slots(&coalescer, &mut batches_sent).await;
        let mut callers = Vec::new();
        for id in 0..OPS {
            let coalescer = coalescer.clone();
            callers.push(tokio::spawn(async move {
                coalescer.submit(reserve(id.to_string())).await
            }));
        }
        until_queued(&coalescer, OPS as usize).await;
        node.open();
        for (id, caller) in callers.into_iter().enumerate() {
            let response = caller.await.unwrap().expect("granted");
            assert_eq!(reservation_id(response), id as u64, "each its own answer");
        }
        for (slot, caller) in held.into_iter().enumerate() {
            let response = caller.await.unwrap().expect("granted");
            assert_eq!(reservation_id(response), 1_000_000 + slot as u64);
        }
        assert_eq!(
            node.batches(),
            [1, 1, 1, 1, OPS as usize],
            "the {OPS} operations that waited left as one batch"
        );
    }

    #[tokio::test]
    async fn a_lone_operation_leaves_at_once() {
        let (node, mut batches_sent) = FakeNode::new();
        node.open();
        let coalescer = node.coalescer();
        let response = coalescer.submit(reserve("7")).await.unwrap();
        assert_eq!(reservation_id(response), 7);
        assert_eq!(batches_sent.recv().await, Some(1));
    }

    #[tokio::test]
    async fn one_operations_error_does_not_fail_the_others() {
        let (node, mut batches_sent) = FakeNode::new();
        let coalescer = node.coalescer();
        let held = fill_slots(&coalescer, &mut batches_sent).await;
        let ids = ["1", "bad-2", "3"];
        let mut callers = Vec::new();
        for id in ids {
            let coalescer = coalescer.clone();
            callers.push(tokio::spawn(
                async move { coalescer.submit(reserve(id)).await },
            ));
        }
        until_queued(&coalescer, ids.len()).await;
        node.open();
        let mut results = Vec::new();
        for caller in callers {
            results.push(caller.await.unwrap());
        }
        let mut results = results.into_iter();
        assert_eq!(reservation_id(results.next().unwrap().unwrap()), 1);
        let error = results.next().unwrap().unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(error.message(), "bad-2 is bad");
        assert_eq!(reservation_id(results.next().unwrap().unwrap()), 3);
        drop(held);
        assert_eq!(node.batches(), [1, 1, 1, 1, 3]);
    }

    #[tokio::test]
    async fn a_not_leader_error_keeps_its_leader_hint() {
        let coalescer = Coalescer::start(
            |request: v1::BatchRequest| async move {
                let results = request
                    .ops
                    .iter()
                    .map(|_| v1::BatchResult {
                        result: Some(Answer::Error(v1::BatchError {
                            code: Code::Unavailable.into(),
                            message: "node 2 is not the leader".into(),
                            leader: "127.0.0.1:7003".into(),
                        })),
                    })
                    .collect();
                Ok(v1::BatchResponse { results })
            },
            Duration::from_secs(30),
        );
        let status = coalescer.submit(reserve("1")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            leader_hint(status.metadata(), false).as_deref(),
            Some("http://127.0.0.1:7003")
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_operation_in_it_with_the_leader_hint() {
        const OPS: usize = 20;
        let coalescer = Coalescer::start(
            |_request: v1::BatchRequest| async move {
                let mut status = Status::unavailable("node 1 is not the leader");
                status
                    .metadata_mut()
                    .insert(LEADER_METADATA_KEY, "127.0.0.1:7002".parse().unwrap());
                Err(status)
            },
            Duration::from_secs(30),
        );
        let mut callers = Vec::new();
        for id in 0..OPS {
            let coalescer = coalescer.clone();
            callers.push(tokio::spawn(async move {
                coalescer.submit(reserve(id.to_string())).await
            }));
        }
        for caller in callers {
            let status = caller.await.unwrap().unwrap_err();
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(status.message(), "node 1 is not the leader");
            assert_eq!(
                leader_hint(status.metadata(), false).as_deref(),
                Some("http://127.0.0.1:7002")
            );
        }
    }

    #[tokio::test]
    async fn a_dropped_caller_is_skipped_and_does_not_disturb_the_others() {
        let (node, mut batches_sent) = FakeNode::new();
        let coalescer = node.coalescer();
        let held = fill_slots(&coalescer, &mut batches_sent).await;
        let gone = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.submit(reserve("1")).await })
        };
        until_queued(&coalescer, 1).await;
        let stays = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.submit(reserve("2")).await })
        };
        until_queued(&coalescer, 2).await;
        // What an attempt timeout does: drop the caller's future while its op waits.
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        node.open();
        assert_eq!(reservation_id(stays.await.unwrap().unwrap()), 2);
        drop(held);
        assert_eq!(
            node.batches(),
            [1, 1, 1, 1, 1],
            "the abandoned operation was not sent"
        );
    }

    #[tokio::test]
    async fn a_batch_whose_task_dies_answers_unavailable_instead_of_hanging() {
        let coalescer = Coalescer::start(
            |_request: v1::BatchRequest| async move {
                panic!("the batch task dies");
            },
            Duration::from_secs(30),
        );
        let status = coalescer.submit(reserve("1")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("without an answer"), "{status:?}");
    }

    #[tokio::test]
    async fn a_full_queue_answers_unavailable_at_once() {
        let (node, mut batches_sent) = FakeNode::new();
        let coalescer = node.coalescer();
        let _held = fill_slots(&coalescer, &mut batches_sent).await;
        let mut waiting = Vec::new();
        for id in 0..COALESCER_QUEUE_OPS_MAX {
            let coalescer = coalescer.clone();
            waiting.push(tokio::spawn(async move {
                coalescer.submit(reserve(id.to_string())).await
            }));
        }
        until_queued(&coalescer, COALESCER_QUEUE_OPS_MAX).await;
        let status = coalescer.submit(reserve("1")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("COALESCER_QUEUE_OPS_MAX"),
            "{status:?}"
        );
        node.open();
        for caller in waiting {
            caller
                .await
                .unwrap()
                .expect("queued operations are answered");
        }
        assert_eq!(
            node.batches()[COALESCER_BATCHES_IN_FLIGHT_MAX..],
            [BATCH_OPS_MAX; COALESCER_BATCHES_IN_FLIGHT_MAX],
            "a full queue leaves as full batches"
        );
    }

    #[tokio::test]
    async fn operations_beyond_the_byte_bound_go_in_another_batch() {
        let (node, mut batches_sent) = FakeNode::new();
        let coalescer = node.coalescer();
        let held = fill_slots(&coalescer, &mut batches_sent).await;
        // Three fit under BATCH_REQUEST_BYTES_MAX, the fourth does not.
        let fingerprint = "f".repeat(BATCH_REQUEST_BYTES_MAX / 3 - 100);
        let mut callers = Vec::new();
        for id in 0..4 {
            let coalescer = coalescer.clone();
            let request = v1::ReserveRequest {
                fingerprint: fingerprint.clone(),
                ..reserve(id.to_string())
            };
            callers.push(tokio::spawn(async move { coalescer.submit(request).await }));
        }
        until_queued(&coalescer, 4).await;
        node.open();
        for (id, caller) in callers.into_iter().enumerate() {
            assert_eq!(reservation_id(caller.await.unwrap().unwrap()), id as u64);
        }
        drop(held);
        assert_eq!(node.batches()[COALESCER_BATCHES_IN_FLIGHT_MAX..], [3, 1]);
    }

    #[test]
    fn a_malformed_hint_is_dropped_but_the_error_kept() {
        let status = error_status(v1::BatchError {
            code: Code::Unavailable.into(),
            message: "no leader".into(),
            leader: "bad\nhint".into(),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.metadata().get(LEADER_METADATA_KEY).is_none());
    }
}
