//! The proxy-wasm ABI 0.2.1 vocabulary: status codes and the enums a host and
//! a module exchange as plain integers.
//!
//! Values follow the ABI spec (github.com/proxy-wasm/spec, `abi-versions/v0.2.1`)
//! and proxy-wasm-cpp-host's `WasmResult` (`include/proxy-wasm/word.h`): the
//! Rust SDK (proxy-wasm 0.2.5 `types.rs`) only names a subset of the statuses,
//! the host side needs them all (`InvalidMemoryAccess`, `Unimplemented`, ...).

/// A host-call result (`WasmResult` in proxy-wasm-cpp-host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    BadExpression = 5,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    ResultMismatch = 9,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

impl Status {
    /// The value handed back to the module.
    pub fn code(self) -> i32 {
        self as u32 as i32
    }

    pub fn from_code(code: i32) -> Option<Status> {
        use Status::*;
        Some(match code {
            0 => Ok,
            1 => NotFound,
            2 => BadArgument,
            3 => SerializationFailure,
            4 => ParseFailure,
            5 => BadExpression,
            6 => InvalidMemoryAccess,
            7 => Empty,
            8 => CasMismatch,
            9 => ResultMismatch,
            10 => InternalFailure,
            11 => BrokenConnection,
            12 => Unimplemented,
            _ => return None,
        })
    }
}

/// Log levels as `proxy_log` passes them (Envoy maps them 1:1 onto spdlog's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_code(code: i32) -> Option<LogLevel> {
        use LogLevel::*;
        Some(match code {
            0 => Trace,
            1 => Debug,
            2 => Info,
            3 => Warn,
            4 => Error,
            5 => Critical,
            _ => return None,
        })
    }
}

/// What a stream callback returned (ABI 0.2.1 `FilterHeadersStatus` etc.).
/// 0 is `Continue`; 1 is `StopIteration` (the SDK's `Action::Pause`); Envoy
/// also knows 2..4 for headers (`ContinueAndEndStream`,
/// `StopAllIterationAndBuffer`, `StopAllIterationAndWatermark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Continue,
    Pause,
    /// Any other value the module returned, kept verbatim.
    Other(u32),
}

impl Action {
    pub fn from_code(code: i32) -> Action {
        match code {
            0 => Action::Continue,
            1 => Action::Pause,
            other => Action::Other(other as u32),
        }
    }
}

/// `proxy_*_header_map_*` map selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    GrpcReceiveInitialMetadata = 4,
    GrpcReceiveTrailingMetadata = 5,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

impl MapType {
    pub fn from_code(code: i32) -> Option<MapType> {
        use MapType::*;
        Some(match code {
            0 => RequestHeaders,
            1 => RequestTrailers,
            2 => ResponseHeaders,
            3 => ResponseTrailers,
            4 => GrpcReceiveInitialMetadata,
            5 => GrpcReceiveTrailingMetadata,
            6 => HttpCallResponseHeaders,
            7 => HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes` selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferType {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    DownstreamData = 2,
    UpstreamData = 3,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
    CallData = 8,
}

impl BufferType {
    pub fn from_code(code: i32) -> Option<BufferType> {
        use BufferType::*;
        Some(match code {
            0 => HttpRequestBody,
            1 => HttpResponseBody,
            2 => DownstreamData,
            3 => UpstreamData,
            4 => HttpCallResponseBody,
            5 => GrpcReceiveBuffer,
            6 => VmConfiguration,
            7 => PluginConfiguration,
            8 => CallData,
            _ => return None,
        })
    }
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricType {
    pub fn from_code(code: i32) -> Option<MetricType> {
        match code {
            0 => Some(MetricType::Counter),
            1 => Some(MetricType::Gauge),
            2 => Some(MetricType::Histogram),
            _ => None,
        }
    }
}

/// `proxy_continue_stream` / `proxy_close_stream` selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    HttpRequest = 0,
    HttpResponse = 1,
    Downstream = 2,
    Upstream = 3,
}

impl StreamType {
    pub fn from_code(code: i32) -> Option<StreamType> {
        match code {
            0 => Some(StreamType::HttpRequest),
            1 => Some(StreamType::HttpResponse),
            2 => Some(StreamType::Downstream),
            3 => Some(StreamType::Upstream),
            _ => None,
        }
    }
}
