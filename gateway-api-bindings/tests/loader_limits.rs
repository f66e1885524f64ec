//! Hostile config files through the library loader: each costs one located, bounded error and
//! nothing else (no loop, no memory growth, no last-wins).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gateway_api_bindings::store::MAX_ERRORS_PER_FILE;
use gateway_api_bindings::{LoadError, ObjectKey, Store};

const DENY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: demo
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/admin*\"]
";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "gab-loader-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads `text` as a file, bounded in time: every case here must finish far below the bound.
fn load(text: &str) -> (Store, Vec<LoadError>) {
    let started = Instant::now();
    let mut store = Store::default();
    let errors = store.load_str(text, Some(Path::new("cfg/p.yaml")));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for e in &errors {
        let line = e.to_string();
        assert!(!line.contains(['\n', '\0']), "one line per error: {line:?}");
        assert!(line.len() < 2048, "bounded: {} bytes", line.len());
    }
    (store, errors)
}

fn only_error(text: &str) -> String {
    let (_, errors) = load(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0].to_string()
}

#[test]
fn a_misindented_line_is_one_located_error_and_stops_the_file() {
    // Line 7 is indented one space too far; a valid policy follows in the next document.
    let typo = DENY.replace("  action: DENY", "   action: DENY");
    let text = format!("{typo}---\n{}", DENY.replace("deny-admin", "after"));
    let (store, errors) = load(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = errors[0].to_string();
    assert!(e.starts_with("cfg/p.yaml (document 1): "), "{e}");
    // The parser notices at the next key, line 8.
    assert!(
        e.contains("not valid YAML") && e.contains("line 8 column 3"),
        "{e}"
    );
    assert!(
        store.authorization_policies.is_empty(),
        "nothing after the error is read"
    );
}

/// One anchor aliased thousands of times: 28 KB that expands to about 900 MiB in a loader that
/// expands aliases, and a 188 KB one that aborted the process.
#[test]
fn alias_bombs_are_refused_at_the_anchor() {
    for (anchored, aliases) in [(2000, 8000), (8000, 58000)] {
        let bomb = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb, namespace: demo}}\ndata:\n  a: &a [{}]\n  b: [{}]\n",
            vec!["x"; anchored].join(","),
            vec!["*a"; aliases].join(",")
        );
        assert!(bomb.len() > 28_000);
        let e = only_error(&bomb);
        assert!(
            e.contains("anchors (&name) are not accepted") && e.contains("line 5 column 6"),
            "{e}"
        );
    }
    // An alias alone (no anchor in this document) is refused too.
    assert!(only_error("a: *x\n").contains("not valid YAML"));
}

#[test]
fn deep_nesting_is_refused_quickly() {
    for text in [
        format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        format!("a: {}\n", "{a: ".repeat(50_000)),
        format!("a: {}\n", "[".repeat(200_000)),
        (0..70)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect::<String>(),
        (0..70)
            .map(|i| format!("{}-\n", " ".repeat(i)))
            .collect::<String>(),
    ] {
        let e = only_error(&text);
        assert!(
            e.contains("nesting deeper than 64") || e.contains("recursion limit exceeded"),
            "{e}"
        );
    }
    // 64 levels are fine.
    assert!(
        load(&format!("a: {}{}\n", "[".repeat(63), "]".repeat(63)))
            .1
            .is_empty()
    );
}

#[test]
fn the_same_object_in_two_files_names_both_and_neither_wins() {
    let dir = TempDir::new("dup");
    dir.write("a.yaml", DENY);
    dir.write(
        "b.yaml",
        DENY.replace("DENY", "ALLOW").replace("/admin*", "/public"),
    );
    let mut store = Store::default();
    let errors = store.load_path(&dir.0).unwrap();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = errors[0].to_string();
    assert!(
        e.contains("b.yaml (document 1)")
            && e.contains("also defined at")
            && e.contains("a.yaml (document 1)"),
        "{e}"
    );
    // The second copy never replaced the first.
    let kept = &store.authorization_policies[&ObjectKey::new("demo", "deny-admin")];
    assert!(kept.origin.file.as_ref().unwrap().ends_with("a.yaml"));
    // Twice in one file is the same error.
    let e = only_error(&format!("{DENY}---\n{DENY}"));
    assert!(
        e.contains("(document 2)") && e.contains("also defined at cfg/p.yaml (document 1)"),
        "{e}"
    );
}

#[test]
fn oversized_files_and_names_are_refused_naming_the_field() {
    // 10 MB name: the file is over Kubernetes' 1.5 MiB before anything is parsed.
    let dir = TempDir::new("big");
    let big = dir.write(
        "big.yaml",
        DENY.replace("deny-admin", &"a".repeat(10_000_000)),
    );
    let mut store = Store::default();
    let errors = store.load_path(&big).unwrap();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains("over the 1572864-byte (1.5 MiB) limit"),
        "{}",
        errors[0]
    );
    // Names: 253 for policies, 63 for Services and namespaces, RFC 1035 for Services.
    assert!(
        load(&DENY.replace("deny-admin", &"a".repeat(253)))
            .1
            .is_empty()
    );
    let e = only_error(&DENY.replace("deny-admin", &"a".repeat(254)));
    assert!(
        e.contains("field metadata.name") && e.contains("254 characters"),
        "{e}"
    );
    let e = only_error(&DENY.replace("namespace: demo", &format!("namespace: {}", "n".repeat(64))));
    assert!(e.contains("field metadata.namespace"), "{e}");
    let svc = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{}}\n"
        )
    };
    assert!(load(&svc(&"s".repeat(63))).1.is_empty());
    assert!(only_error(&svc(&"s".repeat(64))).contains("field metadata.name"));
    assert!(only_error(&svc("9lives")).contains("RFC 1035"));
    assert!(only_error(&svc("Caps")).contains("field metadata.name"));
}

#[test]
fn names_with_nul_or_newline_cannot_forge_lines() {
    for name in [
        "\"x\\nfoo/forged: WaypointAccepted=True reason=Accepted\"",
        "\"x\\0y\"",
        "\"x\\ry\"",
        "\"x\\u2028y\"",
    ] {
        let e = only_error(&DENY.replace("deny-admin", name));
        assert!(e.contains("field metadata.name"), "{e}");
    }
    // A map key with a newline lands in a decoding error's field path: printable too.
    let (_, errors) = load(&DENY.replace("  action: DENY", "  \"act\\nion\": DENY"));
    assert_eq!(errors.len(), 1);
}

#[test]
fn crd_item_limits_apply() {
    let rules = |n: usize| {
        let mut t = DENY.split("  rules:\n").next().unwrap().to_owned();
        t.push_str("  rules:\n");
        for i in 0..n {
            t.push_str(&format!(
                "  - to: [{{operation: {{paths: [\"/r{i}\"]}}}}]\n"
            ));
        }
        t
    };
    assert!(load(&rules(512)).1.is_empty());
    let e = only_error(&rules(10_000));
    assert!(
        e.contains("field spec.rules") && e.contains("has 10000 items; the CRD allows at most 512"),
        "{e}"
    );
    let refs: String = (0..17)
        .map(|i| format!("{{kind: Service, group: \"\", name: s{i}}},"))
        .collect();
    let e = only_error(&DENY.replace("spec:\n", &format!("spec:\n  targetRefs: [{refs}]\n")));
    assert!(
        e.contains("field spec.targetRefs") && e.contains("at most 16"),
        "{e}"
    );
}

#[test]
fn errors_per_file_are_capped() {
    let bad = DENY.replace("paths:", "pathz:");
    let text: String = (0..200)
        .map(|i| format!("{}---\n", bad.replace("deny-admin", &format!("p{i}"))))
        .collect();
    let (_, errors) = load(&text);
    assert_eq!(errors.len(), MAX_ERRORS_PER_FILE + 1);
    assert!(
        errors
            .last()
            .unwrap()
            .to_string()
            .contains("and 180 more error(s) in this file"),
        "{}",
        errors.last().unwrap()
    );
}

#[cfg(unix)]
#[test]
fn directories_skip_hidden_entries_and_do_not_follow_directory_links() {
    // A ConfigMap volume: x.yaml -> ..data/x.yaml, ..data -> ..2026_01_01/. Loaded once.
    let dir = TempDir::new("cm");
    dir.write("..2026_01_01/p.yaml", DENY);
    std::os::unix::fs::symlink("..2026_01_01", dir.0.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/p.yaml", dir.0.join("p.yaml")).unwrap();
    // A link back to the directory itself would loop a walker that follows it.
    std::os::unix::fs::symlink(".", dir.0.join("loop")).unwrap();
    let mut store = Store::default();
    let errors = store.load_path(&dir.0).unwrap();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(store.authorization_policies.len(), 1);
}

#[test]
fn a_file_that_is_not_utf8_is_one_error_naming_it() {
    let dir = TempDir::new("utf8");
    dir.write("bad.yaml", b"a: \xff\xfe\n");
    dir.write("good.yaml", DENY);
    let mut store = Store::default();
    let errors = store.load_path(&dir.0).unwrap();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].to_string().contains("bad.yaml") && errors[0].message.contains("not UTF-8"));
    assert_eq!(store.authorization_policies.len(), 1);
}
