"""Shared test fixtures: one loopback S3 server and one local Ray instance per session, shared data paths."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest

from cion_dist.loopback_s3 import free_port  # noqa: F401 - tests import it from here

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CION_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Credentials for the loopback server only; set before anything (Ray workers included) reads them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# never join a developer's `cion up` cluster from a test; tests that want one start their own
os.environ["CION_CLUSTER_FILE"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"cion-test-cluster-{os.getpid()}.json")


logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto's threaded server) on 127.0.0.1, exported through AWS_ENDPOINT_URL."""
    from cion_dist.loopback_s3 import loopback_s3

    with loopback_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh bucket on the loopback server; returns ``s3://<bucket>``."""
    import s3fs

    name = f"t-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def _ray_session(s3_endpoint):
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """The session's local Ray instance (4 logical CPUs); started on first use, restarted if a test shut it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    return ray
