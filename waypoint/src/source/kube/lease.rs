//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder renews
//! `renewTime` every `renew_every`; another replica takes over once it has seen the same record
//! unchanged for `duration` (timed on its own clock, so clock skew between nodes does not matter).
//! Writes carry the resourceVersion read, so two replicas racing for the Lease cannot both win.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{self, Connection};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// Who we are (the pod name): written as `holderIdentity`.
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// Keeps trying to hold the Lease; `leader` says whether we do (and changes only when that
/// changes: every renewal waking the status writer would make it recompute 10,000 policies'
/// status every 2 s).
pub(super) async fn elect(
    conn: Connection,
    opts: LeaseOptions,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let api: Api<Lease> = Api::namespaced(conn.client.clone(), &opts.namespace);
    let r = gateway_api_bindings::api::lease();
    let url = conn.url(&r.object_path(&opts.namespace, &opts.name));
    let mut seen: Option<(Option<String>, Option<String>)> = None;
    let mut seen_at = Instant::now();
    let mut last_renewed: Option<Instant> = None;
    // The status of the last failure, so a lasting one is logged once, not every renewal.
    let mut failing: Option<Option<u16>> = None;
    loop {
        let held = match attempt(&api, &opts, &mut seen, &mut seen_at).await {
            Ok(held) => {
                if failing.take().is_some() {
                    tracing::info!(%url, "the Lease is readable and writable again");
                }
                if held {
                    last_renewed = Some(Instant::now());
                }
                held
            }
            Err(e) => {
                let code = client::status_code(&e);
                if failing != Some(code) {
                    let rule = (code == Some(403)).then(|| {
                        client::missing_rule(
                            r,
                            None,
                            &["get", "create", "update"],
                            Some(&opts.namespace),
                        )
                    });
                    tracing::warn!(%url, code = ?code, error = %e, missing_rule = ?rule, "Lease update failed: leadership ends once the last renewal expires, and with it status writes; retrying every {:?}", opts.renew_every);
                    failing = Some(code);
                }
                // Keep leading only while our last renewal is still valid.
                last_renewed.is_some_and(|t| t.elapsed() < opts.duration)
            }
        };
        leader.send_if_modified(|cur| {
            let changed = *cur != held;
            if changed {
                tracing::info!(leader = held, identity = %opts.identity, "status leadership changed");
            }
            *cur = held;
            changed
        });
        metrics.status_leader.set(i64::from(held));
        tokio::time::sleep(opts.renew_every).await;
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

async fn attempt(
    api: &Api<Lease>,
    opts: &LeaseOptions,
    seen: &mut Option<(Option<String>, Option<String>)>,
    seen_at: &mut Instant,
) -> Result<bool, kube::Error> {
    let duration_secs = i32::try_from(opts.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&opts.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(opts.name.clone()),
                namespace: Some(opts.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(opts.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (
        holder.clone(),
        spec.renew_time.as_ref().map(|t| t.0.to_string()),
    );
    if seen.as_ref() != Some(&record) {
        *seen = Some(record);
        *seen_at = Instant::now();
    }
    let ours = holder.as_deref() == Some(opts.identity.as_str());
    let held_for = spec.lease_duration_seconds.map_or(opts.duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    let expired = holder.is_none() || seen_at.elapsed() >= held_for;
    if !ours && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(opts.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: if ours { spec.acquire_time } else { Some(now()) },
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..spec
    });
    // `lease.metadata.resourceVersion` is what we read: a concurrent writer makes this a 409.
    match api
        .replace(&opts.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
