"""An Azure Blob Storage server on loopback: Azurite's blob service, run as a separate process.

Azurite is Microsoft's storage emulator (the npm package `azurite`, installed into the test bed
cache by hack/build-testbed.sh). adlfs reaches it through AZURE_STORAGE_CONNECTION_STRING with
Azurite's well-known development account, so az:// round trips go over real HTTP with real
SharedKey signatures.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from .cluster import BUILD_HINT, bin_dir
from .procs import LOOPBACK, LoopbackServer, TestbedError, serve

# The development account every Azurite accepts (documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_blob_binary() -> Path:
    exe = bin_dir().parent / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if not exe.exists():
        raise TestbedError(f"azurite-blob not found at {exe}; {BUILD_HINT}")
    return exe


class AzuriteServer(LoopbackServer):
    """Connection string and container helpers for one running Azurite blob service."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(port)
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}/{ACCOUNT}"
        self._start(
            "azurite",
            [
                str(azurite_blob_binary()),
                "--blobHost",
                LOOPBACK,
                "--blobPort",
                str(self.port),
                "--inMemoryPersistence",
                # The Azure SDK may be newer than the emulator; the REST calls we use are old.
                "--skipApiVersionCheck",
                "--silent",
            ],
            workdir,
            timeout=60,
            cwd=workdir,
        )

    def _responds(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint_url}?comp=list", timeout=2).close()
        except urllib.error.HTTPError as exc:  # unsigned request: 403 means it is up and checking
            return exc.code == 403
        return True

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint_url};"
        )

    @property
    def env(self) -> dict[str, str]:
        """Variables that point adlfs (and Azure's client libraries) at this server."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def create_container(self, prefix: str = "container") -> str:
        """A new container with a unique name, so tests never see each other's blobs."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        with self.client() as service:
            service.create_container(name)
        return name


def main() -> None:
    """`make -f Makefile.testbed azurite`: run a server in the foreground until Ctrl-C."""
    port = int(os.environ.get("AZURITE_PORT", "0")) or None
    workdir = Path(os.environ.get("TESTBED_DIR", ".testbed")) / "azurite"
    server = AzuriteServer(workdir, port)
    serve(
        server,
        f"Azurite blob endpoint {server.endpoint_url}: "
        f"export AZURE_STORAGE_CONNECTION_STRING='{server.connection_string}'",
    )


if __name__ == "__main__":
    main()
