//! The codec of every generated service: prost's, except that a message that does not
//! decode is the caller's fault (INVALID_ARGUMENT), not the node's (tonic's INTERNAL).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstCodec;

/// `tonic_prost::ProstCodec` with undecodable messages answered INVALID_ARGUMENT. Named by
/// `codec_path` in `build.rs`, so clients and servers of this crate both use it.
pub struct TollgateCodec<T, U> {
    prost: ProstCodec<T, U>,
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for TollgateCodec<T, U> {
    fn default() -> Self {
        Self {
            prost: ProstCodec::default(),
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for TollgateCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = InvalidArgumentDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder(self.prost.decoder())
    }
}

/// A decoder whose every error is INVALID_ARGUMENT, with the inner decoder's reason.
pub struct InvalidArgumentDecoder<D>(D);

impl<D: Decoder<Error = Status>> Decoder for InvalidArgumentDecoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0
            .decode(buf)
            .map_err(|status| Status::invalid_argument(status.message().to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
