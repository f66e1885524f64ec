//! The connection to the API server, and what a failed request tells an operator: the URL, the
//! HTTP status, and for a 403 the RBAC rule that is missing.

use std::path::PathBuf;
use std::sync::Arc;

use gateway_api_bindings::api::{KubeResource, Scope};
use kube::Client;

use super::KubeError;

/// A client and the server's URL (for log lines).
#[derive(Clone)]
pub(super) struct Connection {
    pub(super) client: Client,
    server: Arc<str>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A kubeconfig file when given; otherwise `kube::Config::infer`: the files in
    /// `KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account.
    pub(super) async fn new(kubeconfig: Option<&PathBuf>) -> Result<Connection, KubeError> {
        let config = match kubeconfig {
            Some(path) => {
                let err = |source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                };
                let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(err)?
            }
            None => kube::Config::infer().await?,
        };
        let server = config.cluster_url.to_string();
        Ok(Connection {
            client: Client::try_from(config)?,
            server: server.trim_end_matches('/').into(),
        })
    }

    /// The full URL of `path` on this server.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }
}

/// kube's view of a resource, from the table.
pub(super) fn api_resource(r: &KubeResource) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: r.group.clone(),
        version: r.version.clone(),
        api_version: r.api_version(),
        kind: r.kind.clone(),
        plural: r.plural.clone(),
    }
}

/// The HTTP status of a failed request, when the server answered.
pub(super) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// What a 403 means for the operator: the rule to grant the waypoint's service account, and where.
pub(super) fn missing_rule(
    r: &KubeResource,
    subresource: Option<&str>,
    verbs: &[&str],
    namespace: Option<&str>,
) -> String {
    let rule = r.rbac_rule(subresource, verbs);
    match (namespace, r.scope) {
        (Some(ns), Scope::Namespaced) => format!(
            "{rule} in a Role in namespace {ns} (or a ClusterRole) bound to the waypoint's service account"
        ),
        _ => format!("{rule} in a ClusterRole bound to the waypoint's service account"),
    }
}

#[cfg(test)]
mod tests {
    use gateway_api_bindings::Kind;

    use super::*;

    #[test]
    fn a_403_names_the_rule_and_where_it_goes() {
        let ap = Kind::AuthorizationPolicy.api();
        assert_eq!(
            missing_rule(ap, Some("status"), &["patch"], Some("other")),
            "{apiGroups: [\"security.istio.io\"], resources: [authorizationpolicies/status], verbs: [patch]} \
             in a Role in namespace other (or a ClusterRole) bound to the waypoint's service account"
        );
        assert_eq!(
            missing_rule(Kind::WorkloadEntry.api(), None, &["list", "watch"], None),
            "{apiGroups: [\"networking.istio.io\"], resources: [workloadentries], verbs: [list, watch]} \
             in a ClusterRole bound to the waypoint's service account"
        );
        let kr = api_resource(Kind::ServiceEntry.api());
        assert_eq!(
            (kr.api_version.as_str(), kr.plural.as_str()),
            ("networking.istio.io/v1", "serviceentries")
        );
    }
}
