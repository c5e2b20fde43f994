"""Checks the CloudFormation stacks against the code they deploy:
infra/data.yaml (what is kept, and the policies), infra/paynotify.yaml
(containers) and infra/serverless.yaml (Lambda functions), both on the data
stack.

Run by scripts/test.sh with the tools venv (cfn-lint's decoder reads the
template's short-form intrinsics): python infra/tests/test_template.py.

- Least privilege: no `*` action or resource on the ingest, worker or
  operator policies or any role; ingest touches neither the ledger nor the
  secrets nor anything outside raw/; nobody may delete archive objects.
  Containers and functions attach the same policies. That each role may
  make every call its process makes is test_iam.py's: it reads the calls
  from the AWS tests, not from here.
- The queue's visibility timeout and redrive count, the worker's
  configuration (the environment of the task definitions and functions)
  and the defaults in shared/config/ agree; the stop timeouts cover
  drain and visibility; the worker function's timeout fits the visibility
  timeout, as Lambda requires.
- The task definitions and functions set exactly the environment that
  tests/deploy_config.rs proves makes a complete configuration.
- The worker function answers partial batches (ReportBatchItemFailures),
  the services import only what the data stack exports.
- The Glue table's columns are the envelope's fields and its partitions the
  archive key's; the DynamoDB key schema and index are what the backend
  and `paynotify aws init` use.
"""

import re
import tomllib


import checks  # infra/tests/checks.py, beside this file
from checks import ROOT, load

DATA = load("data.yaml")
CONTAINERS = load("paynotify.yaml")
SERVERLESS = load("serverless.yaml")
EVENTS = load("events.yaml")
# The data stack's resources are what most checks read.
RESOURCES = DATA["Resources"]
PARAMETERS = DATA["Parameters"]


def imported(name):
    return {"Fn::ImportValue": {"Fn::Sub": "${Name}-data-" + name}}


def rust(path):
    return (ROOT / path).read_text(encoding="utf-8")


def config_source():
    """The config crate's sources (the defaults of each section)."""
    paths = sorted((ROOT / "shared/config/src").glob("*.rs"))
    return "\n".join(p.read_text(encoding="utf-8") for p in paths)


def as_list(v):
    return v if isinstance(v, list) else [v]


def statements(resource, resources=None):
    props = (resources or RESOURCES)[resource]["Properties"]
    docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
    if "PolicyDocument" in props:
        docs.append(props["PolicyDocument"])
    return [s for d in docs for s in d["Statement"]]


def actions(resource, resources=None):
    return {
        a for s in statements(resource, resources) if s["Effect"] == "Allow" for a in as_list(s["Action"])
    }


def roles(template):
    return {n: r for n, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"}


def test_no_wildcards_on_runtime_roles():
    for policy in ["IngestPolicy", "WorkerPolicy", "OperatorPolicy"]:
        for s in statements(policy):
            for a in as_list(s["Action"]):
                assert "*" not in a, f"{policy}: action {a}"
            for r in as_list(s["Resource"]):
                assert r != "*", f"{policy}: resource *"
    for template in [CONTAINERS, SERVERLESS]:
        for name in roles(template):
            for s in statements(name, template["Resources"]):
                assert "*" not in str(s["Action"]) and s["Resource"] != "*", (name, s)


def test_containers_and_functions_attach_the_same_policies():
    expected = {
        "IngestTaskRole": "IngestPolicyArn",
        "WorkerTaskRole": "WorkerPolicyArn",
        "IngestFunctionRole": "IngestPolicyArn",
        "WorkerFunctionRole": "WorkerPolicyArn",
    }
    for template in [CONTAINERS, SERVERLESS]:
        for name, role in roles(template).items():
            attached = role["Properties"].get("ManagedPolicyArns", [])
            if name in expected:
                assert attached == [imported(expected.pop(name))], (name, attached)
    assert not expected, f"roles not found: {expected}"
    # A function's own policy only writes its own log group.
    for name in ["IngestFunctionRole", "WorkerFunctionRole"]:
        assert actions(name, SERVERLESS["Resources"]) == {"logs:CreateLogStream", "logs:PutLogEvents"}, name


def test_ingest_stays_out_of_the_ledger_and_the_secrets():
    for s in statements("IngestPolicy"):
        for a in as_list(s["Action"]):
            assert a.split(":")[0] in ("s3", "sqs", "kms"), f"ingest: {a}"
            if a.startswith("s3:") and a != "s3:ListBucket":
                assert s["Resource"] == {"Fn::Sub": "${ArchiveBucket.Arn}/raw/*"}, (a, s["Resource"])
        if "sqs:SendMessage" in as_list(s["Action"]):
            assert s["Resource"] == {"Fn::GetAtt": ["NotificationQueue", "Arn"]}, s


def test_nobody_deletes_the_archive():
    for template in [DATA, CONTAINERS, SERVERLESS]:
        for name, r in template["Resources"].items():
            if r["Type"] in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
                for a in actions(name, template["Resources"]):
                    assert not a.startswith("s3:Delete") and a != "s3:PutLifecycleConfiguration", f"{name}: {a}"
    assert RESOURCES["ArchiveBucket"]["DeletionPolicy"] == "Retain"
    assert RESOURCES["LedgerTable"]["DeletionPolicy"] == "Retain"


def test_secrets_are_read_only_by_name():
    for policy in ["WorkerPolicy", "OperatorPolicy"]:
        secrets = [s for s in statements(policy) if "secretsmanager:GetSecretValue" in as_list(s["Action"])]
        assert secrets[0]["Resource"] == [{"Ref": "UnionPayCertificates"}, {"Ref": "UnionPaySigningKey"}]
        # Beyond the certificates, only the worker, and only the webhook
        # endpoints' secrets under the stack's own prefix.
        rest = [s["Resource"] for s in secrets[1:]]
        assert rest == ([{"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${Name}/webhooks/*"}]
                        if policy == "WorkerPolicy" else []), rest


def env(task):
    [container] = CONTAINERS["Resources"][task]["Properties"]["ContainerDefinitions"]
    return {e["Name"]: e["Value"] for e in container["Environment"]}, container


def function_env(function):
    return SERVERLESS["Resources"][function]["Properties"]["Environment"]["Variables"]


def test_queue_config_and_defaults_agree():
    config = config_source()
    vt = int(re.search(r"visibility_timeout_secs: (\d+),", config).group(1))
    mr = int(re.search(r"max_receives: (\d+),", config).group(1))
    drain = int(re.search(r"drain_secs: (\d+),", config).group(1))
    assert PARAMETERS["VisibilityTimeout"]["Default"] == vt
    assert PARAMETERS["MaxReceives"]["Default"] == mr
    queue = RESOURCES["NotificationQueue"]["Properties"]
    assert queue["VisibilityTimeout"] == {"Ref": "VisibilityTimeout"}
    assert queue["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceives"}
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    outputs = DATA["Outputs"]
    assert outputs["VisibilityTimeout"]["Value"] == {"Ref": "VisibilityTimeout"}
    assert outputs["MaxReceives"]["Value"] == {"Ref": "MaxReceives"}
    envs = [env(t)[0] for t in ["IngestTask", "WorkerTask"]]
    envs += [function_env(f) for f in ["IngestFunction", "WorkerFunction"]]
    for e in envs:
        assert e["PAYNOTIFY__BACKEND__VISIBILITY_TIMEOUT_SECS"] == imported("VisibilityTimeout")
        assert e["PAYNOTIFY__BACKEND__MAX_RECEIVES"] == imported("MaxReceives")
    _, ingest = env("IngestTask")
    baked = (ROOT / "infra/docker/paynotify.toml").read_text()
    baked_drain = int(re.search(r"drain_secs = (\d+)", baked).group(1))
    assert baked_drain <= drain
    assert ingest["StopTimeout"] > baked_drain, "SIGKILL before ingest drained"
    dereg = {a["Key"]: a["Value"] for a in CONTAINERS["Resources"]["IngestTargetGroup"]["Properties"]["TargetGroupAttributes"]}
    assert int(dereg["deregistration_delay.timeout_seconds"]) < baked_drain
    _, worker = env("WorkerTask")
    assert worker["StopTimeout"] > PARAMETERS["VisibilityTimeout"]["Default"]
    assert worker["StopTimeout"] <= 120, "Fargate's limit"
    health = CONTAINERS["Resources"]["IngestTargetGroup"]["Properties"]
    assert (health["HealthCheckPort"], health["HealthCheckPath"]) == ("9090", "/readyz")
    assert "admin_listen = \"0.0.0.0:9090\"" in baked


def proven_environment():
    """What tests/deploy_config.rs sets: every process's, and the console's besides."""
    common, console = rust("tests/deploy_config.rs").split("// CONSOLE ENVIRONMENT")
    names = lambda text: set(re.findall(r'"(PAYNOTIFY__[A-Z_]+)"', text))
    return names(common), names(console)


def test_environment_is_what_the_config_test_proves():
    proven, console = proven_environment()
    e, _ = env("ConsoleTask")
    assert set(e) == proven | console, set(e) ^ (proven | console)
    for task in ["IngestTask", "WorkerTask"]:
        e, _ = env(task)
        assert set(e) == proven, (task, set(e) ^ proven)
    for function in ["IngestFunction", "WorkerFunction"]:
        e = function_env(function)
        assert set(e) == proven, (function, set(e) ^ proven)
    # The same values: a function and a container of one deployment agree.
    tasks, functions = env("WorkerTask")[0], function_env("WorkerFunction")
    assert tasks == functions, {k for k in tasks if tasks[k] != functions.get(k)}


def test_services_import_only_what_the_data_stack_exports():
    exports = {o["Export"]["Name"]["Fn::Sub"] for o in DATA["Outputs"].values() if "Export" in o}
    found = set()

    def walk(node):
        if isinstance(node, dict):
            if "Fn::ImportValue" in node:
                found.add(node["Fn::ImportValue"]["Fn::Sub"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(CONTAINERS["Resources"])
    walk(SERVERLESS["Resources"])
    walk(EVENTS["Resources"])
    assert found <= exports, found - exports
    for template in [CONTAINERS, SERVERLESS, EVENTS]:
        assert template["Parameters"]["Name"]["Default"] == DATA["Parameters"]["Name"]["Default"]


def test_the_worker_function_answers_partial_batches():
    r = SERVERLESS["Resources"]
    mapping = r["WorkerEvents"]["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["EventSourceArn"] == imported("QueueArn")
    assert mapping["BatchSize"] == {"Ref": "BatchSize"}
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "MaximumConcurrency"}
    worker = r["WorkerFunction"]["Properties"]
    params = SERVERLESS["Parameters"]
    # Lambda refuses an event source whose queue hides a message for less
    # than the function may run, and AWS asks for six times: a batch Lambda
    # throttles uses up receives toward the DLQ otherwise.
    assert worker["Timeout"] == {"Ref": "WorkerTimeout"}
    assert 6 * params["WorkerTimeout"]["Default"] <= PARAMETERS["VisibilityTimeout"]["Default"]
    # Room above the event source's concurrency for the schedule's invocation.
    assert worker["ReservedConcurrentExecutions"] == {"Ref": "WorkerReservedConcurrency"}
    assert params["WorkerReservedConcurrency"]["Default"] > params["MaximumConcurrency"]["Default"]
    for f in ["IngestFunction", "WorkerFunction"]:
        p = r[f]["Properties"]
        assert (p["Runtime"], p["Handler"]) == ("provided.al2023", "bootstrap"), f
        assert p["Architectures"] == [{"Ref": "Architecture"}] and params["Architecture"]["Default"] == "arm64"
    assert r["IngestFunction"]["Properties"]["ReservedConcurrentExecutions"] == {"Ref": "IngestReservedConcurrency"}
    # The parked-event check runs on a schedule, as the containers' loop.
    [target] = r["ParkedCheck"]["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["WorkerFunction", "Arn"]}
    # Both workers count into the metrics the data stack's alarms watch.
    for template in [CONTAINERS, SERVERLESS]:
        filters = {
            f["Properties"]["MetricTransformations"][0]["MetricName"]
            for f in template["Resources"].values()
            if f["Type"] == "AWS::Logs::MetricFilter"
        }
        assert filters == COUNTED, filters
    alarms = {a["Properties"]["MetricName"] for a in RESOURCES.values() if a["Type"] == "AWS::CloudWatch::Alarm"}
    assert COUNTED <= alarms


# What the workers' log lines are counted into, for the data stack's alarms.
COUNTED = {"DeadLettered", "ParkedNeedAttention", "WebhooksHeld", "WebhookEndpointDisabled"}


def test_every_metric_filter_counts_a_message_the_code_logs():
    # A filter matches the `message` of a JSON log line exactly: a message
    # reworded in the code would leave its alarm silent.
    sources = "\n".join(p.read_text() for p in ROOT.glob("*/src/**/*.rs")) + "\n".join(
        p.read_text() for p in ROOT.glob("shared/*/src/**/*.rs"))
    for template in [CONTAINERS, SERVERLESS]:
        for name, f in template["Resources"].items():
            if f["Type"] != "AWS::Logs::MetricFilter":
                continue
            message = re.fullmatch(r'\{ \$\.message = "([^"*]+)" \}', f["Properties"]["FilterPattern"]).group(1)
            # The message is a tracing macro's last argument.
            assert re.search(r'"' + re.escape(message) + r'"\s*,?\s*\)', sources), (name, message)


def test_the_serverless_webhooks_function_sends_the_line_in_order():
    r = SERVERLESS["Resources"]
    params = SERVERLESS["Parameters"]
    mapping = r["WebhooksEvents"]["Properties"]
    assert mapping["EventSourceArn"] == imported("WebhooksQueueArn")
    # Without it Lambda would delete a failed attempt's record with the rest.
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert '"batchItemFailures"' in rust("lambda/src/webhooks.rs") or "batch_item_failures" in rust("lambda/src/webhooks.rs")
    # A FIFO event source takes at most ten, and no batching window.
    assert mapping["BatchSize"] <= 10 and "MaximumBatchingWindowInSeconds" not in mapping
    # Lambda refuses an SQS event source whose queue's visibility timeout is
    # shorter than the function's timeout.
    visibility = RESOURCES["WebhooksQueue"]["Properties"]["VisibilityTimeout"]
    assert r["WebhooksFunction"]["Properties"]["Timeout"] == {"Ref": "WebhooksTimeout"}
    assert params["WebhooksTimeout"]["MaxValue"] <= visibility
    assert params["WebhooksTimeout"]["Default"] <= visibility
    function = r["WebhooksFunction"]["Properties"]
    # The worker's environment (tests/deploy_config.rs proves it completes
    # the packaged configuration), its queue among it.
    assert function["Environment"] == r["WorkerFunction"]["Properties"]["Environment"]
    assert function["Environment"]["Variables"]["PAYNOTIFY__BACKEND__AWS__WEBHOOKS_QUEUE"] == imported("WebhooksQueue")
    assert "paynotify-lambda-webhooks" in function["Description"]
    assert "paynotify-lambda-webhooks" in rust("lambda/Cargo.toml")
    assert "webhooks" in rust("scripts/package_lambda.sh")
    # Every resource of the function exists only with it.
    for name in ["WebhooksFunction", "WebhooksEvents", "WebhooksFunctionRole", "WebhooksLogs",
                 "WebhooksHeldMetric", "WebhookEndpointDisabledMetric", "WebhooksErrorsAlarm"]:
        assert r[name].get("Condition") == "WithWebhooks", name


def test_the_events_function_reads_the_stream_the_ledger_writes_in_order():
    # The images the events are rebuilt from (shared/backends/src/aws/stream.rs)
    # are both kept, by the stack and by `paynotify init`.
    stream = RESOURCES["LedgerTable"]["Properties"]["StreamSpecification"]
    assert stream == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert "StreamViewType::NewAndOldImages" in rust("shared/backends/src/aws/setup.rs")
    r = EVENTS["Resources"]
    mapping = r["EventsSource"]["Properties"]
    assert mapping["EventSourceArn"] == imported("LedgerStreamArn")
    # LATEST would skip what was written while the mapping was created.
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    # The handler names the record to start again from; without this
    # response type Lambda would take its answer as success and skip it.
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    handler = rust("lambda/src/events.rs")
    assert '"batchItemFailures"' in handler and '"itemIdentifier"' in handler
    # One invocation per shard at a time: a payment's writes, in order.
    assert mapping["ParallelizationFactor"] == 1
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["EventsFailed", "Arn"]}
    function = r["EventsFunction"]["Properties"]
    assert function["Environment"]["Variables"]["PAYNOTIFY__BACKEND__AWS__TABLE"] == imported("Table")
    assert "paynotify-lambda-events" in function["Description"]
    assert "paynotify-lambda-events" in rust("lambda/Cargo.toml")
    alarms = {a["Properties"]["MetricName"] for a in r.values() if a["Type"] == "AWS::CloudWatch::Alarm"}
    assert {"IteratorAge", "ApproximateNumberOfMessagesVisible", "Errors"} <= alarms
    # Lambda's IteratorAge is in milliseconds.
    assert r["EventsLagAlarm"]["Properties"]["Threshold"] == {"Fn::Sub": "${LagAlarmSeconds}000"}


def test_glue_table_matches_the_envelope_and_the_key_layout():
    envelope = rust("shared/records/src/envelope.rs")
    body = re.search(r"pub struct Envelope \{(.*?)\n\}", envelope, re.S).group(1)
    # `at` travels only on the queue copy, never archived.
    fields = [f for f in re.findall(r"^\s*pub (\w+):", body, re.M) if f not in ("source", "at")]
    table = RESOURCES["ArchiveTable"]["Properties"]["TableInput"]
    columns = [c["Name"] for c in table["StorageDescriptor"]["Columns"]]
    assert columns == fields, (columns, fields)
    segment = rust("shared/records/src/segment.rs")
    key = re.search(r'"(raw/source=\{\}/date=[^"]*)"', segment).group(1)
    assert key == "raw/source={}/date={:04}-{:02}-{:02}/hour={:02}/", key
    assert '"{partition}{first}-{n}.ndjson"' in segment
    assert [p["Name"] for p in table["PartitionKeys"]] == ["source", "date", "hour"]
    template = table["Parameters"]["storage.location.template"]["Fn::Sub"]
    assert template.endswith("/raw/source=${!source}/date=${!date}/hour=${!hour}/"), template
    assert table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"


def test_ledger_keys_are_what_the_backend_writes():
    setup = rust("shared/backends/src/aws/setup.rs")
    ledger = rust("shared/backends/src/aws/ledger/mod.rs")
    table = RESOURCES["LedgerTable"]["Properties"]
    keys = [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]]
    assert keys == [("pk", "HASH"), ("sk", "RANGE")]
    assert 'key("pk", KeyType::Hash)' in setup and 'key("sk", KeyType::Range)' in setup
    # The indexes the backend creates (name, partition key, sort key if
    # any, projection), with the names its constants give them.
    consts = dict(re.findall(r'pub const (\w+_INDEX): &str = "(\w+)";', ledger))
    block = re.search(r"pub const INDEXES[^=]*= \[(.*?)\];", ledger, re.S).group(1)
    expected = [(consts[name], hash_key, range_key or None, projection)
                for name, hash_key, range_key, projection
                in re.findall(r'\((\w+), "(\w+)", (?:None|Some\("(\w+)"\)), "(\w+)"\)', block)]
    assert len(expected) == 3, expected
    indexes = []
    for i in table["GlobalSecondaryIndexes"]:
        keys = {k["KeyType"]: k["AttributeName"] for k in i["KeySchema"]}
        assert len(keys) == len(i["KeySchema"]), i
        indexes.append((i["IndexName"], keys["HASH"], keys.get("RANGE"), i["Projection"]["ProjectionType"]))
    assert indexes == expected, (indexes, expected)
    declared = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    for _, hash_key, range_key, _ in expected:
        assert declared[hash_key] == "S" and (range_key is None or declared[range_key] == "N")
    assert set(declared) == {"pk", "sk"} | {k for _, h, r, _ in expected for k in (h, r) if k}, declared


def config_default(field):
    config = config_source()
    return int(re.search(field + r": ([\d_]+),", config).group(1).replace("_", ""))


def test_load_balancer_idles_between_the_store_deadline_and_ingest_keep_alive():
    # The load balancer must answer within its idle timeout (ingest answers
    # 503 at its store deadline), and close an idle connection before ingest
    # does (else it sends a request on a connection ingest closed: a 502).
    baked = (ROOT / "infra/docker/paynotify.toml").read_text()
    for field in ["store_deadline_ms", "header_read_timeout_ms"]:
        assert field not in baked, f"the baked config sets {field}: compare it instead"
    attrs = {a["Key"]: a["Value"] for a in CONTAINERS["Resources"]["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]}
    idle_ms = int(attrs["idle_timeout.timeout_seconds"]) * 1000
    assert config_default("store_deadline_ms") < idle_ms < config_default("header_read_timeout_ms"), idle_ms
    assert config_default("operation_timeout_ms") < config_default("store_deadline_ms")


def test_the_worker_service_is_sized_by_its_scaling_policy_alone():
    assert "DesiredCount" not in CONTAINERS["Resources"]["WorkerService"]["Properties"]


def test_the_load_balancer_reaches_only_the_tasks():
    [egress] = CONTAINERS["Resources"]["LoadBalancerSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert egress.get("DestinationSecurityGroupId") == {"Ref": "TaskSecurityGroup"} and "CidrIp" not in egress, egress


def test_what_is_kept_outlives_the_stack():
    for name in ["ArchiveBucket", "LedgerTable", "Key"]:
        assert RESOURCES[name].get("DeletionPolicy") == "Retain", name
    assert RESOURCES["LedgerTable"]["Properties"]["DeletionProtectionEnabled"] is True
    # Every prefix the code writes expires with the notifications, not never.
    prefixes = set(re.findall(r'"((?:raw|outbound|settlement|audit)/)', "".join(
        rust(p) for p in ["shared/records/src/segment.rs", "shared/records/src/envelope.rs", "src/settlement.rs", "src/purge.rs"])))
    rules = {r.get("Prefix") for r in RESOURCES["ArchiveBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
             if "ExpirationInDays" in r}
    assert prefixes <= rules, prefixes - rules


def test_queues_long_poll_and_only_the_queue_redrives_into_the_dlq():
    for q in ["NotificationQueue", "DeadLetterQueue"]:
        assert RESOURCES[q]["Properties"]["ReceiveMessageWaitTimeSeconds"] == 20, q
    allow = RESOURCES["DeadLetterQueue"]["Properties"]["RedriveAllowPolicy"]
    assert allow["redrivePermission"] == "byQueue"
    assert allow["sourceQueueArns"] == [{"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${Name}"}]
    assert RESOURCES["NotificationQueue"]["Properties"]["QueueName"] == {"Ref": "Name"}
    baked = (ROOT / "infra/docker/paynotify.toml").read_text()
    assert re.search(r"receive_wait_ms = 20000", baked), "workers on SQS long-poll for 20 s"


def test_alarms_cover_the_load_balancer_and_old_dead_letters():
    alarms = {a["Properties"]["MetricName"]: a["Properties"] for a in CONTAINERS["Resources"].values()
              if a["Type"] == "AWS::CloudWatch::Alarm"}
    assert {"HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count", "HealthyHostCount"} <= set(alarms), set(alarms)
    assert alarms["HealthyHostCount"]["ComparisonOperator"] == "LessThanThreshold"
    dlq_age = [a["Properties"] for a in RESOURCES.values() if a["Type"] == "AWS::CloudWatch::Alarm"
               and a["Properties"]["MetricName"] == "ApproximateAgeOfOldestMessage"
               and a["Properties"]["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}]
    assert dlq_age and dlq_age[0]["Threshold"] < RESOURCES["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]


def test_a_public_ingest_is_rate_limited():
    acl = CONTAINERS["Resources"]["IngestWebAcl"]["Properties"]
    [rule] = acl["Rules"]
    assert rule["Statement"]["RateBasedStatement"]["AggregateKeyType"] == "IP"
    assoc = CONTAINERS["Resources"]["IngestWebAclAssociation"]["Properties"]
    assert assoc["ResourceArn"] == {"Ref": "LoadBalancer"}


def test_names_fit_the_load_balancer_limits():
    # `${Name}-ingest` names the load balancer and target group (32 at most).
    for template in [DATA, CONTAINERS, SERVERLESS]:
        pattern = template["Parameters"]["Name"]["AllowedPattern"]
        longest = int(re.search(r"\{1,(\d+)\}", pattern).group(1)) + 1
        assert longest + len("-ingest") <= 32, pattern


def test_worker_scales_on_backlog_per_task():
    policy = CONTAINERS["Resources"]["WorkerScaling"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    metrics = {m["Id"]: m for m in policy["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["visible"]["MetricStat"]["Metric"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert metrics["tasks"]["MetricStat"]["Metric"]["MetricName"] == "RunningTaskCount"
    assert metrics["backlog_per_task"]["Expression"] == "visible / tasks"
    assert [m["Id"] for m in metrics.values() if m["ReturnData"]] == ["backlog_per_task"]
    assert policy["TargetValue"] == {"Ref": "BacklogPerTask"}
    assert CONTAINERS["Parameters"]["WorkerMinTasks"]["MinValue"] >= 1, "backlog per task divides by running tasks"
    # The workers send the webhook line too: a second policy on the same
    # target tracks its visible backlog per task.
    webhooks = CONTAINERS["Resources"]["WorkerWebhooksScaling"]["Properties"]
    assert webhooks["ScalingTargetId"] == {"Ref": "WorkerScalableTarget"}
    config = webhooks["TargetTrackingScalingPolicyConfiguration"]
    metrics = {m["Id"]: m for m in config["CustomizedMetricSpecification"]["Metrics"]}
    visible = metrics["visible"]["MetricStat"]["Metric"]
    assert visible["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert visible["Dimensions"] == [{"Name": "QueueName", "Value": imported("WebhooksQueue")}]
    assert metrics["backlog_per_task"]["Expression"] == "visible / tasks"
    assert config["TargetValue"] == {"Ref": "WebhooksBacklogPerTask"}


def test_the_console_verifies_the_load_balancer_and_provider_that_sign_it_in():
    r = CONTAINERS["Resources"]
    e, container = env("ConsoleTask")
    assert container["Command"][0] == "paynotify-api"
    # The app checks the signer and issuer the load balancer signs with.
    assert e["PAYNOTIFY__API__OIDC__LOAD_BALANCER_ARN"] == {"Ref": "LoadBalancer"}
    assert e["PAYNOTIFY__API__OIDC__ISSUER"] == {"Ref": "OidcIssuer"}
    assert e["PAYNOTIFY__API__OIDC__FORM_SECRET"] == {"Fn::Sub": "secretsmanager:${ConsoleFormSecret}"}
    rule = r["ConsoleListenerRule"]["Properties"]
    assert rule["ListenerArn"] == {"Ref": "HttpsListener"}
    [host] = rule["Conditions"]
    assert host["Field"] == "host-header" and host["HostHeaderConfig"]["Values"] == [{"Ref": "ConsoleHostName"}]
    # Signed in first, on every request (none passes unauthenticated),
    # then forwarded to the console alone.
    actions = sorted(rule["Actions"], key=lambda a: a["Order"])
    assert [a["Type"] for a in actions] == ["authenticate-oidc", "forward"]
    oidc = actions[0]["AuthenticateOidcConfig"]
    assert oidc["Issuer"] == {"Ref": "OidcIssuer"}
    assert oidc["OnUnauthenticatedRequest"] == "authenticate"
    assert "email" in oidc["Scope"].split() and "openid" in oidc["Scope"].split()
    # The client secret is resolved from Secrets Manager, never a parameter's value.
    assert oidc["ClientSecret"]["Fn::Sub"].startswith("{{resolve:secretsmanager:${OidcClientSecretArn}")
    assert actions[1]["TargetGroupArn"] == {"Ref": "ConsoleTargetGroup"}
    # The target group reaches the listener the environment opens, and the
    # health check the image's admin listener (api.admin_listen).
    group = r["ConsoleTargetGroup"]["Properties"]
    listen = e["PAYNOTIFY__API__LISTEN"]
    assert str(group["Port"]) == listen.rsplit(":", 1)[1]
    baked = tomllib.loads((ROOT / "infra/docker/paynotify.toml").read_text(encoding="utf-8"))
    admin = baked["api"]["admin_listen"]
    assert group["HealthCheckPort"] == admin.rsplit(":", 1)[1] and group["HealthCheckPath"] == "/readyz"
    [mapping] = r["ConsoleService"]["Properties"]["LoadBalancers"]
    assert mapping["TargetGroupArn"] == {"Ref": "ConsoleTargetGroup"} and str(mapping["ContainerPort"]) == str(group["Port"])
    # Only the load balancer reaches the console's ports.
    ingress = r["ConsoleIngressFromLoadBalancer"]["Properties"]
    assert ingress["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"}
    for port in (int(group["Port"]), int(group["HealthCheckPort"])):
        assert ingress["FromPort"] <= port <= ingress["ToPort"], port
    # Its role: the operator's policy, its own form secret, and the API's
    # keys under the stack's own prefix alone.
    role = r["ConsoleTaskRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [imported("OperatorPolicyArn")]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert statements == [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "ConsoleFormSecret"}},
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Fn::Sub":
            "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${Name}/api/*"}},
    ], statements
    # With keys, /api/ on the console's host is forwarded without the
    # sign-in (the key authenticates), before the sign-in's rule; the keys
    # reach the task only then.
    api_rule = r["ConsoleApiListenerRule"]
    assert api_rule["Condition"] == "ConsoleApiKeys"
    api = api_rule["Properties"]
    assert api["Priority"] < rule["Priority"]
    assert {"Field": "path-pattern", "PathPatternConfig": {"Values": ["/api/*"]}} in api["Conditions"]
    assert host in api["Conditions"]
    assert api["Actions"] == [{"Type": "forward", "TargetGroupArn": {"Ref": "ConsoleTargetGroup"}}]
    assert e["PAYNOTIFY__API__KEYS"] == {"Fn::If": ["ConsoleApiKeys", {"Ref": "ApiKeys"}, "[]"]}
    assert CONTAINERS["Parameters"]["ApiKeys"]["Default"] == "[]"
    # The console's names fit the load balancer's limits too.
    pattern = CONTAINERS["Parameters"]["Name"]["AllowedPattern"]
    longest = int(re.search(r"\{1,(\d+)\}", pattern).group(1)) + 1
    assert longest + len(group["Name"]["Fn::Sub"].replace("${Name}", "")) <= 32


def test_every_load_balancer_egress_reaches_only_the_tasks():
    for name, res in CONTAINERS["Resources"].items():
        if res["Type"] == "AWS::EC2::SecurityGroupEgress":
            p = res["Properties"]
            if p["GroupId"] == {"Ref": "LoadBalancerSecurityGroup"}:
                assert p.get("DestinationSecurityGroupId") == {"Ref": "TaskSecurityGroup"} and "CidrIp" not in p, name


if __name__ == "__main__":
    checks.run(globals())
