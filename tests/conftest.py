"""Shared, session-scoped fixtures: demo data and one trained job reused by many tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localsage.container.demo_images import make_demo_data
from localsage.host import runner

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("IMAGE", "localsage:latest")
REQUIRED = os.environ.get("LOCALSAGE_REQUIRE_DOCKER") == "1"

# A recipe that reaches >= 0.9 valid accuracy on the demo set in well under 2 minutes on 2 cores.
FAST_HP = {
    "arch": "resnet18", "weights": "none", "image-size": "64", "epochs": "6", "batch-size": "32",
    "lr": "0.003", "workers": "1", "seed": "0",
}
# For tests that only need the plumbing, not accuracy.
TINY_HP = {**FAST_HP, "image-size": "32", "epochs": "1", "max-steps": "2", "batch-size": "8", "debug": "false"}


# The fast lane (`make test-fast`, `-m "not integration"`) is chosen by declaration: a test that trains
# through the runner, starts TorchServe, a container or a database carries `pytest.mark.integration` (its own,
# or its module's `pytestmark`). These fixtures give such work away; a test that uses one, or a docker/slow
# mark, without declaring itself integration fails the collection instead of slowing the fast lane.
HEAVY_FIXTURES = {"trained_job", "engine", "image", "server", "model_dir", "served_model_dir", "mar", "postgres",
                  "predict_url", "test_images", "small_data", "demo_data", "jobs_dir", "models"}


def pytest_collection_modifyitems(config, items):
    undeclared = [item.nodeid for item in items if not item.get_closest_marker("integration") and (
        HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        or any(item.get_closest_marker(m) for m in ("docker", "slow")))]
    if undeclared:
        raise pytest.UsageError("these tests use a job, server, image, container or database fixture (or a docker/slow "
                                "mark) but are not marked integration, so the fast lane would run them:\n  "
                                + "\n  ".join(undeclared))


def pytest_configure(config):
    # the decoded-image cache of every job the tests start (process backend) goes to a folder of this run
    import tempfile

    config._localsage_cache = tempfile.mkdtemp(prefix="localsage-test-cache-")
    os.environ["LOCALSAGE_CACHE_DIR"] = config._localsage_cache
    # MLflow tracking (on by default for users) is off for the suite's hundreds of jobs; tests/test_tracking.py
    # turns it on where it is the subject, the embedded default store included
    os.environ["LOCALSAGE_TRACKING"] = "off"


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(getattr(config, "_localsage_cache", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts_dir():
    path = Path(os.environ.get("LOCALSAGE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    return make_demo_data(tmp_path_factory.mktemp("demo") / "demo", classes=6, per_class=60, size=96, seed=0)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """Two classes, a few images: for plumbing tests."""
    return make_demo_data(tmp_path_factory.mktemp("small") / "small", classes=2, per_class=10, size=40, seed=1)


@pytest.fixture(scope="session")
def jobs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="session")
def trained_job(demo_data, jobs_dir):
    """One real training job on the demo data through the runner (process backend)."""
    record = runner.train(demo_data, FAST_HP, name="trained-demo", jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    return record


def python_entry(*args):
    return [sys.executable, "-m", *args]


# ---------------------------------------------------------------- docker (engine + project image)

def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"LOCALSAGE_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine():
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, engine down
        _unavailable(f"no docker engine: {type(exc).__name__}: {exc}")
    before = {c.id for c in client.containers.list(all=True)}
    yield client
    # the SDK's local mode stops its containers on delete_endpoint / after a job but does not remove them
    for c in client.containers.list(all=True, filters={"status": "exited"}):
        if c.id not in before:
            c.remove()


@pytest.fixture(scope="session")
def image(engine):
    """Build (or confirm) the project image once per session."""
    proc = subprocess.run(["make", "-f", ".ci/docker.mk", "image", f"IMAGE={IMAGE}", f"DOCKER_PYTHON={sys.executable}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        pytest.fail(f"make image failed:\n{proc.stdout[-4000:]}")
    engine.images.get(IMAGE)
    return IMAGE
