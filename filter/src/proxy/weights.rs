//! The weights channel's steps acted on: its poll sent through Envoy, its
//! events counted and logged.

use super::abi::{self, Level};
use super::log;
use super::metrics::{add, record, Metrics};
use crate::weights_channel::{self, WeightsChannel};

/// Act on a weights-channel step: log and count its events, send its poll.
pub(super) fn weights_step(
    channel: &mut WeightsChannel,
    metrics: &Metrics,
    step: weights_channel::Step,
    now: u64,
) {
    for event in step.events {
        weights_event(metrics, &channel.source().cluster, event);
    }
    let Some(request) = step.poll else {
        return;
    };
    let source = channel.source();
    let headers = [
        (":method", "GET"),
        (":path", request.path.as_str()),
        (":authority", source.authority.as_str()),
        ("accept", "application/json"),
        (
            "if-none-match",
            request.if_none_match.as_deref().unwrap_or(""),
        ),
    ];
    // No version held: no If-None-Match.
    let headers = &headers[..if request.if_none_match.is_some() {
        5
    } else {
        4
    }];
    let timeout = u32::try_from(request.timeout_ms).unwrap_or(u32::MAX);
    match abi::http_call(&source.cluster, headers, &[], timeout) {
        Ok(token) => channel.sent(token, &request, now),
        Err(e) => {
            let event = channel.not_sent(&e.to_string(), now);
            weights_event(metrics, &channel.source().cluster, event);
        }
    }
}

/// Log and count one weights-channel event.
pub(super) fn weights_event(metrics: &Metrics, cluster: &str, event: weights_channel::Event) {
    use weights_channel::{Event, LeaseChange};
    match event {
        Event::Adopted { version } => {
            add(metrics.weights_adopted, 1);
            record(metrics.weights_version, version);
            log(
                Level::Info,
                &format!("tideway: weights version {version} adopted"),
            );
        }
        Event::Expired { version } => {
            add(metrics.weights_expired, 1);
            record(metrics.weights_version, 0);
            log(
                Level::Warn,
                &format!(
                    "tideway: weights version {version} not confirmed by the weights API within \
                     weightsSource.ttlMs: the static weights of the plugin configuration apply"
                ),
            );
        }
        Event::Rejected(rejection) => {
            add(metrics.weights_rejected[rejection.reason.index()], 1);
            log(
                Level::Warn,
                &format!("tideway: {rejection}; the previous weights stay"),
            );
        }
        Event::PollFailed(why) => {
            add(metrics.weights_poll_errors, 1);
            log(
                Level::Warn,
                &format!("tideway: weights poll to cluster {cluster:?} failed: {why}"),
            );
        }
        Event::Lease(LeaseChange::Acquired { from_lapsed }) => log(
            Level::Info,
            &match from_lapsed {
                Some(_) => {
                    "tideway: weights lease taken over from a lapsed holder; this worker polls"
                        .to_string()
                }
                None => "tideway: weights lease taken; this worker polls".to_string(),
            },
        ),
        Event::Lease(LeaseChange::Lost) => log(
            Level::Info,
            "tideway: weights lease held by another worker; this worker stops polling",
        ),
        Event::Lease(LeaseChange::None) => {}
    }
}
