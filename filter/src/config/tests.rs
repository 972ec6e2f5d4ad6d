//! The configuration's parsing, defaults, validation and error paths.

use super::*;

fn minimal() -> &'static str {
    r#"{"services":[{"name":"reviews","hosts":["reviews.prod.svc.cluster.local"],
        "destinations":[{"name":"east","weight":90},{"name":"west","weight":10}]}]}"#
}

#[test]
fn minimal_config_gets_defaults() {
    let config = PluginConfig::from_json(minimal().as_bytes()).expect("valid");
    assert_eq!(config.schema_version, SCHEMA_VERSION);
    let service = &config.services[0];
    assert_eq!(service.routing_header, DEFAULT_ROUTING_HEADER);
    assert_eq!(service.affinity, AffinitySource::None);
    assert_eq!(service.destinations[1].cluster(), "west");
    assert_eq!(config.scheduler, SchedulerConfig::default());
    assert!(!config.trust.all_sources);
    assert_eq!(
        config.hop_headers,
        HopHeaders::Filter,
        "the hop headers are the filter's to write unless configured otherwise"
    );
    assert_eq!(
        config,
        PluginConfig {
            services: config.services.clone(),
            ..PluginConfig::default()
        }
    );
}

#[test]
fn empty_bytes_govern_nothing() {
    assert!(PluginConfig::from_json(b"")
        .expect("empty ok")
        .services
        .is_empty());
    assert!(PluginConfig::from_json(b" \n")
        .expect("blank ok")
        .services
        .is_empty());
}

#[test]
fn unknown_field_is_named() {
    let err = PluginConfig::from_json(br#"{"servics":[]}"#).unwrap_err();
    assert_eq!(err.field, "servics", "{err}");
}

#[test]
fn hop_headers_accept_a_bool_or_routes_and_round_trip() {
    for (json, want) in [
        ("true", HopHeaders::Filter),
        ("false", HopHeaders::Off),
        (r#""routes""#, HopHeaders::Routes),
    ] {
        let config = PluginConfig::from_json(format!(r#"{{"hopHeaders":{json}}}"#).as_bytes())
            .unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(config.hop_headers, want, "{json}");
        let back = serde_json::to_value(config.hop_headers).expect("serialises");
        assert_eq!(
            back.to_string(),
            json,
            "what the controller renders is what was parsed"
        );
    }
    let err = PluginConfig::from_json(br#"{"hopHeaders":"filter"}"#).unwrap_err();
    assert_eq!(err.field, "hopHeaders", "{err}");
    assert!(err.to_string().contains("filter"), "{err}");
}

/// Typing errors (serde's) name the full path and the value, and never
/// a line or column: Istio wrote the JSON, not the user.
#[test]
fn typing_errors_name_the_full_path_and_the_value() {
    let two_destinations = |second: &str| {
        format!(
            r#"{{"services":[{{"name":"a","hosts":["a"],"destinations":[{{"name":"x"}},{second}]}}]}}"#
        )
    };
    let cases = [
        (
            r#"{"scheduler":{"decayMs":5000.5}}"#.to_string(),
            "scheduler.decayMs",
            "5000.5",
        ),
        (
            two_destinations(r#"{"name":"y","weigths":3}"#),
            "services[0].destinations[1].weigths",
            "weigths",
        ),
        (
            two_destinations(r#"{"name":"y","weight":"heavy"}"#),
            "services[0].destinations[1].weight",
            "heavy",
        ),
        (
            two_destinations(r#"{"weight":1}"#),
            "services[0].destinations[1].name",
            "missing",
        ),
        (
            r#"{"scheduler":{"tickMs":-5}}"#.to_string(),
            "scheduler.tickMs",
            "-5",
        ),
        (
            r#"{"tracing":{"mode":"spann"}}"#.to_string(),
            "tracing.mode",
            "spann",
        ),
        (
            r#"{"tracing":{"collector":{"cluster":"otel","batchsize":3}}}"#.to_string(),
            "tracing.collector.batchsize",
            "batchsize",
        ),
        (
            r#"{"services":[{"name":"a","hosts":["a"],"affinity":{"source":"header","nmae":"x"},"destinations":[{"name":"x"}]}]}"#.to_string(),
            "services[0].affinity.nmae",
            "nmae",
        ),
        (
            r#"{"services":[{"name":"a","hosts":"a","destinations":[{"name":"x"}]}]}"#.to_string(),
            "services[0].hosts",
            r#""a""#,
        ),
        (
            r#"{"local":{"namespace":"Prod"}}"#.to_string(),
            "local.namespace",
            "Prod",
        ),
        (
            r#"{"scheduler":{"defaultRttMs":0}}"#.to_string(),
            "scheduler.defaultRttMs",
            "0",
        ),
        (r#""reviews""#.to_string(), ROOT, "reviews"),
    ];
    for (json, field, value) in cases {
        let err = PluginConfig::from_json(json.as_bytes()).expect_err(&json);
        assert_eq!(err.field, field, "{json}: {err}");
        assert!(err.message.contains(value), "{json}: {err}");
        let text = err.to_string();
        assert!(
            !text.contains("line") && !text.contains("column"),
            "{json}: {text}"
        );
        // The same document laid out over many lines, and handed over
        // as a value (the CLI's YAML route): the same error.
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let pretty = serde_json::to_string_pretty(&parsed).expect("pretty");
        assert_eq!(
            PluginConfig::from_json(pretty.as_bytes()).err(),
            Some(err.clone())
        );
        assert_eq!(PluginConfig::from_value(&parsed).err(), Some(err));
    }
}

#[test]
fn the_path_survives_strings_that_look_like_json() {
    let json = r#"{"services":[{"name":"a{,[\"]","hosts":["x,y]"],
        "destinations":[{"name":"p"},{"name":"q","cluster":"}{,"},{"name":"r","cost":"free"}]}]}"#;
    let err = PluginConfig::from_json(json.as_bytes()).unwrap_err();
    assert_eq!(err.field, "services[0].destinations[2].cost", "{err}");
    assert!(err.message.contains("free"), "{err}");
}

#[test]
fn malformed_json_is_reported_by_position() {
    let err = PluginConfig::from_json(br#"{"services": [}"#).unwrap_err();
    assert_eq!(err.field, ROOT);
    assert!(
        err.message.contains("not valid JSON") && err.message.contains("column"),
        "{err}"
    );
}

#[test]
fn local_fields_parse_with_defaults() {
    let config =
        PluginConfig::from_json(br#"{"local":{"namespace":"production"}}"#).expect("valid");
    assert_eq!(config.local.namespace.as_deref(), Some("production"));
    assert_eq!(config.local.cluster_domain(), "cluster.local");
    let config =
        PluginConfig::from_json(br#"{"local":{"clusterDomain":"corp.example"}}"#).expect("valid");
    assert_eq!(config.local.cluster_domain(), "corp.example");
    let err = PluginConfig::from_json(br#"{"local":{"clusterDomain":"bad domain"}}"#).unwrap_err();
    assert_eq!(err.field, "local.clusterDomain");
    assert_eq!(config.scheduler.default_rtt_ms, 30);
}

#[test]
fn errors_name_field_and_value() {
    let cases = [
        (r#"{"schemaVersion":2}"#, "schemaVersion", "2"),
        (
            r#"{"scheduler":{"weights":{"latency":-1}}}"#,
            "scheduler.weights.latency",
            "-1",
        ),
        (
            r#"{"scheduler":{"sharpness":100}}"#,
            "scheduler.sharpness",
            "100",
        ),
        (
            r#"{"scheduler":{"grpcFailureCodes":[14,0]}}"#,
            "scheduler.grpcFailureCodes[1]",
            "0 (must be a gRPC status code",
        ),
        (
            r#"{"scheduler":{"grpcFailureCodes":[14,17]}}"#,
            "scheduler.grpcFailureCodes[1]",
            "17",
        ),
        (
            r#"{"scheduler":{"grpcFailureCodes":[14,14]}}"#,
            "scheduler.grpcFailureCodes[1]",
            "14 is listed twice",
        ),
        (
            r#"{"services":[{"name":"a","hosts":["a:80"],"destinations":[{"name":"x"}]}]}"#,
            "services[0].hosts[0]",
            "a:80",
        ),
        (
            r#"{"services":[{"name":"a","hosts":["a"],"routingHeader":"X-Route","destinations":[{"name":"x"}]}]}"#,
            "services[0].routingHeader",
            "X-Route",
        ),
        (
            r#"{"services":[{"name":"a","hosts":["a"],"destinations":[{"name":"x","weight":0}]}]}"#,
            "services[0].destinations",
            "every weight is 0",
        ),
        (
            r#"{"services":[{"name":"a","hosts":["a"],"destinations":[{"name":"x"},{"name":"x"}]}]}"#,
            "services[0].destinations[1].name",
            "duplicate",
        ),
        (
            r#"{"services":[{"name":"a","hosts":["a"],"failover":["y"],"destinations":[{"name":"x"}]}]}"#,
            "services[0].failover[0]",
            "\"y\"",
        ),
        (
            r#"{"services":[{"name":"a","hosts":["a"],"destinations":[{"name":"x","cost":-3}]}]}"#,
            "services[0].destinations[0].cost",
            "-3",
        ),
        (
            r#"{"services":[{"name":"a","hosts":["a"],"affinity":{"source":"header","name":"X-User"},"destinations":[{"name":"x"}]}]}"#,
            "services[0].affinity.name",
            "X-User",
        ),
    ];
    for (json, field, value) in cases {
        let err = PluginConfig::from_json(json.as_bytes()).expect_err(json);
        assert_eq!(err.field, field, "{json}: {err}");
        assert!(err.to_string().contains(value), "{json}: {err}");
    }
}

#[test]
fn probe_config_parses_and_expands_the_cluster() {
    let json = r#"{"services":[{"name":"reviews","hosts":["*.x","reviews.prod"],
        "probe":{"cluster":"outbound|9080|{destination}|reviews.prod","path":"/healthz"},
        "destinations":[{"name":"east"}]}]}"#;
    let config = PluginConfig::from_json(json.as_bytes()).expect("valid");
    let service = &config.services[0];
    let probe = service.probe.as_ref().expect("probe");
    assert_eq!(probe.cluster_for("east"), "outbound|9080|east|reviews.prod");
    assert_eq!(
        probe.authority_for(service),
        "reviews.prod",
        "first exact host"
    );
    assert_eq!(probe.timeout_ms, 1000);
}

#[test]
fn weights_source_gets_defaults() {
    let config = PluginConfig::from_json(
        br#"{"weightsSource":{"cluster":"outbound|8080||tideway.tideway-system.svc.cluster.local",
            "authority":"tideway.tideway-system.svc.cluster.local:8080"}}"#,
    )
    .expect("valid");
    let source = config.weights_source.expect("present");
    assert_eq!(source.path, "/v1/weights");
    assert_eq!(
        (
            source.wait_ms,
            source.lease_ms,
            source.retry_ms,
            source.ttl_ms,
            source.max_bytes
        ),
        (30_000, 3_000, 1_000, 300_000, 1 << 20)
    );
}

#[test]
fn bad_weights_source_is_named() {
    let with = |fields: &str| {
        format!(r#"{{"weightsSource":{{"cluster":"c","authority":"a:80"{fields}}}}}"#)
    };
    let cases = [
        (
            r#"{"weightsSource":{"cluster":"","authority":"a"}}"#.to_string(),
            "weightsSource.cluster",
            "\"\"",
        ),
        (
            r#"{"weightsSource":{"cluster":"c","authority":"a b"}}"#.to_string(),
            "weightsSource.authority",
            "\"a b\"",
        ),
        (
            with(r#","path":"/v1/weights?x=1""#),
            "weightsSource.path",
            "no query",
        ),
        (with(r#","waitMs":1500"#), "weightsSource.waitMs", "1500"),
        (with(r#","waitMs":0"#), "weightsSource.waitMs", "0 (must"),
        (
            with(r#","leaseMs":300"#),
            "weightsSource.leaseMs",
            "300 (must be 400",
        ),
        (with(r#","retryMs":0"#), "weightsSource.retryMs", "0 (must"),
        (
            with(r#","ttlMs":30000"#),
            "weightsSource.ttlMs",
            "30000 (must be 34000",
        ),
        (with(r#","maxBytes":10"#), "weightsSource.maxBytes", "10"),
        (with(r#","ttl":1"#), "weightsSource.ttl", "ttl"),
        (
            r#"{"weightsSource":{"authority":"a"}}"#.to_string(),
            "weightsSource.cluster",
            "missing",
        ),
    ];
    for (json, field, value) in cases {
        let err = PluginConfig::from_json(json.as_bytes()).expect_err(&json);
        assert_eq!(err.field, field, "{json}: {err}");
        assert!(err.message.contains(value), "{json}: {err}");
    }
    // The lease bound follows the tick.
    let slow_tick =
        r#"{"scheduler":{"tickMs":2000},"weightsSource":{"cluster":"c","authority":"a"}}"#;
    let err = PluginConfig::from_json(slow_tick.as_bytes()).unwrap_err();
    assert_eq!(err.field, "weightsSource.leaseMs", "{err}");
    assert!(err.message.contains("4000"), "{err}");
}

#[test]
fn bad_probe_config_is_named() {
    let with = |probe: &str, hosts: &str| {
        format!(
            r#"{{"services":[{{"name":"a","hosts":{hosts},"probe":{probe},"destinations":[{{"name":"x"}}]}}]}}"#
        )
    };
    let cases = [
        (
            with(r#"{"cluster":"east"}"#, r#"["a.svc"]"#),
            "services[0].probe.cluster",
            "\"east\"",
        ),
        (
            with(
                r#"{"cluster":"c-{destination}","path":"healthz"}"#,
                r#"["a.svc"]"#,
            ),
            "services[0].probe.path",
            "\"healthz\"",
        ),
        (
            with(
                r#"{"cluster":"c-{destination}","timeoutMs":0}"#,
                r#"["a.svc"]"#,
            ),
            "services[0].probe.timeoutMs",
            "0",
        ),
        (
            with(r#"{"cluster":"c-{destination}"}"#, r#"["*.a.svc"]"#),
            "services[0].probe.authority",
            "no exact host",
        ),
    ];
    for (json, field, value) in cases {
        let err = PluginConfig::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(err.field, field, "{json}: {err}");
        assert!(err.message.contains(value), "{json}: {err}");
    }
}

#[test]
fn affinity_sources_parse() {
    let json = r#"{"services":[{"name":"a","hosts":["*.a.svc"],
        "affinity":{"source":"cookie","name":"session"},"destinations":[{"name":"x"}]}]}"#;
    let config = PluginConfig::from_json(json.as_bytes()).expect("valid");
    assert_eq!(
        config.services[0].affinity,
        AffinitySource::Cookie {
            name: "session".into()
        }
    );
}

#[test]
fn round_trips_through_json() {
    let config = PluginConfig::from_json(minimal().as_bytes()).expect("valid");
    let rendered = serde_json::to_vec(&config).expect("serialise");
    assert_eq!(PluginConfig::from_json(&rendered).expect("reparse"), config);
}
