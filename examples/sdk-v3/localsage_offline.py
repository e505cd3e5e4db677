"""SDK v3 ModelBuilder, offline: use an image that is already on this machine instead of pulling it.

ModelBuilder's local container mode (`Mode.LOCAL_CONTAINER`) always runs `docker pull IMAGE` first, in
`LocalContainerMode._pull_image`, with no switch to skip it; that method also creates the docker client the
rest of the mode uses. Offline, or with an image that exists only locally (`localsage:latest`, or an ECR URI
that `make push` tagged but nobody pushed), the pull fails and nothing starts.

    import localsage_offline  # noqa: F401  (copy this file beside your notebook; import it once)

changes exactly one thing: when the pull fails and the image is present locally, the local image is used and
one line is logged. A pull that succeeds, and an image that is missing everywhere, behave as before. It
changes nothing else in the SDK (no STS, IAM or S3 call is skipped: set `s3_model_data_url` and
`SAGEMAKER_VALIDATE_ROLE=false` for those, see the README). Works with sagemaker 3.x; it needs nothing from
localsage.
"""
import logging

import docker
from sagemaker.serve.mode import local_container_mode

_log = logging.getLogger("localsage_offline")
_pull = local_container_mode.LocalContainerMode._pull_image


def _pull_or_use_local(self, image: str):
    try:
        _pull(self, image)
    except Exception as exc:  # the SDK wraps docker's errors in ValueError/RuntimeError
        client = self.client or local_container_mode._get_docker_client()
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise exc from None
        self.client = client
        _log.warning("docker pull %s failed (%s); using the local image", image, str(exc).splitlines()[0])


local_container_mode.LocalContainerMode._pull_image = _pull_or_use_local
