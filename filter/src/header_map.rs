//! Reading the proxy-wasm serialised header map in place.
//!
//! `proxy_get_header_map_pairs` returns every header in one buffer: a u32
//! count, then a (u32 name length, u32 value length) pair per header, then
//! each name and value followed by a NUL (little-endian; the format of
//! proxy-wasm ABI 0.2.1 as Envoy's `exportPairs` writes it). Fetching the
//! whole map costs one host call — fewer than one call per header we need —
//! and reading it in place allocates nothing per header. It is also the only
//! way to see duplicated headers: a single-value lookup returns the first.

/// A borrowed view of a serialised header map. Malformed input yields no
/// headers rather than an error: the filter must keep serving.
#[derive(Debug, Clone, Copy)]
pub struct HeaderMap<'a> {
    count: usize,
    sizes: &'a [u8],
    data: &'a [u8],
}

/// Header pairs in the same serialised form: what the filter hands the
/// host (`proxy_send_local_response`, `dispatch_http_call`) and what hosts
/// other than Envoy (the what-if simulator, tests) hand [`HeaderMap::parse`].
pub fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let len = 4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

impl<'a> HeaderMap<'a> {
    pub fn parse(buf: &'a [u8]) -> Self {
        let empty = Self {
            count: 0,
            sizes: &[],
            data: &[],
        };
        let Some(count) = read_u32(buf, 0) else {
            return empty;
        };
        let count = count as usize;
        let Some(sizes_end) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
            return empty;
        };
        let (Some(sizes), Some(data)) = (buf.get(4..sizes_end), buf.get(sizes_end..)) else {
            return empty;
        };
        // Validate once so iteration needs no error paths. Every step is
        // checked: on wasm32 usize is 32 bits, so `k + v + 2` of two u32
        // lengths can itself wrap (release builds do not trap on it).
        let mut needed = 0usize;
        for i in 0..count {
            let (Some(k), Some(v)) = (read_u32(sizes, i * 8), read_u32(sizes, i * 8 + 4)) else {
                return empty;
            };
            needed = match entry_len(k, v).and_then(|n| needed.checked_add(n)) {
                Some(n) => n,
                None => return empty,
            };
        }
        if needed > data.len() {
            return empty;
        }
        Self { count, sizes, data }
    }

    pub fn iter(&self) -> HeaderIter<'a> {
        HeaderIter {
            map: *self,
            index: 0,
            offset: 0,
        }
    }

    /// The first value of `name` (lowercase, as Envoy stores names).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// Every value of `name`, in order, into `out` (cleared first).
    #[cfg(test)]
    pub fn get_all(&self, name: &str, out: &mut Vec<&'a [u8]>) {
        out.clear();
        out.extend(
            self.iter()
                .filter(|(n, _)| *n == name.as_bytes())
                .map(|(_, v)| v),
        );
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

pub struct HeaderIter<'a> {
    map: HeaderMap<'a>,
    index: usize,
    offset: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.map.count {
            return None;
        }
        let k = read_u32(self.map.sizes, self.index * 8)? as usize;
        let v = read_u32(self.map.sizes, self.index * 8 + 4)? as usize;
        let name = self.map.data.get(self.offset..self.offset + k)?;
        let value_at = self.offset + k + 1;
        let value = self.map.data.get(value_at..value_at + v)?;
        self.offset = value_at + v + 1;
        self.index += 1;
        Some((name, value))
    }
}

/// Bytes one header takes in the data section: name, NUL, value, NUL.
/// `None` when that does not fit a `usize` (possible on 32-bit targets).
fn entry_len(name_len: u32, value_len: u32) -> Option<usize> {
    usize::try_from(name_len)
        .ok()?
        .checked_add(usize::try_from(value_len).ok()?)?
        .checked_add(2)
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// Serialise pairs in the same format (the core's tests build requests
/// with it).
#[cfg(test)]
pub fn serialize<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let pairs: Vec<_> = pairs.into_iter().collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in &pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in &pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The value of cookie `name` in a `cookie` header value.
pub fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| trim(&pair[eq + 1..]))
    })
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_pairs_and_duplicates() {
        let buf = serialize([
            (&b":authority"[..], &b"reviews:9080"[..]),
            (b"traceparent", b"a"),
            (b"traceparent", b"b"),
            (b"empty", b""),
        ]);
        let map = HeaderMap::parse(&buf);
        assert_eq!(map.len(), 4);
        assert_eq!(map.get(":authority"), Some(&b"reviews:9080"[..]));
        assert_eq!(map.get("empty"), Some(&b""[..]));
        let mut all = Vec::new();
        map.get_all("traceparent", &mut all);
        assert_eq!(all, vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(map.get("missing"), None);
    }

    #[test]
    fn truncated_buffers_yield_nothing() {
        let buf = serialize([(&b"a"[..], &b"b"[..])]);
        for cut in 0..buf.len() - 1 {
            assert!(HeaderMap::parse(&buf[..cut]).is_empty(), "cut {cut}");
        }
        assert!(HeaderMap::parse(&[0xff, 0xff, 0xff, 0xff]).is_empty());
    }

    #[test]
    fn entry_lengths_never_wrap() {
        // Exact where usize holds the sum (64-bit hosts), rejected where it
        // does not (wasm32): never a wrapped, too-small length.
        let widest = entry_len(u32::MAX, u32::MAX).map(|n| n as u64);
        let exact = 2 * u64::from(u32::MAX) + 2;
        assert_eq!(widest, (usize::BITS > 32).then_some(exact));
        assert_eq!(entry_len(3, 4), Some(9));
        // A header claiming 4 GiB of name yields nothing, whatever the width.
        let mut buf = 1u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(b"a\0\0");
        assert!(HeaderMap::parse(&buf).is_empty());
    }

    #[test]
    fn cookies() {
        assert_eq!(
            cookie(b"a=1; session=abc ;b=2", "session"),
            Some(&b"abc"[..])
        );
        assert_eq!(cookie(b"a=1", "session"), None);
        assert_eq!(cookie(b"session", "session"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let map = HeaderMap::parse(&bytes);
            let n = map.iter().count();
            prop_assert!(n <= map.len());
            let _ = cookie(&bytes, "x");
        }

        #[test]
        fn round_trips(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..16), proptest::collection::vec(any::<u8>(), 0..16)), 0..12)) {
            let buf = serialize(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            let map = HeaderMap::parse(&buf);
            let back: Vec<(Vec<u8>, Vec<u8>)> = map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(back, pairs);
        }
    }
}
