//! A serde error located in the configuration's JSON: the field path of a
//! typing error, found by scanning the text up to the error's position.

use crate::config_error::ConfigError;

/// A serde error as a [`ConfigError`]. Malformed JSON keeps its position:
/// there is no field to name. A typing error gets the field path of the
/// position serde_json reports instead (the position itself is dropped).
///
/// Hand-written rather than `serde_path_to_error`: that crate wraps every
/// visitor generically and grew the filter module by 44 KB, past its
/// 300 KB budget; locating the path from the error's position is a small
/// scan done only when the configuration is rejected.
pub(crate) fn typing_error(json: &[u8], e: serde_json::Error) -> ConfigError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ConfigError::new(ROOT, format!("not valid JSON: {e}"))
        }
        Category::Data => {
            let text = e.to_string();
            let position = format!(" at line {} column {}", e.line(), e.column());
            let message = text.strip_suffix(&position).unwrap_or(&text);
            let path = path_at(json, byte_offset(json, e.line(), e.column()));
            ConfigError::new(field_path(&path, message), message)
        }
    }
}

/// The byte offset of serde_json's 1-based `line` and `column` (a column
/// counts bytes).
fn byte_offset(json: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        json.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(line - 2)
            .map_or(json.len(), |(i, _)| i + 1)
    };
    (line_start + column).min(json.len())
}

/// One level of the path while scanning JSON text.
enum Level<'a> {
    /// In an object: the key of the member being read, once read.
    Object(Option<&'a [u8]>),
    /// In an array: the index of the element being read.
    Array(usize),
}

/// The path (`services[0].destinations[1].weigths`; empty at the top) of
/// what `json` holds just before byte `offset`: the members and elements
/// entered and not yet left, down to the last key read.
fn path_at(json: &[u8], offset: usize) -> String {
    let mut levels: Vec<Level<'_>> = Vec::new();
    let mut i = 0;
    let end = offset.min(json.len());
    while i < end {
        match json.get(i) {
            Some(b'{') => levels.push(Level::Object(None)),
            Some(b'[') => levels.push(Level::Array(0)),
            Some(b'}') | Some(b']') => {
                levels.pop();
            }
            Some(b',') => match levels.last_mut() {
                Some(Level::Array(index)) => *index += 1,
                Some(Level::Object(key)) => *key = None,
                None => {}
            },
            Some(b'"') => {
                let (text, next) = json_string(json, i + 1);
                if let Some(Level::Object(key @ None)) = levels.last_mut() {
                    *key = Some(text);
                }
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for level in &levels {
        match level {
            Level::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(core::str::from_utf8(key).unwrap_or("?"));
            }
            Level::Object(None) => {}
            Level::Array(index) => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// The string starting after its opening quote at `start`: its text
/// (escapes kept as written; keys in this schema have none) and the index
/// after its closing quote.
fn json_string(json: &[u8], start: usize) -> (&[u8], usize) {
    let mut i = start;
    while let Some(&b) = json.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return (json.get(start..i).unwrap_or_default(), i + 1),
            _ => i += 1,
        }
    }
    (&[], json.len())
}

/// The field name of an error about the configuration as a whole.
pub const ROOT: &str = "(top level)";

/// The full path of a typing error: the `path` the error was found at,
/// completed with the field an unknown-field or missing-field message
/// names when the path stops at its parent.
fn field_path(path: &str, message: &str) -> String {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match named {
        Some(field) if path.is_empty() => field.to_string(),
        Some(field) if path.rsplit('.').next() != Some(field) => format!("{path}.{field}"),
        _ if path.is_empty() => ROOT.to_string(),
        _ => path.to_string(),
    }
}
