#!/usr/bin/env python3
"""Validate docker-compose.yml, deploy/Dockerfile and .dockerignore without a Docker engine (none
runs on the CI machines).

Compose: the file parses, defines the services the README names, runs binaries this workspace
builds, and wires each service to NATS, Postgres and the WeChat API by the variables the services
read. Compose fills in ${...} for the whole file (and the files it includes) on every command,
even `docker compose up -d nats postgres`, so this simulates that with nothing set: no `${VAR:?}`
anywhere, no variable without a default, and nats and postgres get what they need to start.
Only the gateway publishes a port beyond 127.0.0.1; every service has a healthcheck; notifier
and leads can be scaled (`--scale notifier=3`); the `preflight` service's script is run with sh
to show that the full stack refuses to start without each of its secrets and names it; the real
env files are read and git-ignored.

Image: base images pinned to an exact version, BuildKit cache mounts with the binaries copied
out, stripped binaries, every binary of the workspace, a HEALTHCHECK, a non-root user, and a
.dockerignore that keeps target/, .git and the env files out of the build context.

Exits 1 with one line per problem."""
import fnmatch
import os
import pathlib
import re
import secrets
import subprocess
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
COMPOSE = root / "docker-compose.yml"
compose = yaml.safe_load(COMPOSE.read_text())
services = compose["services"]
errors = []

# Services built from the image (not nats/postgres), and those documented as scalable.
APP = ["gateway", "leads", "notifier"]
SCALABLE = ["notifier", "leads"]
# The one-shot check of the full stack's secrets.
PREFLIGHT = "preflight"
# Settings the services read from deploy/ande.env that preflight requires outside development.
ENV_FILE_SECRETS = ["JWT_SECRET", "WECHAT_APP_ID", "WECHAT_APP_SECRET"]

for name in ["nats", "postgres", PREFLIGHT, "wechat-sim", *APP]:
    if name not in services:
        errors.append(f"service {name} missing")
if errors:
    print("docker-compose.yml:", *errors, sep="\n  ")
    sys.exit(1)

bins = set()
for manifest in root.glob("*/*/Cargo.toml"):
    text = manifest.read_text()
    bins.update(re.findall(r'\[\[bin\]\]\s*\nname\s*=\s*"([^"]+)"', text))


# --- Compose's interpolation, simulated --------------------------------------------------------

class Required(Exception):
    """A `${VAR:?message}` or `${VAR?message}` whose variable is missing."""


def interpolate(text, env, unset_refs=None):
    """`text` as compose fills it in from `env`: `$$`, `$VAR`, `${VAR}`, and `${VAR` followed by
    `:-`, `-`, `:?`, `?`, `:+` or `+` (nested in defaults too). Variables referenced without a
    default while unset are added to `unset_refs` (compose warns about each on every command)."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
            continue
        nxt = text[i + 1:i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            j, depth = i + 2, 1
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth:
                raise ValueError(f"unclosed ${{ in {text!r}")
            out.append(substitute(text[i + 2:j - 1], env, unset_refs))
            i = j
        else:
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1:])
            if m:
                if m.group(0) not in env and unset_refs is not None:
                    unset_refs.add(m.group(0))
                out.append(env.get(m.group(0), ""))
                i += 1 + m.end()
            else:
                out.append("$")
                i += 1
    return "".join(out)


def substitute(body, env, unset_refs):
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", body, re.S)
    if not m:
        raise ValueError(f"invalid substitution ${{{body}}}")
    name, op, arg = m.groups()
    value = env.get(name)
    if op is None:
        if value is None and unset_refs is not None:
            unset_refs.add(name)
        return value or ""
    missing = value is None or (op.startswith(":") and value == "")
    kind = op[-1]
    if kind == "-":
        return interpolate(arg, env, unset_refs) if missing else value
    if kind == "+":
        return "" if missing else interpolate(arg, env, unset_refs)
    if missing:
        raise Required(f"${{{name}{op}…}} is required")
    return value


def resolve(node, env, where, problems, unset_refs):
    """The model with every string value interpolated; problems collected, not raised."""
    if isinstance(node, dict):
        return {k: resolve(v, env, f"{where}.{k}", problems, unset_refs) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env, f"{where}[{i}]", problems, unset_refs) for i, v in enumerate(node)]
    if isinstance(node, str):
        try:
            return interpolate(node, env, unset_refs)
        except (Required, ValueError) as e:
            problems.append(f"{where}: {e}")
            return node
    return node


def included_files():
    for item in compose.get("include") or []:
        path = item if isinstance(item, str) else item.get("path")
        if isinstance(path, str):
            yield path, yaml.safe_load((root / path).read_text())


def resolved_model(env, problems=None, unset_refs=None):
    problems = [] if problems is None else problems
    model = resolve(compose, env, "docker-compose.yml", problems, unset_refs)
    for path, doc in included_files():
        resolve(doc, env, path, problems, unset_refs)
    return model


def container_env(model, name, env_file=None):
    """What a container of service `name` sees: its env_file, overridden by `environment`."""
    out = dict(env_file or {})
    env = model["services"][name].get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    out.update({k: str(v) for k, v in env.items() if v is not None})
    return out


# Nothing set: a fresh clone. Every command must interpolate, without warnings.
problems, unset_refs = [], set()
bare = resolved_model({}, problems, unset_refs)
for p in problems:
    errors.append(f"{p}: compose fills in the whole file on every command, even `up -d nats "
                  "postgres`, so a required variable aborts them all; give it a default and let "
                  f"{PREFLIGHT} check it")
for var in sorted(unset_refs):
    errors.append(f"${{{var}}} has no default: compose warns on every command while it is unset "
                  f"(write ${{{var}:-}})")

# nats and postgres start with nothing set. Postgres's image refuses to initialise without a
# password; NATS refuses to start when a variable its config names is not in its environment.
pg_default = container_env(bare, "postgres").get("POSTGRES_PASSWORD", "")
if not pg_default:
    errors.append("postgres: POSTGRES_PASSWORD is empty with nothing set; the image then refuses to start")
raw_pg = str(services["postgres"].get("environment", {}).get("POSTGRES_PASSWORD", ""))
if not raw_pg.startswith("${POSTGRES_PASSWORD"):
    errors.append("postgres: POSTGRES_PASSWORD must come from the environment (`${POSTGRES_PASSWORD:-…}`), not a literal")
def nats_config(name, seen=()):
    """The config the compose NATS runs (nats-server.conf) with the files it includes; not the
    cluster example (cluster.conf), which runs elsewhere with variables of its own."""
    text = re.sub(r"#.*", "", (root / "deploy" / "nats" / name).read_text())
    for inc in re.findall(r"^\s*include\s+[\"']?([\w./-]+)", text, re.M):
        if inc not in seen:
            text += "\n" + nats_config(inc, seen + (name,))
    return text


nats_conf = nats_config("nats-server.conf")
# Variables are unquoted `$NAME` values; quoted strings such as "$JS.API.INFO" are subjects.
conf_vars = set(re.findall(r"\$([A-Z_][A-Z0-9_]*)", re.sub(r'"[^"]*"', "", nats_conf)))
nats_env = container_env(bare, "nats")
for var in sorted(conf_vars - set(nats_env)):
    errors.append(f"nats: deploy/nats names ${var}, which the nats service does not pass: NATS would not start")
users = dict(re.findall(r"user:\s*(\w+)\s*\n\s*password:\s*\$(\w+)", nats_conf))

# --- Services ----------------------------------------------------------------------------------

for name, svc in services.items():
    if name in ("nats", "postgres", PREFLIGHT):
        continue
    cmd = svc.get("command", [None])[0]
    if cmd not in bins:
        errors.append(f"{name}: command {cmd!r} is not a binary of the workspace {sorted(bins)}")
    env = svc.get("environment", {})
    for var in ["NATS_URL", "DATABASE_URL", "WECHAT_API_BASE"]:
        if var not in env:
            errors.append(f"{name}: {var} not set")
    for var in ENV_FILE_SECRETS:
        if var in env:
            errors.append(f"{name}: sets {var} in environment, which overrides deploy/ande.env's (even when empty)")
    files = [f if isinstance(f, str) else f.get("path") for f in svc.get("env_file") or []]
    if files != ["deploy/ande.env"]:
        errors.append(f"{name}: env_file is {files}, expected the real settings file deploy/ande.env (a copy of the example)")

# Published ports: the gateway's API only; the rest (NATS, Postgres, the observability UIs) on
# 127.0.0.1, for the tools of this host, never on other interfaces.
def published(svc):
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            yield port.get("host_ip", ""), port
        else:
            parts = str(port).split(":")
            yield (parts[0] if len(parts) == 3 else ""), port


for where, doc in [("docker-compose.yml", bare), *included_files()]:
    for name, svc in (doc.get("services") or {}).items():
        for host_ip, port in published(svc):
            if host_ip != "127.0.0.1" and not (where == "docker-compose.yml" and name == "gateway"):
                errors.append(f"{where}: {name} publishes {port!r} beyond 127.0.0.1; only the gateway may")
if "dev" not in services["wechat-sim"].get("profiles", []):
    errors.append("wechat-sim: must be in the dev profile only")
for name, svc in services.items():
    url = str(svc.get("environment", {}).get("DATABASE_URL", ""))
    if url and not url.startswith("postgres://postgres:${POSTGRES_PASSWORD"):
        errors.append(f"{name}: DATABASE_URL must carry ${{POSTGRES_PASSWORD…}}, not a literal password")
    if url and f":{pg_default}@" not in container_env(bare, name).get("DATABASE_URL", ""):
        errors.append(f"{name}: with nothing set DATABASE_URL's password is not postgres's ({pg_default!r})")

# Each service reaches NATS as its own user (deploy/nats/ande-auth.conf), with that user's
# password variable, and NATS runs that file.
for name in APP:
    url = str(services[name].get("environment", {}).get("NATS_URL", ""))
    if not url.startswith(f"nats://{name}:${{{users.get(name, '?')}"):
        errors.append(f"{name}: NATS_URL must carry its own user ({name}) and ${{{users.get(name, '?')}…}}")
if "@" in str(services["wechat-sim"].get("environment", {}).get("NATS_URL", "")):
    errors.append("wechat-sim: NATS_URL carries credentials; it has no NATS user of its own")
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

# Every service has a healthcheck (compose waits on them, `docker compose ps` shows them); the
# one-shot preflight disables the image's, having nothing to serve.
for name, svc in services.items():
    check = svc.get("healthcheck") or {}
    if name == PREFLIGHT:
        if check.get("disable") is not True:
            errors.append(f"{PREFLIGHT}: set healthcheck.disable: true (a one-shot has nothing to probe)")
    elif not check.get("test") or check.get("disable"):
        errors.append(f"{name}: no healthcheck")
sim_port = str(services["wechat-sim"].get("environment", {}).get("WECHAT_SIM_ADDR", "")).rpartition(":")[2]
sim_probe = " ".join(map(str, (services["wechat-sim"].get("healthcheck") or {}).get("test", [])))
if f"127.0.0.1:{sim_port}/sim/health" not in sim_probe:
    errors.append(f"wechat-sim: the healthcheck must probe 127.0.0.1:{sim_port}/sim/health (has {sim_probe!r})")

# `docker compose up -d --scale notifier=3`: replicas must not collide on a name, an address or a
# host port.
for name in SCALABLE:
    svc = services[name]
    for key in ("container_name", "hostname", "ports", "mac_address"):
        if svc.get(key):
            errors.append(f"{name}: {key} is set; a second replica (--scale {name}=3) would collide on it")
    networks = svc.get("networks") or {}
    for net, conf in (networks.items() if isinstance(networks, dict) else []):
        if isinstance(conf, dict) and (conf.get("ipv4_address") or conf.get("ipv6_address")):
            errors.append(f"{name}: a fixed address on network {net}; replicas would collide on it")
if not services["notifier"].get("stop_grace_period"):
    errors.append("notifier: stop_grace_period missing (sends in flight must finish before the kill)")

# --- preflight: the full stack refuses to start without its secrets ------------------------------

pre = services[PREFLIGHT]
for name in APP:
    dep = (services[name].get("depends_on") or {}).get(PREFLIGHT) if isinstance(services[name].get("depends_on"), dict) else None
    if (dep or {}).get("condition") != "service_completed_successfully":
        errors.append(f"{name}: must depend on {PREFLIGHT} with condition service_completed_successfully")
for infra in ("nats", "postgres"):
    if PREFLIGHT in (services[infra].get("depends_on") or {}):
        errors.append(f"{infra}: must not depend on {PREFLIGHT} (`up -d nats postgres` would then need every secret)")
if pre.get("depends_on"):
    errors.append(f"{PREFLIGHT}: must not depend on anything (it checks settings, not servers)")
if str(pre.get("restart")) != "no":
    errors.append(f"{PREFLIGHT}: restart must be \"no\" (it exits when done)")

# The secrets compose itself fills in (.env): Postgres's and each NATS user's password.
COMPOSE_SECRETS = ["POSTGRES_PASSWORD", *sorted(conf_vars)]
source = pathlib.Path(root / "shared/platform/src/config.rs").read_text()
dev_values = {
    "POSTGRES_PASSWORD": pg_default,
    "WECHAT_APP_ID": re.search(r'DEFAULT_APP_ID: &str = "([^"]+)"', source).group(1),
    "WECHAT_APP_SECRET": re.search(r'DEFAULT_APP_SECRET: &str = "([^"]+)"', source).group(1),
}


def run_preflight(host_env, env_file):
    model = resolved_model(host_env)
    cmd = model["services"][PREFLIGHT].get("command") or []
    env = container_env(model, PREFLIGHT, env_file)
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=20)
    return done.returncode, done.stdout + done.stderr


if (pre.get("command") or [None])[0] != "sh":
    errors.append(f"{PREFLIGHT}: command must be a sh script")
else:
    good_host = {v: secrets.token_hex(24) for v in COMPOSE_SECRETS}
    good_file = {"JWT_SECRET": secrets.token_urlsafe(48), "WECHAT_APP_ID": "wx0123456789abcdef",
                 "WECHAT_APP_SECRET": secrets.token_hex(16)}
    code, out = run_preflight({}, None)
    if code == 0:
        errors.append(f"{PREFLIGHT}: passes with nothing set; the full stack would run without secrets")
    for var in COMPOSE_SECRETS + ENV_FILE_SECRETS:
        where = ".env" if var in COMPOSE_SECRETS else "deploy/ande.env"
        if f"set {var} in {where}" not in out:
            errors.append(f"{PREFLIGHT}: with nothing set it does not say `set {var} in {where}` (said {out.strip()!r})")
    code, out = run_preflight(good_host, good_file)
    if code != 0:
        errors.append(f"{PREFLIGHT}: fails with every secret set: {out.strip()!r}")
    code, out = run_preflight({"ANDE_ENV": "development"}, None)
    if code != 0:
        errors.append(f"{PREFLIGHT}: fails under ANDE_ENV=development with nothing set: {out.strip()!r}")
    for var in COMPOSE_SECRETS + ENV_FILE_SECRETS:
        host = {k: v for k, v in good_host.items() if k != var}
        file = {k: v for k, v in good_file.items() if k != var}
        code, out = run_preflight(host, file)
        if code == 0 or var not in out:
            errors.append(f"{PREFLIGHT}: passes, or does not name {var}, when only {var} is missing")
        if var in dev_values:
            code, out = run_preflight({**host, var: dev_values[var]} if var in COMPOSE_SECRETS else host,
                                      {**file, var: dev_values[var]} if var in ENV_FILE_SECRETS else file)
            if code == 0:
                errors.append(f"{PREFLIGHT}: passes with {var} at its development value {dev_values[var]!r}")

# --- Env files: the real ones are read, and never committed -------------------------------------

def git_ignored(path):
    try:
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root,
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {0: True, 1: False}.get(done.returncode)


for path in (".env", "deploy/ande.env"):
    if git_ignored(path) is False:
        errors.append(f".gitignore: {path} holds secrets and must be ignored")
if git_ignored("deploy/ande.env.example") is True:
    errors.append(".gitignore: deploy/ande.env.example is ignored; it is the committed template")

# --- Image ---------------------------------------------------------------------------------------

dockerfile_path = root / services["gateway"]["build"]["dockerfile"]
if not dockerfile_path.exists():
    errors.append("the Dockerfile named by the build section does not exist")
else:
    dockerfile = dockerfile_path.read_text()
    # Instructions, with continuation lines joined and here-documents left out.
    text = re.sub(r"<<'?(\w+)'?(.*?)\n.*?\n\1\n", r"\2\n", dockerfile, flags=re.S)
    instructions = [
        line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = set()
    for ins in instructions:
        m = re.match(r"FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", ins, re.I)
        if not m:
            continue
        image, stage = m.groups()
        if stage:
            stages.add(stage)
        if image in stages:
            continue
        ref, _, digest = image.partition("@")
        tag = ref.rpartition(":")[2] if ":" in ref.rpartition("/")[2] else ""
        if not digest and not re.search(r"\d+\.\d+\.\d+|\d{8}", tag):
            errors.append(f"Dockerfile: FROM {image} is not pinned to an exact version (e.g. 1.95.0, bookworm-20251117)")
    runs = [ins for ins in instructions if ins.upper().startswith("RUN ")]
    build = [r for r in runs if "cargo build" in r]
    if not build:
        errors.append("Dockerfile: no RUN with cargo build")
    for r in build:
        if "--mount=type=cache" not in r or "target=/usr/local/cargo/registry" not in r:
            errors.append("Dockerfile: cargo build without BuildKit cache mounts for the registry and target/")
        if "cp target/release/" not in r:
            errors.append("Dockerfile: the binaries must be copied out of the cache-mounted target/ in the same RUN")
        if "CARGO_PROFILE_RELEASE_STRIP" not in r and "strip " not in r:
            errors.append("Dockerfile: release binaries are not stripped")
        for b in sorted(bins):
            if f"target/release/{b}" not in r:
                errors.append(f"Dockerfile: binary {b} is not in the image (one image carries every binary)")
    if not any(re.match(r"HEALTHCHECK\s+(?!NONE)", ins, re.I) for ins in instructions):
        errors.append("Dockerfile: no HEALTHCHECK")
    users_set = [ins.split()[1] for ins in instructions if ins.upper().startswith("USER ")]
    if not users_set or users_set[-1].split(":")[0] in ("root", "0"):
        errors.append("Dockerfile: the image must run as a non-root USER")

dockerignore = root / ".dockerignore"
if not dockerignore.exists():
    errors.append(".dockerignore missing: the whole target/ would be sent as build context")
else:
    patterns = [l.strip() for l in dockerignore.read_text().splitlines() if l.strip() and not l.startswith("#")]

    def excluded(path):
        """Docker's rule, approximately: the last matching pattern wins; a pattern matching a
        directory excludes what is inside."""
        parts = path.split("/")
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").strip("/")
            for candidate in {pat, pat.replace("**/", "")}:
                if any(fnmatch.fnmatchcase("/".join(parts[:n]), candidate) for n in range(1, len(parts) + 1)):
                    result = not negate
        return result

    for path in ("target/release/gateway", ".git/HEAD", ".env", "deploy/ande.env", "x/node_modules/y", "a.log"):
        if not excluded(path):
            errors.append(f".dockerignore: {path} is sent as build context")
    for path in ("Cargo.toml", "Cargo.lock", ".sqlx/query-x.json", "proto-schemas/x", "deploy/ande.env.example"):
        if excluded(path):
            errors.append(f".dockerignore: excludes {path}, which the build needs")

if errors:
    print("docker-compose.yml, deploy/Dockerfile:", *errors, sep="\n  ")
    sys.exit(1)
print(f"docker-compose.yml: {len(services)} services ok (nats and postgres start with nothing set; "
      f"{PREFLIGHT} names all {len(COMPOSE_SECRETS) + len(ENV_FILE_SECRETS)} secrets); deploy/Dockerfile, .dockerignore ok")
