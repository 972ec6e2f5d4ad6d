//! An error with its sources as one line of text: what a message shows a
//! user. HTTP clients (reqwest, hyper, kube's) put the useful part, e.g.
//! "connection refused", in the source chain, not in the top error's text.

/// An error and its sources, joined with `: `. A source whose text the line
/// already holds is left out: many errors repeat their source in their own
/// text, and saying it twice only makes the line longer.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_includes_sources_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&e), "error sending request: connection refused");
    }

    #[test]
    fn a_source_the_text_repeats_is_said_once() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(format!("connecting: {inner}"));
        #[derive(Debug)]
        struct Wrap(std::io::Error, std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.1)
            }
        }
        assert_eq!(
            error_chain(&Wrap(outer, inner)),
            "connecting: connection refused"
        );
    }
}
