//! The text of an id, kept inline when short.
//!
//! Ids are short names (`agent-042`, `llm:gpt-x`, `req-000001234`): kept inline up to
//! `INLINE_BYTES`, an id is 24 bytes like a `String`, cloning it allocates nothing, and
//! reading it touches no cache line beyond the one holding it (an agent's name sits in
//! the agent's record). Longer ids (up to `ID_BYTES_MAX`) are boxed. It serializes as a
//! string: the same bytes as the `String` it replaced, in postcard and in JSON.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest text kept inline.
pub const INLINE_BYTES: usize = 22;

#[derive(Clone)]
pub struct IdText(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Boxed(Box<str>),
}

const _: () = assert!(std::mem::size_of::<IdText>() == 24);

impl IdText {
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Boxed(text) => text.as_bytes(),
        }
    }

    /// The text. Inline bytes were copied from a `str` whole, so they are always UTF-8.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Repr::Boxed(text) => text,
        }
    }
}

impl From<String> for IdText {
    fn from(text: String) -> Self {
        if text.len() <= INLINE_BYTES {
            let mut bytes = [0; INLINE_BYTES];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            IdText(Repr::Inline {
                len: text.len() as u8,
                bytes,
            })
        } else {
            IdText(Repr::Boxed(text.into_boxed_str()))
        }
    }
}

impl PartialEq for IdText {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IdText {}

/// Byte order, which is `str`'s order.
impl Ord for IdText {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialOrd for IdText {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for IdText {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for IdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for IdText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for IdText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(IdText::from)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Inline or boxed, it reads, orders, compares and serializes as the `String`.
        #[test]
        fn behaves_as_the_string(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let (x, y) = (IdText::from(a.clone()), IdText::from(b.clone()));
            prop_assert_eq!(x.as_str(), a.as_str());
            prop_assert_eq!(x.as_bytes(), a.as_bytes());
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(format!("{x:?}"), format!("{a:?}"));
            prop_assert_eq!(postcard::to_allocvec(&x).unwrap(), postcard::to_allocvec(&a).unwrap());
            prop_assert_eq!(serde_json::to_string(&x).unwrap(), serde_json::to_string(&a).unwrap());
            let back: IdText = postcard::from_bytes(&postcard::to_allocvec(&a).unwrap()).unwrap();
            prop_assert_eq!(back.as_str(), a.as_str());
        }
    }
}
