//! W3C Trace Context `tracestate`: list-member parsing, validation and the
//! mutation the filter performs (our member first, the rest kept in order).
//!
//! Why: `tracestate` carries other vendors' opaque state; a proxy must carry it
//! on without reordering or corrupting it, must not let it grow past 32
//! members, and must never forward members that break the grammar. Parsing
//! walks the borrowed header values in place (multiple header fields are one
//! comma-separated list, RFC 9110 field order); writing appends to a
//! caller-provided `String`.
//!
//! Policy for invalid input (the spec lets a vendor discard the whole header or
//! only the invalid entries): one member that breaks the grammar, or more
//! than 32 members, and the whole header is discarded — what the W3C test
//! suite's strict level expects. A list that is partly garbage says nothing
//! reliable about the rest, and forwarding its remains would pass off a
//! damaged list as whole. Duplicate keys are not invalid: when the list is
//! rewritten they keep their first occurrence (the spec allows dropping
//! duplicates a vendor did not generate).

use super::w3c::trim_ows;

/// At most this many list-members in a `tracestate`.
pub const MAX_MEMBERS: usize = 32;
/// Maximum key length.
pub const MAX_KEY_LEN: usize = 256;
/// Maximum value length.
pub const MAX_VALUE_LEN: usize = 256;

/// One valid `key=value` list-member, borrowed from the header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// The key (validated with [`is_valid_key`]).
    pub key: &'a str,
    /// The value (validated with [`is_valid_value`]), leading spaces preserved.
    pub value: &'a str,
}

/// What happened to the incoming members while writing a new `tracestate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Incoming members forwarded.
    pub kept: usize,
    /// Incoming members that break the grammar (any of them discards the
    /// whole incoming list).
    pub invalid: usize,
    /// The incoming list was discarded: a member broke the grammar, or it
    /// had more than [`MAX_MEMBERS`] members.
    pub discarded: bool,
    /// Incoming members dropped because their key is ours or already seen.
    pub replaced_or_duplicate: usize,
    /// Incoming members dropped from the end to respect [`MAX_MEMBERS`].
    pub truncated: usize,
}

#[inline]
fn is_lcalpha(b: u8) -> bool {
    b.is_ascii_lowercase()
}

#[inline]
fn is_keychar_l1(b: u8) -> bool {
    is_lcalpha(b) || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// The key grammar of the W3C Recommendation (Level 1):
///
/// ```text
/// key = simple-key / multi-tenant-key
/// simple-key       = lcalpha 0*255( lcalpha / DIGIT / "_" / "-" / "*" / "/" )
/// multi-tenant-key = tenant-id "@" system-id
/// tenant-id        = ( lcalpha / DIGIT ) 0*240( lcalpha / DIGIT / "_" / "-" / "*" / "/" )
/// system-id        = lcalpha 0*13( lcalpha / DIGIT / "_" / "-" / "*" / "/" )
/// ```
///
/// Used to validate our own configured key, so that every receiver, whatever
/// spec level it implements, accepts our member.
pub fn is_valid_key_level1(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => match key.split_first() {
            Some((first, rest)) => {
                is_lcalpha(*first) && rest.len() <= 255 && rest.iter().all(|&b| is_keychar_l1(b))
            }
            None => false,
        },
        Some(at) => {
            let (tenant, system) = (
                key.get(..at).unwrap_or(&[]),
                key.get(at + 1..).unwrap_or(&[]),
            );
            let tenant_ok = match tenant.split_first() {
                Some((first, rest)) => {
                    (is_lcalpha(*first) || first.is_ascii_digit())
                        && rest.len() <= 240
                        && rest.iter().all(|&b| is_keychar_l1(b))
                }
                None => false,
            };
            let system_ok = match system.split_first() {
                Some((first, rest)) => {
                    is_lcalpha(*first) && rest.len() <= 13 && rest.iter().all(|&b| is_keychar_l1(b))
                }
                None => false,
            };
            tenant_ok && system_ok
        }
    }
}

/// The key grammar used for incoming members: the current W3C text,
///
/// ```text
/// key     = ( lcalpha / DIGIT ) 0*255( keychar )
/// keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
/// ```
///
/// It is a superset of [`is_valid_key_level1`] (the spec relaxed the `@` rules
/// after Level 1), so a member a newer vendor legitimately sends is never
/// dropped by this proxy.
pub fn is_valid_key(key: &[u8]) -> bool {
    match key.split_first() {
        Some((first, rest)) => {
            (is_lcalpha(*first) || first.is_ascii_digit())
                && rest.len() < MAX_KEY_LEN
                && rest.iter().all(|&b| is_keychar_l1(b) || b == b'@')
        }
        None => false,
    }
}

/// The value grammar: 1 to 256 printable ASCII characters (0x20-0x7E) except
/// `,` and `=`, not ending with a space.
pub fn is_valid_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

/// Parses one list-member (already split on `,`). `Ok(None)` is an empty
/// (OWS-only) member, which the spec allows and which is skipped; `Err(())` is
/// an invalid one.
#[allow(clippy::result_unit_err)]
pub fn parse_member(raw: &[u8]) -> Result<Option<Member<'_>>, ()> {
    let m = trim_ows(raw);
    if m.is_empty() {
        return Ok(None);
    }
    let eq = m.iter().position(|&b| b == b'=').ok_or(())?;
    let key = m.get(..eq).ok_or(())?;
    let value = m.get(eq + 1..).ok_or(())?;
    if !is_valid_key(key) || !is_valid_value(value) {
        return Err(());
    }
    match (core::str::from_utf8(key), core::str::from_utf8(value)) {
        (Ok(key), Ok(value)) => Ok(Some(Member { key, value })),
        _ => Err(()),
    }
}

/// Every list-member of the combined header (all `values` in order), with
/// empty members skipped: `Ok(member)` for a valid one, `Err(())` for an
/// invalid one.
pub fn members<'a>(values: &'a [&'a [u8]]) -> impl Iterator<Item = Result<Member<'a>, ()>> + 'a {
    values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .filter_map(|raw| parse_member(raw).transpose())
}

/// What a combined incoming `tracestate` holds, counted without keeping it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListCheck {
    /// Valid (non-empty) members.
    pub valid: usize,
    /// Members that break the grammar.
    pub invalid: usize,
}

impl ListCheck {
    /// The list may be forwarded: every member valid, at most
    /// [`MAX_MEMBERS`] of them.
    pub fn is_forwardable(&self) -> bool {
        self.invalid == 0 && self.valid <= MAX_MEMBERS
    }
}

/// Counts the valid and invalid members of the combined header (`values`
/// in order); empty members are allowed and not counted.
pub fn check(values: &[&[u8]]) -> ListCheck {
    members(values).fold(ListCheck::default(), |mut c, m| {
        match m {
            Ok(_) => c.valid += 1,
            Err(()) => c.invalid += 1,
        }
        c
    })
}

/// Writes a mutated `tracestate` into `out`: our member `own_key=own_value`
/// first, then [`append_incoming`]. Pass `&[]` as `incoming` to start a fresh
/// list (new trace).
///
/// `own_key`/`own_value` are trusted to be valid (the configuration is
/// validated and [`super::member`] only produces valid values).
pub fn write_tracestate(
    out: &mut String,
    own_key: &str,
    own_value: &str,
    incoming: &[&[u8]],
) -> MergeStats {
    out.reserve(own_key.len() + 1 + own_value.len());
    out.push_str(own_key);
    out.push('=');
    out.push_str(own_value);
    append_incoming(out, own_key, incoming)
}

/// Appends `,key=value` for each `incoming` member, in the original order,
/// after our own member (which the caller has just written): members keyed
/// `own_key` and repeated keys are skipped, and members are dropped from the
/// end so that the whole list, ours included, has at most [`MAX_MEMBERS`]
/// members. An incoming list that is not [forwardable](ListCheck) is
/// discarded whole: nothing is appended.
pub fn append_incoming(out: &mut String, own_key: &str, incoming: &[&[u8]]) -> MergeStats {
    let mut stats = MergeStats::default();
    if incoming.is_empty() {
        return stats;
    }
    let checked = check(incoming);
    if !checked.is_forwardable() {
        stats.invalid = checked.invalid;
        stats.discarded = true;
        return stats;
    }
    // Keys already written (ours is checked separately); fixed capacity, no heap.
    let mut seen: [&str; MAX_MEMBERS - 1] = [""; MAX_MEMBERS - 1];
    let mut count = 0usize;
    for member in members(incoming) {
        let m = match member {
            Ok(m) => m,
            Err(()) => {
                stats.invalid += 1;
                continue;
            }
        };
        if m.key == own_key || seen.iter().take(count).any(|k| *k == m.key) {
            stats.replaced_or_duplicate += 1;
            continue;
        }
        match seen.get_mut(count) {
            Some(slot) => *slot = m.key,
            None => {
                stats.truncated += 1;
                continue;
            }
        }
        count += 1;
        out.reserve(2 + m.key.len() + m.value.len());
        out.push(',');
        out.push_str(m.key);
        out.push('=');
        out.push_str(m.value);
    }
    stats.kept = count;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect<'a>(values: &'a [&'a [u8]]) -> Vec<(String, String)> {
        members(values)
            .filter_map(Result::ok)
            .map(|m| (m.key.to_string(), m.value.to_string()))
            .collect()
    }

    fn merged(incoming: &[&str]) -> (String, MergeStats) {
        let v: Vec<&[u8]> = incoming.iter().map(|s| s.as_bytes()).collect();
        let mut out = String::new();
        let st = write_tracestate(&mut out, "tideway", "s:a;t:b", &v);
        (out, st)
    }

    #[test]
    fn spec_examples() {
        assert_eq!(
            collect(&[b"congo=t61rcWkgMzE"]),
            vec![("congo".into(), "t61rcWkgMzE".into())]
        );
        let v = collect(&[b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], ("rojo".into(), "00f067aa0ba902b7".into()));
        // Congo after Rojo: congo moves left, rojo keeps its value
        let mut out = String::new();
        write_tracestate(
            &mut out,
            "congo",
            "ucfJifl5GOE",
            &[b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"],
        );
        assert_eq!(out, "congo=ucfJifl5GOE,rojo=00f067aa0ba902b7");
    }

    #[test]
    fn multiple_headers_combined_in_order_and_ows() {
        let v = collect(&[b"foo=1,bar=2", b"rojo=1,congo=2", b"baz=3"]);
        let keys: Vec<&str> = v.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["foo", "bar", "rojo", "congo", "baz"]);
        for h in [
            &b"foo=1 \t , \t bar=2, \t baz=3"[..],
            b"foo=1\t \t,\t \tbar=2,\t \tbaz=3",
        ] {
            assert_eq!(collect(&[h]).len(), 3);
        }
        for h in [
            &b" foo=1"[..],
            b"\tfoo=1",
            b"foo=1 ",
            b"foo=1\t",
            b"\t foo=1 \t",
        ] {
            assert_eq!(collect(&[h]), vec![("foo".into(), "1".into())], "{h:?}");
        }
        // empty headers and empty members are fine
        assert!(collect(&[b""]).is_empty());
        assert_eq!(collect(&[b"", b"foo=1", b" , ,"]).len(), 1);
    }

    #[test]
    fn value_leading_space_preserved() {
        assert_eq!(collect(&[b"foo= x"]), vec![("foo".into(), " x".into())]);
    }

    #[test]
    fn all_allowed_characters() {
        let key: String = ('a'..='z').chain('0'..='9').chain("_-*/".chars()).collect();
        let value: String = (0x20u8..=0x7e)
            .filter(|b| *b != b',' && *b != b'=')
            .map(char::from)
            .collect();
        let h = format!("{key}={value}");
        assert_eq!(collect(&[h.as_bytes()]), vec![(key.clone(), value.clone())]);
        let key = format!("{key}@a-z0-9_-*/");
        let h = format!("{key}={value}");
        assert_eq!(collect(&[h.as_bytes()]), vec![(key, value)]);
    }

    #[test]
    fn one_invalid_member_discards_the_whole_list() {
        for h in [
            "foo =1,bar=2",
            "FOO=1,bar=2",
            "foo.bar=1,bar=2",
            "foo=bar=baz,bar=2",
            "foo=,bar=2",
            "@foo=1,bar=2",
            "foo=a\tb,bar=2",
            "foo,bar=2",
            "=1,bar=2",
            "bar=2,foo=\u{e9}",
        ] {
            let v = collect(&[h.as_bytes()]);
            assert_eq!(v.len(), 1, "the parser still sees the valid one: {h}");
            assert!(!check(&[h.as_bytes()]).is_forwardable(), "{h}");
            let (out, st) = merged(&[h]);
            assert_eq!(out, "tideway=s:a;t:b", "{h}");
            assert_eq!((st.invalid, st.discarded, st.kept), (1, true, 0), "{h}");
        }
        // The bad member may be in another header field of the same list.
        let (out, st) = merged(&["foo=1", "bar=2,BAD=3"]);
        assert_eq!(out, "tideway=s:a;t:b");
        assert!(st.discarded);
        // Empty members are allowed, duplicates are not invalid.
        assert!(check(&[b"foo=1, ,", b"", b"foo=2"]).is_forwardable());
    }

    #[test]
    fn key_and_value_length_limits() {
        let k256 = "z".repeat(256);
        let k257 = "z".repeat(257);
        let h = format!("foo=1,{k256}=1,{k257}=1");
        let keys: Vec<String> = collect(&[h.as_bytes()])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["foo".to_string(), k256]);
        let v256 = "v".repeat(256);
        let v257 = "v".repeat(257);
        let h = format!("a={v256},b={v257}");
        assert_eq!(collect(&[h.as_bytes()]).len(), 1);
    }

    #[test]
    fn level1_key_grammar() {
        assert!(is_valid_key_level1(b"tideway"));
        assert!(is_valid_key_level1(b"a0_-*/"));
        assert!(is_valid_key_level1(b"0tenant@vendor"));
        assert!(!is_valid_key_level1(b"0simple")); // simple key starts with a letter
        assert!(!is_valid_key_level1(b""));
        assert!(!is_valid_key_level1(b"Tideway"));
        assert!(!is_valid_key_level1(b"foo@"));
        assert!(!is_valid_key_level1(b"@foo"));
        assert!(!is_valid_key_level1(b"foo@@bar"));
        assert!(!is_valid_key_level1(b"foo@bar@baz"));
        assert!(!is_valid_key_level1(b"foo@0bar"));
        assert!(is_valid_key_level1("z".repeat(256).as_bytes()));
        assert!(!is_valid_key_level1("z".repeat(257).as_bytes()));
        // tenant up to 241, system up to 14 (the Level 1 test suite's bounds)
        assert!(is_valid_key_level1(
            format!("{}@{}", "t".repeat(241), "v".repeat(14)).as_bytes()
        ));
        assert!(!is_valid_key_level1(
            format!("{}@v", "t".repeat(242)).as_bytes()
        ));
        assert!(!is_valid_key_level1(
            format!("t@{}", "v".repeat(15)).as_bytes()
        ));
    }

    #[test]
    fn incoming_key_grammar_is_the_relaxed_superset() {
        for ok in ["foo@", "foo@@bar", "foo@bar@baz", "0abc", "tenant@vendor"] {
            assert!(is_valid_key(ok.as_bytes()), "{ok}");
        }
        for bad in ["@foo", "", "Foo", "foo.bar", "foo bar"] {
            assert!(!is_valid_key(bad.as_bytes()), "{bad}");
        }
        let k = format!("{}@{}", "t".repeat(241), "v".repeat(14));
        assert!(is_valid_key(k.as_bytes()));
    }

    #[test]
    fn own_member_first_and_replaced() {
        let (out, st) = merged(&["foo=1,tideway=old,bar=2"]);
        assert_eq!(out, "tideway=s:a;t:b,foo=1,bar=2");
        assert_eq!(st.replaced_or_duplicate, 1);
        assert_eq!(st.kept, 2);
    }

    #[test]
    fn duplicate_keys_keep_first() {
        let (out, _) = merged(&["foo=1,foo=2", "foo=3"]);
        assert_eq!(out, "tideway=s:a;t:b,foo=1");
    }

    #[test]
    fn thirty_two_members_and_truncation_from_the_end() {
        let all: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
        // 32 incoming members: all parse
        let h32 = all[..32].join(",");
        assert_eq!(collect(&[h32.as_bytes()]).len(), 32);
        // split over several header fields like the test suite
        let parts = [
            all[..10].join(","),
            all[10..20].join(","),
            all[20..30].join(","),
            all[30..32].join(","),
        ];
        let (out, st) = merged(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        let keys: Vec<&str> = out
            .split(',')
            .map(|m| m.split('=').next().unwrap_or(""))
            .collect();
        assert_eq!(keys.len(), MAX_MEMBERS);
        assert_eq!(keys[0], "tideway");
        assert_eq!(keys[1], "bar01");
        assert_eq!(keys[31], "bar31");
        assert_eq!(st.kept, 31);
        assert_eq!(st.truncated, 1, "room for ours is made at the end");
        // 33 incoming members is not a valid list: discarded whole.
        let h33 = [all[..20].join(","), all[20..].join(",")];
        let (out, st) = merged(&h33.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out, "tideway=s:a;t:b");
        assert!(st.discarded);
        // replacing our own member frees its slot
        let mut with_ours = all[..31].to_vec();
        with_ours.insert(5, "tideway=x".into());
        let h = with_ours.join(",");
        let (out, st) = merged(&[&h]);
        assert_eq!(out.split(',').count(), 32);
        assert_eq!(st.truncated, 0);
    }

    fn arb_key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_*/-]{0,12}(@[a-z][a-z0-9]{0,5})?"
    }

    fn arb_value() -> impl Strategy<Value = String> {
        "[ -+\\--<>-~]{0,20}[!-+\\--<>-~]"
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..4)) {
            let v: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let _ = members(&v).count();
            let mut out = String::new();
            let st = write_tracestate(&mut out, "tideway", "x", &v);
            prop_assert!(st.kept < MAX_MEMBERS);
            // whatever came in, what goes out parses completely
            let o = [out.as_bytes()];
            prop_assert!(members(&o).all(|m| m.is_ok()));
        }

        #[test]
        fn valid_lists_round_trip(list in proptest::collection::vec((arb_key(), arb_value()), 0..40)) {
            // unique keys other than ours
            let mut seen = std::collections::HashSet::new();
            let list: Vec<(String, String)> = list.into_iter()
                .filter(|(k, _)| k != "tideway" && seen.insert(k.clone()))
                .collect();
            let h = list.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" , ");
            let hv = [h.as_bytes()];
            let parsed: Vec<(String, String)> = members(&hv)
                .map(|m| m.map(|m| (m.key.to_string(), m.value.to_string())))
                .collect::<Result<_, _>>()
                .map_err(|_| TestCaseError::fail("valid member rejected"))?;
            prop_assert_eq!(&parsed, &list);
            let mut out = String::new();
            write_tracestate(&mut out, "tideway", "v", &hv);
            let o = [out.as_bytes()];
            let back: Vec<(String, String)> = members(&o).filter_map(Result::ok)
                .map(|m| (m.key.to_string(), m.value.to_string())).collect();
            if list.len() > MAX_MEMBERS {
                prop_assert_eq!(back.len(), 1, "a list of more than 32 is discarded");
                return Ok(());
            }
            prop_assert_eq!(back.len(), (list.len() + 1).min(MAX_MEMBERS));
            prop_assert_eq!(&back[0], &("tideway".to_string(), "v".to_string()));
            prop_assert_eq!(&back[1..], &list[..back.len() - 1]);
        }
    }
}
