#!/usr/bin/env python3
"""Validate docker-compose.yml without a Docker engine (none runs on the CI machines): it must
parse, define the services the README names, run binaries this workspace builds, and wire each
service to NATS, Postgres and the WeChat API by the variables the services read."""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose["services"]
errors = []

for name in ["nats", "postgres", "wechat-sim", "gateway", "leads", "notifier"]:
    if name not in services:
        errors.append(f"service {name} missing")

bins = set()
for manifest in root.glob("*/*/Cargo.toml"):
    text = manifest.read_text()
    bins.update(re.findall(r'\[\[bin\]\]\s*\nname\s*=\s*"([^"]+)"', text))

for name, svc in services.items():
    if name in ("nats", "postgres"):
        continue
    cmd = svc.get("command", [None])[0]
    if cmd not in bins:
        errors.append(f"{name}: command {cmd!r} is not a binary of the workspace {sorted(bins)}")
    env = svc.get("environment", {})
    for var in ["NATS_URL", "DATABASE_URL", "WECHAT_API_BASE"]:
        if var not in env:
            errors.append(f"{name}: {var} not set")

# The data plane stays inside: only the gateway publishes a port; the simulator (which mints
# logins for any openid) only runs in the dev profile; no literal database password.
for name, svc in services.items():
    if svc.get("ports") and name != "gateway":
        errors.append(f"{name}: publishes {svc['ports']}; only the gateway may")
if "dev" not in services["wechat-sim"].get("profiles", []):
    errors.append("wechat-sim: must be in the dev profile only")
pg_password = str(services["postgres"].get("environment", {}).get("POSTGRES_PASSWORD", ""))
if not pg_password.startswith("${"):
    errors.append("postgres: POSTGRES_PASSWORD must come from the environment, not a literal")
for name, svc in services.items():
    url = str(svc.get("environment", {}).get("DATABASE_URL", ""))
    if url and ":postgres@" in url:
        errors.append(f"{name}: DATABASE_URL carries a literal password")

# Each service reaches NATS as its own user (deploy/nats/ande-auth.conf), and NATS runs that file.
for name in ["gateway", "leads", "notifier"]:
    url = str(services[name].get("environment", {}).get("NATS_URL", ""))
    if not url.startswith(f"nats://{name}:${{"):
        errors.append(f"{name}: NATS_URL must carry its own user ({name}) and a password from the environment")
if "/etc/nats/nats-server.conf" not in services["nats"].get("command", []):
    errors.append("nats: must run deploy/nats/nats-server.conf (users and permissions)")

# Each service serves /metrics, /healthz and /readyz where Prometheus scrapes it
# (deploy/observability/prometheus.yml) and compose probes its readiness there.
for name, port in [("gateway", 9101), ("leads", 9102), ("notifier", 9103)]:
    svc = services[name]
    addr = str(svc.get("environment", {}).get("METRICS_ADDR", ""))
    if addr != f"0.0.0.0:{port}":
        errors.append(f"{name}: METRICS_ADDR is {addr!r}, Prometheus scrapes {name}:{port}")
    probe = " ".join(map(str, (svc.get("healthcheck") or {}).get("test", [])))
    if f"127.0.0.1:{port}/readyz" not in probe:
        errors.append(f"{name}: the healthcheck must probe 127.0.0.1:{port}/readyz (has {probe!r})")
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in svc.get("environment", {}):
        errors.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT is not passed through")

if not (root / services["gateway"]["build"]["dockerfile"]).exists():
    errors.append("the Dockerfile named by the build section does not exist")

if errors:
    print("docker-compose.yml:", *errors, sep="\n  ")
    sys.exit(1)
print(f"docker-compose.yml: {len(services)} services ok")
