"""Checks infra/k8s/paynotify.yaml beyond kubernetes-validate's schemas,
which do not know KEDA's resources: the ScaledObject scales the worker
Deployment on the same queue the ConfigMap names, through the
TriggerAuthentication it declares; the ConfigMap sets exactly the
environment tests/deploy_config.rs proves complete; both Deployments run
the image's binaries as the image's non-root user with the probes on the
admin ports.

Run by scripts/test.sh: python infra/tests/test_k8s.py
"""

import pathlib
import re

import yaml

import checks  # infra/tests/checks.py, beside this file

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [d for d in yaml.safe_load_all((ROOT / "infra/k8s/paynotify.yaml").read_text()) if d]
BY_KIND = {}
for d in DOCS:
    BY_KIND.setdefault(d["kind"], {})[d["metadata"]["name"]] = d


def test_configmap_is_the_proven_environment():
    # Every process's environment; the console's (after the marker) is the
    # containers stack's alone: the manifests run no console.
    common = (ROOT / "tests/deploy_config.rs").read_text().split("// CONSOLE ENVIRONMENT")[0]
    proven = set(re.findall(r'"(PAYNOTIFY__[A-Z_]+)"', common))
    data = BY_KIND["ConfigMap"]["paynotify-env"]["data"]
    assert set(data) == proven, set(data) ^ proven
    for k, v in data.items():
        assert isinstance(v, str), f"{k}: ConfigMap values are strings"
    for ref in ("ROOT_CERT", "MIDDLE_CERT"):
        assert data[f"PAYNOTIFY__SOURCES__UNIONPAY__UNIONPAY__{ref}"].startswith("secretsmanager:")


def test_scaled_object_scales_the_worker_on_its_queue():
    so = BY_KIND["ScaledObject"]["paynotify-worker"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] in BY_KIND["Deployment"]
    assert spec["scaleTargetRef"]["name"] == "paynotify-worker"
    assert spec["minReplicaCount"] >= 1
    trigger, webhooks = spec["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    meta = trigger["metadata"]
    for key in ("queueURL", "queueLength", "awsRegion"):
        assert isinstance(meta[key], str) and meta[key], key
    int(meta["queueLength"])
    data = BY_KIND["ConfigMap"]["paynotify-env"]["data"]
    assert meta["queueURL"].rsplit("/", 1)[1] == data["PAYNOTIFY__BACKEND__AWS__QUEUE"]
    assert meta["awsRegion"] == data["PAYNOTIFY__BACKEND__AWS__REGION"]
    assert f"sqs.{meta['awsRegion']}." in meta["queueURL"]
    auth = BY_KIND["TriggerAuthentication"][trigger["authenticationRef"]["name"]]
    assert auth["spec"]["podIdentity"]["provider"] == "aws"
    # The webhook line the workers send from: its visible backlog only
    # (retries are in flight until their next try and need no pod).
    line = webhooks["metadata"]
    assert webhooks["type"] == "aws-sqs-queue"
    assert line["queueURL"].rsplit("/", 1)[1] == data["PAYNOTIFY__BACKEND__AWS__WEBHOOKS_QUEUE"]
    assert line["queueURL"].rsplit("/", 1)[0] == meta["queueURL"].rsplit("/", 1)[0]
    assert line["scaleOnInFlight"] == "false"
    int(line["queueLength"])


def test_deployments_run_the_image_safely():
    for name, binary, admin in [("paynotify-ingest", "paynotify-ingest", 9090), ("paynotify-worker", "paynotify-worker", 9091)]:
        pod = BY_KIND["Deployment"][name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        [c] = pod["containers"]
        assert c["args"] == [binary, "--config", "/etc/paynotify/paynotify.toml"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["admin"] == admin
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert BY_KIND["ServiceAccount"][pod["serviceAccountName"]]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    worker = BY_KIND["Deployment"]["paynotify-worker"]["spec"]["template"]["spec"]
    vt = int(BY_KIND["ConfigMap"]["paynotify-env"]["data"]["PAYNOTIFY__BACKEND__VISIBILITY_TIMEOUT_SECS"])
    assert worker["terminationGracePeriodSeconds"] > vt


if __name__ == "__main__":
    checks.run(globals())
