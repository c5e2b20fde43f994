"""Checks infra/paynotify.yaml against the code it deploys.

Run by scripts/test.sh with the tools venv (cfn-lint's decoder reads the
template's short-form intrinsics): python infra/tests/test_template.py.

- Least privilege: no `*` action or resource on the task roles or the
  operator policy; ingest may only put raw/* (and send to the queue, read
  queue counts, use the key to encrypt); nobody may delete archive objects.
- The queue's visibility timeout and redrive count, the worker's
  configuration (the environment of the task definitions) and the defaults
  in shared/src/config.rs agree; the stop timeouts cover drain and
  visibility.
- The task definitions set exactly the environment that
  tests/deploy_config.rs proves makes a complete configuration.
- The Glue table's columns are the envelope's fields and its partitions the
  archive key's; the DynamoDB key schema and index are what the backend
  and `paynotify aws init` use.
"""

import pathlib
import re

from cfnlint.decode import decode

import checks  # infra/tests/checks.py, beside this file

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE, MATCHES = decode(str(ROOT / "infra/paynotify.yaml"))
assert not MATCHES, MATCHES
RESOURCES = TEMPLATE["Resources"]
PARAMETERS = TEMPLATE["Parameters"]


def rust(path):
    return (ROOT / path).read_text(encoding="utf-8")


def as_list(v):
    return v if isinstance(v, list) else [v]


def statements(resource):
    props = RESOURCES[resource]["Properties"]
    docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
    if "PolicyDocument" in props:
        docs.append(props["PolicyDocument"])
    return [s for d in docs for s in d["Statement"]]


def actions(resource):
    return {a for s in statements(resource) if s["Effect"] == "Allow" for a in as_list(s["Action"])}


def test_no_wildcards_on_runtime_roles():
    for role in ["IngestTaskRole", "WorkerTaskRole", "OperatorPolicy"]:
        for s in statements(role):
            for a in as_list(s["Action"]):
                assert "*" not in a, f"{role}: action {a}"
            for r in as_list(s["Resource"]):
                assert r != "*", f"{role}: resource *"


def test_ingest_only_puts_and_sends():
    allowed = {"s3:PutObject", "kms:GenerateDataKey", "sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"}
    got = actions("IngestTaskRole")
    assert got <= allowed, got - allowed
    assert "s3:GetObject" not in got, "ingest cannot read the archive"
    put = [s for s in statements("IngestTaskRole") if "s3:PutObject" in as_list(s["Action"])]
    assert [s["Resource"] for s in put] == [{"Fn::Sub": "${ArchiveBucket.Arn}/raw/*"}], put
    send = [s for s in statements("IngestTaskRole") if "sqs:SendMessage" in as_list(s["Action"])]
    assert [s["Resource"] for s in send] == [{"Fn::GetAtt": ["NotificationQueue", "Arn"]}], send


def test_nobody_deletes_the_archive():
    for name, r in RESOURCES.items():
        if r["Type"] in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            for a in actions(name):
                assert not a.startswith("s3:Delete") and a != "s3:PutLifecycleConfiguration", f"{name}: {a}"
    assert RESOURCES["ArchiveBucket"]["DeletionPolicy"] == "Retain"


def test_worker_can_do_its_job():
    got = actions("WorkerTaskRole")
    for a in [
        "s3:GetObject", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
        "sqs:SendMessage", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem",
        "dynamodb:GetItem", "dynamodb:Query", "secretsmanager:GetSecretValue", "kms:Decrypt",
    ]:
        assert a in got, a
    secrets = [s for s in statements("WorkerTaskRole") if "secretsmanager:GetSecretValue" in as_list(s["Action"])]
    assert [s["Resource"] for s in secrets] == [{"Ref": "UnionPayCertificates"}]


def env(task):
    [container] = RESOURCES[task]["Properties"]["ContainerDefinitions"]
    return {e["Name"]: e["Value"] for e in container["Environment"]}, container


def test_queue_config_and_defaults_agree():
    config = rust("shared/src/config.rs")
    vt = int(re.search(r"visibility_timeout_secs: (\d+),", config).group(1))
    mr = int(re.search(r"max_receives: (\d+),", config).group(1))
    drain = int(re.search(r"drain_secs: (\d+),", config).group(1))
    assert PARAMETERS["VisibilityTimeout"]["Default"] == vt
    assert PARAMETERS["MaxReceives"]["Default"] == mr
    queue = RESOURCES["NotificationQueue"]["Properties"]
    assert queue["VisibilityTimeout"] == {"Ref": "VisibilityTimeout"}
    assert queue["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceives"}
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    for task in ["IngestTask", "WorkerTask"]:
        e, _ = env(task)
        assert e["PAYNOTIFY__BACKEND__VISIBILITY_TIMEOUT_SECS"] == {"Ref": "VisibilityTimeout"}
        assert e["PAYNOTIFY__BACKEND__MAX_RECEIVES"] == {"Ref": "MaxReceives"}
    _, ingest = env("IngestTask")
    baked = (ROOT / "infra/docker/paynotify.toml").read_text()
    baked_drain = int(re.search(r"drain_secs = (\d+)", baked).group(1))
    assert baked_drain <= drain
    assert ingest["StopTimeout"] > baked_drain, "SIGKILL before ingest drained"
    dereg = {a["Key"]: a["Value"] for a in RESOURCES["IngestTargetGroup"]["Properties"]["TargetGroupAttributes"]}
    assert int(dereg["deregistration_delay.timeout_seconds"]) < baked_drain
    _, worker = env("WorkerTask")
    assert worker["StopTimeout"] > PARAMETERS["VisibilityTimeout"]["Default"]
    assert worker["StopTimeout"] <= 120, "Fargate's limit"
    health = RESOURCES["IngestTargetGroup"]["Properties"]
    assert (health["HealthCheckPort"], health["HealthCheckPath"]) == ("9090", "/readyz")
    assert "admin_listen = \"0.0.0.0:9090\"" in baked


def test_environment_is_what_the_config_test_proves():
    proven = set(re.findall(r'"(PAYNOTIFY__[A-Z_]+)"', rust("tests/deploy_config.rs")))
    for task in ["IngestTask", "WorkerTask"]:
        e, _ = env(task)
        assert set(e) == proven, (task, set(e) ^ proven)


def test_glue_table_matches_the_envelope_and_the_key_layout():
    envelope = rust("shared/src/envelope.rs")
    body = re.search(r"pub struct Envelope \{(.*?)\n\}", envelope, re.S).group(1)
    fields = [f for f in re.findall(r"^\s*pub (\w+):", body, re.M) if f != "source"]
    table = RESOURCES["ArchiveTable"]["Properties"]["TableInput"]
    columns = [c["Name"] for c in table["StorageDescriptor"]["Columns"]]
    assert columns == fields, (columns, fields)
    key = re.search(r'"(raw/source=\{\}/date=[^"]*)"', envelope).group(1)
    assert key == "raw/source={}/date={:04}-{:02}-{:02}/hour={:02}/{}.json", key
    assert [p["Name"] for p in table["PartitionKeys"]] == ["source", "date", "hour"]
    template = table["Parameters"]["storage.location.template"]["Fn::Sub"]
    assert template.endswith("/raw/source=${!source}/date=${!date}/hour=${!hour}/"), template
    assert table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"


def test_ledger_keys_are_what_the_backend_writes():
    setup = rust("shared/src/backend/aws/setup.rs")
    ledger = rust("shared/src/backend/aws/ledger.rs")
    table = RESOURCES["LedgerTable"]["Properties"]
    keys = [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]]
    assert keys == [("pk", "HASH"), ("sk", "RANGE")]
    assert 'key("pk", KeyType::Hash)' in setup and 'key("sk", KeyType::Range)' in setup
    types = {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]}
    created = set(re.findall(r'attr\("(\w+)", ScalarAttributeType::(\w)\)', setup))
    assert types == created, (types, created)
    [index] = table["GlobalSecondaryIndexes"]
    index_name = re.search(r'PARKED_INDEX: &str = "(\w+)"', ledger).group(1)
    assert index["IndexName"] == index_name
    assert [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]] == [("gsi_parked", "HASH"), ("parked_at", "RANGE")]
    assert 'key("gsi_parked", KeyType::Hash)' in setup and 'key("parked_at", KeyType::Range)' in setup


def test_worker_scales_on_backlog_per_task():
    policy = RESOURCES["WorkerScaling"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    metrics = {m["Id"]: m for m in policy["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["visible"]["MetricStat"]["Metric"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert metrics["tasks"]["MetricStat"]["Metric"]["MetricName"] == "RunningTaskCount"
    assert metrics["backlog_per_task"]["Expression"] == "visible / tasks"
    assert [m["Id"] for m in metrics.values() if m["ReturnData"]] == ["backlog_per_task"]
    assert policy["TargetValue"] == {"Ref": "BacklogPerTask"}
    assert PARAMETERS["WorkerMinTasks"]["MinValue"] >= 1, "backlog per task divides by running tasks"


if __name__ == "__main__":
    checks.run(globals())
