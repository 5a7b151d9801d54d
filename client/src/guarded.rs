//! `Client::guarded`: reserve, make the call, settle, in one expression, so the caller cannot
//! forget the settling. The call says whether it happened; that alone decides between commit,
//! release and the abandoned settlement at the estimate. Nothing here retries or sleeps.

use std::future::Future;

use crate::client::Client;
use crate::error::Error;
use crate::reservation::ReservationInfo;
use crate::types::{CommitInfo, ReserveRequest, Spend};

/// How the call given to [`Client::guarded`] failed. Whether the call happened decides
/// whether the estimate is given back, so the call must say so; `?` on the call's own error
/// type `E` gives [`Failed`](Self::Failed), the safe side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError<E> {
    /// The call was not made (e.g. the request failed validation before it was sent): the
    /// reservation is released and nothing is charged.
    NotCalled(E),
    /// The call failed and may have happened (a timeout, a connection cut mid-response, an
    /// unreadable answer): the reservation is settled at its estimate, flagged abandoned.
    Failed(E),
}

impl<E> From<E> for CallError<E> {
    fn from(error: E) -> Self {
        CallError::Failed(error)
    }
}

/// Why [`Client::guarded`] did not return the call's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError<E> {
    /// The reserve did not succeed (denied, frozen, tripped, unavailable): the call was not
    /// made.
    #[error("reserving: {0}")]
    Reserve(#[source] Error),
    /// The call said it was not made; the reservation was released.
    #[error("the call was not made: {0}")]
    NotCalled(E),
    /// The call failed and may have happened; the reservation was settled at its estimate,
    /// flagged abandoned.
    #[error("the call failed: {0}")]
    Failed(E),
    /// The call succeeded but its spend could not be committed: the hold expires and is
    /// charged at its estimate. The call's value is lost with it; a caller that needs it
    /// even then uses [`Client::reserve`] and [`Reservation::commit`](crate::Reservation::commit).
    #[error("committing the call's spend: {0}")]
    Commit(#[source] Error),
}

impl Client {
    /// Reserves `request`, runs `call` with what was reserved, and settles the reservation
    /// by how the call ended:
    ///
    /// - `Ok((value, spend))`: commits `spend` ([`Amounts`](crate::Amounts), or
    ///   [`Usage`](crate::Usage) for the cluster to price) and returns `value` with what the
    ///   commit did;
    /// - `Err(CallError::NotCalled(e))`: releases, nothing is charged;
    /// - `Err(CallError::Failed(e))`, including any `?` on the call's own errors: settles at
    ///   the estimate, flagged abandoned, because the call may have happened.
    ///
    /// If `call` panics, or the returned future is dropped mid-call, the reservation is
    /// settled as abandoned in the background, as any dropped [`Reservation`](crate::Reservation) is.
    ///
    /// ```no_run
    /// use tollgate_client::{CallError, Client, ClientConfig, GuardError, ReserveRequest, Usage};
    ///
    /// #[derive(Debug)]
    /// enum LlmError { PromptTooLong, Timeout }
    /// # impl std::fmt::Display for LlmError {
    /// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") }
    /// # }
    /// # async fn send_to_provider(_prompt: &str) -> Result<(String, u64, u64), LlmError> {
    /// #     Ok((String::new(), 0, 0))
    /// # }
    ///
    /// async fn summarise(client: &Client, prompt: &str) -> Result<String, GuardError<LlmError>> {
    ///     let request = ReserveRequest::new("acme", "support-bot", "llm:gpt-4o")
    ///         .usage(Usage::new("gpt-4o", 2_000, 1_024)); // the prompt and max output tokens
    ///     let (summary, committed) = client
    ///         .guarded(request, |_reservation| async move {
    ///             if prompt.len() > 100_000 {
    ///                 // Nothing was sent: give the estimate back.
    ///                 return Err(CallError::NotCalled(LlmError::PromptTooLong));
    ///             }
    ///             // A `?` here means the call may have happened: charged at the estimate.
    ///             let (text, input_tokens, output_tokens) = send_to_provider(prompt).await?;
    ///             Ok((text, Usage::new("gpt-4o", input_tokens, output_tokens)))
    ///         })
    ///         .await?;
    ///     tracing::info!(cost_micros = committed.cost_micros, "summarised");
    ///     Ok(summary)
    /// }
    /// # let _ = LlmError::Timeout;
    /// ```
    pub async fn guarded<T, S, E, F, Fut>(
        &self,
        request: ReserveRequest,
        call: F,
    ) -> Result<(T, CommitInfo), GuardError<E>>
    where
        F: FnOnce(ReservationInfo) -> Fut,
        Fut: Future<Output = Result<(T, S), CallError<E>>>,
        S: Into<Spend>,
    {
        let reservation = self.reserve(request).await.map_err(GuardError::Reserve)?;
        let info = reservation.info();
        // The guard stays alive across the call: a panic or a cancellation drops it, and
        // its drop settles it as abandoned.
        match call(info).await {
            Ok((value, spend)) => {
                let committed = reservation
                    .commit_spend(spend.into())
                    .await
                    .map_err(GuardError::Commit)?;
                Ok((value, committed))
            }
            Err(CallError::NotCalled(error)) => {
                if let Err(release_error) = reservation.release().await {
                    tracing::warn!(%release_error, "releasing after a call that was not made failed; the hold expires");
                }
                Err(GuardError::NotCalled(error))
            }
            Err(CallError::Failed(error)) => {
                if let Err(settle_error) = reservation.commit_abandoned().await {
                    tracing::warn!(%settle_error, "settling after a failed call failed; the hold expires at its estimate");
                }
                Err(GuardError::Failed(error))
            }
        }
    }
}
