//! The tick's work: timing retuned, statistics merged with the other
//! workers, the weights channel polled, probes sent, spans exported and
//! counters flushed — and the answers to the HTTP calls it sends.

use super::abi::{self, Level, Map};
use super::host::HostSharedData;
use super::metrics::{add, report_ejection, Metrics};
use super::weights::weights_step;
use super::worker::{PendingProbe, Worker};
use super::{log, now_or_zero};
use crate::decision::Engine;
use crate::health::HealthEvent;
use crate::trace;

impl Worker {
    pub(super) fn on_tick(&mut self) {
        let now = abi::now_ns();
        if let (Some(engine), Ok(now)) = (self.engine.as_mut(), now) {
            engine.retune_timing(now);
            for (key, error) in engine.sync_shared(&mut HostSharedData, now) {
                log(
                    Level::Warn,
                    &format!("tideway: replaced shared record {key}: {error}"),
                );
            }
            if let Some(channel) = self.weights.as_mut() {
                let step = channel.on_tick(engine, &mut HostSharedData, now);
                weights_step(channel, &self.metrics, step, now);
            }
            self.send_probes(now);
        }
        // Without the time every span batch goes, as before a
        // reconfiguration: none waits on a clock that cannot be read.
        self.flush(now.ok());
    }

    /// Hand Envoy what was gathered: decision counts, finished spans (the
    /// batches due at `now`; all of them without a `now`), failed host
    /// calls.
    pub(super) fn flush(&mut self, now: Option<u64>) {
        if let Some(engine) = self.engine.as_mut() {
            self.metrics.flush(engine);
            let batches = engine.take_span_batches(now);
            export_spans(engine, &batches, &self.metrics);
            // Envoy copied the bodies: their buffers can be refilled.
            engine.recycle_span_batches(batches);
        }
        add(self.metrics.host_call_errors, i64::from(abi::take_errors()));
    }

    /// Send the re-admission probes that are due (see `Engine::probes_due`).
    pub(super) fn send_probes(&mut self, now: u64) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let due: Vec<(usize, usize)> = engine.probes_due(now).collect();
        for (service, destination) in due {
            let (Some(config), Some(dest)) = (
                engine.config.services.get(service),
                engine.services[service].destinations.get(destination),
            ) else {
                continue;
            };
            let (Some(probe), Some(active)) = (config.probe.as_ref(), dest.probe.as_ref()) else {
                continue;
            };
            let headers = [
                (":method", "GET"),
                (":path", probe.path.as_str()),
                (":authority", probe.authority_for(config)),
                ("user-agent", "tideway-probe"),
            ];
            let timeout = u32::try_from(probe.timeout_ms).unwrap_or(u32::MAX);
            let sent = abi::http_call(&active.cluster, &headers, &[], timeout);
            match sent {
                Ok(token) => self.probes.push(PendingProbe {
                    token,
                    epoch: engine.epoch(),
                    service,
                    destination,
                }),
                Err(e) => log(
                    Level::Warn,
                    &format!(
                        "tideway: probe of {}/{} to cluster {:?} not sent ({e}); the next client request probes instead",
                        config.name, dest.name, active.cluster
                    ),
                ),
            }
            engine.probe_dispatched(service, destination, sent.is_ok());
        }
    }

    /// An HTTP call's answer: a weights poll's, a probe's, or a span export's.
    pub(super) fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        // A reset or timeout arrives with no headers: no status, a failure.
        let status = abi::header(Map::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .unwrap_or_default();
        if let (Some(channel), Some(engine)) = (self.weights.as_mut(), self.engine.as_mut()) {
            if channel.owns(token) {
                // `:status` is three digits.
                let code = match status[..] {
                    [a, b, c] if [a, b, c].iter().all(u8::is_ascii_digit) => Some(
                        u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
                    ),
                    _ => None,
                };
                let now = now_or_zero();
                let body = |max: u64| {
                    if body_size as u64 > max {
                        return Err(body_size as u64);
                    }
                    // Unreadable is reported as an empty (malformed) body.
                    Ok(abi::http_call_response_body(body_size).unwrap_or_default())
                };
                if let Some(step) =
                    channel.on_answer(token, code, body, engine, &mut HostSharedData, now)
                {
                    weights_step(channel, &self.metrics, step, now);
                }
                return;
            }
        }
        if let Some(i) = self.probes.iter().position(|p| p.token == token) {
            let probe = self.probes.swap_remove(i);
            self.probe_answered(&probe, &status);
            return;
        }
        if !status.starts_with(b"2") {
            log(
                Level::Warn,
                &format!(
                    "tideway: span export failed: status {:?}",
                    String::from_utf8_lossy(&status)
                ),
            );
        }
    }

    /// A probe's answer: re-admit, or eject again and tell the other workers.
    pub(super) fn probe_answered(&mut self, probe: &PendingProbe, status: &[u8]) {
        let Some(engine) = self.engine.as_mut().filter(|e| e.epoch() == probe.epoch) else {
            return;
        };
        let Ok(now) = abi::now_ns() else {
            // When is unknown, so the answer cannot be placed: the probe is
            // resent on a later tick.
            engine.probe_dispatched(probe.service, probe.destination, false);
            return;
        };
        let passed = status.first() == Some(&b'2') && status.len() == 3;
        let event = engine.probe_result(probe.service, probe.destination, passed, now);
        if let HealthEvent::Ejected { until_ns } = event {
            report_ejection(
                engine,
                &self.metrics,
                probe.service,
                probe.destination,
                until_ns,
                now,
            );
            if let Some((key, error)) =
                engine.publish(&mut HostSharedData, probe.service, probe.destination, now)
            {
                log(
                    Level::Warn,
                    &format!("tideway: replaced shared record {key}: {error}"),
                );
            }
        }
    }
}

/// Send span export requests (OTLP/HTTP JSON) to the collector.
pub(super) fn export_spans(engine: &Engine, batches: &[trace::otlp::Batch], metrics: &Metrics) {
    let Some(collector) = engine.config.tracing.collector.as_ref() else {
        return;
    };
    for batch in batches {
        let headers = [
            (":method", "POST"),
            (":path", collector.path.as_str()),
            (":authority", collector.authority()),
            ("content-type", "application/json"),
        ];
        let sent = abi::http_call(
            &collector.cluster,
            &headers,
            &batch.body,
            collector.timeout_ms,
        );
        let n = i64::from(batch.spans);
        match sent {
            Ok(_) => add(metrics.spans_exported, n),
            Err(e) => {
                add(metrics.spans_dropped, n);
                log(
                    Level::Warn,
                    &format!(
                        "tideway: span export to cluster {:?} failed: {e}",
                        collector.cluster
                    ),
                );
            }
        }
    }
}
