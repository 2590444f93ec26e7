"""A Google Cloud Storage server on loopback: fake-gcs-server, run as a separate process.

fake-gcs-server answers the GCS JSON and upload APIs that gcsfs speaks, so a gs:// round trip
goes over real HTTP. It is built from its Go module by hack/build-testbed.sh; gcsfs finds it
through STORAGE_EMULATOR_HOST and needs no credentials for it.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

from .cluster import binary
from .procs import LOOPBACK, LoopbackServer, serve


class GcsServer(LoopbackServer):
    """Endpoint and bucket helpers for one running fake-gcs-server (in-memory backend)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(port)
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self._start(
            "fake-gcs-server",
            [
                str(binary("fake-gcs-server")),
                "-backend=memory",
                "-scheme=http",
                f"-host={LOOPBACK}",
                f"-port={self.port}",
                # Resumable uploads redirect here; the default names a host that may not resolve.
                f"-external-url={self.endpoint_url}",
                f"-public-host={LOOPBACK}:{self.port}",
                "-log-level=warn",
            ],
            workdir,
        )

    def _responds(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint_url}/storage/v1/b", timeout=2) as r:
            return bool(r.status == 200)

    @property
    def env(self) -> dict[str, str]:
        """Variables that point gcsfs (and Google's client libraries) at this server."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint_url}

    def create_bucket(self, prefix: str = "bucket") -> str:
        """A new bucket with a unique name, so tests never see each other's objects."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        req = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(req, timeout=5).close()
        return name


def main() -> None:
    """`make -f Makefile.testbed gcs`: run a server in the foreground until Ctrl-C."""
    port = int(os.environ.get("GCS_PORT", "0")) or None
    workdir = Path(os.environ.get("TESTBED_DIR", ".testbed")) / "gcs"
    server = GcsServer(workdir, port)
    serve(
        server,
        f"GCS endpoint {server.endpoint_url}: export STORAGE_EMULATOR_HOST={server.endpoint_url}; Ctrl-C stops it",
    )


if __name__ == "__main__":
    main()
