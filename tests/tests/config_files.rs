//! Hostile files dropped into a running waypoint's config directory: each is rejected once and
//! counted in /metrics, the last good config keeps serving traffic (a DENY stays in force), and
//! fixing the file applies it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use waypoint_tests::http1;
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions};

const LIMIT: Duration = Duration::from_secs(120);

const FORWARDED: &str = "for=\"10.244.1.9:51000\";host=httpbin.ambient-demo.svc.cluster.local";

/// Allows `sleep`, denies `/admin*` on httpbin.
const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: ambient-demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: ambient-demo}
spec:
  action: DENY
  targetRefs: [{kind: Service, group: "", name: httpbin}]
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

fn deny(name: &str, path: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: ambient-demo\nspec:\n  action: DENY\n  targetRefs: [{{kind: Service, group: \"\", name: httpbin}}]\n  rules:\n  - to:\n    - operation:\n        paths: [\"{path}\"]\n"
    )
}

/// The hostile files, each with a short name for failure messages.
fn hostile() -> Vec<(&'static str, String)> {
    let bomb = |anchored: usize, aliases: usize| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb, namespace: ambient-demo}}\ndata:\n  a: &a [{}]\n  b: [{}]\n",
            vec!["x"; anchored].join(","),
            vec!["*a"; aliases].join(",")
        )
    };
    let mut many_rules = deny("many", "/x").replace(
        "  rules:\n  - to:\n    - operation:\n        paths: [\"/x\"]\n",
        "  rules:\n",
    );
    for i in 0..10_000 {
        many_rules.push_str(&format!(
            "  - to: [{{operation: {{paths: [\"/r{i}\"]}}}}]\n"
        ));
    }
    vec![
        (
            "typo",
            deny("typo", "/get").replace("  action: DENY", "   action: DENY"),
        ),
        ("alias bomb 28 KB", bomb(2000, 8000)),
        ("alias bomb 188 KB", bomb(8000, 58000)),
        (
            "200 KB of nesting",
            format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        ),
        // Same name as the live DENY, as an ALLOW: last-wins would have lifted the DENY.
        (
            "duplicate",
            deny("deny-admin", "/admin*").replace("DENY", "ALLOW"),
        ),
        ("10 MB name", deny(&"a".repeat(10_000_000), "/get")),
        ("newline name", deny("\"x\\nforged\"", "/get")),
        ("NUL name", deny("\"x\\0y\"", "/get")),
        ("10,000 rules", many_rules),
    ]
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_files_keep_the_last_good_config_serving() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start(MeshOptions {
            policies: POLICIES.to_owned(),
            ..MeshOptions::default()
        })
        .await
        .unwrap();
        let client = mesh.hbone(&mesh.sleep).await.unwrap();
        let status = |path: &'static str| {
            let client = &client;
            async move {
                let o = client
                    .open(HTTPBIN_VIP, &[("forwarded", FORWARDED)])
                    .await
                    .unwrap();
                assert_eq!(o.status, 200);
                let mut s = o.stream.unwrap();
                http1::request(&mut s, "GET", path, &[], "")
                    .await
                    .unwrap()
                    .expect("a response")
                    .status
            }
        };
        let metrics = || async {
            let mut t = tokio::net::TcpStream::connect(mesh.running().metrics_addr)
                .await
                .unwrap();
            http1::request(&mut t, "GET", "/metrics", &[], "")
                .await
                .unwrap()
                .unwrap()
                .body
        };
        assert_eq!(status("/get").await, 200);
        assert_eq!(status("/admin/x").await, 403);
        let version = mesh.running().config.load().version;
        let failures = &mesh.running().metrics.config_reload_failures;
        let path = mesh.config_dir().join("extra.yaml");
        let rss_before = rss_kib();

        for (n, (what, text)) in hostile().into_iter().enumerate() {
            let tmp = mesh.dir.join("extra.yaml.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            let want = n as u64 + 1;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while failures.get() < want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: the rejection was not counted within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                mesh.running().config.load().version,
                version,
                "{what}: the last good config keeps serving"
            );
            assert_eq!(
                status("/admin/x").await,
                403,
                "{what}: the DENY stays in force"
            );
            assert_eq!(status("/get").await, 200, "{what}: traffic goes on");
            assert!(
                metrics()
                    .await
                    .contains(&format!("waypoint_config_reload_failures_total {want}")),
                "{what}: counted in /metrics"
            );
        }
        // Once per change: five more polls of the unchanged broken file add nothing.
        let after = failures.get();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            failures.get(),
            after,
            "a broken file is rejected once, not every poll"
        );
        let grown = rss_kib().saturating_sub(rss_before);
        assert!(grown < 300 * 1024, "the process grew by {grown} KiB");

        // Fixing the file applies it.
        let tmp = mesh.dir.join("extra.yaml.tmp");
        std::fs::write(&tmp, deny("deny-get", "/get")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        mesh.wait_for_config(|v| v > version).await.unwrap();
        assert_eq!(status("/get").await, 403, "the fixed file is in force");
        assert_eq!(status("/admin/x").await, 403);
        assert_eq!(failures.get(), after);
    })
    .await
    .unwrap();
}
