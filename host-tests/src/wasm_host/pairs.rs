//! Header maps and their wire format.
//!
//! ABI 0.2.1 passes a map as one buffer: a little-endian `u32` count, then a
//! `u32` key size and a `u32` value size per pair, then each key and each
//! value followed by a NUL byte (proxy-wasm-cpp-host `src/pairs_util.cc`,
//! proxy-wasm Rust SDK 0.2.5 `hostcalls::utils::serialize_map`). Decoding is
//! fallible: the bytes come from the module and a malformed buffer is a
//! `BadArgument`, never a host panic.
//!
//! [`HeaderMap`] keeps Envoy's semantics: keys are lower-cased on insert, the
//! order of insertion is kept, a key may repeat, and a single-value lookup
//! returns the first value (Envoy `Context::getHeaderMapValue`).

/// An ordered multimap of header names to (byte) values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, Vec<u8>)>,
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from string pairs, lower-casing the keys as Envoy does.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut map = Self::new();
        for (k, v) in pairs {
            map.add(k.as_ref(), v.as_ref());
        }
        map
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All pairs in order, values as bytes.
    pub fn entries(&self) -> &[(String, Vec<u8>)] {
        &self.entries
    }

    /// All pairs in order, values lossily decoded as UTF-8.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// The first value of `key` (case-insensitive), as Envoy returns it.
    pub fn get_bytes(&self, key: &str) -> Option<&[u8]> {
        let key = key.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `key` as a string (lossy).
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_bytes(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: &str) -> Vec<String> {
        let key = key.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// Appends a value (Envoy `addCopy`).
    pub fn add(&mut self, key: &str, value: &[u8]) {
        self.entries
            .push((key.to_ascii_lowercase(), value.to_vec()));
    }

    /// Replaces every value of `key` by one value, or appends it (Envoy `setCopy`:
    /// the first occurrence keeps its position, the others are removed).
    pub fn replace(&mut self, key: &str, value: &[u8]) {
        let key = key.to_ascii_lowercase();
        let mut seen = false;
        self.entries.retain_mut(|(k, v)| {
            if *k != key {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *v = value.to_vec();
            true
        });
        if !seen {
            self.entries.push((key, value.to_vec()));
        }
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: &str) {
        let key = key.to_ascii_lowercase();
        self.entries.retain(|(k, _)| *k != key);
    }

    /// Replaces the whole content.
    pub fn set_all(&mut self, pairs: Vec<(String, Vec<u8>)>) {
        self.entries.clear();
        for (k, v) in pairs {
            self.add(&k, &v);
        }
    }

    /// This map in the ABI wire format.
    pub fn encode(&self) -> Vec<u8> {
        encode_pairs(
            self.entries
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice())),
        )
    }
}

/// Serializes pairs in the ABI 0.2.1 map format.
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let list: Vec<(&[u8], &[u8])> = pairs.collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for (k, v) in &list {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in &list {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Why a map buffer from the module could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairsError(pub String);

/// Parses the ABI 0.2.1 map format. An empty buffer is an empty map (the SDK
/// and Envoy both treat it so). Keys that are not UTF-8 are rejected.
pub fn decode_pairs(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PairsError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let read_u32 = |at: usize| -> Result<usize, PairsError> {
        let slice = bytes
            .get(at..at + 4)
            .ok_or_else(|| PairsError(format!("truncated map at byte {at}")))?;
        let mut word = [0u8; 4];
        word.copy_from_slice(slice);
        Ok(u32::from_le_bytes(word) as usize)
    };
    let count = read_u32(0)?;
    let header = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|n| *n <= bytes.len())
        .ok_or_else(|| {
            PairsError(format!(
                "map claims {count} pairs, buffer has {} bytes",
                bytes.len()
            ))
        })?;
    let mut data = header;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let key_len = read_u32(4 + i * 8)?;
        let value_len = read_u32(8 + i * 8)?;
        let take = |at: usize, len: usize| -> Result<&[u8], PairsError> {
            bytes
                .get(
                    at..at
                        .checked_add(len)
                        .ok_or_else(|| PairsError("size overflow".into()))?,
                )
                .ok_or_else(|| PairsError(format!("pair {i} runs past the end of the buffer")))
        };
        let key = take(data, key_len)?;
        data += key_len + 1;
        let value = take(data, value_len)?;
        data += value_len + 1;
        let key = std::str::from_utf8(key)
            .map_err(|_| PairsError(format!("pair {i}: key is not UTF-8")))?
            .to_string();
        out.push((key, value.to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_matches_sdk_layout() {
        let map = HeaderMap::from_pairs([(":method", "GET"), ("Powered-By", "proxy-wasm")]);
        let bytes = map.encode();
        let mut expected = vec![2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 10, 0, 0, 0, 10, 0, 0, 0];
        expected.extend_from_slice(b":method\0GET\0powered-by\0proxy-wasm\0");
        assert_eq!(bytes, expected);
        let decoded = decode_pairs(&bytes).unwrap();
        assert_eq!(
            decoded[1],
            ("powered-by".to_string(), b"proxy-wasm".to_vec())
        );
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(decode_pairs(&[5, 0, 0, 0]).is_err());
        assert!(decode_pairs(&[1, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_pairs(&[1, 0]).is_err());
    }

    #[test]
    fn replace_keeps_first_position() {
        let mut map = HeaderMap::from_pairs([("a", "1"), ("b", "2"), ("a", "3")]);
        map.replace("A", b"9");
        assert_eq!(
            map.pairs(),
            vec![("a".into(), "9".into()), ("b".into(), "2".into())]
        );
    }
}
