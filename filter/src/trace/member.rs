//! Tideway's own `tracestate` member value: the source and target cluster of
//! the hop, `s:<source>;t:<target>`.
//!
//! Why an encoding of our own: Envoy cluster names are arbitrary strings (Istio
//! uses `outbound|8080||reviews.default.svc.cluster.local`), but a tracestate
//! value only allows printable ASCII except `,` and `=`, must not end with a
//! space and holds at most 256 characters. The encoding here always produces a
//! valid value whatever the input:
//!
//! - bytes 0x21-0x7E are written as they are, except `%`, `,`, `=` and `;`;
//! - those four, space, control characters and every non-ASCII byte (UTF-8
//!   included) are percent-encoded as `%XX` (uppercase hex);
//! - the two names share the 251 characters left after `s:` and `;t:`: a name
//!   shorter than half keeps its full length and the other gets the rest;
//!   truncation never splits a `%XX` escape.
//!
//! `;` separates the fields and is escaped inside names, so `:` needs no
//! escaping: decoding splits on the first `;` and strips the `s:`/`t:` tags.

use super::ids::hex_char;
use super::tracestate::MAX_VALUE_LEN;

/// Characters available to the two names together.
const NAME_BUDGET: usize = MAX_VALUE_LEN - "s:".len() - ";t:".len();

#[inline]
fn needs_escape(b: u8) -> bool {
    !(0x21..=0x7e).contains(&b) || matches!(b, b'%' | b',' | b'=' | b';')
}

fn encoded_len(name: &str) -> usize {
    name.bytes()
        .map(|b| if needs_escape(b) { 3 } else { 1 })
        .sum()
}

/// Appends `name` encoded, using at most `budget` characters.
fn push_encoded(out: &mut String, name: &str, budget: usize) {
    // Cluster names rarely need escaping: then it is one copy. Such a name
    // is all ASCII, so a cut at the budget splits no character.
    if !name.bytes().any(needs_escape) {
        out.push_str(name.get(..budget.min(name.len())).unwrap_or_default());
    } else {
        push_escaped(out, name, budget);
    }
}

/// [`push_encoded`] a byte at a time, escaping what needs it.
fn push_escaped(out: &mut String, name: &str, budget: usize) {
    let mut used = 0usize;
    for b in name.bytes() {
        let w = if needs_escape(b) { 3 } else { 1 };
        if used + w > budget {
            break;
        }
        used += w;
        if w == 1 {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_char(b >> 4).to_ascii_uppercase());
            out.push(hex_char(b).to_ascii_uppercase());
        }
    }
}

/// Appends the member value for a hop from `source` to `target` to `out`. The
/// result always satisfies the tracestate value grammar.
pub fn write_member_value(out: &mut String, source: &str, target: &str) {
    let (ls, lt) = (encoded_len(source), encoded_len(target));
    let half = NAME_BUDGET / 2;
    let (bs, bt) = if ls + lt <= NAME_BUDGET {
        (ls, lt)
    } else if ls <= half {
        (ls, NAME_BUDGET - ls)
    } else if lt <= half {
        (NAME_BUDGET - lt, lt)
    } else {
        (half, NAME_BUDGET - half)
    };
    out.reserve(5 + bs + bt);
    out.push_str("s:");
    push_encoded(out, source, bs);
    out.push_str(";t:");
    push_encoded(out, target, bt);
}

fn decode(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| core::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes a member value written by [`write_member_value`] into
/// `(source, target)`. `None` if it is not in that shape. Allocates; meant for
/// diagnostics and tests, not the request path. A name truncated inside a
/// multi-byte character decodes with a replacement character.
pub fn parse_member_value(value: &str) -> Option<(String, String)> {
    let (s, t) = value.split_once(';')?;
    let s = s.strip_prefix("s:")?;
    let t = t.strip_prefix("t:")?;
    Some((decode(s), decode(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tracestate::is_valid_value;
    use proptest::prelude::*;

    fn enc(s: &str, t: &str) -> String {
        let mut out = String::new();
        write_member_value(&mut out, s, t);
        out
    }

    #[test]
    fn plain_names() {
        let v = enc(
            "outbound|8080||reviews.default.svc.cluster.local",
            "eu-west",
        );
        assert_eq!(
            v,
            "s:outbound|8080||reviews.default.svc.cluster.local;t:eu-west"
        );
        assert!(is_valid_value(v.as_bytes()));
    }

    #[test]
    fn forbidden_characters_escaped() {
        let v = enc("a b,c=d;e%f", "é\t:");
        assert_eq!(v, "s:a%20b%2Cc%3Dd%3Be%25f;t:%C3%A9%09:");
        assert!(is_valid_value(v.as_bytes()));
        assert_eq!(
            parse_member_value(&v),
            Some(("a b,c=d;e%f".into(), "é\t:".into()))
        );
        // empty names are fine
        assert_eq!(enc("", ""), "s:;t:");
        assert!(is_valid_value(b"s:;t:"));
    }

    #[test]
    fn length_capped_at_256() {
        let long = "x".repeat(1000);
        let v = enc(&long, &long);
        assert_eq!(v.len(), MAX_VALUE_LEN);
        let (s, t) = parse_member_value(&v).expect("shape");
        assert_eq!((s.len(), t.len()), (125, 126));
        // a short source keeps its full length
        let v = enc("short", &long);
        assert_eq!(v.len(), MAX_VALUE_LEN);
        assert_eq!(parse_member_value(&v).map(|p| p.0), Some("short".into()));
        // escapes are never split
        let v = enc(&";".repeat(200), "t");
        assert!(is_valid_value(v.as_bytes()));
        assert_eq!(parse_member_value(&v).map(|p| p.1), Some("t".into()));
    }

    proptest! {
        #[test]
        fn always_a_valid_value(s in any::<String>(), t in any::<String>()) {
            let v = enc(&s, &t);
            prop_assert!(is_valid_value(v.as_bytes()), "{:?}", v);
        }

        #[test]
        fn round_trips_when_short(s in "\\PC{0,40}", t in "\\PC{0,30}") {
            let v = enc(&s, &t);
            prop_assume!(encoded_len(&s) + encoded_len(&t) <= NAME_BUDGET);
            prop_assert_eq!(parse_member_value(&v), Some((s, t)));
        }

        #[test]
        fn the_copy_of_a_plain_name_is_its_escaped_form(s in "[!-~]{0,300}|\\PC{0,40}", budget in 0usize..300) {
            let (mut copied, mut escaped) = (String::new(), String::new());
            push_encoded(&mut copied, &s, budget);
            push_escaped(&mut escaped, &s, budget);
            prop_assert_eq!(copied, escaped);
        }

        #[test]
        fn parse_never_panics(v in any::<String>()) {
            let _ = parse_member_value(&v);
        }
    }
}
