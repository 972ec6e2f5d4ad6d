//! `proxy_http_call`: recorded calls, scripted replies, timeouts and failures.
//!
//! Envoy semantics relied on (`Context::httpCall`, `onHttpCallSuccess`,
//! `onHttpCallFailure` in `source/extensions/common/wasm/context.cc`):
//! - the call is made by the root context, and `proxy_on_http_call_response`
//!   is delivered to the root context id (the SDK routes it to the
//!   dispatching HTTP context by token itself);
//! - `:method`, `:path` and `:authority` are required, else `BadArgument`;
//!   an unknown cluster is `BadArgument`;
//! - a reply is delivered after the current VM call returns, never re-entrantly;
//! - a failure (reset) is delivered as a response with 0 headers, 0 body
//!   bytes and 0 trailers, with `proxy_get_status` = (BrokenConnection, "reset");
//! - a timeout is Envoy's async-client local reply: `:status 504`, body
//!   `upstream request timeout`; a timeout of 0 means none.

use super::abi::Status;
use super::pairs::HeaderMap;
use std::time::Duration;

/// A call the module made.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub worker: usize,
    pub token: u32,
    /// The root context the response goes to.
    pub context_id: u32,
    pub upstream: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    pub timeout: Duration,
    /// Clock time (unix nanos) of the dispatch.
    pub dispatched_at: u64,
}

/// How the (fake) upstream answers.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpReply {
    /// A response: `:status` should be among the headers.
    Response {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        trailers: Vec<(String, String)>,
    },
    /// The connection is reset: 0/0/0 and status BrokenConnection.
    Failure,
    /// Never answer: the call's own timeout fires (504), or it stays pending.
    NoReply,
    /// `proxy_http_call` itself fails with this status (no token is issued).
    Reject(Status),
}

impl HttpReply {
    /// A response with a status and a body.
    pub fn status(code: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpReply::Response {
            headers: vec![(":status".to_string(), code.to_string())],
            body: body.into(),
            trailers: Vec::new(),
        }
    }

    /// Envoy's async-client timeout reply.
    pub fn timeout_reply() -> Self {
        HttpReply::Response {
            headers: vec![
                (":status".to_string(), "504".to_string()),
                ("content-type".to_string(), "text/plain".to_string()),
            ],
            body: b"upstream request timeout".to_vec(),
            trailers: Vec::new(),
        }
    }
}

/// A scripted answer for calls to a given upstream (or any, if `None`).
#[derive(Debug, Clone)]
pub struct HttpRule {
    pub upstream: Option<String>,
    pub reply: HttpReply,
    /// Simulated latency on the fake clock; zero delivers right after the
    /// dispatching callback returns.
    pub delay: Duration,
    /// How many calls this rule answers (`None`: all).
    pub times: Option<usize>,
}

/// A dispatched call awaiting delivery.
#[derive(Debug, Clone)]
pub(crate) struct PendingCall {
    pub call: HttpCall,
    /// A scripted or manual reply and the clock time it is due.
    pub reply: Option<(u64, HttpReply)>,
    /// When Envoy's timeout fires, if any.
    pub timeout_at: Option<u64>,
}

/// A reply being delivered: what the `HttpCallResponse*` maps/buffers show.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeliveredResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}
