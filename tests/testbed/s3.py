"""An S3-compatible server on loopback: moto's standalone server, run as a separate process.

A separate process (not moto's in-process mock) means boto3 really speaks HTTP to it, exactly
as the operator and workers will, and a test's own `mock_aws` cannot intercept the traffic.
"""

from __future__ import annotations

import os
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from .procs import LOOPBACK, LoopbackServer, TestbedError, serve

ACCESS_KEY = "kompression-test"
SECRET_KEY = "kompression-test-secret"
REGION = "us-east-1"


def moto_server_binary() -> Path:
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        raise TestbedError(f"moto_server not found next to {sys.executable}; install moto[server]")
    return exe


class S3Server(LoopbackServer):
    """Endpoint, credentials and a boto3 client for one running moto server."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(port)
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self._start("moto_server", [str(moto_server_binary()), "-H", LOOPBACK, "-p", str(self.port)], workdir)
        self.client = self.make_client()

    def _responds(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=2) as r:
            return bool(r.status == 200)

    @property
    def env(self) -> dict[str, str]:
        """Variables that point any AWS SDK (or our worker) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def make_client(self, **config: Any) -> Any:
        """A boto3 S3 client; pass e.g. request_checksum_calculation="when_required" to vary it."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def create_bucket(self, prefix: str = "bucket") -> str:
        """A new bucket with a unique name, so tests never see each other's objects."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client.create_bucket(Bucket=name)
        return name

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=5).close()

    def set_auth(self, free_actions: str) -> None:
        """moto accepts any key until its authentication counter runs out: "0" enforces
        authentication, "inf" disables it again (moto's reset-auth API)."""
        req = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            method="POST",
            data=free_actions.encode(),
            headers={"Content-Type": "text/plain"},
        )  # a form type would hide the body
        urllib.request.urlopen(req, timeout=5).close()


def main() -> None:
    """`make -f Makefile.testbed s3`: run a server in the foreground until Ctrl-C."""
    port = int(os.environ.get("S3_PORT", "0")) or None
    workdir = Path(os.environ.get("TESTBED_DIR", ".testbed")) / "s3"
    server = S3Server(workdir, port)
    serve(
        server,
        f"S3 endpoint {server.endpoint_url} access_key={server.access_key} "
        f"secret_key={server.secret_key} region={server.region}; Ctrl-C stops it",
    )


if __name__ == "__main__":
    main()
