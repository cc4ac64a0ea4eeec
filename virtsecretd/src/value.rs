//! Secret values in memory: bytes that are wiped when dropped and that no `Debug` or `Display`
//! ever prints.

use zeroize::Zeroizing;

/// The most bytes a value may have: libvirt's `REMOTE_SECRET_VALUE_MAX`.
pub const MAX_VALUE_LEN: usize = 65536;

/// A secret's value in clear. The buffer is zeroed when the value is dropped; `Debug` prints
/// neither the bytes nor their number.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Takes ownership of `bytes` (which are wiped when the value is dropped).
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(Zeroizing::new(bytes))
    }

    /// A value with room for `capacity` bytes, so that growing it up to there never leaves a
    /// copy behind in freed memory.
    pub fn with_capacity(capacity: usize) -> Self {
        SecretValue(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The buffer, for in-place encryption and decryption.
    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands the buffer over to a protobuf message, which the gRPC layer encodes and drops
    /// without wiping (see "What is not protected" in docs/secrets.md). No copy is made.
    pub fn into_message_bytes(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_neither_bytes_nor_length() {
        let value = SecretValue::new(b"hunter2-0123456789".to_vec());
        let shown = format!("{value:?} {value:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("18"), "{shown}");
        assert!(!shown.contains("104"), "{shown}"); // b'h' as a number
    }
}
