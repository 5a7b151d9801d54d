//! What one node's channel carries besides the messages: the bearer token going out
//! (`Auth`, `AuthChannel`) and the leader hint coming back (`leader_hint`). Both the pool
//! and the coalescer use them; this module knows neither.

use tollgate_proto::LEADER_METADATA_KEY;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::config::normalise_endpoint;
use crate::error::Error;

/// A channel that adds `authorization: Bearer <token>` to every request.
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// Adds the configured bearer token to each request, and the caller's trace context with the
/// `otel` feature (the interceptor runs in the calling task, inside its span).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Auth {
    header: Option<AsciiMetadataValue>,
}

impl Auth {
    /// An interceptor for `token`; `None` sends no credentials.
    pub fn new(token: Option<&str>) -> Result<Auth, Error> {
        let header = match token {
            None => None,
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                Error::Invalid("token contains characters not allowed in a header".into())
            })?),
        };
        Ok(Auth { header })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        crate::trace::inject(request.metadata_mut());
        Ok(request)
    }
}

/// The leader's address from an UNAVAILABLE status, normalised for a client with or
/// without `tls`; `None` when the node named no leader or named something that is not an
/// address.
pub fn leader_hint(metadata: &MetadataMap, tls: bool) -> Option<String> {
    let raw = metadata.get(LEADER_METADATA_KEY)?.to_str().ok()?;
    match normalise_endpoint(raw, tls) {
        Ok(addr) => Some(addr),
        Err(error) => {
            tracing::warn!(hint = raw, %error, "ignoring unusable leader hint");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata_with(hint: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(LEADER_METADATA_KEY, hint.parse().unwrap());
        metadata
    }

    #[test]
    fn leader_hint_is_parsed_and_normalised() {
        assert_eq!(
            leader_hint(&metadata_with("10.0.0.2:7001"), false),
            Some("http://10.0.0.2:7001".into())
        );
        assert_eq!(
            leader_hint(&metadata_with("10.0.0.2:7001"), true),
            Some("https://10.0.0.2:7001".into())
        );
        assert_eq!(
            leader_hint(&metadata_with("http://n2:7001"), false),
            Some("http://n2:7001".into())
        );
        assert_eq!(leader_hint(&metadata_with(""), false), None);
        assert_eq!(leader_hint(&metadata_with("no-port"), false), None);
        assert_eq!(leader_hint(&MetadataMap::new(), false), None);
    }

    #[test]
    fn token_with_newline_is_rejected() {
        assert!(Auth::new(Some("abc")).is_ok());
        assert!(matches!(Auth::new(Some("a\nb")), Err(Error::Invalid(_))));
    }
}
