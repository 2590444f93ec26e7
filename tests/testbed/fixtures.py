"""pytest fixtures for the real local test bed (registered by tests/conftest.py).

Session-scoped servers, started lazily on first use:
  kube        -> Kube        (cluster; or the one at $KOMPRESSION_TEST_KUBECONFIG)
  namespace   -> str         (function scope: a fresh namespace, deleted afterwards)
  s3          -> S3Server    (moto_server on loopback)
  gcs         -> GcsServer   (fake-gcs-server on loopback)
  azurite     -> AzuriteServer (Azurite's blob service on loopback)
  prometheus  -> Prometheus  (call it: prometheus(scrape_targets=[...]))
  pushgateway -> Pushgateway
  helm        -> Helm        (runs against the kube fixture's cluster)
  kueue       -> KueueManager (Kueue's manager against the kube fixture's cluster; enroll(ns))
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import pytest

from .cluster import Cluster
from .helm import Helm
from .prom import Prometheus, Pushgateway

if TYPE_CHECKING:  # the kubernetes and boto3 imports cost a second; only pay when used
    from .azurite import AzuriteServer
    from .gcs import GcsServer
    from .kube import Kube
    from .kueue import KueueManager
    from .s3 import S3Server

KUBECONFIG_ENV = "KOMPRESSION_TEST_KUBECONFIG"


class _Server(Protocol):
    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


def _until_session_end(server: ServerT) -> Iterator[ServerT]:
    """A session fixture's body for a server that is up once built: yield it, stop it afterwards."""
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    from .kube import Kube

    existing = os.environ.get(KUBECONFIG_ENV)
    cluster: Cluster | None = None
    if existing:
        kubeconfig = Path(existing).resolve()
    else:
        # A private cluster per session, so a developer's `make cluster` is never disturbed.
        cluster = Cluster(tmp_path_factory.mktemp("testbed"))
        cluster.up()
        kubeconfig = cluster.kubeconfig
    handle = Kube(kubeconfig)
    try:
        yield handle
    finally:
        handle.close()
        if cluster is not None:
            cluster.down(quiet=True)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = kube.create_namespace()
    yield name
    kube.delete_namespace(name)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    from .s3 import S3Server

    yield from _until_session_end(S3Server(tmp_path_factory.mktemp("s3")))


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    from .gcs import GcsServer

    yield from _until_session_end(GcsServer(tmp_path_factory.mktemp("gcs")))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    from .azurite import AzuriteServer

    yield from _until_session_end(AzuriteServer(tmp_path_factory.mktemp("azurite")))


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    yield from _until_session_end(Prometheus(tmp_path_factory.mktemp("prometheus")))


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    yield from _until_session_end(Pushgateway(tmp_path_factory.mktemp("pushgateway")))


@pytest.fixture(scope="session")
def helm(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(kube.kubeconfig, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def kueue(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueManager]:
    from .kueue import KueueManager

    yield from _until_session_end(KueueManager(kube, tmp_path_factory.mktemp("kueue")))
