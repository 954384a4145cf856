#!/usr/bin/env python3
"""Validate deploy/observability offline (no Docker, no network): every YAML and JSON file parses;
prometheus.yml scrapes the three services and loads its rule files; every alert rule has an
expression, a `for`, a severity and a summary; the alert expressions and the dashboard's queries
name only the metric families the services expose (with labels they carry); the dashboard's
panels have unique ids, a position and queries; the collector's traces pipeline uses components
it defines; the compose file of the stack keeps it in its profile, pins its images, publishes
on 127.0.0.1 only and mounts existing files read-only. When promtool is on PATH (Debian:
`apt-get install prometheus`) it also runs `promtool check config`, `promtool check rules` and
the rule unit tests (`promtool test rules alerts_test.yml`).

Exits 1 with one line per problem."""
import json
import pathlib
import re
import shutil
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
OBS = ROOT / "deploy" / "observability"

# The families the services expose: name -> (type, labels besides job/instance).
FAMILIES = {
    "ande_http_requests_total": ("counter", {"route", "method", "status"}),
    "ande_http_request_duration_seconds": ("histogram", {"route"}),
    "ande_events_published_total": ("counter", {"subject"}),
    "ande_publish_failures_total": ("counter", set()),
    "ande_consumer_pending": ("gauge", {"consumer"}),
    "ande_consumer_ack_pending": ("gauge", {"consumer"}),
    "ande_consumer_redelivered_total": ("counter", {"consumer"}),
    "ande_dead_letters_total": ("counter", {"consumer", "reason"}),
    "ande_consume_batch_duration_seconds": ("histogram", {"consumer"}),
    "ande_leads_outcomes_total": ("counter", {"kind"}),
    "ande_notifications": ("gauge", {"state"}),
    "ande_notification_oldest_queued_seconds": ("gauge", set()),
    "ande_wechat_requests_total": ("counter", {"api", "errcode"}),
    "ande_wechat_request_duration_seconds": ("histogram", {"api"}),
    "ande_wechat_token_fetches_total": ("counter", set()),
    "ande_notifier_paused": ("gauge", set()),
    "ande_end_to_end_seconds": ("histogram", set()),
    "ande_trace_spans_failed_total": ("counter", set()),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_cpu_seconds_total": ("counter", set()),
    "process_open_fds": ("gauge", set()),
    "up": ("gauge", set()),  # written by Prometheus for every target
}
TARGET_LABELS = {"job", "instance"}
JOBS = {"gateway": 9101, "leads": 9102, "notifier": 9103}
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

errors = []


def fail(where, message):
    errors.append(f"{where}: {message}")


def series_names():
    """Every name a query may select, mapped to the labels its series carry."""
    names = {}
    for family, (kind, labels) in FAMILIES.items():
        labels = labels | TARGET_LABELS
        if kind == "histogram":
            names[family + "_bucket"] = labels | {"le"}
            names[family + "_sum"] = labels
            names[family + "_count"] = labels
        else:
            names[family] = labels
    return names


SERIES = series_names()

# PromQL words that are not metric names (functions are recognised by the `(` that follows).
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "atan2", "inf", "nan", "sum", "min", "max", "avg", "group",
    "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*\"\"\s*")


def query_names(expr):
    """The metric names and the label matchers a PromQL expression uses: [(name, {labels})]."""
    blanked = STRING.sub('""', expr)
    used = []
    for name, body in SELECTOR.findall(blanked):
        labels = set()
        for part in filter(str.strip, body.split(",")):
            m = MATCHER.fullmatch(part)
            labels.add(m.group(1) if m else f"<unparsed {part.strip()!r}>")
        used.append((name, labels))
    bare = re.sub(r"\{[^}]*\}", " ", blanked)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", bare):
        if m.group(1).lower() not in KEYWORDS:
            used.append((m.group(1), set()))
    return used


def check_query(where, expr):
    if not isinstance(expr, str) or not expr.strip():
        fail(where, "empty query")
        return
    names = query_names(expr)
    if not names:
        fail(where, f"no metric name found in {expr!r}")
    for name, labels in names:
        if name not in SERIES:
            fail(where, f"{name!r} is not a metric the services expose (see FAMILIES in {pathlib.Path(__file__).name})")
            continue
        for label in sorted(labels - SERIES[name]):
            fail(where, f"{name} has no label {label!r} (it has {sorted(SERIES[name])})")


def load_all():
    """Parse every YAML and JSON file under deploy/observability; return them by relative path."""
    docs = {}
    for path in sorted(OBS.rglob("*")):
        rel = str(path.relative_to(OBS))
        try:
            if path.suffix in (".yml", ".yaml"):
                docs[rel] = yaml.safe_load(path.read_text())
            elif path.suffix == ".json":
                docs[rel] = json.loads(path.read_text())
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            fail(rel, f"does not parse: {e}")
    return docs


def need(docs, rel):
    doc = docs.get(rel)
    if not isinstance(doc, dict):
        fail(rel, "missing, or not a mapping")
        return None
    return doc


def scrape_target(job):
    """(host, port) pairs of a scrape config, from static_configs or dns_sd_configs."""
    found = set()
    for sc in job.get("static_configs") or []:
        for target in sc.get("targets") or []:
            host, _, port = str(target).rpartition(":")
            found.add((host, int(port) if port.isdigit() else None))
    for sd in job.get("dns_sd_configs") or []:
        for name in sd.get("names") or []:
            found.add((name, sd.get("port")))
    return found


def check_prometheus(docs):
    doc = need(docs, "prometheus.yml")
    if doc is None:
        return
    interval = (doc.get("global") or {}).get("scrape_interval")
    if interval != "15s":
        fail("prometheus.yml", f"global.scrape_interval is {interval!r}, expected 15s")
    rule_files = doc.get("rule_files") or []
    if "alerts.yml" not in rule_files:
        fail("prometheus.yml", "rule_files does not list alerts.yml")
    for rf in rule_files:
        if not (OBS / rf).is_file():
            fail("prometheus.yml", f"rule file {rf} does not exist beside it")
    jobs = {j.get("job_name"): j for j in doc.get("scrape_configs") or []}
    for name, port in JOBS.items():
        if name not in jobs:
            fail("prometheus.yml", f"no scrape job {name!r}")
            continue
        if (name, port) not in scrape_target(jobs[name]):
            fail("prometheus.yml", f"job {name} does not scrape {name}:{port} (has {sorted(scrape_target(jobs[name]))})")
        if jobs[name].get("metrics_path", "/metrics") != "/metrics":
            fail("prometheus.yml", f"job {name} scrapes {jobs[name]['metrics_path']}, not /metrics")


def check_alerts(docs):
    doc = need(docs, "alerts.yml")
    if doc is None:
        return
    groups = doc.get("groups")
    if not isinstance(groups, list) or not groups:
        fail("alerts.yml", "no groups")
        return
    seen = set()
    for group in groups:
        rules = group.get("rules")
        if not group.get("name") or not isinstance(rules, list) or not rules:
            fail("alerts.yml", f"group {group.get('name')!r} needs a name and rules")
            continue
        for rule in rules:
            name = rule.get("alert")
            where = f"alerts.yml: {name or 'a rule of ' + str(group.get('name'))}"
            if not name:
                fail(where, "not an alert (no `alert:`); recording rules belong in another file")
                continue
            if name in seen:
                fail(where, "alert name used twice")
            seen.add(name)
            if not DURATION.match(str(rule.get("for", ""))):
                fail(where, f"`for` is {rule.get('for')!r}, expected a duration such as 5m")
            severity = (rule.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                fail(where, f"labels.severity is {severity!r}, expected one of {sorted(SEVERITIES)}")
            annotations = rule.get("annotations") or {}
            for key in ("summary", "description"):
                if not str(annotations.get(key, "")).strip():
                    fail(where, f"annotations.{key} missing")
            check_query(where, rule.get("expr"))


def overlaps(a, b):
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def check_panel(rel, panel, placed):
    where = f"{rel}: panel {panel.get('id')} {panel.get('title')!r}"
    pos = panel.get("gridPos") or {}
    if not all(isinstance(pos.get(k), int) for k in "hwxy") or pos["x"] + pos["w"] > 24:
        fail(where, f"gridPos {pos} needs integer h, w, x, y within 24 columns")
    else:
        for other_title, other in placed:
            if overlaps(pos, other):
                fail(where, f"overlaps panel {other_title!r}")
        placed.append((panel.get("title"), pos))
    if panel.get("datasource") != DATASOURCE:
        fail(where, f"datasource is {panel.get('datasource')}, expected {DATASOURCE}")
    targets = panel.get("targets")
    if not isinstance(targets, list) or not targets:
        fail(where, "has no targets")
        return
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or None in refs:
        fail(where, f"refIds {refs} must be present and unique")
    for t in targets:
        if t.get("datasource", DATASOURCE) != DATASOURCE:
            fail(where, f"target {t.get('refId')} datasource is {t.get('datasource')}")
        check_query(f"{where} target {t.get('refId')}", t.get("expr"))


def check_dashboards(docs):
    dashboards = {rel: d for rel, d in docs.items() if rel.startswith("grafana/dashboards/")}
    if "grafana/dashboards/ande-pipeline.json" not in dashboards:
        fail("grafana/dashboards/ande-pipeline.json", "missing")
    uids = set()
    for rel, dash in dashboards.items():
        if not isinstance(dash, dict) or not isinstance(dash.get("panels"), list) or not dash["panels"]:
            fail(rel, "not a dashboard with panels")
            continue
        if not dash.get("uid") or dash["uid"] in uids:
            fail(rel, f"uid {dash.get('uid')!r} missing or used by another dashboard")
        uids.add(dash.get("uid"))
        if dash.get("schemaVersion") != 39:
            fail(rel, f"schemaVersion is {dash.get('schemaVersion')}, expected 39")
        panels = [p for p in dash["panels"] if p.get("type") != "row"]
        ids = [p.get("id") for p in dash["panels"]]
        if len(set(ids)) != len(ids) or None in ids:
            fail(rel, f"panel ids must be present and unique: {ids}")
        placed = []
        for panel in panels:
            check_panel(rel, panel, placed)
    main = dashboards.get("grafana/dashboards/ande-pipeline.json") or {}
    if main and (main.get("uid"), main.get("title")) != ("ande-pipeline", "ande pipeline"):
        fail("grafana/dashboards/ande-pipeline.json", "uid must be ande-pipeline and title 'ande pipeline'")


def check_grafana_provisioning(docs):
    rel = "grafana/provisioning/datasources/datasources.yml"
    doc = need(docs, rel)
    if doc is not None:
        by_uid = {d.get("uid"): d for d in doc.get("datasources") or []}
        prom = by_uid.get("prometheus") or {}
        if (prom.get("type"), prom.get("url")) != ("prometheus", "http://prometheus:9090"):
            fail(rel, "needs a prometheus data source with uid 'prometheus' at http://prometheus:9090")
        if not any(d.get("type") == "jaeger" and d.get("url") == "http://jaeger:16686" for d in by_uid.values()):
            fail(rel, "needs a jaeger data source at http://jaeger:16686")
    rel = "grafana/provisioning/dashboards/dashboards.yml"
    doc = need(docs, rel)
    if doc is not None:
        paths = [(p.get("type"), (p.get("options") or {}).get("path")) for p in doc.get("providers") or []]
        if ("file", "/var/lib/grafana/dashboards") not in paths:
            fail(rel, "needs a file provider with options.path /var/lib/grafana/dashboards")


def check_collector(docs):
    rel = "otel-collector.yaml"
    doc = need(docs, rel)
    if doc is None:
        return
    defined = {}
    for kind in ("receivers", "processors", "exporters"):
        section = doc.get(kind)
        if not isinstance(section, dict) or not section:
            fail(rel, f"no {kind}")
        defined[kind] = set(section or {})
    defined["extensions"] = set(doc.get("extensions") or {})
    service = doc.get("service") or {}
    for ext in service.get("extensions") or []:
        if ext not in defined["extensions"]:
            fail(rel, f"service.extensions uses {ext!r}, which is not defined")
    pipelines = service.get("pipelines") or {}
    if not any(name == "traces" or name.startswith("traces/") for name in pipelines):
        fail(rel, "no traces pipeline under service.pipelines")
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in (pipeline or {}).get(kind) or []:
                if component not in defined[kind]:
                    fail(rel, f"pipeline {name} uses {kind[:-1]} {component!r}, which is not defined")
        for kind in ("receivers", "exporters"):
            if not (pipeline or {}).get(kind):
                fail(rel, f"pipeline {name} has no {kind}")
        processors = (pipeline or {}).get("processors") or []
        if "memory_limiter" in processors and processors[0] != "memory_limiter":
            fail(rel, f"pipeline {name}: memory_limiter must come first")
    otlp = ((doc.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}
    for proto, port in (("grpc", 4317), ("http", 4318)):
        if (otlp.get(proto) or {}).get("endpoint") != f"0.0.0.0:{port}":
            fail(rel, f"the otlp receiver's {proto} endpoint must be 0.0.0.0:{port} (reachable from other containers)")


def check_compose_service(rel, name, svc):
    where = f"{rel}: {name}"
    if svc.get("profiles") != ["observability"]:
        fail(where, f"profiles is {svc.get('profiles')}, expected ['observability']")
    image = str(svc.get("image", ""))
    tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
    if not tag or tag == "latest":
        fail(where, f"image {image!r} is not pinned to a version")
    for port in svc.get("ports") or []:
        if not str(port).startswith("127.0.0.1:"):
            fail(where, f"publishes {port!r} beyond 127.0.0.1")
    for volume in svc.get("volumes") or []:
        source, _, rest = str(volume).partition(":")
        if source.startswith("."):
            if not (OBS / source).exists():
                fail(where, f"mounts {source}, which does not exist in deploy/observability")
            if not rest.endswith(":ro"):
                fail(where, f"mounts {source} writable; mount configuration read-only (:ro)")


def check_compose(docs):
    rel = "compose.yml"
    doc = need(docs, rel)
    if doc is None:
        return
    services = doc.get("services") or {}
    for name in ("otel-collector", "prometheus", "grafana", "jaeger"):
        if name not in services:
            fail(rel, f"service {name} missing")
    for name, svc in services.items():
        check_compose_service(rel, name, svc)
    main = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    if "deploy/observability/compose.yml" not in [
        i if isinstance(i, str) else (i.get("path") if isinstance(i.get("path"), str) else None)
        for i in main.get("include") or []
    ]:
        fail("docker-compose.yml", "does not include deploy/observability/compose.yml")
    for name in set(services) & set(main.get("services") or {}):
        fail("docker-compose.yml", f"service {name} is defined there and in {rel}")


def run_promtool():
    promtool = shutil.which("promtool")
    if not promtool:
        return "promtool not found, its checks skipped (Debian: apt-get install prometheus)"
    commands = [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]]
    if (OBS / "alerts_test.yml").exists():
        commands.append(["test", "rules", "alerts_test.yml"])
    for args in commands:
        done = subprocess.run([promtool, *args], cwd=OBS, capture_output=True, text=True)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().replace("\n", "\n    ")
            fail("promtool " + " ".join(args), f"exit {done.returncode}:\n    {output}")
    version = subprocess.run([promtool, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return f"{version}: check config, check rules, test rules"


def check_declared():
    """The families the Rust code declares (shared/platform/src/metrics.rs) are the list above."""
    source = (OBS.parent.parent / "shared/platform/src/metrics.rs").read_text()
    declared = set(re.findall(r'"(ande_[a-z_]+)"', source))
    listed = {name for name in FAMILIES if name.startswith("ande_")}
    for name in sorted(declared - listed):
        fail("metrics.rs", f"{name} is declared but not in FAMILIES")
    for name in sorted(listed - declared):
        fail("metrics.rs", f"{name} is in FAMILIES but no service declares it")


def main():
    docs = load_all()
    check_declared()
    check_prometheus(docs)
    check_alerts(docs)
    check_dashboards(docs)
    check_grafana_provisioning(docs)
    check_collector(docs)
    check_compose(docs)
    promtool = run_promtool()
    if errors:
        print("deploy/observability:", *errors, sep="\n  ")
        sys.exit(1)
    alerts = sum(len(g.get("rules") or []) for g in docs["alerts.yml"]["groups"])
    panels = len(docs["grafana/dashboards/ande-pipeline.json"]["panels"])
    print(f"deploy/observability: {len(docs)} files ok, {alerts} alerts, {panels} panels; {promtool}")


if __name__ == "__main__":
    main()
