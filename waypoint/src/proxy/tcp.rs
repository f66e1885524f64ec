//! Opaque TCP through the waypoint: the L4 decision ([`super::policy`]), then a byte relay with
//! half-close.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;

use super::destination::Destination;
use super::policy::{self, Connection, Inputs};
use super::tunnel::TunnelCtx;
use super::upstream::Upstream;
use crate::hbone::stream::H2Stream;
use crate::metrics::Metrics;
use crate::state::Snapshot;

/// Endpoints tried before giving up on a connection; nothing has been sent upstream before the
/// connection is up, so trying another endpoint is safe.
const MAX_ATTEMPTS: usize = 3;

pub(crate) async fn serve(
    mut stream: H2Stream,
    ctx: &TunnelCtx,
    dest: &Destination,
    snapshot: &Snapshot,
    upstream: &Upstream,
    metrics: &Metrics,
    stream_idle: std::time::Duration,
) {
    // Decide before any await: the request borrows data that is not `Sync`.
    let denied = {
        let inputs = Inputs {
            connection: Connection::of(ctx),
            target: dest.policy_target(),
            destination: dest,
            http: None,
            token: None,
        };
        !policy::decide(&snapshot.authorizer, &inputs, Some(metrics)).allowed
    };
    if denied {
        // The tunnel is open (refusing the CONNECT would look like a network failure to the
        // client's ztunnel); end it without a byte. A reset here would discard the queued 200,
        // so wait (bounded) for the client to end its side, discarding what it sends.
        let _ = stream.shutdown().await;
        let mut sink = tokio::io::sink();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::copy(&mut stream, &mut sink),
        )
        .await;
        return;
    }
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut up = None;
    while tried.len() < MAX_ATTEMPTS.min(dest.endpoint_count()) {
        let Some(ep) = dest.pick(&tried) else { break };
        tried.push(ep.address);
        match upstream
            .open_endpoint(&ep, ctx.traceparent.as_deref())
            .await
        {
            Ok(s) => {
                up = Some(s);
                break;
            }
            Err(e) => tracing::warn!(endpoint = %ep.address, error = %e, "upstream connect failed"),
        }
    }
    let Some(mut up) = up else {
        tracing::warn!(destination = %dest, tried = tried.len(), "no endpoint reachable; closing");
        stream.reset(h2::Reason::CONNECT_ERROR);
        return;
    };
    let activity = super::idle::Activity::new();
    let mut stream = super::idle::Tracked::new(stream, activity.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut stream, &mut up) => match r {
            Ok((to_app, to_client)) => tracing::debug!(to_app, to_client, "TCP relay finished"),
            Err(e) => tracing::debug!(error = %e, "TCP relay ended with an error"),
        },
        () = activity.idle(stream_idle) => {
            metrics.timeouts.stream_idle.inc();
            tracing::info!(destination = %dest, timeout = ?stream_idle, "idle TCP tunnel closed");
        }
    }
}
