//! Properties (`proxy_get_property` / `proxy_set_property`) encoded as Envoy
//! encodes them.
//!
//! A property path is a list of segments joined by NUL (the SDK 0.2.5 joins
//! with NUL and drops the trailing one; Envoy's `Context::getProperty` also
//! tolerates a trailing NUL). Envoy resolves the first segment to a CEL value
//! (`node`, `request`, `plugin_vm_id`, ...), walks the others through maps
//! (by key), messages (by field name) and lists (by index), and serializes
//! the leaf with `serializeValue` (`source/extensions/common/wasm/context.cc`):
//! strings and bytes raw, int64/uint64/double/timestamp/duration as 8
//! little-endian bytes, bool as one byte, a protobuf message as its binary
//! encoding, a map or list as a header-map buffer of serialized entries.
//!
//! So `node.metadata.CLUSTER_ID` (a `google.protobuf.Struct` string leaf) is
//! the raw string, `node.locality` is a serialized
//! `envoy.config.core.v3.Locality` (region = 1, zone = 2, sub_zone = 3) and
//! `node.locality.region` the raw string. This module holds the value model
//! and the few protobuf encoders needed for `Node`, `Locality` and `Struct`.
//!
//! `set_property` writes the stream's filter state (Envoy stores the bytes
//! under `wasm.<path>`; reading the same path back returns them). Outside an
//! HTTP stream there is no filter state and it is `NotFound`, as in Envoy.

use super::abi::Status;
use super::pairs::encode_pairs;
use std::collections::BTreeMap;

/// A CEL-like property value.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    String(String),
    Bytes(Vec<u8>),
    Int(i64),
    Uint(u64),
    Double(f64),
    Bool(bool),
    /// Nanoseconds since the Unix epoch.
    Timestamp(i64),
    /// Nanoseconds.
    Duration(i64),
    Map(BTreeMap<String, PropValue>),
    List(Vec<PropValue>),
    /// A protobuf message: its binary encoding, and its fields for navigation.
    Message {
        encoded: Vec<u8>,
        fields: BTreeMap<String, PropValue>,
    },
}

impl PropValue {
    /// Envoy's `serializeValue`.
    pub fn serialize(&self) -> Vec<u8> {
        match self {
            PropValue::String(s) => s.as_bytes().to_vec(),
            PropValue::Bytes(b) => b.clone(),
            PropValue::Int(i) | PropValue::Timestamp(i) | PropValue::Duration(i) => {
                i.to_le_bytes().to_vec()
            }
            PropValue::Uint(u) => u.to_le_bytes().to_vec(),
            PropValue::Double(d) => d.to_le_bytes().to_vec(),
            PropValue::Bool(b) => vec![u8::from(*b)],
            PropValue::Map(m) => {
                let entries: Vec<(Vec<u8>, Vec<u8>)> = m
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.serialize()))
                    .collect();
                encode_pairs(entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            }
            PropValue::List(l) => {
                let entries: Vec<Vec<u8>> = l.iter().map(|v| v.serialize()).collect();
                encode_pairs(entries.iter().map(|v| (v.as_slice(), &[][..])))
            }
            PropValue::Message { encoded, .. } => encoded.clone(),
        }
    }

    /// One navigation step.
    pub fn child(&self, segment: &str) -> Option<&PropValue> {
        match self {
            PropValue::Map(m) => m.get(segment),
            PropValue::Message { fields, .. } => fields.get(segment),
            PropValue::List(l) => segment.parse::<usize>().ok().and_then(|i| l.get(i)),
            _ => None,
        }
    }

    /// Converts JSON (e.g. node metadata written as JSON) the way Envoy sees a
    /// `google.protobuf.Struct`: numbers are doubles.
    pub fn from_json(v: &serde_json::Value) -> PropValue {
        match v {
            serde_json::Value::Null => PropValue::Bytes(Vec::new()),
            serde_json::Value::Bool(b) => PropValue::Bool(*b),
            serde_json::Value::Number(n) => PropValue::Double(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => PropValue::String(s.clone()),
            serde_json::Value::Array(a) => {
                PropValue::List(a.iter().map(PropValue::from_json).collect())
            }
            serde_json::Value::Object(o) => PropValue::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), PropValue::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Splits a NUL-separated property path. A trailing NUL is ignored.
pub fn split_path(path: &[u8]) -> Result<Vec<String>, Status> {
    let path = path.strip_suffix(&[0]).unwrap_or(path);
    if path.is_empty() {
        return Err(Status::NotFound);
    }
    path.split(|b| *b == 0)
        .map(|seg| String::from_utf8(seg.to_vec()).map_err(|_| Status::BadArgument))
        .collect()
}

/// Walks `path` below `root`.
pub fn resolve<'a>(root: &'a PropValue, rest: &[String]) -> Result<&'a PropValue, Status> {
    let mut value = root;
    for seg in rest {
        value = value.child(seg).ok_or(Status::NotFound)?;
    }
    Ok(value)
}

// --- minimal protobuf encoding -------------------------------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn len_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A proto3 string field: omitted when empty, as the protobuf encoder does.
fn string_field(field: u32, s: &str, out: &mut Vec<u8>) {
    if !s.is_empty() {
        len_field(field, s.as_bytes(), out);
    }
}

/// `google.protobuf.Value` for a JSON-like [`PropValue`].
fn encode_struct_value(v: &PropValue) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        PropValue::Double(d) => {
            varint(2 << 3 | 1, &mut out);
            out.extend_from_slice(&d.to_le_bytes());
        }
        PropValue::String(s) => len_field(3, s.as_bytes(), &mut out),
        PropValue::Bool(b) => {
            varint(4 << 3, &mut out);
            varint(u64::from(*b), &mut out);
        }
        PropValue::Map(m) => len_field(5, &encode_struct(m), &mut out),
        PropValue::List(l) => {
            let mut list = Vec::new();
            for item in l {
                len_field(1, &encode_struct_value(item), &mut list);
            }
            len_field(6, &list, &mut out);
        }
        // null_value = 1 (enum NULL_VALUE = 0).
        _ => {
            varint(1 << 3, &mut out);
            varint(0, &mut out);
        }
    }
    out
}

/// `google.protobuf.Struct` (`map<string, Value> fields = 1`).
pub fn encode_struct(fields: &BTreeMap<String, PropValue>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        let mut entry = Vec::new();
        len_field(1, k.as_bytes(), &mut entry);
        len_field(2, &encode_struct_value(v), &mut entry);
        len_field(1, &entry, &mut out);
    }
    out
}

/// `envoy.config.core.v3.Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl Locality {
    pub fn new(region: &str, zone: &str, sub_zone: &str) -> Self {
        Self {
            region: region.into(),
            zone: zone.into(),
            sub_zone: sub_zone.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        string_field(1, &self.region, &mut out);
        string_field(2, &self.zone, &mut out);
        string_field(3, &self.sub_zone, &mut out);
        out
    }

    pub fn to_value(&self) -> PropValue {
        let fields = BTreeMap::from([
            ("region".to_string(), PropValue::String(self.region.clone())),
            ("zone".to_string(), PropValue::String(self.zone.clone())),
            (
                "sub_zone".to_string(),
                PropValue::String(self.sub_zone.clone()),
            ),
        ]);
        PropValue::Message {
            encoded: self.encode(),
            fields,
        }
    }
}

/// The subset of `envoy.config.core.v3.Node` a filter reads: id = 1,
/// cluster = 2, metadata = 3 (a Struct), locality = 4.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub metadata: BTreeMap<String, PropValue>,
    pub locality: Locality,
}

impl NodeInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        string_field(1, &self.id, &mut out);
        string_field(2, &self.cluster, &mut out);
        if !self.metadata.is_empty() {
            len_field(3, &encode_struct(&self.metadata), &mut out);
        }
        let locality = self.locality.encode();
        if !locality.is_empty() {
            len_field(4, &locality, &mut out);
        }
        out
    }

    pub fn to_value(&self) -> PropValue {
        let fields = BTreeMap::from([
            ("id".to_string(), PropValue::String(self.id.clone())),
            (
                "cluster".to_string(),
                PropValue::String(self.cluster.clone()),
            ),
            (
                "metadata".to_string(),
                PropValue::Map(self.metadata.clone()),
            ),
            ("locality".to_string(), self.locality.to_value()),
        ]);
        PropValue::Message {
            encoded: self.encode(),
            fields,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locality_protobuf_bytes() {
        let l = Locality::new("us-east1", "us-east1-b", "");
        let mut expected = vec![0x0a, 8];
        expected.extend_from_slice(b"us-east1");
        expected.extend_from_slice(&[0x12, 10]);
        expected.extend_from_slice(b"us-east1-b");
        assert_eq!(l.encode(), expected);
    }

    #[test]
    fn paths_split_on_nul() {
        assert_eq!(
            split_path(b"node\0metadata\0CLUSTER_ID").unwrap(),
            vec!["node", "metadata", "CLUSTER_ID"]
        );
        assert_eq!(split_path(b"node\0").unwrap(), vec!["node"]);
        assert_eq!(split_path(b""), Err(Status::NotFound));
    }
}
