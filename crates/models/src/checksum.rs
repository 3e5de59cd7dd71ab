//! FNV-1a 64, the one non-cryptographic hash of the workspace besides xxh3: kept where a value
//! is stored or seeds something that must stay as it is (the `fnv1a64` checksums of feature
//! shards, docs/FORMATS.md; the streams of random weights), because it is easy to recompute
//! anywhere without a library.

/// FNV-1a, 64 bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3, one byte at a time).
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a64 {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    pub fn finish(&self) -> u64 {
        self.0
    }

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> u64 {
        let mut h = Self::default();
        h.update(bytes);
        h.finish()
    }

    /// The hash of `bytes` as 16 lower-case hex digits (as stored in files).
    pub fn hex(bytes: &[u8]) -> String {
        format!("{:016x}", Self::of(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(Fnv1a64::hex(b""), "cbf29ce484222325");
        assert_eq!(Fnv1a64::hex(b"a"), "af63dc4c8601ec8c");
        assert_eq!(Fnv1a64::hex(b"foobar"), "85944171f73967e8");
        assert_eq!(Fnv1a64::of(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
