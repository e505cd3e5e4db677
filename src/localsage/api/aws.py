"""The AWS services the SDKs need besides SageMaker, through moto in this process (server mode, no HTTP hop):
S3, STS, IAM and CloudWatch Logs. Adds what moto 5.2.5 lacks or what a fresh moto does not have: IAM
`SimulatePrincipalPolicy` (v3 validates the role with it; moto answers 500), the execution role and the
default bucket. moto keeps everything in memory: S3 persists through the mirror (s3.py); IAM and Logs start
afresh (the role is made again at each start; a job's log lines stay in its job folder)."""
from __future__ import annotations

import json
import threading
import time
import uuid
from xml.sax.saxutils import escape

ACCOUNT = "123456789012"
REGION = "us-east-1"
ROLE_NAME = "localsage"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
DEFAULT_BUCKET = f"sagemaker-{REGION}-{ACCOUNT}"
TRUST_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
MAX_EVENTS = 10_000  # CloudWatch Logs' PutLogEvents batch limit


def moto_app():
    """moto's WSGI dispatcher: routes a request to the service its signature (or Host) names."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    return DomainDispatcherApplication(create_backend_app)


def iam_backend(account: str = ACCOUNT):
    from moto.iam.models import iam_backends

    return iam_backends[account]["aws"]


def ensure_role(account: str = ACCOUNT) -> str:
    """The execution role the SDK defaults file names, trusted by SageMaker (v3's GetRole checks the trust)."""
    from moto.iam.exceptions import NotFoundException

    backend = iam_backend(account)
    try:
        return backend.get_role(ROLE_NAME).arn
    except NotFoundException:
        role = backend.create_role(ROLE_NAME, json.dumps(TRUST_POLICY), "/", None,
                                   "localsage api: the role every local job runs as", [], None)
        return role.arn


def simulate_principal_policy(form: dict, account: str = ACCOUNT) -> tuple[int, dict, bytes]:
    """IAM SimulatePrincipalPolicy: every action allowed on every resource (local: no policies), for a
    principal that exists; NoSuchEntity (404) for a role or user moto does not know."""
    source = form.get("PolicySourceArn", "")
    if not _principal_exists(source, account):
        return iam_error("NoSuchEntity", f"The role or user with ARN {source} cannot be found.", 404)
    actions = _members(form, "ActionNames")
    resources = _members(form, "ResourceArns") or ["*"]
    rows = "".join(
        f"<member><EvalActionName>{escape(action)}</EvalActionName><EvalResourceName>{escape(resource)}"
        "</EvalResourceName><EvalDecision>allowed</EvalDecision><MatchedStatements/><MissingContextValues/>"
        "</member>" for action in actions for resource in resources)
    body = (f'<SimulatePrincipalPolicyResponse xmlns="{IAM_NS}"><SimulatePrincipalPolicyResult>'
            f"<IsTruncated>false</IsTruncated><EvaluationResults>{rows}</EvaluationResults>"
            "</SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>"
            f"{uuid.uuid4()}</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>")
    return 200, {"Content-Type": "text/xml"}, body.encode()


STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
SESSION_NAME = "local"


def caller_identity(account: str = ACCOUNT) -> tuple[int, dict, bytes]:
    """STS GetCallerIdentity as a job running under the local role (an assumed-role session), so an SDK that
    takes its execution role from the caller (v3 ModelBuilder, SageMaker's `get_execution_role` pattern) finds
    the role the jobs run as, not moto's `user/moto`."""
    arn = f"arn:aws:sts::{account}:assumed-role/{ROLE_NAME}/{SESSION_NAME}"
    body = (f'<GetCallerIdentityResponse xmlns="{STS_NS}"><GetCallerIdentityResult><Arn>{arn}</Arn>'
            f"<UserId>AROALOCALSAGE000000000:{SESSION_NAME}</UserId><Account>{account}</Account>"
            "</GetCallerIdentityResult><ResponseMetadata><RequestId>"
            f"{uuid.uuid4()}</RequestId></ResponseMetadata></GetCallerIdentityResponse>")
    return 200, {"Content-Type": "text/xml"}, body.encode()


def iam_error(code: str, message: str, status: int = 400) -> tuple[int, dict, bytes]:
    body = (f'<ErrorResponse xmlns="{IAM_NS}"><Error><Type>Sender</Type><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
    return status, {"Content-Type": "text/xml"}, body.encode()


def _members(form: dict, name: str) -> list[str]:
    """Query-protocol lists: Name.member.1, Name.member.2, ... in index order."""
    prefix = f"{name}.member."
    found = [(int(k[len(prefix):]), v) for k, v in form.items()
             if k.startswith(prefix) and k[len(prefix):].isdigit()]
    return [v for _, v in sorted(found)]


def _principal_exists(arn: str, account: str) -> bool:
    from moto.iam.exceptions import IAMException

    kind, _, name = arn.partition(":")[2].rpartition(":")[2].partition("/")
    if not arn.startswith("arn:aws:iam::") or not name:
        return False
    backend = iam_backend(account)
    try:
        if kind == "role":
            backend.get_role(name.rpartition("/")[2])
        elif kind == "user":
            backend.get_user(name.rpartition("/")[2])
        else:
            return False
    except IAMException:  # NotFoundException (roles), NoSuchEntity (users)
        return False
    return True


class Logs:
    """CloudWatch Logs through moto's backend: `put(group, stream, lines)` appends lines now (group and stream
    made when missing), where `DescribeLogStreams`/`GetLogEvents` (v2 `logs=True`) read them."""

    def __init__(self, account: str = ACCOUNT, region: str = REGION):
        self.account, self.region = account, region
        self._lock = threading.Lock()  # moto's PutLogEvents is not thread safe (its own TODO)

    @property
    def backend(self):
        from moto.logs.models import logs_backends

        return logs_backends[self.account][self.region]

    def put(self, group: str, stream: str, lines: list[str], timestamp_ms: int | None = None) -> None:
        stamp = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        events = [{"timestamp": stamp, "message": str(line).rstrip("\n") or " "} for line in lines]
        with self._lock:
            backend = self.backend
            backend.ensure_log_group(group)
            backend.ensure_log_stream(group, stream)
            for start in range(0, len(events), MAX_EVENTS):
                backend.put_log_events(group, stream, events[start:start + MAX_EVENTS])
