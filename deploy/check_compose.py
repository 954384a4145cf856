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

if not (root / services["gateway"]["build"]["dockerfile"]).exists():
    errors.append("the Dockerfile named by the build section does not exist")

if errors:
    print("docker-compose.yml:", *errors, sep="\n  ")
    sys.exit(1)
print(f"docker-compose.yml: {len(services)} services ok")
