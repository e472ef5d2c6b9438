"""deploy/kubernetes/ checked offline: every object `kubectl kustomize` renders (the base and each overlay) against
the Kubernetes schemas of named versions (kubernetes-validate, strict: an unknown field fails), the two Prometheus
Operator resources by structure (a schema of the fields we use) and with promtool, and every command line, env var,
port and name against the code that reads them. What only a real cluster shows is listed in docs/SCALING.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from msml.cli import app
from msml.monitoring import prometheus_operator as po
from msml.monitoring.render import alerting_rules, default_model_image, recording_rules
from tests.conftest import ROOT
from tests.helpers import need_binary

pytestmark = pytest.mark.system  # kubectl (its kustomize) and promtool

# The oldest version kubectl here speaks to (its client is 1.32, kustomize v5.5) and the newest the validator ships.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/production")
CRDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
# A value for each Secret key the manifests reference (the real ones are the platform's, never committed).
SECRET_VALUES = {
    ("msml-db", "MLFLOW_BACKEND_STORE_URI"): "postgresql://mlflow:pw@pg-rw:5432/mlflow",
    ("msml-db", "OPTUNA_STORAGE"): "postgresql://optuna:pw@pg-rw:5432/optuna",
    ("msml-gateway", "MSML_FEEDBACK_TOKEN"): "a-token",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    kubectl = need_binary("kubectl")
    out = {}
    for name in KUSTOMIZATIONS:
        result = subprocess.run(
            [kubectl, "kustomize", str(ROOT / "deploy" / "kubernetes" / name)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"kubectl kustomize {name} (kubectl 1.21 or newer): {result.stderr}"
        out[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def _one(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _containers(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            for c in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, c


def test_every_core_object_validates_against_the_kubernetes_schemas(rendered):
    validated = 0
    for name, docs in rendered.items():
        assert {d["kind"] for d in docs} == {"ConfigMap", "Service", *WORKLOADS, *CRDS}, name
        for doc in docs:
            if doc["kind"] in CRDS:
                continue
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
            validated += 1
    assert validated == 3 * 9  # ConfigMap, 3 Services, 2 Deployments, StatefulSet, 2 Jobs in each rendering


def test_the_schema_check_rejects_what_a_cluster_would(rendered):
    """The check can fail: a misspelt field and a wrong type are refused, as the API server would."""
    gateway = _one(rendered["base"], "Deployment", "gateway")
    misspelt = yaml.safe_load(yaml.safe_dump(gateway))
    misspelt["spec"]["template"]["spec"]["containers"][0]["enviroment"] = []
    wrong_type = yaml.safe_load(yaml.safe_dump(gateway))
    wrong_type["spec"]["replicas"] = "two"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


# The ServiceMonitor fields msml uses, as the Operator's CRD (monitoring.coreos.com/v1) types them; anything else
# is refused, so a field the CRD does not have cannot slip in. (The CRD's own schema is not available offline.)
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"


def _operator_resource(kind: str, spec: dict) -> dict:
    """A JSON schema of a monitoring.coreos.com/v1 object of `kind` whose spec is `spec`; nothing else allowed."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": spec,
        },
    }


SERVICE_MONITOR = _operator_resource(
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
            },
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "relabelings": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop"]},
                                    "targetLabel": {"type": "string"},
                                    "replacement": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
)
# the groups themselves are checked by promtool (test_the_prometheus_rule_holds_the_rules_and_…)
PROMETHEUS_RULE = _operator_resource(
    "PrometheusRule",
    {
        "type": "object",
        "required": ["groups"],
        "additionalProperties": False,
        "properties": {"groups": {"type": "array", "minItems": 1}},
    },
)


def test_service_monitors_scrape_the_services_as_the_rules_jobs(rendered):
    for name, docs in rendered.items():
        monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
        assert {m["spec"]["endpoints"][0]["relabelings"][0]["replacement"] for m in monitors} == set(po.SCRAPED_APPS)
        for monitor in monitors:
            jsonschema.validate(monitor, SERVICE_MONITOR)
            selected = [
                d
                for d in docs
                if d["kind"] == "Service"
                and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"].get("labels", {}).items()
            ]
            assert len(selected) == 1, f"{name}: {monitor['metadata']['name']} selects {len(selected)} Services"
            port = monitor["spec"]["endpoints"][0]["port"]
            assert port in {p["name"] for p in selected[0]["spec"]["ports"]}, name
    misspelt = yaml.safe_load(yaml.safe_dump(monitors[0]))
    misspelt["spec"]["endpoints"][0]["intervall"] = "15s"  # the structure check refuses what the CRD would
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(misspelt, SERVICE_MONITOR)


def test_the_prometheus_rule_holds_the_rules_and_passes_their_promtool_tests(rendered, tmp_path):
    """The PrometheusRule's spec is a Prometheus rule file: promtool checks it and runs the committed alert unit
    tests (monitoring/prometheus/tests/alerts_test.yml) against it."""
    promtool = need_binary("promtool")
    for docs in rendered.values():
        [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
        jsonschema.validate(rule, PROMETHEUS_RULE)
        assert rule["spec"]["groups"] == recording_rules()["groups"] + alerting_rules()["groups"]
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    recording, alerting = rule["spec"]["groups"]
    (tmp_path / "rules" / "recording.yml").write_text(yaml.safe_dump({"groups": [recording]}))
    (tmp_path / "rules" / "alerts.yml").write_text(yaml.safe_dump({"groups": [alerting]}))
    tests = tmp_path / "tests" / "alerts_test.yml"
    tests.write_text((ROOT / "monitoring" / "prometheus" / "tests" / "alerts_test.yml").read_text())
    for command in (["check", "rules", *(str(p) for p in (tmp_path / "rules").iterdir())], ["test", "rules", tests]):
        result = subprocess.run([promtool, *map(str, command)], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def _env(container: dict, docs: list[dict]) -> dict[str, str]:
    """The container's environment as Kubernetes would set it (optional references that resolve to nothing
    are left out, as the kubelet does)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif ref := var["valueFrom"].get("configMapKeyRef"):
            env[var["name"]] = _one(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = SECRET_VALUES[(ref["name"], ref["key"])]
    return env


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of args; every reference must name a variable of the container."""
    for arg in args:
        for ref in re.findall(r"\$\((\w+)\)", arg):
            assert ref in env, f"args refer to $({ref}), which the container's env does not define"
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in args]


def _invoke_capturing(monkeypatch, target: str, argv: list[str], env: dict[str, str]) -> dict:
    """Run the real `msml` command line in-process with the container's env, the function it hands its
    settings to replaced by a recorder: the options and env vars are parsed and read exactly as in the pod."""
    module, name = target.rsplit(".", 1)
    seen = {}

    def record(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)

    monkeypatch.setattr(f"{module}.{name}", record)
    result = CliRunner().invoke(app, argv, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen


def test_commands_and_env_are_the_ones_the_cli_reads(rendered, monkeypatch):
    from mlflow.cli import cli as mlflow_cli

    from msml.config import load_settings

    for name, docs in rendered.items():
        for workload, container in _containers(docs):
            where = f"{name}: {workload['kind']} {workload['metadata']['name']}"
            if "command" not in container:
                continue  # the model image's own entrypoint: see test_names_ports_and_probes_line_up
            env = _env(container, docs)
            argv = _expand(container["command"][1:] + container.get("args", []), env)
            if container["command"][0] == "mlflow":
                # mlflow's own CLI reads the store and the artifact destination from these env vars
                for key, value in env.items():
                    monkeypatch.setenv(key, value)
                server = mlflow_cli.get_command(None, argv[0])
                params = server.make_context(argv[0], argv[1:]).params
                assert params["backend_store_uri"] == env.pop("MLFLOW_BACKEND_STORE_URI"), where
                assert params["artifacts_destination"] == env.pop("MLFLOW_ARTIFACTS_DESTINATION"), where
                assert params["expose_prometheus"], where  # the ServiceMonitor scrapes it
                assert env == {}, f"{where}: env vars nothing reads: {sorted(env)}"
                continue
            assert container["command"][0] == "msml", where
            assert load_settings().tracking_uri != env["MLFLOW_TRACKING_URI"]
            with monkeypatch.context() as m:
                m.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
                assert load_settings().tracking_uri == env.pop("MLFLOW_TRACKING_URI"), where
            if argv[0] == "gateway":
                seen = _invoke_capturing(monkeypatch, "msml.serving.gateway.run", argv, dict(env))
                config = seen["args"][0]
                assert ",".join(config.model_urls) == env.pop("MSML_MODEL_URLS"), where
                assert config.feedback_token == env.pop("MSML_FEEDBACK_TOKEN"), where
            elif argv[0] == "tune":
                seen = _invoke_capturing(monkeypatch, "msml.training.tuning.tune", argv, dict(env))
                assert seen["kwargs"]["storage"] == env.pop("OPTUNA_STORAGE"), where
                assert seen["kwargs"]["study_name"] == env.pop("MSML_STUDY"), where
            else:
                raise AssertionError(f"{where}: no check for `msml {argv[0]}`")
            assert env == {}, f"{where}: env vars nothing reads: {sorted(env)}"


def _port(argv: list[str]) -> int:
    return int(argv[argv.index("--port") + 1])


def test_names_ports_and_probes_line_up(rendered):
    from msml.serving.gateway import ENDPOINTS

    model_image = default_model_image().rsplit(":", 1)[0]
    for name, docs in rendered.items():
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        for workload, container in _containers(docs):
            where = f"{name}: {workload['kind']} {workload['metadata']['name']}"
            pod_labels = workload["spec"]["template"]["metadata"]["labels"]
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            argv = container["command"][1:] + container.get("args", []) if "command" in container else []
            if "--port" in argv:
                assert ports == {"http": _port(argv)}, where  # the port the server listens on is the one named
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, where
            if workload["metadata"]["name"] == "gateway":
                assert {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")} <= set(ENDPOINTS)
                urls = _env(container, docs)["MSML_MODEL_URLS"].split(",")
                models = _one(docs, "StatefulSet", "model-server")
                model_port = models["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
                service = models["spec"]["serviceName"]
                assert services[service]["spec"].get("clusterIP") == "None", name  # one DNS name per pod
                assert urls == [
                    f"http://{models['metadata']['name']}-{i}.{service}:{model_port}"
                    for i in range(models["spec"]["replicas"])
                ], f"{name}: MSML_MODEL_URLS must list every model-server pod"
                tracking = _env(container, docs)["MLFLOW_TRACKING_URI"]
                mlflow = services["mlflow-server"]["spec"]["ports"][0]
                assert tracking == f"http://mlflow-server:{mlflow['port']}", name
            if workload["metadata"]["name"] == "model-server":
                assert container["image"].split(":")[0] == model_image, where  # the Kriteria 3 image
                assert container["readinessProbe"]["httpGet"]["path"] == "/ping", where  # what the gateway probes
            if workload["kind"] != "Job":  # every server is behind a Service that finds its pods and port
                [service] = [s for s in services.values() if s["spec"]["selector"].items() <= pod_labels.items()]
                assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports), where


def test_no_secret_value_is_committed():
    for path in (ROOT / "deploy" / "kubernetes").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{path}: Secrets are the platform's, never committed"
    assert not any(Path(ROOT / "deploy").rglob("*.env"))
