//! `waypoint run` as a process: starts on the example config with a dev CA, reports ready, serves
//! metrics, rejects a bad invocation clearly, and exits cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn run_with_dev_ca_until_sigterm() {
    // A loopback address of its own, so fixed ports do not collide with other tests.
    let ip = format!("127.66.{}.1", std::process::id() % 250);
    let addr = |port: u16| format!("{ip}:{port}");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut child = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["run", "--config"])
        .arg(&examples)
        .args(["--dev-ca", "--drain-grace-seconds", "2"])
        .args([
            "--hbone-addr",
            &addr(15008),
            "--readiness-addr",
            &addr(15021),
        ])
        .args(["--metrics-addr", &addr(15020), "--admin-addr", &addr(15000)])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if get(&addr(15021), "/healthz/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready within 30 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before becoming ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = get(&addr(15020), "/metrics").unwrap();
    assert!(
        metrics.contains("waypoint_hbone_connections 0"),
        "{metrics}"
    );
    let dump = get(&addr(15000), "/config_dump").unwrap();
    assert!(dump.contains("\"ambient-demo/waypoint\""), "{dump}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn run_refuses_a_config_it_cannot_load() {
    let dir = std::env::temp_dir().join(format!("waypoint-run-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: ALLOW, rules: [{from: [{source: {principal: [x]}}]}]}\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["run", "--config"])
        .arg(&dir)
        .args(["--dev-ca", "--hbone-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("AuthorizationPolicy default/p"), "{err}");
    assert!(err.contains("principal"), "names the field: {err}");
}

#[test]
fn run_refuses_identity_flags_that_cannot_work() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .args(["run", "--config"])
            .arg(&examples)
            .args([
                "--hbone-addr",
                "127.0.0.1:0",
                "--readiness-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // A CA address without a port would never work: refused at start, not retried forever.
    let (code, err) = run(&[
        "--identity",
        "istio-ca",
        "--ca-address",
        "istiod.istio-system.svc",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad CA address \"istiod.istio-system.svc\""),
        "{err}"
    );
    let (code, err) = run(&["--identity", "files"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--identity files needs --cert-chain"), "{err}");
    let (code, err) = run(&["--identity", "spiffe", "--dev-ca"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--dev-ca contradicts --identity spiffe"),
        "{err}"
    );
}
