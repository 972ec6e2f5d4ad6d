//! The wasmtime proxy-wasm host itself, exercised with tiny hand-written
//! modules (WAT): unimplemented calls, shared-data CAS semantics across
//! workers, header maps, properties, metrics, ticks and HTTP calls.

use std::time::Duration;
use tideway_host_tests::wasm_host::{Action, HostBuilder, HttpReply, LogSource, Status};

/// A minimal ABI 0.2.1 module: a bump allocator, the lifecycle exports, and
/// `t_*` exports that each make one host call and return its status.
/// Scratch memory: 16.. keys/values (data segments), 1024.. out-params.
const MODULE: &str = r#"
(module
  (import "env" "proxy_grpc_cancel" (func $grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_made_up_call" (func $made_up (param i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc_metric (param i32 i64) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (data (i32.const 16) "key")
  (data (i32.const 32) "value")
  (data (i32.const 48) "hello from wat")
  (data (i32.const 64) "node\00metadata\00CLUSTER_ID")
  (data (i32.const 96) "x-wat")
  (data (i32.const 112) "ticks")
  (data (i32.const 128) "upstream")
  (data (i32.const 160) "printed line\n")
  (data (i32.const 256) "xds\00node\00metadata\00CLUSTER_ID")
  ;; headers for the http call: :method GET, :path /, :authority a
  (data (i32.const 192) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\01\00\00\00\0a\00\00\00\01\00\00\00:method\00GET\00:path\00/\00:authority\00a\00")
  (global $ticks (mut i32) (i32.const 0))
  (global $metric (mut i32) (i32.const 0))
  (global $last_response (mut i32) (i32.const -1))

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    ;; accept any configuration but "no" (2 bytes)
    (i32.ne (local.get $size) (i32.const 2)))
  (func (export "proxy_on_tick") (param i32)
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 0) (i32.const 96) (i32.const 5) (i32.const 32) (i32.const 5)))
    (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32) (param $token i32) (param $headers i32) (param i32 i32)
    (global.set $last_response (local.get $headers)))

  (func (export "t_grpc_cancel") (result i32) (call $grpc_cancel (i32.const 1)))
  (func (export "t_made_up") (result i32) (call $made_up (i32.const 1) (i32.const 2)))
  (func (export "t_set_shared") (param $cas i32) (result i32)
    (call $set_shared (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5) (local.get $cas)))
  (func (export "t_get_shared") (result i32)
    (call $get_shared (i32.const 16) (i32.const 3) (i32.const 1024) (i32.const 1028) (i32.const 1032)))
  (func (export "t_last_cas") (result i32) (i32.load (i32.const 1032)))
  (func (export "t_last_size") (result i32) (i32.load (i32.const 1028)))
  (func (export "t_log") (result i32) (call $log (i32.const 3) (i32.const 48) (i32.const 14)))
  (func (export "t_cluster_id") (result i32)
    (call $get_property (i32.const 64) (i32.const 24) (i32.const 1024) (i32.const 1028)))
  (func (export "t_xds_cluster_id") (result i32)
    (call $get_property (i32.const 256) (i32.const 28) (i32.const 1024) (i32.const 1028)))
  (func (export "t_bad_pointer") (result i32)
    (call $log (i32.const 2) (i32.const 0x7fff0000) (i32.const 100)))
  (func (export "t_start_tick") (result i32) (call $set_tick (i32.const 1000)))
  (func (export "t_ticks") (result i32) (global.get $ticks))
  (func (export "t_define_counter") (result i32)
    (drop (call $define_metric (i32.const 0) (i32.const 112) (i32.const 5) (i32.const 1040)))
    (i32.load (i32.const 1040)))
  (func (export "t_inc") (param $id i32) (result i32) (call $inc_metric (local.get $id) (i64.const 1)))
  (func (export "t_http_call") (param $timeout i32) (result i32)
    (call $http_call (i32.const 128) (i32.const 8) (i32.const 192) (i32.const 61)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (local.get $timeout) (i32.const 1044)))
  (func (export "t_last_response") (result i32) (global.get $last_response))
  (func (export "t_print") (result i32)
    (i32.store (i32.const 1100) (i32.const 160))
    (i32.store (i32.const 1104) (i32.const 13))
    (call $fd_write (i32.const 1) (i32.const 1100) (i32.const 1) (i32.const 1108)))
)
"#;

fn module() -> Vec<u8> {
    wat::parse_str(MODULE).expect("test module parses")
}

#[test]
fn unimplemented_host_call_returns_12_and_is_logged() {
    let mut host = HostBuilder::new(module()).start().unwrap();
    let status = host.call_export_i32(0, "t_grpc_cancel", &[]).unwrap();
    assert_eq!(status, Some(Status::Unimplemented.code()));
    assert_eq!(Status::Unimplemented.code(), 12);
    assert!(
        host.logged("unimplemented host call: proxy_grpc_cancel"),
        "{}",
        host.logs_text()
    );
    let record = host
        .logs()
        .into_iter()
        .find(|r| r.message.contains("proxy_grpc_cancel"))
        .unwrap();
    assert_eq!(record.source, LogSource::Host);

    // An import outside the ABI list still links and still answers 12.
    assert!(host
        .stubbed_imports
        .iter()
        .any(|n| n == "env::proxy_made_up_call"));
    assert_eq!(host.call_export_i32(0, "t_made_up", &[]).unwrap(), Some(12));
    assert!(host.logged("unimplemented host call: proxy_made_up_call"));
}

#[test]
fn shared_data_cas_semantics_across_two_workers() {
    let mut host = HostBuilder::new(module()).workers(2).start().unwrap();
    // Missing key: NotFound.
    assert_eq!(
        host.call_export_i32(0, "t_get_shared", &[]).unwrap(),
        Some(Status::NotFound.code())
    );
    // Worker 0 writes unconditionally: the first CAS is 1.
    assert_eq!(
        host.call_export_i32(0, "t_set_shared", &[0]).unwrap(),
        Some(0)
    );
    // Worker 1 sees the value and CAS 1.
    assert_eq!(
        host.call_export_i32(1, "t_get_shared", &[]).unwrap(),
        Some(0)
    );
    assert_eq!(host.call_export_i32(1, "t_last_cas", &[]).unwrap(), Some(1));
    assert_eq!(
        host.call_export_i32(1, "t_last_size", &[]).unwrap(),
        Some(5)
    );
    // Worker 1 writes with the CAS it read: ok, CAS becomes 2.
    assert_eq!(
        host.call_export_i32(1, "t_set_shared", &[1]).unwrap(),
        Some(0)
    );
    // Worker 0 writes with the stale CAS 1: CasMismatch.
    assert_eq!(
        host.call_export_i32(0, "t_set_shared", &[1]).unwrap(),
        Some(Status::CasMismatch.code())
    );
    assert_eq!(
        host.call_export_i32(0, "t_get_shared", &[]).unwrap(),
        Some(0)
    );
    assert_eq!(host.call_export_i32(0, "t_last_cas", &[]).unwrap(), Some(2));
    // CAS 2 is current: ok. Unconditional writes always succeed.
    assert_eq!(
        host.call_export_i32(0, "t_set_shared", &[2]).unwrap(),
        Some(0)
    );
    assert_eq!(
        host.call_export_i32(1, "t_set_shared", &[0]).unwrap(),
        Some(0)
    );
    let entry = host.shared_data().get("key").cloned().unwrap();
    assert_eq!(entry.value, b"value");
    assert_eq!(entry.cas, 4);
    // The host-side writer shares the same counter.
    assert_eq!(host.set_shared_data("other", b"x", 0), Ok(5));
}

#[test]
fn shared_data_is_partitioned_by_vm_id_not_shared_between_hosts() {
    let mut a = HostBuilder::new(module()).vm_id("a").start().unwrap();
    let mut b = HostBuilder::new(module()).vm_id("b").start().unwrap();
    assert_eq!(a.call_export_i32(0, "t_set_shared", &[0]).unwrap(), Some(0));
    assert_eq!(
        b.call_export_i32(0, "t_get_shared", &[]).unwrap(),
        Some(Status::NotFound.code())
    );
}

#[test]
fn logs_are_captured_with_levels_and_stdio() {
    let mut host = HostBuilder::new(module()).start().unwrap();
    assert_eq!(host.call_export_i32(0, "t_log", &[]).unwrap(), Some(0));
    assert_eq!(host.call_export_i32(0, "t_print", &[]).unwrap(), Some(0));
    let logs = host.logs();
    let warn = logs.iter().find(|r| r.message == "hello from wat").unwrap();
    assert_eq!(warn.level, tideway_host_tests::wasm_host::LogLevel::Warn);
    assert_eq!(warn.source, LogSource::Module);
    let printed = logs.iter().find(|r| r.message == "printed line").unwrap();
    assert_eq!(printed.source, LogSource::Stdio);
    assert_eq!(printed.level, tideway_host_tests::wasm_host::LogLevel::Info);
}

#[test]
fn bad_pointers_are_an_error_status_not_a_host_panic() {
    let mut host = HostBuilder::new(module()).start().unwrap();
    assert_eq!(
        host.call_export_i32(0, "t_bad_pointer", &[]).unwrap(),
        Some(Status::InvalidMemoryAccess.code())
    );
}

#[test]
fn node_metadata_property_is_the_raw_string() {
    let mut host = HostBuilder::new(module())
        .cluster_id("cluster-a")
        .start()
        .unwrap();
    assert_eq!(
        host.call_export_i32(0, "t_cluster_id", &[]).unwrap(),
        Some(0)
    );
    assert_eq!(
        host.call_export_i32(0, "t_last_size", &[]).unwrap(),
        Some(9)
    );
    let mut missing = HostBuilder::new(module()).start().unwrap();
    assert_eq!(
        missing.call_export_i32(0, "t_cluster_id", &[]).unwrap(),
        Some(Status::NotFound.code())
    );
}

#[test]
fn node_is_served_as_xds_node_and_optionally_only_so() {
    // Envoy 1.40 serves the node as `xds.node`; older releases as `node`.
    let mut both = HostBuilder::new(module())
        .cluster_id("cluster-a")
        .start()
        .unwrap();
    assert_eq!(
        both.call_export_i32(0, "t_xds_cluster_id", &[]).unwrap(),
        Some(0)
    );
    assert_eq!(
        both.call_export_i32(0, "t_last_size", &[]).unwrap(),
        Some(9)
    );
    assert_eq!(
        both.call_export_i32(0, "t_cluster_id", &[]).unwrap(),
        Some(0)
    );
    let mut envoy_1_40 = HostBuilder::new(module())
        .cluster_id("cluster-a")
        .legacy_node(false)
        .start()
        .unwrap();
    assert_eq!(
        envoy_1_40
            .call_export_i32(0, "t_xds_cluster_id", &[])
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        envoy_1_40.call_export_i32(0, "t_last_size", &[]).unwrap(),
        Some(9)
    );
    assert_eq!(
        envoy_1_40.call_export_i32(0, "t_cluster_id", &[]).unwrap(),
        Some(Status::NotFound.code())
    );
}

#[test]
fn configuration_rejection_is_reported() {
    let err = HostBuilder::new(module())
        .plugin_config("no")
        .start()
        .err()
        .unwrap();
    assert!(err.to_string().contains("rejected"), "{err}");
    let host = HostBuilder::new(module())
        .plugin_config("no")
        .build()
        .unwrap();
    assert_eq!(host.configured, vec![false]);
}

#[test]
fn request_headers_are_mutable_and_forwarded() {
    let mut host = HostBuilder::new(module()).start().unwrap();
    let ex = host
        .exchange(
            0,
            &[(":authority", "a"), (":path", "/")],
            &[(":status", "200")],
        )
        .unwrap();
    assert_eq!(ex.request_action, Action::Continue);
    assert_eq!(ex.upstream_request.get("x-wat").as_deref(), Some("value"));
    // Envoy clears the route cache itself when request headers change.
    assert_eq!(ex.route_cache_clears, 1);
}

#[test]
fn ticks_follow_the_fake_clock_per_worker() {
    let mut host = HostBuilder::new(module()).workers(2).start().unwrap();
    assert_eq!(
        host.call_export_i32(0, "t_start_tick", &[]).unwrap(),
        Some(0)
    );
    host.advance(Duration::from_millis(999)).unwrap();
    assert_eq!(host.call_export_i32(0, "t_ticks", &[]).unwrap(), Some(0));
    host.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(host.call_export_i32(0, "t_ticks", &[]).unwrap(), Some(1));
    host.advance(Duration::from_secs(10)).unwrap();
    assert_eq!(host.call_export_i32(0, "t_ticks", &[]).unwrap(), Some(11));
    // Worker 1 never asked for a tick.
    assert_eq!(host.call_export_i32(1, "t_ticks", &[]).unwrap(), Some(0));
    host.tick(1).unwrap();
    assert_eq!(host.call_export_i32(1, "t_ticks", &[]).unwrap(), Some(1));
}

#[test]
fn metrics_are_shared_by_name_across_workers() {
    let mut host = HostBuilder::new(module()).workers(2).start().unwrap();
    let id0 = host
        .call_export_i32(0, "t_define_counter", &[])
        .unwrap()
        .unwrap();
    let id1 = host
        .call_export_i32(1, "t_define_counter", &[])
        .unwrap()
        .unwrap();
    assert_eq!(host.call_export_i32(0, "t_inc", &[id0]).unwrap(), Some(0));
    assert_eq!(host.call_export_i32(1, "t_inc", &[id1]).unwrap(), Some(0));
    assert_eq!(host.metric("ticks").unwrap().value, 2);
    assert_eq!(
        host.call_export_i32(0, "t_inc", &[12345]).unwrap(),
        Some(Status::NotFound.code())
    );
}

#[test]
fn http_calls_reply_timeout_and_fail() {
    let mut host = HostBuilder::new(module()).start().unwrap();
    // Scripted reply after 50ms of fake time.
    host.on_http_call(
        Some("upstream"),
        HttpReply::status(200, "ok"),
        Duration::from_millis(50),
    );
    assert_eq!(
        host.call_export_i32(0, "t_http_call", &[1000]).unwrap(),
        Some(0)
    );
    assert_eq!(host.pending_http_calls().len(), 1);
    assert_eq!(
        host.http_calls()[0].headers.get(":authority").as_deref(),
        Some("a")
    );
    host.advance(Duration::from_millis(49)).unwrap();
    assert_eq!(
        host.call_export_i32(0, "t_last_response", &[]).unwrap(),
        Some(-1)
    );
    host.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(
        host.call_export_i32(0, "t_last_response", &[]).unwrap(),
        Some(1)
    );

    // No reply: Envoy's timeout (a 504 with 2 headers) at the timeout.
    let mut host = HostBuilder::new(module()).start().unwrap();
    host.on_http_call(None, HttpReply::NoReply, Duration::ZERO);
    assert_eq!(
        host.call_export_i32(0, "t_http_call", &[200]).unwrap(),
        Some(0)
    );
    host.advance(Duration::from_millis(199)).unwrap();
    assert_eq!(
        host.call_export_i32(0, "t_last_response", &[]).unwrap(),
        Some(-1)
    );
    host.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(
        host.call_export_i32(0, "t_last_response", &[]).unwrap(),
        Some(2)
    );

    // A reset: 0 headers, right after the dispatching call returns.
    let mut host = HostBuilder::new(module()).start().unwrap();
    host.on_http_call(None, HttpReply::Failure, Duration::ZERO);
    assert_eq!(
        host.call_export_i32(0, "t_http_call", &[0]).unwrap(),
        Some(0)
    );
    host.pump().unwrap();
    assert_eq!(
        host.call_export_i32(0, "t_last_response", &[]).unwrap(),
        Some(0)
    );

    // Rejected dispatch and unknown cluster.
    let mut host = HostBuilder::new(module()).start().unwrap();
    host.known_clusters(&["elsewhere"]);
    assert_eq!(
        host.call_export_i32(0, "t_http_call", &[0]).unwrap(),
        Some(Status::BadArgument.code())
    );
}
