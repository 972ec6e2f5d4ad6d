//! The URL parsing behind Kubernetes' CEL URL library (`isURL`, `url`,
//! `getScheme`, …), which the WasmPlugin CRD's `url` rule calls.
//!
//! Hand-written: Kubernetes implements these with Go's
//! `net/url.ParseRequestURI`, whose rules differ from WHATWG URL parsers
//! (the `url` crate) in exactly the cases that matter here — a reference
//! like `localhost:5000/filter` parses in Go as scheme `localhost` with an
//! opaque rest, which the WasmPlugin rule then rejects; `registry/filter`
//! is not a request URI at all. So this follows Go's algorithm step by
//! step for what the rules read (scheme, host, port, path).

/// A parsed URL, the parts the Kubernetes library exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub scheme: String,
    pub host: String,
    pub port: String,
    pub path: String,
    pub opaque: String,
}

/// Go's `url.ParseRequestURI`: an absolute URI or an absolute path, no
/// fragment handling.
pub(crate) fn parse_request_uri(raw: &str) -> Result<Url, String> {
    parse(raw, true)
}

/// Go's `url.Parse` (the fragment is cut off first).
pub(crate) fn parse_reference(raw: &str) -> Result<Url, String> {
    let without_fragment = raw.split_once('#').map_or(raw, |(u, _)| u);
    parse(without_fragment, false)
}

fn parse(raw: &str, via_request: bool) -> Result<Url, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("invalid control character in URL".into());
    }
    if raw.is_empty() && via_request {
        return Err("empty url".into());
    }
    if raw == "*" {
        return Ok(Url {
            scheme: String::new(),
            host: String::new(),
            port: String::new(),
            path: "*".into(),
            opaque: String::new(),
        });
    }
    let (scheme, rest) = split_scheme(raw)?;
    let scheme = scheme.to_ascii_lowercase();
    let mut rest = rest;
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        rest = &rest[..rest.len() - 1];
    } else if let Some((before, _query)) = rest.split_once('?') {
        rest = before;
    }
    let mut url = Url {
        scheme,
        host: String::new(),
        port: String::new(),
        path: String::new(),
        opaque: String::new(),
    };
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            // A rootless path after a scheme is opaque (RFC 3986).
            url.opaque = rest.to_string();
            return Ok(url);
        }
        if via_request {
            return Err("invalid URI for request".into());
        }
        // A relative reference: a colon before the first slash would be
        // read as a scheme.
        let first_segment = rest.split('/').next().unwrap_or("");
        if first_segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    let has_authority = (!url.scheme.is_empty() || !via_request)
        && rest.starts_with("//")
        && !rest.starts_with("///");
    if has_authority {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let host_port = match authority.rfind('@') {
            Some(i) => &authority[i + 1..],
            None => authority,
        };
        let (host, port) = split_host_port(host_port)?;
        url.host = host;
        url.port = port;
        rest = path;
    }
    url.path = rest.to_string();
    Ok(url)
}

/// Go's `getScheme`: letters, then letters, digits, `+`, `-`, `.` up to a
/// `:`; any other character first means there is no scheme.
fn split_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' => {}
            '0'..='9' | '+' | '-' | '.' if i == 0 => return Ok(("", raw)),
            '0'..='9' | '+' | '-' | '.' => {}
            ':' if i == 0 => return Err("missing protocol scheme".into()),
            ':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

/// Go's `parseHost` + `validOptionalPort`, for what they reject.
fn split_host_port(host_port: &str) -> Result<(String, String), String> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some(end) = bracketed.find(']') else {
            return Err("missing ']' in host".into());
        };
        let after = &bracketed[end + 1..];
        if !after.is_empty() && !after.starts_with(':') {
            return Err(format!("invalid port {after:?} after host"));
        }
        (&bracketed[..end], after.strip_prefix(':').unwrap_or(""))
    } else {
        match host_port.rfind(':') {
            Some(i) => (&host_port[..i], &host_port[i + 1..]),
            None => (host_port, ""),
        }
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {:?} after host", format!(":{port}")));
    }
    // The characters Go's host parser does not accept unescaped.
    for c in host.chars() {
        let allowed =
            c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:[]<>\"%".contains(c) || !c.is_ascii();
        if !allowed {
            return Err(format!("invalid character {c:?} in host name"));
        }
    }
    Ok((host.to_string(), port.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_request_uri_rules() {
        let oci = parse_request_uri("oci://registry.example/tideway/filter@sha256:ab").unwrap();
        assert_eq!(
            (oci.scheme.as_str(), oci.host.as_str()),
            ("oci", "registry.example")
        );
        assert_eq!(oci.path, "/tideway/filter@sha256:ab");
        // A registry with a port and no scheme: the host is read as a scheme.
        let odd = parse_request_uri("localhost:5000/tideway/filter").unwrap();
        assert_eq!(odd.scheme, "localhost");
        assert_eq!(odd.opaque, "5000/tideway/filter");
        assert!(parse_request_uri("registry.example/tideway/filter").is_err());
        assert!(parse_request_uri("/abs/path").is_ok());
        assert!(parse_request_uri("http://a b/").is_err());
        assert!(parse_request_uri("http://host:80x/").is_err());
        assert!(parse_request_uri("HTTPS://Host/").unwrap().scheme == "https");
        assert!(parse_request_uri("1abc://x").is_err());
        assert!(parse_request_uri(":x").is_err());
    }
}
