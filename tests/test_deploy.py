"""deploy/: the Prometheus rules and their unit tests, the Prometheus configs, the compose
file, the Kubernetes manifests, the Dockerfile and the Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.payments_helpers import authorize
from tests.promtool import run as run_promtool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
SHUTDOWN_GRACE_S_DEFAULT = 30  # gateway/config.py's KASSA_SHUTDOWN_GRACE_S default
pytestmark = pytest.mark.timeout(900)  # the first promtool use may install it


def promtool_ok(promtool_path: str, *args: str, cwd: Path | None = None) -> str:
    result = run_promtool(promtool_path, *args, cwd=str(cwd) if cwd else None)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{output}"
    return output


def load_rules() -> dict:
    return yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())


def rules_of(kind: str) -> list[dict]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"] if kind in rule]


# --- Prometheus -----------------------------------------------------------------------------


def test_rules_pass_promtool_check(promtool):
    promtool_ok(promtool, "check", "rules", str(PROMETHEUS / "alerts.yml"))


def test_rule_unit_tests_pass(promtool):
    output = promtool_ok(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in output


def test_every_alert_has_a_unit_test_that_fires_it():
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    silent = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in rules_of("alert")}
    assert alerts == fired, f"alerts without a firing test: {alerts - fired}"
    assert alerts == silent, f"alerts without a not-firing test: {alerts - silent}"
    for rule in rules_of("alert"):
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_burn_rate_alerts_follow_the_sre_workbook():
    alerts = {rule["alert"]: rule["expr"] for rule in rules_of("alert")}
    for slo, budget in (("Availability", "0.001"), ("Latency", "0.01")):
        fast, slow = alerts[f"Kassa{slo}BudgetBurnFast"], alerts[f"Kassa{slo}BudgetBurnSlow"]
        assert "ratio_rate1h" in fast and "ratio_rate5m" in fast
        assert f"14.4 * {budget}" in fast
        assert "ratio_rate6h" in slow and "ratio_rate30m" in slow and f"6 * {budget}" in slow
    assert 'le="0.25"' in "".join(r["expr"] for r in rules_of("record"))


def test_prometheus_config_passes_promtool(promtool):
    promtool_ok(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["kassa"]["static_configs"][0]["targets"] == ["kassa:8080"]


def test_kubernetes_scrape_config_passes_promtool(promtool, tmp_path):
    config_map = yaml.safe_load((K8S / "prometheus-scrape.yaml").read_text())
    assert config_map["kind"] == "ConfigMap"
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
    target = tmp_path / "prometheus.yml"
    target.write_text(yaml.safe_dump(config))
    result = run_promtool(promtool, "check", "config", str(target))
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes discovery; check everything else
        # (relabelling, rule files) with the discovery swapped for an empty static one.
        for job in config["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
            job["static_configs"] = [{"targets": []}]
        target.write_text(yaml.safe_dump(config))
        result = run_promtool(promtool, "check", "config", str(target))
    assert result.returncode == 0, result.stdout + result.stderr


# --- docker ---------------------------------------------------------------------------------


def test_compose_wires_the_stack():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"postgres", "kassa", "prometheus", "grafana"}
    kassa = services["kassa"]
    assert kassa["build"]["dockerfile"] == "deploy/Dockerfile"
    environment = kassa["environment"]
    assert "@postgres:5432/" in environment["DATABASE_URL"]
    assert environment["KASSA_MASTER_KEY"].startswith("${KASSA_MASTER_KEY")
    assert "postgres" in kassa["depends_on"]
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "prometheus.yml" in mounts and "alerts.yml" in mounts
    grafana = " ".join(services["grafana"]["volumes"])
    assert "provisioning" in grafana and "kassa.json" in grafana
    for relative in [
        v.split(":")[0]
        for v in services["prometheus"]["volumes"] + services["grafana"]["volumes"]
        if v.startswith("./")
    ]:
        assert (DEPLOY / relative).exists(), relative
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_dockerfile_is_multi_stage_slim_and_non_root():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) >= 2
    final = stages[-1]
    assert "${PYTHON_IMAGE}" in final and "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "gcc" in stages[0] and "pip wheel" in stages[0]
    assert "gcc" not in final and "build-essential" not in final
    user = re.search(r"(?m)^USER (\S+)", final)
    assert user and user.group(1).split(":")[0] not in ("root", "0")
    assert 'CMD ["serve", "--host", "0.0.0.0"]' in final and 'ENTRYPOINT ["kassa"]' in final
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".kassa", "**/*.so", "**/*.c"} <= set(ignored)


# --- Kubernetes -----------------------------------------------------------------------------


def k8s_documents() -> list[dict]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def test_manifests_have_the_expected_kinds():
    kinds = {d["kind"] for d in k8s_documents()}
    assert kinds >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "ConfigMap",
    }
    for document in k8s_documents():
        assert document["apiVersion"] and document["metadata"]["name"], document


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_deployment_probes_drain_and_runs_as_non_root():
    deployments = [d for d in k8s_documents() if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        for container in pod["containers"]:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
            assert security["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"] and container["resources"]["limits"]
            env = env_of(container)
            for secret in ("DATABASE_URL", "KASSA_MASTER_KEY"):
                assert "secretKeyRef" in env[secret]["valueFrom"], secret
            grace = int(
                env.get("KASSA_SHUTDOWN_GRACE_S", {}).get("value", SHUTDOWN_GRACE_S_DEFAULT)
            )
            command = container["lifecycle"]["preStop"]["exec"]["command"]
            assert command[0] == "sleep"
            assert pod["terminationGracePeriodSeconds"] > grace + int(command[1])
            assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])


def test_hpa_pdb_and_service_select_the_deployment():
    documents = {d["kind"]: d for d in k8s_documents()}
    deployment = documents["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert (
        documents["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == deployment["metadata"]["name"]
    )
    assert documents["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    for selector in (
        documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        documents["Service"]["spec"]["selector"],
    ):
        assert selector.items() <= labels.items()


# --- Grafana --------------------------------------------------------------------------------

PROMQL_WORDS = {
    "sum",
    "by",
    "without",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "max",
    "min",
    "avg",
    "count",
    "time",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "label_values",
    "offset",
    "bool",
    "le",
    "topk",
    "abs",
    "clamp_min",
}
BUILTIN_SERIES = {"up", "ALERTS"}


def exposed_metric_names(text: str) -> set[str]:
    """Sample names /metrics exposes, including families that have no sample yet."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
        "summary": ("_count", "_sum", ""),
    }
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def queries(dashboard: dict) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        found += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):  # label_values(<series>, <label>): check the series
            found.append(re.sub(r"label_values\((.*),\s*\w+\)", r"\1", query["query"]))
    found += [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a]
    return found


def series_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "[]", without_labels)
    without_grouping = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_ranges)
    tokens = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*(?![\w(])", without_grouping))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", t)}


async def test_dashboard_queries_use_only_exposed_metrics(client, merchant):
    dashboard = json.loads((DEPLOY / "grafana" / "kassa.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    await authorize(client, merchant)
    response = await client.get("/metrics")
    exposed = exposed_metric_names(await response.text())
    recorded = {rule["record"] for rule in rules_of("record")}
    expressions = queries(dashboard)
    assert len(expressions) >= 20
    used = set()
    for expr in expressions:
        names = series_names(expr)
        assert names, expr
        unknown = names - exposed - recorded - BUILTIN_SERIES
        assert not unknown, f"{expr!r} uses series nothing exposes or records: {unknown}"
        used |= names
    # The signals the issue asks for all have a panel.
    for needed in (
        "kassa_http_requests_total",
        "kassa_payments_stuck_processing",
        "kassa_processor_request_duration_seconds_bucket",
        "kassa_idempotency_replays_total",
        "kassa_pipeline_commit_batch_rows_bucket",
        "kassa_db_pool_connections",
        "kassa_event_loop_lag_seconds_bucket",
        "kassa_ledger_verify_ok",
        "job_processor:kassa_authorizations_approved:ratio_rate15m",
        "kassa_webhook_deliveries_total",
        "kassa_webhook_delivery_latency_seconds_bucket",
        "kassa_webhook_oldest_pending_seconds",
        "kassa_webhook_endpoints",
    ):
        assert needed in used, needed


async def test_rules_use_only_exposed_metrics(client, merchant):
    await authorize(client, merchant)
    exposed = exposed_metric_names(await (await client.get("/metrics")).text())
    recorded = {rule["record"] for rule in rules_of("record")}
    for rule in rules_of("record") + rules_of("alert"):
        unknown = series_names(rule["expr"]) - exposed - recorded - BUILTIN_SERIES
        assert not unknown, (rule.get("record") or rule.get("alert"), unknown)
