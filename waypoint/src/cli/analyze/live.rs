//! `waypoint analyze --kubernetes`: one read-only list of every kind the advisor reads, into the
//! same [`Store`] the file loader fills. Lists are paged; a kind whose API the cluster does not
//! serve (no Istio CRDs, no Gateway API) is skipped with a note, anything else fails the run.

use std::path::Path;

use anyhow::Context as _;
use gateway_api_bindings::{Kind, LoadError, Origin, Store};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};

/// Items per list page.
const PAGE: u32 = 500;

/// Lists the cluster `kubeconfig` (or the inferred config) points at.
pub(crate) fn list(kubeconfig: Option<&Path>) -> anyhow::Result<(Store, Vec<LoadError>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the Kubernetes client")?;
    rt.block_on(list_async(kubeconfig))
}

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    waypoint::tls::provider();
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes client config (in-cluster or kubeconfig)")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

async fn list_async(kubeconfig: Option<&Path>) -> anyhow::Result<(Store, Vec<LoadError>)> {
    let client = client(kubeconfig).await?;
    let mut store = Store::default();
    let mut errors = Vec::new();
    for kind in Kind::READ {
        // The names a real API server serves, from the one table the running waypoint uses.
        let r = kind.api();
        let (group, k) = (r.group.as_str(), r.kind.as_str());
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, &r.version, k),
            &r.plural,
        );
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let mut params = ListParams::default().limit(PAGE);
        loop {
            let page = match api.list(&params).await {
                Ok(p) => p,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    eprintln!("note: the cluster serves no {k} ({group}/v1): skipped");
                    break;
                }
                Err(e) => return Err(e).with_context(|| format!("listing {}", r.plural)),
            };
            for item in page.items {
                let value = serde_json::to_value(&item).context("re-encoding a listed object")?;
                match Store::parse_as(kind, value, &Origin::default()) {
                    Ok(o) => store.apply(o, Origin::default()),
                    Err(e) => errors.push(e),
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => params = params.continue_token(&c),
                None => break,
            }
        }
    }
    Ok((store, errors))
}
