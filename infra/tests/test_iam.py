"""Every AWS call the code makes is allowed by the role that makes it.

The AWS tests run each of the stacks' processes with its own call log
(`backend.aws.call_log`; tests/support/deployed.rs): `paynotify-ingest` and
`paynotify-worker` as the task definitions start them, the operator's CLI
commands, the Lambda bootstraps, the events and webhooks handlers (tests/deployed.rs,
tests/lambda.rs, tests/unionpay_gateway.rs, tests/events_stream.rs,
tests/events_webhooks.rs). Each line of a log is one call with the IAM
actions it is authorized as and the resources it names, as the SDK sent it.
This script resolves the stacks' policies for those resources and asks
moto's IAM policy evaluator (moto.iam.access_control.IAMPolicy: actions,
wildcards, resource ARNs, Deny over Allow) whether each role may make each
of its calls, plus what AWS documents as implied by a call but no emulator
sees (the KMS calls AWS makes for an encrypted queue, bucket, table or
secret; s3:ListBucket for a missing key to read as 404; the Lambda event
source polling with the function's role) in the IMPLIED table below.

Nothing here lists what a role is granted: what is needed comes from the
logs, what is granted from the templates. A role without any logged call
fails the check (the recording itself broke), so does a call the recorder
does not know (shared/backends/src/aws/calls.rs must learn it).

Usage: python infra/tests/test_iam.py CALL_LOG_DIR   (scripts/test.sh runs
it after the tests, with the tools venv)
"""

import json
import pathlib
import re
import sys

from moto.iam.access_control import IAMPolicy, PermissionResult

from checks import load  # infra/tests/checks.py, beside this file

ACCOUNT = "123456789012"
PARTITION = "aws"


DATA = load("data.yaml")
CONTAINERS = load("paynotify.yaml")
SERVERLESS = load("serverless.yaml")
EVENTS = load("events.yaml")

# The role each process runs as: (template, role resource). The operator's
# is the data stack's OperatorPolicy, attached to a role of the merchant's.
ROLES = {
    "ingest": (CONTAINERS, "IngestTaskRole"),
    "worker": (CONTAINERS, "WorkerTaskRole"),
    "lambda-ingest": (SERVERLESS, "IngestFunctionRole"),
    "lambda-worker": (SERVERLESS, "WorkerFunctionRole"),
    "lambda-events": (EVENTS, "EventsFunctionRole"),
    "lambda-webhooks": (SERVERLESS, "WebhooksFunctionRole"),
    "operator": (DATA, "OperatorPolicy"),
    "console": (CONTAINERS, "ConsoleTaskRole"),
}

# What AWS authorizes beyond the call itself, and no emulator checks. Each
# entry: (the call's action, a predicate on the resource it names, what
# else it needs, where AWS says so).
SQS_KMS = "https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-key-management.html"
S3_KMS = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html"
S3_404 = "https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html"
SM_KMS = "https://docs.aws.amazon.com/secretsmanager/latest/userguide/security-encryption.html"
DDB_KMS = "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/encryption.usagenotes.html"
LAMBDA_SQS = "https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html#events-sqs-permissions"
SNS_KMS = "https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html#compatibility-with-aws-services"
IMPLIED = [
    ("sqs:SendMessage", "encrypted queue", ["kms:GenerateDataKey", "kms:Decrypt"], SQS_KMS),
    ("sqs:ReceiveMessage", "encrypted queue", ["kms:Decrypt"], SQS_KMS),
    ("s3:PutObject", "encrypted bucket", ["kms:GenerateDataKey", "kms:Decrypt"], S3_KMS),
    ("s3:GetObject", "encrypted bucket", ["kms:Decrypt"], S3_KMS),
    # The code tells a missing object (NotFound: dead letter, or look again
    # for a segment still being written) from a failure (retry).
    ("s3:GetObject", "bucket", ["s3:ListBucket on the bucket"], S3_404),
    ("secretsmanager:GetSecretValue", "encrypted secret", ["kms:Decrypt"], SM_KMS),
    # DynamoDB decrypts the table key on behalf of the caller.
    ("dynamodb:*", "encrypted table", ["kms:Decrypt"], DDB_KMS),
]
# The Lambda event source polls the queue with the worker function's role.
EVENT_SOURCE = (["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"], LAMBDA_SQS)
# The stream event source reads the ledger's stream, and sends the position
# of a batch it gave up on to the failure destination, as the function.
LAMBDA_DDB = "https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html#events-dynamodb-permissions"
STREAM_SOURCE = (["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"], LAMBDA_DDB)
LAMBDA_DESTINATION = "https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html"
# Calls the tests cannot provoke: the role, the call, and the code that
# makes it.
RAW = {"bucket": None, "key": "raw/source=unionpay/date=2026-01-01/hour=00/x-1.ndjson"}
UNREACHED = [
    ("ingest", "s3:GetObject", RAW,
     "shared/records/src/segment.rs put_once: a segment put answered 412 (an SDK retry after a lost reply) is read back"),
    ("lambda-ingest", "s3:GetObject", RAW,
     "shared/records/src/segment.rs put_once: a segment put answered 412 (an SDK retry after a lost reply) is read back"),
    ("worker", "s3:PutObject", RAW,
     "worker/src/archived.rs: a retry's re-send or a batch's split of a message whose segment failed archives "
     "the notification alone (tests/chaos.rs reaches it in one process, where no role is told apart)"),
    ("lambda-worker", "s3:PutObject", RAW,
     "worker/src/archived.rs: a retry's re-send or a batch's split of a message whose segment failed archives "
     "the notification alone"),
]


class Stack:
    """The three templates' resources resolved for the names one test used."""

    def __init__(self, header, secrets, sinks=()):
        r = header["resources"]
        self.region = r["region"]
        self.bucket, self.queue, self.dlq, self.table = r["bucket"], r["queue"], r["dead_letter_queue"], r["table"]
        self.webhooks = r.get("webhooks_queue", f"{self.queue}-webhooks.fifo")
        self.name = self.queue
        self.key = f"arn:{PARTITION}:kms:{self.region}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"
        self.secrets = secrets
        # The merchant's queues, topics and buses (events.yaml's SinkArns):
        # those the test sent events to.
        self.sinks = list(sinks)
        data = {
            "ArchiveBucket": {"Ref": self.bucket, "Arn": f"arn:{PARTITION}:s3:::{self.bucket}"},
            "NotificationQueue": self.sqs(self.queue),
            "DeadLetterQueue": self.sqs(self.dlq),
            "WebhooksQueue": self.sqs(self.webhooks),
            "LedgerTable": {
                "Ref": self.table,
                "Arn": f"arn:{PARTITION}:dynamodb:{self.region}:{ACCOUNT}:table/{self.table}",
                "StreamArn": f"arn:{PARTITION}:dynamodb:{self.region}:{ACCOUNT}:table/{self.table}/stream/2026-01-01T00:00:00.000",
            },
            "Key": {"Ref": self.key.rsplit("/", 1)[1], "Arn": self.key},
            "UnionPayCertificates": {"Ref": self.secret("unionpay-certificates")},
            "UnionPaySigningKey": {"Ref": self.secret("unionpay-signing-key")},
            "AlarmTopic": {"Ref": f"arn:{PARTITION}:sns:{self.region}:{ACCOUNT}:{self.name}-alarms"},
        }
        self.attrs = {"data.yaml": data}
        for template, logs in [("paynotify.yaml", ["IngestLogs", "WorkerLogs"]), ("serverless.yaml", ["IngestLogs", "WorkerLogs", "WebhooksLogs"])]:
            self.attrs[template] = {
                n: {"Arn": f"arn:{PARTITION}:logs:{self.region}:{ACCOUNT}:log-group:/{self.name}/{n.lower()}"} for n in logs
            }
        self.attrs["paynotify.yaml"]["ConsoleFormSecret"] = {"Ref": self.secret("console/form-secret")}
        self.attrs["events.yaml"] = {
            "EventsLogs": {"Arn": f"arn:{PARTITION}:logs:{self.region}:{ACCOUNT}:log-group:/{self.name}/lambda/events"},
            "EventsFailed": self.sqs(f"{self.name}-events-failed"),
        }
        self.exports = {}
        for output, o in DATA["Outputs"].items():
            if "Export" in o:
                export = o["Export"]["Name"]["Fn::Sub"].replace("${Name}", self.name)
                self.exports[export] = self.resolve(o["Value"], "data.yaml")

    def sqs(self, name):
        return {
            "Ref": f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{name}",
            "Arn": f"arn:{PARTITION}:sqs:{self.region}:{ACCOUNT}:{name}",
            "QueueName": name,
        }

    def secret(self, what):
        name = f"{self.name}/{what}"
        for arn in self.secrets:
            if arn.split(":secret:", 1)[1].startswith(name + "-"):
                return arn
        return f"arn:{PARTITION}:secretsmanager:{self.region}:{ACCOUNT}:secret:{name}-AbCdEf"

    def resolve(self, node, template):
        """The value of an intrinsic function, as CloudFormation gives it."""
        if isinstance(node, list):
            return [self.resolve(v, template) for v in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {k: self.resolve(v, template) for k, v in node.items()}
        (fn, arg), = node.items()
        pseudo = {"AWS::Region": self.region, "AWS::AccountId": ACCOUNT, "AWS::Partition": PARTITION, "Name": self.name}
        doc = {"data.yaml": DATA, "paynotify.yaml": CONTAINERS, "serverless.yaml": SERVERLESS, "events.yaml": EVENTS}[template]
        if fn == "Ref":
            if arg in pseudo:
                return pseudo[arg]
            if (template, arg) == ("events.yaml", "SinkArns"):
                return self.sinks
            if arg in doc.get("Parameters", {}):
                return str(doc["Parameters"][arg].get("Default", f"<{arg}>"))
            if arg in self.attrs[template]:
                return self.attrs[template][arg]["Ref"]
            r = doc["Resources"][arg]
            if r["Type"] == "AWS::IAM::ManagedPolicy":
                name = self.resolve(r["Properties"]["ManagedPolicyName"], template)
                return f"arn:{PARTITION}:iam::{ACCOUNT}:policy/{name}"
            return f"<{arg}>"
        if fn == "Fn::GetAtt":
            resource, attr = arg if isinstance(arg, list) else arg.split(".", 1)
            return self.attrs[template].get(resource, {}).get(attr, f"<{resource}.{attr}>")
        if fn == "Fn::ImportValue":
            return self.exports[self.resolve(arg, template)]
        if fn == "Fn::Join":
            return arg[0].join(self.resolve(arg[1], template))
        if fn == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], {k: self.resolve(v, template) for k, v in arg[1].items()})

            def value(m):
                ref = m.group(1)
                if ref.startswith("!"):
                    return "${" + ref[1:] + "}"
                if ref in names:
                    return names[ref]
                if "." in ref:
                    return self.resolve({"Fn::GetAtt": ref}, template)
                return self.resolve({"Ref": ref}, template)

            return re.sub(r"\$\{([^}]+)\}", value, text)
        return {fn: self.resolve(arg, template)}

    def policies(self, role):
        """The policy documents of `role`, resolved."""
        template, name = ROLES[role]
        file = {id(DATA): "data.yaml", id(CONTAINERS): "paynotify.yaml", id(SERVERLESS): "serverless.yaml", id(EVENTS): "events.yaml"}[id(template)]
        resource = template["Resources"][name]
        props = resource["Properties"]
        # A policy under a condition (Fn::If) is left out: the check holds
        # without it.
        docs = [p["PolicyDocument"] for p in props.get("Policies", []) if "PolicyDocument" in p]
        if "PolicyDocument" in props:
            docs.append(props["PolicyDocument"])
        resolved = [self.resolve(d, file) for d in docs]
        for arn in props.get("ManagedPolicyArns", []):
            export = self.resolve(arn, file)
            [policy] = [n for n, r in DATA["Resources"].items() if r["Type"] == "AWS::IAM::ManagedPolicy"
                        and self.resolve({"Ref": n}, "data.yaml") == export] or [None]
            assert policy, f"{role}: attached policy {export} is not the data stack's"
            resolved.append(self.resolve(DATA["Resources"][policy]["Properties"]["PolicyDocument"], "data.yaml"))
        return resolved

    def arn(self, resource):
        """The ARN a call's resource descriptor names."""
        if "queue_url" in resource or "queue_name" in resource:
            name = resource.get("queue_name") or resource["queue_url"].rstrip("/").rsplit("/", 1)[1]
            return self.sqs(name)["Arn"]
        if "bucket" in resource:
            bucket = resource["bucket"] or self.bucket
            if "key" in resource:
                return f"arn:{PARTITION}:s3:::{bucket}/{resource['key']}"
            return f"arn:{PARTITION}:s3:::{bucket}"
        if "table" in resource:
            arn = f"arn:{PARTITION}:dynamodb:{self.region}:{ACCOUNT}:table/{resource['table']}"
            return arn + (f"/index/{resource['index']}" if resource.get("index") else "")
        if "topic_arn" in resource:
            return resource["topic_arn"]
        if "event_bus" in resource:
            bus = resource["event_bus"]
            return bus if bus.startswith("arn:") else f"arn:{PARTITION}:events:{self.region}:{ACCOUNT}:event-bus/{bus}"
        if "secret_id" in resource:
            assert resource["secret_id"].startswith("arn:"), f"a secret named, not by ARN: {resource}"
            return resource["secret_id"]
        raise AssertionError(f"a resource the check cannot name: {resource}")

    def encrypted(self, kind, arn):
        """Whether the stack encrypts this resource with its own key."""
        r = DATA["Resources"]
        if kind == "queue":
            name = arn.rsplit(":", 1)[1]
            if name == f"{self.name}-events-failed":
                key = EVENTS["Resources"]["EventsFailed"]["Properties"].get("KmsMasterKeyId")
                return key == {"Fn::ImportValue": {"Fn::Sub": "${Name}-data-KeyArn"}}
            names = {self.queue: "NotificationQueue", self.dlq: "DeadLetterQueue"}
            q = names.get(name)
            return bool(q) and r[q]["Properties"].get("KmsMasterKeyId") == {"Ref": "Key"}
        if kind == "bucket":
            sse = r["ArchiveBucket"]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            default = sse["ServerSideEncryptionByDefault"]
            return default["SSEAlgorithm"] == "aws:kms" and default.get("KMSMasterKeyID") == {"Fn::GetAtt": ["Key", "Arn"]}
        if kind == "table":
            sse = r["LedgerTable"]["Properties"].get("SSESpecification", {})
            return sse.get("SSEType") == "KMS" and sse.get("KMSMasterKeyId") == {"Ref": "Key"}
        if kind == "secret":
            for s in ["UnionPayCertificates", "UnionPaySigningKey"]:
                if self.resolve({"Ref": s}, "data.yaml") == arn:
                    return r[s]["Properties"].get("KmsKeyId") == {"Ref": "Key"}
            if self.resolve({"Ref": "ConsoleFormSecret"}, "paynotify.yaml") == arn:
                key = CONTAINERS["Resources"]["ConsoleFormSecret"]["Properties"].get("KmsKeyId")
                return key == {"Fn::ImportValue": {"Fn::Sub": "${Name}-data-KeyArn"}}
            return False
        raise AssertionError(kind)


def implied(stack, role, action, arn):
    """What else (action, ARN, why) this call needs."""
    out = []
    for call, what, needs, why in IMPLIED:
        if not (action == call or (call.endswith("*") and action.startswith(call[:-1]))):
            continue
        kind = what.split()[-1]
        if what.startswith("encrypted") and not stack.encrypted(kind, arn):
            continue
        for need in needs:
            if need == "s3:ListBucket on the bucket":
                out.append(("s3:ListBucket", arn.split("/", 1)[0], why))
            else:
                out.append((need, stack.key, why))
    return out


def allowed(policies, action, arn):
    results = [IAMPolicy(json.dumps(p)).is_action_permitted(action, arn) for p in policies]
    return PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results


def logs(directory):
    """(role, header, calls) of each call log."""
    out = []
    for path in sorted(pathlib.Path(directory).glob("*.jsonl")):
        role = path.name.split("--", 1)[0]
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        headers = [line for line in lines if "resources" in line]
        assert headers, f"{path}: no header"
        out.append((role, headers[0], [line for line in lines if "needs" in line], path.name))
    return out


def check(directory):
    found = logs(directory)
    failures, counted = [], {role: 0 for role in ROLES}
    for role, header, calls, file in found:
        assert role in ROLES, f"{file}: a role the stacks do not have"
        secrets = {n["resource"]["secret_id"] for c in calls for n in c["needs"] if "secret_id" in n.get("resource", {})}
        own = {header["resources"][k] for k in ("queue", "dead_letter_queue", "webhooks_queue") if k in header["resources"]}
        sinks = {Stack(header, secrets).arn(n["resource"]) for c in calls for n in c["needs"]
                 if role == "lambda-events" and n.get("resource", {}).keys() & {"queue_url", "topic_arn", "event_bus"}
                 and n["resource"].get("queue_url", "/").rstrip("/").rsplit("/", 1)[-1] not in own}
        stack = Stack(header, secrets, sorted(sinks))
        policies = stack.policies(role)
        needed = {}
        for c in calls:
            counted[role] += 1
            for n in c["needs"]:
                if n.get("action") is None:
                    failures.append(f"{role}: {c['service']}.{c['operation']} is a call calls.rs does not know")
                    continue
                arn = stack.arn(n["resource"])
                needed.setdefault((n["action"], arn), f"{c['service']}.{c['operation']} (HTTP {c['status']})")
                for action, resource, why in implied(stack, role, n["action"], arn):
                    needed.setdefault((action, resource), f"implied by {n['action']}: {why}")
        if role == "lambda-worker":
            queue = stack.sqs(stack.queue)["Arn"]
            for action in EVENT_SOURCE[0]:
                needed.setdefault((action, queue), f"the SQS event source polls as the function: {EVENT_SOURCE[1]}")
            needed.setdefault(("kms:Decrypt", stack.key), f"the SQS event source reads an encrypted queue: {EVENT_SOURCE[1]}")
        if role == "lambda-webhooks":
            queue = stack.sqs(stack.webhooks)["Arn"]
            for action in EVENT_SOURCE[0]:
                needed.setdefault((action, queue), f"the SQS event source polls as the function: {EVENT_SOURCE[1]}")
            needed.setdefault(("kms:Decrypt", stack.key), f"the SQS event source reads an encrypted queue: {EVENT_SOURCE[1]}")
        if role == "lambda-events":
            stream = stack.attrs["data.yaml"]["LedgerTable"]["StreamArn"]
            for action in STREAM_SOURCE[0]:
                needed.setdefault((action, stream), f"the stream event source polls as the function: {STREAM_SOURCE[1]}")
            needed.setdefault(("kms:Decrypt", stack.key), f"the stream is under the table's key: {DDB_KMS}")
            failed = stack.attrs["events.yaml"]["EventsFailed"]["Arn"]
            needed.setdefault(("sqs:SendMessage", failed), f"the on-failure destination is sent to as the function: {LAMBDA_DESTINATION}")
            for action, resource, why in implied(stack, role, "sqs:SendMessage", failed):
                needed.setdefault((action, resource), f"implied by the on-failure destination: {why}")
        for who, action, resource, why in UNREACHED:
            if who == role:
                arn = stack.arn(resource)
                needed.setdefault((action, arn), why)
                for a, r, w in implied(stack, role, action, arn):
                    needed.setdefault((a, r), f"implied by {action}: {w}")
        for (action, arn), why in sorted(needed.items()):
            if not allowed(policies, action, arn):
                failures.append(f"{role} ({ROLES[role][1]}) may not {action} on {arn}: {why}")
    for role, n in counted.items():
        if n == 0:
            failures.append(f"{role}: no call was recorded (set PAYNOTIFY_TEST_CALL_LOGS and run the AWS tests)")
    return sorted(set(failures)), counted


def check_alarm_topic():
    """CloudWatch alarms publish to the topic only under a customer key
    whose policy lets CloudWatch use it."""
    topic = DATA["Resources"]["AlarmTopic"]["Properties"]
    assert topic.get("KmsMasterKeyId") == {"Ref": "Key"}, f"AlarmTopic key {topic.get('KmsMasterKeyId')} ({SNS_KMS})"
    statements = DATA["Resources"]["Key"]["Properties"]["KeyPolicy"]["Statement"]
    for action in ["kms:GenerateDataKey", "kms:Decrypt"]:
        ok = any(
            s["Effect"] == "Allow"
            and s.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"
            and IAMPolicy(json.dumps({"Version": "2012-10-17", "Statement": [{k: v for k, v in s.items() if k not in ("Principal", "Condition", "Sid")}]}))
            .is_action_permitted(action, "*") == PermissionResult.PERMITTED
            for s in statements
        )
        assert ok, f"the key policy does not let cloudwatch.amazonaws.com {action} ({SNS_KMS})"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    failures, counted = check(sys.argv[1])
    try:
        check_alarm_topic()
    except AssertionError as e:
        failures.append(f"alarms: {e}")
    print("calls checked per role: " + ", ".join(f"{r} {n}" for r, n in counted.items()))
    for f in failures:
        print(f"FAIL {f}")
    print(f"{len(failures)} missing permissions" if failures else "every recorded call is allowed")
    sys.exit(1 if failures else 0)
