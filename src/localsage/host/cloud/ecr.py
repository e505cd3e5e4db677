"""The project's image in ECR: repository URIs, creating the repository, logging in, pushing."""
from __future__ import annotations

import base64

from localsage.host.cloud import session
from localsage.host.cloud.constants import DEFAULT_REPOSITORY
from localsage.host.cloud.session import CloudError


def ecr_image_uri(account: str, region: str, repository: str = DEFAULT_REPOSITORY, tag: str = "latest") -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repository}:{tag}"


def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker.errors.DockerException and connection errors
        raise CloudError(f"cannot reach the docker engine ({exc}); start docker or set DOCKER_HOST; "
                         "nothing was created") from exc
    return client


def ensure_repository(ecr, repository: str, out=print) -> str:
    """The repository URI; the repository is created (scan on push) when it does not exist."""
    try:
        repo = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        out(f"creating ECR repository {repository}")
        repo = ecr.create_repository(repositoryName=repository,
                                     imageScanningConfiguration={"scanOnPush": True})["repository"]
    return repo["repositoryUri"]


def ecr_login(ecr) -> tuple:
    """(username, password, registry) from ECR's authorization token."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return user, password, data["proxyEndpoint"]


def push(local_image: str, repository: str = DEFAULT_REPOSITORY, tags=("latest",), region: str | None = None,
         client=None, boto_session=None, out=print) -> list:
    """Tag local_image as <repo uri>:<tag> for each tag and push it to ECR; returns the pushed references."""
    boto_session = boto_session or session.aws_session(region)
    client = client or docker_client()
    import docker.errors

    try:
        image = client.images.get(local_image)
    except docker.errors.ImageNotFound as exc:
        raise CloudError(f"no local image {local_image!r}: build it first (make image); nothing was created") from exc
    ecr = boto_session.client("ecr")
    uri = ensure_repository(ecr, repository, out)
    user, password, registry = ecr_login(ecr)
    client.login(username=user, password=password, registry=registry)
    pushed = []
    for tag in tags:
        image.tag(uri, tag=tag)
        out(f"pushing {uri}:{tag}")
        last = {}
        for event in client.api.push(uri, tag=tag, stream=True, decode=True,
                                     auth_config={"username": user, "password": password}):
            if "error" in event:
                raise CloudError(f"push of {uri}:{tag} failed: {event['error']}")
            status = event.get("status")
            if status and event.get("id") and last.get(event["id"]) != status:
                last[event["id"]] = status
                out(f"  {event['id']}: {status}")
        pushed.append(f"{uri}:{tag}")
    return pushed
