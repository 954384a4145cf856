#!/usr/bin/env python3
"""Render and validate the Kubernetes manifests (deploy/k8s/) offline.

1. Render each kustomize overlay (dev, dev/migrate, production, production/migrate) with the
   small kustomize subset below. When `kubectl kustomize` (kustomize 4 or later) or `kustomize`
   is installed, render with it as well and require the same objects, so the built-in renderer
   cannot drift from the real one; its output is then the one checked.
2. Validate every object: Kubernetes kinds against the JSON schemas that `kubernetes-validate`
   bundles (strict: unknown fields are errors), for the oldest and newest Kubernetes versions
   named below; KEDA's ScaledObject and TriggerAuthentication against the schema written down
   here from KEDA's CRDs (kubernetes-validate does not know them). Any other kind is an error.
3. Check what the schemas cannot: every Deployment has liveness and readiness probes on the
   service's admin port (/healthz, /readyz), memory requests and limits above the measured RSS,
   a CPU request, terminationGracePeriodSeconds above the service's shutdown grace (read from
   its source), a non-root, read-only, capability-free security context; every Secret reference
   points at the Secret (ande-secrets) and a documented key; each service uses its own NATS user;
   the Ingress reaches the gateway's API port; the migrate Job runs the release's image; the
   autoscalers target the right stream, consumer and queue; the NATS chart values and the
   Postgres examples agree with the Secrets and URLs.

Needs PyYAML and kubernetes-validate (CI: `pip install kubernetes-validate`); no network.
Exits 1 with one line per problem."""
import base64
import copy
import hashlib
import json
import pathlib
import re
import shutil
import subprocess
import sys

try:
    import yaml
    import jsonschema
    import kubernetes_validate
except ImportError as e:
    sys.exit(f"check_k8s: {e.name} is missing: pip install kubernetes-validate (brings PyYAML "
             "and jsonschema too)")

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# overlay -> its migrate overlay (applied first, with the same image and namespace)
OVERLAYS = {"overlays/dev": "overlays/dev/migrate",
            "overlays/production": "overlays/production/migrate"}
# The oldest Kubernetes we support (KEDA 2.x and policy/v1, autoscaling/v2 are all there) and the
# newest the installed kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

APPS = ["gateway", "leads", "notifier"]
# The one Secret the services read (created by the operator in production) and its keys; each is
# documented in deploy/README.md.
SECRET = "ande-secrets"
SECRET_KEYS = {"JWT_SECRET", "WECHAT_APP_SECRET", "DATABASE_URL", "WECHAT_PUSH_TOKEN",
               "WECHAT_PUSH_AES_KEY", "NATS_URL_GATEWAY", "NATS_URL_LEADS", "NATS_URL_NOTIFIER",
               "NATS_URL_ANDECTL"}
# Variables that carry secrets: never in a ConfigMap or a plain env value.
SECRET_VARS = {"JWT_SECRET", "WECHAT_APP_SECRET", "DATABASE_URL", "NATS_URL", "WECHAT_PUSH_TOKEN",
               "WECHAT_PUSH_AES_KEY", "POSTGRES_PASSWORD", "DB_PASSWORD"}
# Peak RSS measured per service (README "Performance", issue 14/16 runs): the memory limit must
# be above it with headroom (an OOM kill drops all work in flight). The gateway's is 267 MB at
# 2,000 actions/s to one process with a slow WeChat.
MEASURED_RSS_MB = {"gateway": 267, "leads": 12, "notifier": 23}
RSS_HEADROOM = 1.25
# leads has no shutdown setting: on SIGTERM it finishes the batch in hand (a few seconds).
LEADS_STOP_SECONDS = 5
# What a pod needs beyond the service's own grace: the process's exit and the final records.
GRACE_MARGIN_SECONDS = 5

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


# --- A kustomize subset ---------------------------------------------------------------------
# resources (files and directories), namespace, configMapGenerator and secretGenerator (envs,
# literals, behavior create/merge, type, options.disableNameSuffixHash, generatorOptions),
# patches by path (strategic merge of the object the patch names), images (newName, newTag,
# digest). Anything else in a kustomization.yaml is refused, so the subset is explicit.

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "configMapGenerator",
                      "secretGenerator", "generatorOptions", "patches", "images"}
# Lists merged element by element in a strategic merge patch (the Kubernetes patchMergeKey of
# the pod fields we patch); any other list is replaced, as kustomize does for lists without one.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}


class Item:
    """A rendered object; `generated` is its name before the hash suffix, when a generator made it."""

    def __init__(self, obj, generated=None, hashed=False):
        self.obj, self.generated, self.hashed = obj, generated, hashed


def load_docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def env_file_pairs(path):
    """kustomize's env file reading: KEY=VALUE lines, leading blanks and #-comments skipped, the
    value verbatim (no quotes removed, nothing after it is a comment)."""
    pairs = []
    for line in path.read_text().splitlines():
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        pairs.append((key, value))
    return pairs


def literal_pair(text):
    key, _, value = text.partition("=")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key, value


def kustomize_base64(value):
    """kustomize's encoding of generated Secret data: base64 in lines of 70, each ended by a
    newline when there is more than one (it matters: the name's hash covers it)."""
    enc = base64.b64encode(value.encode()).decode()
    if len(enc) < 70:
        return enc
    return "".join(enc[i:i + 70] + "\n" for i in range(0, len(enc), 70))


def name_hash(obj):
    """kustomize's content hash suffix (api/hasher): sha256 of the Go JSON encoding of kind,
    name, data (and a Secret's type), first 10 hex digits with 0,1,3,a,e swapped for letters.
    The name is always empty: kustomize looks it up as the single field "metadata/name", which
    no object has (checked against kubectl kustomize 5.5)."""
    m = {"kind": obj["kind"], "name": "", "data": obj.get("data", {})}
    if obj["kind"] == "Secret":
        m["type"] = obj.get("type", "Opaque")
    text = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                   ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(c, esc)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def generate(kdir, spec, kind, options, items):
    name = spec["name"]
    pairs = []
    for env in spec.get("envs", []):
        pairs += env_file_pairs(kdir / env)
    pairs += [literal_pair(lit) for lit in spec.get("literals", [])]
    encode = kustomize_base64 if kind == "Secret" else (lambda v: v)
    data = {k: encode(v) for k, v in pairs}
    behavior = spec.get("behavior", "create")
    hashed = not {**options, **spec.get("options", {})}.get("disableNameSuffixHash", False)
    if behavior == "create":
        obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "data": data}
        if kind == "Secret":
            obj["type"] = spec.get("type", "Opaque")
        items.append(Item(obj, generated=name, hashed=hashed))
        return
    target = [i for i in items if i.generated == name and i.obj["kind"] == kind]
    if len(target) != 1 or behavior not in ("merge", "replace"):
        raise ValueError(f"{kdir}: {kind} {name}: behavior {behavior} needs one generated base")
    base = target[0].obj
    base["data"] = {**base.get("data", {}), **data} if behavior == "merge" else data


def strategic_merge(base, patch):
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(base.get(key), list):
            mk = MERGE_KEYS[key]
            for element in value:
                same = [b for b in base[key] if b.get(mk) == element.get(mk)]
                if same:
                    strategic_merge(same[0], element)
                else:
                    base[key].append(copy.deepcopy(element))
        else:
            base[key] = copy.deepcopy(value)


def pod_specs(obj):
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield spec.get("template", {}).get("spec", {})
    elif obj["kind"] == "Pod":
        yield spec


def containers(obj):
    for pod in pod_specs(obj):
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def set_images(images, items):
    for item in items:
        for c in containers(item.obj):
            image = c.get("image", "")
            name = re.split(r"[@]", image)[0]
            name = name if ":" not in name.rsplit("/", 1)[-1] else name.rsplit(":", 1)[0]
            for rule in images:
                if rule["name"] != name:
                    continue
                new = rule.get("newName", name)
                if "digest" in rule:
                    c["image"] = f"{new}@{rule['digest']}"
                elif "newTag" in rule:
                    c["image"] = f"{new}:{rule['newTag']}"
                else:
                    c["image"] = image.replace(name, new, 1)


def build(kdir):
    """The items a kustomization directory renders, generated names not yet hashed."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise ValueError(f"{kdir}: the built-in renderer does not support {sorted(unknown)}")
    items = []
    for res in k.get("resources", []):
        path = (kdir / res).resolve()
        items += build(path) if path.is_dir() else [Item(d) for d in load_docs(path)]
    options = k.get("generatorOptions", {})
    for spec in k.get("configMapGenerator", []):
        generate(kdir, spec, "ConfigMap", options, items)
    for spec in k.get("secretGenerator", []):
        generate(kdir, spec, "Secret", options, items)
    for p in k.get("patches", []):
        if set(p) != {"path"}:
            raise ValueError(f"{kdir}: only `patches: - path:` is supported")
        for patch in load_docs(kdir / p["path"]):
            kind, name = patch["kind"], patch["metadata"]["name"]
            target = [i for i in items if i.obj["kind"] == kind and i.obj["metadata"]["name"] == name]
            if len(target) != 1:
                raise ValueError(f"{kdir}: patch {p['path']} matches {len(target)} objects")
            strategic_merge(target[0].obj, patch)
    set_images(k.get("images", []), items)
    if "namespace" in k:
        for item in items:
            item.obj["metadata"]["namespace"] = k["namespace"]
    return items


def rename_refs(obj, renamed):
    """Point references at generated objects to their hashed names (kustomize's nameReference
    for the fields these manifests use)."""
    def new(kind, name):
        return renamed.get((kind, name), name)
    for pod in pod_specs(obj):
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            for src in c.get("envFrom", []):
                for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if field in src:
                        src[field]["name"] = new(kind, src[field]["name"])
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    if field in ref:
                        ref[field]["name"] = new(kind, ref[field]["name"])
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                vol["configMap"]["name"] = new("ConfigMap", vol["configMap"]["name"])
            if "secret" in vol:
                vol["secret"]["secretName"] = new("Secret", vol["secret"]["secretName"])


def render_builtin(kdir):
    items = build(kdir)
    renamed = {}
    for item in items:
        if item.generated and item.hashed:
            meta = item.obj["metadata"]
            meta["name"] = f"{item.generated}-{name_hash(item.obj)}"
            renamed[(item.obj["kind"], item.generated)] = meta["name"]
    for item in items:
        rename_refs(item.obj, renamed)
    return [item.obj for item in items]


def external_renderer():
    """`kubectl kustomize` or `kustomize build` when installed and new enough (kustomize 4+:
    resources may be directories, `patches:`), else None. Debian's kubernetes-client (1.20)
    embeds kustomize 2.0.3, which is too old."""
    if shutil.which("kubectl"):
        try:
            out = subprocess.run(["kubectl", "version", "--client", "-o", "json"],
                                 capture_output=True, text=True, timeout=60).stdout
            version = json.loads(out).get("kustomizeVersion", "")
            if re.match(r"v([4-9]|\d\d)\.", version):
                return ["kubectl", "kustomize"], f"kubectl kustomize ({version})"
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
    if shutil.which("kustomize"):
        out = subprocess.run(["kustomize", "version"], capture_output=True, text=True).stdout
        if re.search(r"v([4-9]|\d\d)\.", out):
            return ["kustomize", "build"], f"kustomize build ({out.strip()})"
    return None, None


def key_of(obj):
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def render(overlay, external):
    """The overlay's objects: the external renderer's when there is one (after checking that the
    built-in one renders the same), else the built-in renderer's."""
    kdir = K8S / overlay
    ours = render_builtin(kdir)
    if not external:
        return ours
    run = subprocess.run(external + [str(kdir)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        problem(overlay, f"{' '.join(external)} failed: {run.stderr.strip()}")
        return ours
    theirs = [d for d in yaml.safe_load_all(run.stdout) if d is not None]
    a, b = {key_of(o): o for o in ours}, {key_of(o): o for o in theirs}
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            problem(overlay, f"{'/'.join(k)}: rendered only by {'kustomize' if k in b else 'the built-in renderer'}")
        elif a[k] != b[k]:
            problem(overlay, f"{'/'.join(k)}: the built-in renderer differs from kustomize")
    return theirs


# --- Schemas -----------------------------------------------------------------------------------

# KEDA's CRDs (keda.sh/v1alpha1, config/crd/bases in kedacore/keda, 2.x), the fields these
# manifests may use. As in the CRD: spec.scaleTargetRef.name and spec.triggers[].type/metadata
# are required and trigger metadata values are strings (an unquoted number is refused by the API
# server, a common mistake). Unlike the CRD, unknown fields are refused here, to catch typos.
_INT = {"type": "integer"}
_SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"},
                                   "envSourceContainerName": {"type": "string"}}},
                "pollingInterval": _INT, "cooldownPeriod": _INT, "initialCooldownPeriod": _INT,
                "idleReplicaCount": _INT, "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {"type": "object"},
                "fallback": {"type": "object", "required": ["failureThreshold", "replicas"]},
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object",
                                         "additionalProperties": {"type": "string"}},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object", "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"},
                                               "kind": {"enum": ["TriggerAuthentication",
                                                                 "ClusterTriggerAuthentication"]}}},
                        }}}}}}}
_TRIGGER_AUTH = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {"type": "object", "required": ["parameter", "name", "key"],
                              "additionalProperties": False,
                              "properties": {"parameter": {"type": "string"},
                                             "name": {"type": "string"},
                                             "key": {"type": "string"}}}},
                "env": {"type": "array"}, "podIdentity": {"type": "object"},
            }}}}
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): _SCALED_OBJECT,
               ("keda.sh/v1alpha1", "TriggerAuthentication"): _TRIGGER_AUTH}


def validate_schema(where, obj):
    crd = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd is not None:
        for err in jsonschema.Draft7Validator(crd).iter_errors(obj):
            path = ".".join(str(p) for p in err.absolute_path)
            problem(where, f"{path or '(top)'}: {err.message}")
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problem(where, f"no schema for {obj.get('apiVersion')} {obj.get('kind')} "
                           f"(Kubernetes {version}) and not a known CRD")
            return
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problem(where, f"Kubernetes {version}: {path or '(top)'}: {e.message}")
            return


# --- Facts read from the repository -------------------------------------------------------------

def read_facts():
    text = lambda p: (ROOT / p).read_text()
    facts = {}
    dockerfile = text("deploy/Dockerfile")
    facts["binaries"] = set(re.findall(r"target/release/([\w-]+)", dockerfile))
    uid = re.search(r"--uid (\d+)", dockerfile)
    facts["uid"] = int(uid.group(1)) if uid else None
    facts["documented"] = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text("deploy/ande.env.example"), re.M))
    facts["readme"] = text("deploy/README.md")
    grace = re.search(r"const SHUTDOWN_GRACE: Duration = Duration::from_secs\((\d+)\)",
                      text("services/gateway/src/server.rs"))
    notifier = re.search(r"DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs\((\d+)\)",
                         text("services/notifier/src/config.rs"))
    durable = re.search(r'pub const DURABLE: &str = "([^"]+)"', text("services/leads/src/consumer.rs"))
    if not (grace and notifier and durable and facts["uid"]):
        sys.exit("check_k8s: a fact it reads from the source moved (gateway SHUTDOWN_GRACE, notifier "
                 "DEFAULT_SHUTDOWN_GRACE, leads DURABLE, the Dockerfile's --uid): update the check")
    facts["grace"] = {"gateway": int(grace.group(1)), "notifier": int(notifier.group(1)),
                      "leads": LEADS_STOP_SECONDS}
    facts["leads_consumer"] = durable.group(1)
    auth = text("deploy/nats/ande-auth.conf")
    facts["nats_users"] = set(re.findall(r"^\s*user:\s*(\w+)", auth, re.M))
    facts["nats_password_vars"] = set(re.findall(r"\$(ANDE_NATS_\w+)", auth))
    facts["nats_accounts"] = re.search(r"^\s*accounts\s*[:{=]", auth, re.M) is not None
    return facts


# --- Quantities and durations ----------------------------------------------------------------

def mebibytes(q):
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", str(q))
    if not m:
        return None
    return float(m.group(1)) * (units[m.group(2)] if m.group(2) else 1 / 2**20)


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", duration.strip())
    if not m:
        return None
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


# --- Checks on a rendered overlay ---------------------------------------------------------------

def by_kind(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def config_of(objs):
    """The services' settings: the ConfigMap ande-config (hashed name) of the render."""
    maps = [o for o in objs if o["kind"] == "ConfigMap" and re.fullmatch(r"ande-config(-\w+)?", o["metadata"]["name"])]
    return maps[0].get("data", {}) if len(maps) == 1 else {}


def secret_value(objs, name, key):
    s = by_kind(objs, "Secret").get(name)
    if s and key in s.get("data", {}):
        return base64.b64decode("".join(s["data"][key].split())).decode()
    return None


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def check_probes(where, app, c, admin_port):
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe)
        if not p:
            problem(where, f"no {probe}")
            continue
        if app not in APPS:
            continue
        get = p.get("httpGet", {})
        if get.get("path") != path:
            problem(where, f"{probe} probes {get.get('path')}, not {path}")
        if port_number(c, get.get("port")) != admin_port:
            problem(where, f"{probe} is not on the admin port {admin_port} (METRICS_ADDR)")
    startup = c.get("startupProbe")
    if app in APPS and startup and startup.get("httpGet", {}).get("path") != "/healthz":
        problem(where, "startupProbe must probe /healthz (liveness), not readiness")


def check_resources(where, app, c):
    res = c.get("resources", {})
    req, lim = res.get("requests", {}), res.get("limits", {})
    if "memory" not in req or "memory" not in lim:
        problem(where, "memory request and limit are both required")
        return
    if "cpu" not in req:
        problem(where, "no CPU request (the scheduler and the gateway's CPU autoscaler need one)")
    r, l = mebibytes(req["memory"]), mebibytes(lim["memory"])
    if r is None or l is None or r > l:
        problem(where, f"memory request {req['memory']} must be a quantity not above the limit {lim['memory']}")
    elif app in MEASURED_RSS_MB and l < RSS_HEADROOM * MEASURED_RSS_MB[app] * 1e6 / 2**20:
        problem(where, f"memory limit {lim['memory']} is not {RSS_HEADROOM}x the measured RSS "
                       f"({MEASURED_RSS_MB[app]} MB)")


def check_security(where, pod, c, facts):
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True and csc.get("runAsNonRoot") is not True:
        problem(where, "runAsNonRoot is not true")
    if csc.get("runAsUser", psc.get("runAsUser")) != facts["uid"]:
        problem(where, f"runAsUser must be {facts['uid']} (deploy/Dockerfile's user, numeric so the "
                       "kubelet can check it is not root)")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
    if seccomp.get("type") != "RuntimeDefault":
        problem(where, "seccompProfile is not RuntimeDefault")
    if csc.get("readOnlyRootFilesystem") is not True:
        problem(where, "readOnlyRootFilesystem is not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problem(where, "allowPrivilegeEscalation is not false")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []) or csc.get("capabilities", {}).get("add"):
        problem(where, "capabilities must drop ALL and add none")
    if csc.get("privileged"):
        problem(where, "privileged")


def check_grace(where, app, pod, c, config, facts):
    if app not in facts["grace"]:
        return
    grace = facts["grace"][app]
    if app == "notifier":
        setting = env_map(c).get("NOTIFIER_SHUTDOWN_GRACE", {}).get("value") or config.get("NOTIFIER_SHUTDOWN_GRACE")
        if setting:
            grace = seconds(setting) or grace
    pre = c.get("lifecycle", {}).get("preStop", {})
    command = pre.get("exec", {}).get("command", [])
    pause = int(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else 0
    pause += pre.get("sleep", {}).get("seconds", 0)
    need = grace + pause + GRACE_MARGIN_SECONDS
    have = pod.get("terminationGracePeriodSeconds", 30)
    if have < need:
        problem(where, f"terminationGracePeriodSeconds {have} is not above the shutdown grace "
                       f"({grace} s) + preStop ({pause} s) + {GRACE_MARGIN_SECONDS} s")


def check_env(where, app, c, objs, config, facts, external_secret):
    """Plain values and ConfigMap keys are documented, secrets come from the Secret, each service
    connects to NATS as its own user."""
    for e in c.get("env", []):
        name = e["name"]
        if "value" in e and name in SECRET_VARS:
            problem(where, f"{name} is a secret but set as a plain value")
        if name not in facts["documented"]:
            problem(where, f"{name} is not documented in deploy/ande.env.example")
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check_secret_ref(where, objs, ref["name"], ref["key"], ref.get("optional", False), external_secret)
    for src in c.get("envFrom", []):
        if "secretRef" in src:
            problem(where, "envFrom a Secret: name each secret variable and its key instead")
        if "configMapRef" in src and src["configMapRef"]["name"] not in by_kind(objs, "ConfigMap"):
            problem(where, f"envFrom ConfigMap {src['configMapRef']['name']} is not in the render")
    nats = env_map(c).get("NATS_URL", {}).get("valueFrom", {}).get("secretKeyRef")
    if app in APPS + ["andectl"]:
        if not nats or nats["key"] != f"NATS_URL_{app.upper()}":
            problem(where, f"NATS_URL must come from the Secret's key NATS_URL_{app.upper()} (its own NATS user)")
        elif not external_secret:
            url = secret_value(objs, nats["name"], nats["key"]) or ""
            user = re.match(r"nats://([^:@/]+)", url)
            if not user or user.group(1) != app or app not in facts["nats_users"]:
                problem(where, f"NATS_URL's user is not {app} (deploy/nats/ande-auth.conf)")


def check_secret_ref(where, objs, name, key, optional, external_secret):
    if key not in SECRET_KEYS:
        problem(where, f"Secret key {key} is not one of the documented keys of {SECRET}")
    secrets = by_kind(objs, "Secret")
    if name in secrets:
        if not re.fullmatch(rf"{SECRET}(-\w+)?", name):
            problem(where, f"reads Secret {name}, not {SECRET}")
        elif key not in secrets[name].get("data", {}) and not optional:
            problem(where, f"Secret {name} has no key {key}")
    elif not external_secret or name != SECRET:
        problem(where, f"Secret {name} is neither in the render nor the operator's {SECRET}")


def check_workloads(overlay, objs, facts, external_secret):
    config = config_of(objs)
    for key, value in config.items():
        if key not in facts["documented"]:
            problem(overlay, f"ConfigMap key {key} is not documented in deploy/ande.env.example")
        if key in SECRET_VARS:
            problem(overlay, f"ConfigMap holds the secret {key}")
        if " #" in value:
            problem(overlay, f"ConfigMap {key}={value!r}: kustomize keeps an inline comment as part of the value")
    for obj in objs:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for pod in pod_specs(obj):
            for c in pod.get("containers", []):
                app = c["command"][0] if c.get("command") else None
                where = f"{overlay}: {obj['kind']} {obj['metadata']['name']}/{c['name']}"
                if app not in facts["binaries"]:
                    problem(where, f"command {c.get('command')} does not start a binary of the image")
                check_security(where, pod, c, facts)
                check_resources(where, app, c)
                if obj["kind"] == "Job":
                    for e in c.get("env", []):
                        ref = e.get("valueFrom", {}).get("secretKeyRef")
                        if ref:
                            check_secret_ref(where, objs, ref["name"], ref["key"], ref.get("optional", False), external_secret)
                    continue
                metrics = env_map(c).get("METRICS_ADDR", {}).get("value", "")
                admin = int(metrics.rsplit(":", 1)[1]) if ":" in metrics else None
                if app in APPS:
                    if not metrics.startswith("0.0.0.0:"):
                        problem(where, "METRICS_ADDR must listen on 0.0.0.0 for the kubelet's probes")
                    annotation = obj["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port")
                    if annotation and annotation != str(admin):
                        problem(where, f"prometheus.io/port {annotation} is not METRICS_ADDR's port {admin}")
                check_probes(where, app, c, admin)
                check_grace(where, app, pod, c, config, facts)
                check_env(where, app, c, objs, config, facts, external_secret)


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_network(overlay, objs):
    """Services select their Deployment; the Ingress reaches the gateway's API port; every app
    has a PodDisruptionBudget."""
    deployments, services = by_kind(objs, "Deployment"), by_kind(objs, "Service")
    api_port = int(config_of(objs).get("API_PORT", 3001))
    for name, svc in services.items():
        pods = [d for d in deployments.values() if selects(svc["spec"].get("selector"), d["spec"]["template"]["metadata"]["labels"])]
        if len(pods) != 1:
            problem(overlay, f"Service {name} selects {len(pods)} Deployments")
    ingresses = by_kind(objs, "Ingress")
    if len(ingresses) != 1:
        problem(overlay, f"{len(ingresses)} Ingresses, expected one for the gateway")
    for ing in ingresses.values():
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                if backend["name"] != "gateway" or not svc:
                    problem(overlay, f"Ingress backend {backend['name']} is not the gateway Service")
                    continue
                port = backend["port"].get("name", backend["port"].get("number"))
                ports = [p for p in svc["spec"]["ports"] if port in (p.get("name"), p["port"])]
                gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
                if len(ports) != 1 or port_number(gateway, ports[0].get("targetPort", ports[0]["port"])) != api_port:
                    problem(overlay, f"Ingress port {port} does not reach the gateway's API_PORT {api_port}")
    pdbs = by_kind(objs, "PodDisruptionBudget").values()
    for app in APPS:
        labels = deployments[app]["spec"]["template"]["metadata"]["labels"] if app in deployments else {}
        if not any(selects(p["spec"]["selector"].get("matchLabels"), labels) for p in pdbs):
            problem(overlay, f"no PodDisruptionBudget selects {app}")


def check_autoscaling(overlay, objs, facts, nats_values, namespace):
    deployments = by_kind(objs, "Deployment")
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in objs if o["kind"] == "ScaledObject"}
    hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in objs if o["kind"] == "HorizontalPodAutoscaler"}
    for target in list(scaled) + list(hpas):
        if target not in deployments:
            problem(overlay, f"autoscaler targets {target}, which is not a Deployment here")
        elif "replicas" in deployments[target]["spec"]:
            problem(overlay, f"Deployment {target} sets replicas, which every apply would reset under its autoscaler")
    if set(scaled) != {"leads", "notifier"} or set(hpas) != {"gateway"}:
        problem(overlay, f"expected KEDA for leads and notifier, an HPA for gateway; found {sorted(scaled)}, {sorted(hpas)}")
        return
    for name, so in scaled.items():
        if so["spec"].get("minReplicaCount") != 1:
            problem(overlay, f"ScaledObject {name}: minReplicaCount must be 1")
    prefix = config_of(objs).get("ANDE_PREFIX", "ande")
    leads = scaled["leads"]["spec"]["triggers"][0]
    meta = leads.get("metadata", {})
    headless = f"{nats_values.get('fullnameOverride', 'nats')}-headless"
    endpoint = f"{headless}.{namespace}.svc.cluster.local:{nats_values['config']['monitor']['port']}"
    expected = {"natsServerMonitoringEndpoint": endpoint, "stream": f"{prefix.upper()}_EVENTS",
                "consumer": facts["leads_consumer"]}
    if not facts["nats_accounts"]:
        expected["account"] = "$G"
    if leads["type"] != "nats-jetstream":
        problem(overlay, "leads must scale on its JetStream consumer (nats-jetstream)")
    for k, v in expected.items():
        if meta.get(k) != v:
            problem(overlay, f"leads trigger {k} is {meta.get(k)!r}, expected {v!r}")
    notifier = scaled["notifier"]["spec"]["triggers"][0]
    query = notifier.get("metadata", {}).get("query", "")
    if notifier["type"] != "postgresql" or "notifier.notifications" not in query or "'queued'" not in query:
        problem(overlay, "notifier must scale on queued rows of notifier.notifications (postgresql)")
    auth = notifier.get("authenticationRef", {}).get("name")
    auths = by_kind(objs, "TriggerAuthentication")
    if auth not in auths and "connectionFromEnv" not in notifier.get("metadata", {}):
        problem(overlay, f"notifier trigger: no TriggerAuthentication {auth}")
    for ta in auths.values():
        for ref in ta["spec"].get("secretTargetRef", []):
            check_secret_ref(f"{overlay}: TriggerAuthentication", objs, ref["name"], ref["key"], False, True)
    gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    if not any(m.get("resource", {}).get("name") == "cpu" for m in hpas["gateway"]["spec"].get("metrics", [])):
        problem(overlay, "the gateway's HPA must scale on CPU")
    if hpas["gateway"]["spec"].get("minReplicas", 1) < 2:
        problem(overlay, "the gateway's HPA must keep at least 2 pods (one serves while another restarts)")
    if "cpu" not in gateway.get("resources", {}).get("requests", {}):
        problem(overlay, "the gateway needs a CPU request for a CPU utilization target")


def images(objs):
    return {c["image"] for o in objs for c in containers(o)}


def check_overlay(overlay, objs, migrate_objs, facts, nats_values):
    namespaces = {o["metadata"].get("namespace") for o in objs + migrate_objs}
    if len(namespaces) != 1 or None in namespaces:
        problem(overlay, f"objects and the migrate Job must share one namespace, found {namespaces}")
    namespace = next(iter(namespaces))
    dev = overlay.endswith("dev")
    external_secret = not dev
    check_workloads(overlay, objs, facts, external_secret)
    check_workloads(overlay + "/migrate", migrate_objs, facts, external_secret)
    check_network(overlay, objs)
    config = config_of(objs)
    if config.get("ANDE_MIGRATIONS") != "check":
        problem(overlay, "ANDE_MIGRATIONS must be check (the migrate Job migrates)")
    jobs = by_kind(migrate_objs, "Job")
    job = jobs.get("ande-migrate")
    if not job or len(migrate_objs) - len(by_kind(migrate_objs, "Secret")) != 1:
        problem(overlay + "/migrate", "must render the Job ande-migrate (and in dev its Secrets) only")
    else:
        c = job["spec"]["template"]["spec"]["containers"][0]
        if c.get("command") != ["andectl", "migrate"]:
            problem(overlay + "/migrate", "the Job must run `andectl migrate`")
        if "DATABASE_URL" not in env_map(c):
            problem(overlay + "/migrate", "the Job has no DATABASE_URL")
        if "ttlSecondsAfterFinished" not in job["spec"]:
            problem(overlay + "/migrate", "no ttlSecondsAfterFinished (a finished Job would block the next release's)")
    if len(images(objs) | images(migrate_objs)) != 1:
        problem(overlay, f"one release image everywhere, migrate Job included; found {sorted(images(objs) | images(migrate_objs))}")
    if dev:
        check_dev(overlay, objs, config)
    else:
        check_production(overlay, objs, config, facts, nats_values, namespace)
    return namespace


def check_dev(overlay, objs, config):
    if config.get("ANDE_ENV") != "development":
        problem(overlay, "ANDE_ENV must be development")
    if any(o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler") for o in objs):
        problem(overlay, "dev has no autoscaling")
    deployments = by_kind(objs, "Deployment")
    if "wechat-sim" not in deployments or "wechat-sim" not in by_kind(objs, "Service"):
        problem(overlay, "dev needs the wechat-sim Deployment and Service")
    if config.get("WECHAT_API_BASE") != "http://wechat-sim:3900":
        problem(overlay, "WECHAT_API_BASE must be the simulator's Service, http://wechat-sim:3900")
    for name, d in deployments.items():
        if d["spec"].get("replicas", 1) != 1:
            problem(overlay, f"{name}: one replica in dev")


def check_production(overlay, objs, config, facts, nats_values, namespace):
    if config.get("ANDE_ENV") != "production":
        problem(overlay, "ANDE_ENV must be production")
    if "wechat-sim" in by_kind(objs, "Deployment"):
        problem(overlay, "the WeChat simulator must not run in production")
    if by_kind(objs, "Secret"):
        problem(overlay, f"production must not render Secrets: the operator creates {SECRET}")
    replicas = nats_values["config"]["cluster"]["replicas"]
    if config.get("ANDE_STREAM_REPLICAS") != str(replicas):
        problem(overlay, f"ANDE_STREAM_REPLICAS must be the NATS cluster's size, {replicas}")
    for image in images(objs):
        if re.search(r":latest$", image) or not re.search(r"[:@]", image.rsplit("/", 1)[-1]):
            problem(overlay, f"image {image} is not pinned to a release tag or digest")
    if not any(rule.get("host") for ing in by_kind(objs, "Ingress").values() for rule in ing["spec"].get("rules", [])):
        problem(overlay, "the production Ingress needs a host")
    check_autoscaling(overlay, objs, facts, nats_values, namespace)
    documented = [k for k in SECRET_KEYS if k not in facts["readme"]]
    if documented:
        problem("deploy/README.md", f"does not document the Secret keys {sorted(documented)}")


# --- NATS chart values and the Postgres examples ------------------------------------------------

def check_nats(values, facts, dev_objs):
    where = "deploy/k8s/nats/values.yaml"
    cfg = values.get("config", {})
    cluster, js = cfg.get("cluster", {}), cfg.get("jetstream", {})
    if not cluster.get("enabled") or cluster.get("replicas") != 3:
        problem(where, "config.cluster: enabled with 3 replicas")
    if not (js.get("enabled") and js.get("fileStore", {}).get("enabled") and js["fileStore"].get("pvc", {}).get("enabled")):
        problem(where, "config.jetstream: enabled, with the file store on a PVC")
    if cfg.get("merge", {}).get("$include") != "./ande-auth.conf":
        problem(where, "config.merge.$include must be ./ande-auth.conf (deploy/nats/ande-auth.conf via --set-file)")
    env = values.get("container", {}).get("env", {})
    route_vars = {v for v in re.findall(r"\$(\w+)", json.dumps(cluster.get("merge", {})))}
    for var in facts["nats_password_vars"] | route_vars:
        if var not in env:
            problem(where, f"container.env lacks {var}, which the NATS config reads")
    routes = cluster.get("merge", {}).get("routes", [])
    if len(routes) != cluster.get("replicas"):
        problem(where, "one route per server")
    keys = set()
    for var, value in env.items():
        ref = value.get("valueFrom", {}).get("secretKeyRef") if isinstance(value, dict) else None
        if ref:
            keys.add(ref["key"])
            if ref["name"] != "ande-nats-auth":
                problem(where, f"{var} must come from the Secret ande-nats-auth")
        elif isinstance(value, str):
            for used in re.findall(r"\$\((\w+)\)", value):
                # The chart writes env in key order; Kubernetes expands $(VAR) from earlier ones.
                if used not in env or used >= var:
                    problem(where, f"{var} uses $({used}), which must be an earlier env key")
    dev_auth = by_kind(dev_objs, "Secret").get("ande-nats-auth", {}).get("data", {})
    if set(dev_auth) != keys:
        problem("deploy/k8s/overlays/dev/secrets", f"ande-nats-auth keys {sorted(dev_auth)} are not those the NATS values read {sorted(keys)}")


def check_postgres(dev_objs):
    prod = load_docs(K8S / "postgres" / "cnpg-cluster.yaml")
    dev = load_docs(K8S / "postgres" / "cnpg-cluster-dev.yaml")
    url = secret_value(dev_objs, next(n for n in by_kind(dev_objs, "Secret") if n.startswith(SECRET)), "DATABASE_URL") or ""
    m = re.match(r"postgres(?:ql)?://([^:]+):[^@]+@([^:/]+)(?::\d+)?/(\w+)", url)
    for where, docs in (("cnpg-cluster.yaml", prod), ("cnpg-cluster-dev.yaml", dev)):
        where = f"deploy/k8s/postgres/{where}"
        if len(docs) != 1 or docs[0].get("apiVersion") != "postgresql.cnpg.io/v1" or docs[0].get("kind") != "Cluster":
            problem(where, "must be one CloudNativePG Cluster (postgresql.cnpg.io/v1)")
            continue
        spec, name = docs[0]["spec"], docs[0]["metadata"]["name"]
        initdb = spec.get("bootstrap", {}).get("initdb", {})
        secret = initdb.get("secret", {}).get("name")
        if secret not in by_kind(dev_objs, "Secret"):
            problem(where, f"initdb secret {secret} is not the dev overlay's")
        if not m or m.group(2) != f"{name}-rw" or m.group(1) != initdb.get("owner") or m.group(3) != initdb.get("database"):
            problem(where, "the dev DATABASE_URL must name its owner, database and <name>-rw Service")
    if prod and prod[0]["spec"].get("instances", 1) < 3:
        problem("cnpg-cluster.yaml", "three instances: a failover needs a standby")
    if prod and prod[0]["spec"].get("postgresql", {}).get("synchronous", {}).get("number", 0) < 1:
        problem("cnpg-cluster.yaml", "one synchronous standby: a failover must not lose an acknowledged commit")
    if dev and (dev[0]["spec"].get("instances") != 1 or "synchronous" in dev[0]["spec"].get("postgresql", {})):
        problem("cnpg-cluster-dev.yaml", "one instance and no synchronous replication (it would wait forever)")


def main():
    facts = read_facts()
    external, label = external_renderer()
    print(f"rendering with the built-in kustomize subset" + (f", compared with {label}" if external else
          " (no kubectl/kustomize 4+ installed)"))
    nats_values = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    rendered, counted = {}, 0
    for overlay, migrate in OVERLAYS.items():
        for name in (overlay, migrate):
            try:
                rendered[name] = render(name, external)
            except (ValueError, KeyError, OSError) as e:
                problem(name, f"cannot render: {e}")
                rendered[name] = []
            for obj in rendered[name]:
                validate_schema(f"{name}: {obj.get('kind')} {obj.get('metadata', {}).get('name')}", obj)
            counted += len(rendered[name])
            kinds = sorted({o['kind'] for o in rendered[name]})
            print(f"  {name}: {len(rendered[name])} objects ({', '.join(kinds)})")
    print(f"validated {counted} objects: Kubernetes {' and '.join(K8S_VERSIONS)} schemas (strict), "
          "KEDA ScaledObject/TriggerAuthentication schema")
    if not problems:
        for overlay, migrate in OVERLAYS.items():
            check_overlay(overlay, rendered[overlay], rendered[migrate], facts, nats_values)
        check_nats(nats_values, facts, rendered["overlays/dev"])
        check_postgres(rendered["overlays/dev"])
    if problems:
        print("check_k8s:", *problems, sep="\n  ")
        sys.exit(1)
    print("checked: probes (/healthz liveness, /readyz readiness on METRICS_ADDR's port), memory "
          "requests/limits (limit >= 1.25x the measured RSS), CPU requests, terminationGracePeriodSeconds above "
          f"each grace (gateway {facts['grace']['gateway']} s, notifier {facts['grace']['notifier']} s, "
          f"leads {LEADS_STOP_SECONDS} s, plus preStop), non-root uid {facts['uid']}, read-only root, "
          "no capabilities, RuntimeDefault seccomp; Secret references and keys; one NATS user per "
          "service; documented variables only; Service selectors, Ingress -> gateway API port, PDBs; "
          "migrate Job (andectl migrate, same image and namespace); KEDA (leads: nats-jetstream "
          "stream/consumer/endpoint; notifier: postgresql queue; minReplicaCount 1) and the gateway's "
          "CPU HPA; NATS values (3-node JetStream, auth include, passwords from ande-nats-auth); "
          "CloudNativePG examples against the dev Secrets")
    print("check_k8s: OK")


if __name__ == "__main__":
    main()
