//! Trace and span identifiers, their lowercase-hex text form, and random id
//! generation.
//!
//! Every wire format the filter speaks (W3C `traceparent`, B3, the legacy
//! `x-trace-id` header and OTLP/JSON) writes ids as lowercase hex, and W3C and
//! B3 both forbid the all-zero id. Keeping the ids as fixed-size byte arrays
//! (`Copy`, no heap) and doing the hex work here means the parsers never
//! allocate and every format shares one, tested, definition of "valid id".

use core::fmt;

/// A source of random bytes for new trace and span ids and for the sampling
/// decision of new traces.
///
/// The proxy-wasm glue implements it over WASI `random_get`; tests implement it
/// deterministically. It is a trait (not a concrete RNG) so that the core stays
/// host-independent and reproducible in tests.
pub trait TraceRng {
    /// Fills `buf` entirely with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

impl<R: TraceRng + ?Sized> TraceRng for &mut R {
    fn fill(&mut self, buf: &mut [u8]) {
        (**self).fill(buf);
    }
}

/// The lowercase hex digit for the low four bits of `nibble`.
#[inline]
pub(crate) fn hex_char(nibble: u8) -> char {
    char::from(LOWER_HEX_DIGITS[usize::from(nibble & 0x0f)])
}

/// The lowercase hex digits, by value.
const LOWER_HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The value of one lowercase hex digit (`0-9a-f`); `None` for anything else,
/// uppercase included (W3C `HEXDIGLC`, B3 "lower-hex").
#[inline]
pub(crate) const fn lower_hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Each byte's lowercase hex digit value, [`NOT_HEX`] for any other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 256 {
        if let Some(v) = lower_hex_val(i as u8) {
            table[i] = v;
        }
        i += 1;
    }
    table
};
const NOT_HEX: u8 = 0x10;

/// Decodes exactly `2 * out.len()` lowercase hex digits from `src` into `out`.
/// Returns `false` (leaving `out` unspecified) on any other length or digit.
/// By table, with one check for the whole id: this runs on every request's
/// `traceparent` (48 digits).
pub(crate) fn decode_lower_hex(src: &[u8], out: &mut [u8]) -> bool {
    if src.len() != out.len() * 2 {
        return false;
    }
    let mut invalid = 0u8;
    for (pair, dst) in src.chunks_exact(2).zip(out.iter_mut()) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        invalid |= hi | lo;
        *dst = (hi << 4) | lo;
    }
    invalid & NOT_HEX == 0
}

/// Writes the lowercase hex form of `bytes` into `out`, two digits a byte,
/// as far as `out` reaches.
///
/// Why by table into a buffer: every traceparent written and every span
/// exported carries 48 hex digits; pushing them one `char` at a time costs
/// a capacity check and a UTF-8 encoding each.
pub(crate) fn write_hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = LOWER_HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = LOWER_HEX_DIGITS[usize::from(b & 0x0f)];
    }
}

/// The lowercase hex form of up to 16 `bytes` (an id), in `buf`.
fn hex_digits<'b>(bytes: &[u8], buf: &'b mut [u8; 32]) -> &'b [u8] {
    let n = bytes.len().min(16);
    write_hex_into(bytes, buf);
    &buf[..2 * n]
}

/// Appends the lowercase hex form of `bytes` (at most 16: an id or flags)
/// to `out`.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 32];
    // Hex digits are ASCII, so this never fails.
    if let Ok(hex) = core::str::from_utf8(hex_digits(bytes, &mut buf)) {
        out.push_str(hex);
    }
}

/// Appends the lowercase hex form of `bytes` (at most 16) to a byte buffer.
pub(crate) fn push_hex_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut buf = [0u8; 32];
    out.extend_from_slice(hex_digits(bytes, &mut buf));
}

/// Fills `buf` from `rng` and guarantees the result is not all zeros (an
/// all-zero id is invalid in W3C and B3). Retries a few times, then forces the
/// last byte to 1, so a broken RNG can never loop forever.
fn fill_non_zero(rng: &mut dyn TraceRng, buf: &mut [u8]) {
    for _ in 0..4 {
        rng.fill(buf);
        if buf.iter().any(|&b| b != 0) {
            return;
        }
    }
    if let Some(last) = buf.last_mut() {
        *last = 1;
    }
}

/// A 16-byte trace id. The all-zero value is invalid on every wire format;
/// parsers here never produce it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (W3C `parent-id`, B3 `SpanId`). The all-zero value is
/// invalid; parsers here never produce it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Length of the hex form.
    pub const HEX_LEN: usize = 32;

    /// `true` unless all bytes are zero.
    pub fn is_valid(&self) -> bool {
        self.0.iter().any(|&b| b != 0)
    }

    /// A new random, non-zero trace id.
    pub fn random(rng: &mut dyn TraceRng) -> Self {
        let mut b = [0u8; 16];
        fill_non_zero(rng, &mut b);
        TraceId(b)
    }

    /// Parses exactly 32 lowercase hex digits into a valid (non-zero) id.
    pub fn from_hex(src: &[u8]) -> Option<Self> {
        let mut b = [0u8; 16];
        if !decode_lower_hex(src, &mut b) {
            return None;
        }
        let id = TraceId(b);
        id.is_valid().then_some(id)
    }

    /// Parses a 64-bit (16 hex) or 128-bit (32 hex) lowercase id, left-padding
    /// a 64-bit one with zeros (the B3 to W3C mapping). Rejects all-zero ids.
    pub fn from_hex_64_or_128(src: &[u8]) -> Option<Self> {
        match src.len() {
            32 => Self::from_hex(src),
            16 => {
                let mut b = [0u8; 16];
                let (_, low) = b.split_at_mut(8);
                if !decode_lower_hex(src, low) {
                    return None;
                }
                let id = TraceId(b);
                id.is_valid().then_some(id)
            }
            _ => None,
        }
    }

    /// Appends the 32-digit lowercase hex form to `out`.
    pub fn write_hex(&self, out: &mut String) {
        push_hex(out, &self.0);
    }
}

impl SpanId {
    /// Length of the hex form.
    pub const HEX_LEN: usize = 16;

    /// `true` unless all bytes are zero.
    pub fn is_valid(&self) -> bool {
        self.0.iter().any(|&b| b != 0)
    }

    /// A new random, non-zero span id.
    pub fn random(rng: &mut dyn TraceRng) -> Self {
        let mut b = [0u8; 8];
        fill_non_zero(rng, &mut b);
        SpanId(b)
    }

    /// Parses exactly 16 lowercase hex digits into a valid (non-zero) id.
    pub fn from_hex(src: &[u8]) -> Option<Self> {
        let mut b = [0u8; 8];
        if !decode_lower_hex(src, &mut b) {
            return None;
        }
        let id = SpanId(b);
        id.is_valid().then_some(id)
    }

    /// Appends the 16-digit lowercase hex form to `out`.
    pub fn write_hex(&self, out: &mut String) {
        push_hex(out, &self.0);
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// Deterministic [`TraceRng`] for tests: a counter-seeded xorshift.
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TraceRng for TestRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            // xorshift64*
            let mut x = self.0 | 1;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            *b = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct ZeroRng;
    impl TraceRng for ZeroRng {
        fn fill(&mut self, buf: &mut [u8]) {
            buf.fill(0);
        }
    }

    #[test]
    fn hex_round_trip_and_lowercase_only() {
        let id = TraceId::from_hex(b"4bf92f3577b34da6a3ce929d0e0e4736").expect("valid");
        let mut s = String::new();
        id.write_hex(&mut s);
        assert_eq!(s, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(id.to_string(), s);
        assert!(TraceId::from_hex(b"4BF92F3577B34DA6A3CE929D0E0E4736").is_none());
        assert!(SpanId::from_hex(b"00F067AA0BA902B7").is_none());
        assert!(SpanId::from_hex(b"00f067aa0ba902b7").is_some());
    }

    #[test]
    fn zero_ids_rejected() {
        assert!(TraceId::from_hex(&[b'0'; 32]).is_none());
        assert!(SpanId::from_hex(&[b'0'; 16]).is_none());
        assert!(TraceId::from_hex_64_or_128(&[b'0'; 16]).is_none());
    }

    #[test]
    fn b3_64_bit_trace_id_left_padded() {
        let id = TraceId::from_hex_64_or_128(b"a3ce929d0e0e4736").expect("valid");
        assert_eq!(id.to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(TraceId::from_hex_64_or_128(b"a3ce929d0e0e473").is_none());
    }

    #[test]
    fn random_ids_never_zero_even_with_a_broken_rng() {
        assert!(TraceId::random(&mut ZeroRng).is_valid());
        assert!(SpanId::random(&mut ZeroRng).is_valid());
        let mut rng = TestRng(7);
        assert_ne!(SpanId::random(&mut rng), SpanId::random(&mut rng));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = TraceId::from_hex(&bytes);
            let _ = TraceId::from_hex_64_or_128(&bytes);
            let _ = SpanId::from_hex(&bytes);
        }

        #[test]
        fn write_then_parse_round_trips(t in any::<[u8; 16]>(), s in any::<[u8; 8]>()) {
            let (t, s) = (TraceId(t), SpanId(s));
            let (mut a, mut b) = (String::new(), String::new());
            t.write_hex(&mut a);
            s.write_hex(&mut b);
            prop_assert_eq!(TraceId::from_hex(a.as_bytes()), t.is_valid().then_some(t));
            prop_assert_eq!(SpanId::from_hex(b.as_bytes()), s.is_valid().then_some(s));
        }
    }
}
