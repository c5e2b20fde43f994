"""moto_server with DynamoDB requests serialized.

moto's TransactWriteItems is not isolated from concurrent requests: a
cancelled transaction restores a copy of the whole table taken before it
ran, erasing writes that other requests made meanwhile (DynamoDB itself
isolates transactions). The backend tests write one payment from several
workers at once, so this runs moto's own server with one lock around every
DynamoDB request; S3, SQS (long polls) and Secrets Manager stay concurrent.

It also gives a stack created through a change set (what `aws
cloudformation deploy` does) its outputs and exports: moto 5.2.5 computes
them for `CreateStack` only, so `describe-stacks` of a deployed stack has
no outputs there (docs/deploy.md reads them; AWS computes them either way).

Usage: python moto_server.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

try:
    from moto.cloudformation.models import CloudFormationBackend
except ImportError:  # moto without its cloudformation extra
    CloudFormationBackend = None

if CloudFormationBackend is not None:
    _execute_change_set = CloudFormationBackend.execute_change_set

    def execute_change_set(self, change_set_name, stack_name=None):
        _execute_change_set(self, change_set_name, stack_name)
        for stack in self.stacks.values():
            if stack.status in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
                stack._parse_template()
                stack.output_map = stack._create_output_map()
                for export in stack.exports:
                    self.exports[export.name] = export

    CloudFormationBackend.execute_change_set = execute_change_set

app = DomainDispatcherApplication(create_backend_app)
dynamodb = threading.Lock()


def serialized(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        with dynamodb:
            # Consume the response inside the lock: the work may be lazy.
            return list(app(environ, start_response))
    return app(environ, start_response)


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(host, port, serialized, threaded=True, request_handler=MotoRequestHandler)
