"""Driver for benches/load.sh: one run compares direct, an nginx reverse proxy (NGX) and the
waypoint (HBONE in and out, one ALLOW policy) with the same load generator and settings.

Placement (performance.md): the load generator and the ztunnel-like shims on CPU 0; the system
under test and the origin on CPU 1. CPU per request is read from /proc/<pid>/stat of the system
under test at saturation. Latency deltas are taken at a fixed rate. A repetition is discarded
when foreign CPU (machine busy minus every process of the benchmark) exceeds 5%.
"""

import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TARGET = sys.argv[1]  # the harness binaries (demo-mesh, hbone-idle)
WAYPOINT = sys.argv[2] if len(sys.argv) > 2 else f"{TARGET}/waypoint"  # the system under test
REPS = int(os.environ.get("REPS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
CONNS = int(os.environ.get("CONNS", "16"))
RATE = int(os.environ.get("RATE", "1000"))
BLOCK = "127.77.77"
WP = f"{BLOCK}.1"
CLIENT = "127.0.0.1:15101"  # the outbound shim of the `sleep` workload
HZ = os.sysconf("SC_CLK_TCK")
OUT = tempfile.mkdtemp(prefix="waypoint-load-")


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def all_ticks():
    """CPU ticks of every process on the machine, by pid."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out[int(d)] = ticks(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def nginx(name, body):
    conf = os.path.join(OUT, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(
            f"worker_processes 1; pid {OUT}/{name}.pid; error_log {OUT}/{name}.err; daemon on;\n"
            f"events {{ worker_connections 8192; }}\n"
            f"http {{ access_log off; keepalive_requests 10000000; {body} }}\n"
        )
    subprocess.run(["taskset", "-c", "1", "nginx", "-p", OUT, "-c", conf], check=True)
    with open(f"{OUT}/{name}.pid") as f:
        master = int(f.read())
    time.sleep(0.2)
    return master, children(master)


def oha(url, rate=None):
    args = ["taskset", "-c", "0", "oha", "-z", f"{DURATION}s", "-c", str(CONNS), "--no-tui",
            "--output-format", "json"]
    if rate:
        args += ["-q", str(rate), "--latency-correction"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * HZ
    r = json.loads(out)
    codes = r.get("statusCodeDistribution", {})
    done = sum(codes.values())
    lat = r.get("latencyPercentiles", {})
    return {
        "done": done,
        "ok": codes.get("200", 0),
        "rps": r["summary"]["requestsPerSec"],
        "p50": lat.get("p50", 0) * 1e6,
        "p99": lat.get("p99", 0) * 1e6,
        "loadgen_ticks": own,
    }


def measured(url, sut, others, rate=None):
    """Runs oha against url; returns its figures plus the SUT's CPU and the foreign CPU share."""
    procs = set(sut + others + [os.getpid()])
    t0 = all_ticks()
    r = oha(url, rate)
    t1 = all_ticks()
    used = {p: t1[p] - t0.get(p, 0) for p in t1}
    sut_ticks = sum(used.get(p, 0) for p in sut)
    # Foreign: every process that is not part of the benchmark (oha has exited by now, so it
    # is not in t1; its own CPU came from rusage). Kernel time spent on our loopback traffic is
    # attributed to our processes or to no process, so it does not count as foreign.
    foreign = sum(v for p, v in used.items() if p not in procs and p in t0)
    capacity = DURATION * HZ * os.cpu_count()
    r["sut_us_per_req"] = sut_ticks / HZ * 1e6 / max(r["done"], 1)
    r["foreign"] = foreign / capacity
    return r


def metric(name):
    text = urllib.request.urlopen(f"http://{WP}:15020/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def wait_for(path, needle, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and needle in open(path).read():
            return
        time.sleep(0.1)
    sys.exit(f"load.py: {needle!r} did not appear in {path}")


def main():
    origin, origin_workers = nginx(
        "origin",
        f'server {{ listen 127.0.0.1:18080; listen {BLOCK}.11:8080; listen {BLOCK}.12:8080; '
        f'location / {{ return 200 "ok\\n"; }} }}',
    )
    proxy, proxy_workers = nginx(
        "proxy",
        "upstream origin { server 127.0.0.1:18080; keepalive 32; } "
        "server { listen 127.0.0.1:18081; location / { proxy_pass http://origin; "
        'proxy_http_version 1.1; proxy_set_header Connection ""; } }',
    )
    log = os.path.join(OUT, "mesh.log")
    mesh = subprocess.Popen(
        ["taskset", "-c", "0", f"{TARGET}/demo-mesh", "--waypoint-bin", WAYPOINT,
         "--block", "77.77", "--no-apps", "--dir", os.path.join(OUT, "mesh"),
         "--policies", "benches/allow-one.yaml"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for(log, "Ctrl-C to stop")
        wp = children(mesh.pid)[0]
        subprocess.run(["taskset", "-a", "-p", "-c", "1", str(wp)], check=True, capture_output=True)
        run(origin_workers, proxy_workers, mesh.pid, wp)
    finally:
        mesh.send_signal(signal.SIGTERM)
        mesh.wait(timeout=30)
        for name in ("origin", "proxy"):
            subprocess.run(["nginx", "-p", OUT, "-c", f"{OUT}/{name}.conf", "-s", "stop"])


def run(origin_workers, proxy_workers, shims, wp):
    idle_rss = idle_waypoint_rss()
    before = rss_kib(wp)
    idle = subprocess.Popen(
        ["taskset", "-c", "0", f"{TARGET}/hbone-idle", f"{WP}:15008", "1000",
         os.path.join(OUT, "mesh", "pki")],
        stdout=subprocess.PIPE, text=True,
    )
    assert idle.stdout.readline().startswith("open 1000")
    time.sleep(1)
    per_1000 = rss_kib(wp) - before
    idle.send_signal(signal.SIGTERM)
    idle.wait(timeout=30)

    rows = []
    for rep in range(REPS):
        new0, reused0 = metric("waypoint_upstream_http_connections_new_total"), metric(
            "waypoint_upstream_http_connections_reused_total")
        sat = {
            "direct": measured("http://127.0.0.1:18080/", origin_workers, []),
            "ngx": measured("http://127.0.0.1:18081/", proxy_workers, origin_workers),
            "waypoint": measured(f"http://{CLIENT}/", [wp], origin_workers + [shims]),
        }
        new1, reused1 = metric("waypoint_upstream_http_connections_new_total"), metric(
            "waypoint_upstream_http_connections_reused_total")
        fixed = {
            "direct": measured("http://127.0.0.1:18080/", origin_workers, [], RATE),
            "ngx": measured("http://127.0.0.1:18081/", proxy_workers, origin_workers, RATE),
            "waypoint": measured(f"http://{CLIENT}/", [wp], origin_workers + [shims], RATE),
        }
        foreign = max(r["foreign"] for r in list(sat.values()) + list(fixed.values()))
        reuse = (reused1 - reused0) / max(1, (new1 - new0) + (reused1 - reused0))
        row = {
            "rep": rep + 1,
            "foreign": foreign,
            "discard": foreign > 0.05,
            "failed": sum(r["done"] - r["ok"] for r in list(sat.values()) + list(fixed.values())),
            "rps": {k: v["rps"] for k, v in sat.items()},
            "cpu_us": {k: v["sut_us_per_req"] for k, v in sat.items()},
            "cpu_ratio": sat["waypoint"]["sut_us_per_req"] / sat["ngx"]["sut_us_per_req"],
            "vcpu_ratio_fixed": fixed["waypoint"]["sut_us_per_req"] / fixed["ngx"]["sut_us_per_req"],
            "p50": {k: v["p50"] for k, v in fixed.items()},
            "p99": {k: v["p99"] for k, v in fixed.items()},
            "reuse": reuse,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    kept = [r for r in rows if not r["discard"]] or rows
    med = lambda f: statistics.median(f(r) for r in kept)
    print()
    print(f"repetitions kept: {len(kept)}/{len(rows)} (discarded when foreign CPU > 5%)")
    print(f"saturation req/s (median): direct {med(lambda r: r['rps']['direct']):.0f}, "
          f"NGX {med(lambda r: r['rps']['ngx']):.0f}, waypoint {med(lambda r: r['rps']['waypoint']):.0f}")
    print(f"CPU us/request: NGX {med(lambda r: r['cpu_us']['ngx']):.1f}, "
          f"waypoint {med(lambda r: r['cpu_us']['waypoint']):.1f}, "
          f"origin {med(lambda r: r['cpu_us']['direct']):.1f}")
    print(f"CPU ratio waypoint/NGX at saturation: {med(lambda r: r['cpu_ratio']):.2f}x (target <= 2.5x)")
    print(f"vCPU ratio waypoint/NGX at {RATE} rps: {med(lambda r: r['vcpu_ratio_fixed']):.2f}x (target <= 1.3x)")
    print(f"added latency at {RATE} rps vs direct: NGX p50 +{med(lambda r: r['p50']['ngx'] - r['p50']['direct']):.0f} us, "
          f"p99 +{med(lambda r: r['p99']['ngx'] - r['p99']['direct']):.0f} us; "
          f"waypoint p50 +{med(lambda r: r['p50']['waypoint'] - r['p50']['direct']):.0f} us, "
          f"p99 +{med(lambda r: r['p99']['waypoint'] - r['p99']['direct']):.0f} us "
          f"(target +100 / +200; includes both ztunnel shims)")
    print(f"upstream HTTP connection reuse: {100 * med(lambda r: r['reuse']):.3f}% (target >= 99.9%)")
    print(f"failed requests: {sum(r['failed'] for r in rows)}")
    print(f"idle RSS, empty config: {idle_rss / 1024:.1f} MiB = {idle_rss * 1.024 / 1000:.1f} MB (target <= 10 MB)")
    print(f"memory per 1000 idle HBONE connections: {per_1000 / 1024:.1f} MiB = {per_1000 * 1.024 / 1000:.1f} MB (target <= 25 MB)")


def idle_waypoint_rss():
    """RSS of a waypoint with an empty config (only its Gateway), after it is ready."""
    d = os.path.join(OUT, "empty")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "gateway.yaml"), "w") as f:
        f.write("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
                "metadata: {name: waypoint, namespace: default}\n"
                "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n")
    ip = "127.77.78.1"
    p = subprocess.Popen(
        [WAYPOINT, "run", "--config", d, "--dev-ca", "--hbone-addr", f"{ip}:15008",
         "--readiness-addr", f"{ip}:15021", "--metrics-addr", f"{ip}:15020", "--admin-addr", f"{ip}:15000"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://{ip}:15021/healthz/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(1)
        return rss_kib(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)


if __name__ == "__main__":
    main()
