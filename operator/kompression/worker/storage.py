"""One storage layer for every URI a job names: s3://, gs://, az://, pvc://, file:// and plain paths.

Built on fsspec. Credentials come from the environment (the operator turns the job's Secret into
environment variables), never from the manifest.

- ``s3://bucket/key``: s3fs. Endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO
  and other S3-compatibles), region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, keys from
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or the usual botocore chain). boto3 >= 1.36
  adds checksums to every request by default, which several S3-compatible servers reject; we
  default both ``request_checksum_calculation`` and ``response_checksum_validation`` to
  ``when_required`` and honour botocore's own ``AWS_REQUEST_CHECKSUM_CALCULATION`` /
  ``AWS_RESPONSE_CHECKSUM_VALIDATION`` variables (``when_supported`` turns them on).
- ``gs://``: gcsfs. Credentials from Workload Identity or ``GOOGLE_APPLICATION_CREDENTIALS``;
  ``STORAGE_EMULATOR_HOST`` points it at an emulator (fake-gcs-server) without credentials.
- ``az://CONTAINER/PATH``: adlfs. ``AZURE_STORAGE_CONNECTION_STRING``, or
  ``AZURE_STORAGE_ACCOUNT_NAME`` with ``AZURE_STORAGE_ACCOUNT_KEY`` (adlfs reads them itself).
- ``pvc://CLAIM/PATH``: a local path under the claim's mount, ``/mnt/pvc/CLAIM/PATH`` in the
  operator's Job (it mounts the claim there); ``KOMPRESSION_PVC_ROOT`` moves the root for local runs.
- ``file://relative/path`` is relative to the working directory, ``file:///abs/path`` absolute;
  a URI without a scheme is a local path.

Every write computes a sha256; downloads verify one when the caller knows it. Failures are
classified and retried by ``storage_retry``: transient ones within a bounded, jittered budget,
permanent ones (missing, denied, invalid) answered at once. S3 uploads and conditional writes go
through botocore directly (``s3``), so that a multipart upload is aborted on every failure path.

A ``file://`` output prefix is confined: ``confine`` refuses a path whose symbolic links lead out
of the prefix, so that a symlinked ``runs/`` cannot make the publisher write or delete elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kompression.api.uris import ENV_PVC_ROOT, PVC_MOUNT_ROOT
from kompression.worker import s3
from kompression.worker.errors import StorageError, StorageRefused
from kompression.worker.storage_retry import (
    BOTOCORE_ATTEMPTS,
    ObjectNotFound,
    WriteConflict,
    request_timeout,
    with_retries,
)

__all__ = ["ObjectNotFound", "StorageError", "StorageRefused", "WriteConflict", "with_retries"]

CHECKSUM_SETTINGS = ("when_required", "when_supported")
CHUNK = 1 << 20
LOCK_FILE = ".publish.lock"


@dataclass(frozen=True)
class Location:
    """A parsed URI: the fsspec protocol and the path that protocol's filesystem understands."""

    uri: str
    protocol: str  # "s3", "gs", "az" or "file" (pvc:// is a file under the claim's mount)
    path: str

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"


def parse_uri(uri: str) -> Location:
    """Split a URI into protocol and path; local paths come back absolute."""
    if "://" not in uri:
        return Location(uri, "file", str(Path(uri).resolve()))
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        # file:///abs keeps its leading slash; file://rel/path is relative to the working directory.
        return Location(uri, "file", str(Path(rest).resolve()))
    if scheme in ("s3", "gs", "az"):
        if not rest or rest.startswith("/"):
            raise StorageError(f"{uri}: expected {scheme}://BUCKET/PATH")
        return Location(uri, scheme, rest)
    if scheme == "pvc":
        return Location(uri, "file", str(_claim_path(uri, rest)))
    raise StorageError(
        f"{uri}: the worker reads and writes s3://, gs://, az://, pvc://, file:// and local paths, not {scheme}://"
    )


def _claim_path(uri: str, rest: str) -> Path:
    claim, _, path = rest.partition("/")
    root = Path(os.environ.get(ENV_PVC_ROOT) or PVC_MOUNT_ROOT)
    mount = root / claim
    if not claim or not mount.is_dir():
        raise StorageError(
            f"{uri}: the claim {claim!r} is not mounted at {mount}. In the operator's Job every claim that "
            f"spec.model, spec.data and spec.output name is mounted there; for a local run set {ENV_PVC_ROOT} "
            "to a folder that holds one sub-folder per claim"
        )
    mount = mount.resolve()
    target = (mount / path).resolve()
    if not target.is_relative_to(mount):
        raise StorageError(f"{uri}: the path leaves the claim's volume ({target} is outside {mount})")
    return target


def join(prefix: str, *parts: str) -> str:
    """Append path parts to a URI prefix with exactly one slash between them."""
    out = prefix.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def _checksum_setting(env: str) -> str:
    value = os.environ.get(env, "when_required").strip().lower()
    if value not in CHECKSUM_SETTINGS:
        raise StorageError(f"{env}={value!r}: expected one of {', '.join(CHECKSUM_SETTINGS)}")
    return value


def s3_options() -> dict[str, Any]:
    """s3fs constructor arguments from the environment (exposed for tests and diagnostics)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    config: dict[str, Any] = {
        "request_checksum_calculation": _checksum_setting("AWS_REQUEST_CHECKSUM_CALCULATION"),
        "response_checksum_validation": _checksum_setting("AWS_RESPONSE_CHECKSUM_VALIDATION"),
        "connect_timeout": min(10.0, request_timeout()),
        "read_timeout": request_timeout(),
        # botocore's standard mode retries each request a few times with jitter; the budget in
        # storage_retry bounds the whole operation on top of it.
        "retries": {"max_attempts": BOTOCORE_ATTEMPTS, "mode": "standard"},
    }
    if endpoint:
        config["s3"] = {"addressing_style": "path"}
    options: dict[str, Any] = {
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": region} if region else {},
        "config_kwargs": config,
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        options.update(key=key, secret=secret, token=os.environ.get("AWS_SESSION_TOKEN"))
    return options


def _cloud_options(protocol: str) -> dict[str, Any]:
    """gcsfs and adlfs constructor arguments; both read their credentials from the environment."""
    options: dict[str, Any] = {"use_listings_cache": False}
    if protocol == "gs" and os.environ.get("STORAGE_EMULATOR_HOST"):
        # An emulator takes no credentials; without this gcsfs would probe for Google's metadata server.
        options["token"] = "anon"
    return options


def filesystem(protocol: str) -> Any:
    """The fsspec filesystem for a protocol, configured from the environment."""
    import fsspec  # fsspec and its backends: only when storage is touched

    if protocol == "file":
        return fsspec.filesystem("file", auto_mkdir=True)
    if protocol == "s3":
        return fsspec.filesystem("s3", **s3_options())
    package = {"gs": "gcsfs", "az": "adlfs"}[protocol]
    try:
        if protocol == "gs":
            # gcsfs's default class first asks each bucket's type over gRPC (experimental zonal
            # buckets) and waits a minute where that endpoint does not answer; the JSON API class
            # serves every standard bucket without it.
            from gcsfs.core import GCSFileSystem  # optional: gs:// only

            return GCSFileSystem(skip_instance_cache=True, **_cloud_options(protocol))
        return fsspec.filesystem(protocol, skip_instance_cache=True, **_cloud_options(protocol))
    except ImportError:
        raise StorageError(
            f"{protocol}:// storage needs the optional package {package}, which this worker image lacks; "
            f"install it (pip install {package}) or use s3:// or file://"
        ) from None


# --------------------------------------------------------------------------------------------
# operations


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(uri: str, dest: Path, sha256: str | None = None) -> Path:
    """Copy a file (or a folder, recursively) to dest; verify its sha256 when one is given."""
    loc = parse_uri(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs = filesystem(loc.protocol)

    def fetch() -> None:
        if fs.isdir(loc.path):
            fs.get(loc.path.rstrip("/") + "/", str(dest), recursive=True)
        elif fs.exists(loc.path):
            fs.get(loc.path, str(dest))
        else:
            raise FileNotFoundError(loc.path)

    with_retries(uri, "download", fetch)
    if sha256 is not None and dest.is_file():
        actual = sha256_file(dest)
        if actual != sha256:
            raise StorageError(f"{uri}: sha256 mismatch after download: expected {sha256}, got {actual}")
    return dest


def upload(src: Path, uri: str) -> str:
    """Write a local file to uri and return its sha256. Local targets are written atomically
    (temporary file, then rename); an S3/GCS/Azure PUT is atomic by itself."""
    digest = sha256_file(src)
    loc = parse_uri(uri)
    if loc.is_local:
        target = Path(loc.path)

        def copy_local() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, src.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(CHUNK), b""):
                        out.write(chunk)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

        with_retries(uri, "write", copy_local)
        return digest
    if loc.protocol == "s3":
        s3.put_file(s3.client(s3_options()), uri, loc.path, src)
        return digest
    fs = filesystem(loc.protocol)
    with_retries(uri, "upload", lambda: fs.put_file(str(src), loc.path))
    return digest


def write_bytes(data: bytes, uri: str) -> str:
    """Write bytes to uri (atomically, see upload) and return their sha256."""
    with tempfile.TemporaryDirectory(prefix="kompression-") as tmp:
        path = Path(tmp) / "blob"
        path.write_bytes(data)
        return upload(path, uri)


def read_bytes(uri: str) -> bytes:
    loc = parse_uri(uri)
    fs = filesystem(loc.protocol)
    return with_retries(uri, "read", lambda: bytes(fs.cat_file(loc.path)))


def exists(uri: str) -> bool:
    loc = parse_uri(uri)
    fs = filesystem(loc.protocol)
    return bool(with_retries(uri, "check", lambda: fs.exists(loc.path)))


def list_files(prefix: str) -> list[str]:
    """Every file below a prefix, as paths relative to it (empty when the prefix does not exist)."""
    loc = parse_uri(prefix)
    fs = filesystem(loc.protocol)
    base = loc.path.rstrip("/")

    def find() -> list[str]:
        if not fs.exists(base):
            return []
        return [str(p)[len(base) :].lstrip("/") for p in fs.find(base)]

    return sorted(with_retries(prefix, "list", find))


def remove(uri: str) -> None:
    """Delete a file or a folder; deleting nothing is fine (rerun cleanup is idempotent)."""
    loc = parse_uri(uri)
    fs = filesystem(loc.protocol)

    def rm() -> None:
        if fs.exists(loc.path):
            fs.rm(loc.path, recursive=True)

    with contextlib.suppress(ObjectNotFound):
        with_retries(uri, "delete", rm)


@contextlib.contextmanager
def local_copy(uri: str, workdir: Path, sha256: str | None = None) -> Iterator[Path]:
    """A local path for uri: the file itself when local, else a downloaded copy under workdir."""
    loc = parse_uri(uri)
    if loc.is_local:
        path = Path(loc.path)
        if not path.exists():
            raise ObjectNotFound(f"{uri}: not found (no such file {path})")
        if sha256 is not None and path.is_file() and sha256_file(path) != sha256:
            raise StorageError(f"{uri}: sha256 mismatch: expected {sha256}")
        yield path
        return
    dest = workdir / "downloads" / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(loc.path).name
    yield download(uri, dest, sha256)


# --------------------------------------------------------------------------------------------
# what the publisher needs: confinement, a lock, and compare-and-swap writes


def confine(prefix: str, uri: str) -> None:
    """Refuse a local uri whose real location (after symbolic links) is outside the prefix's.

    Only file:// can have links; object stores have none. Checked before the publisher writes
    or deletes, so a link planted under the prefix (``runs -> /etc``) is named, not followed."""
    base, target = parse_uri(prefix), parse_uri(uri)
    if not (base.is_local and target.is_local):
        return
    real_base = Path(base.path).resolve()
    real = Path(target.path).resolve()
    if real != real_base and real_base not in real.parents:
        raise StorageRefused(
            f"{uri}: a symbolic link under the output prefix leads to {real}, outside {real_base}; "
            "the worker writes and deletes only inside the prefix. Remove the link or choose another prefix"
        )


@contextlib.contextmanager
def publish_lock(prefix: str) -> Iterator[None]:
    """Serialize publishers of one local prefix (an advisory flock on <prefix>/.publish.lock).

    Object stores get no lock: their manifest writes are conditional instead (write_if)."""
    loc = parse_uri(prefix)
    if not loc.is_local:
        yield
        return
    folder = Path(loc.path)
    folder.mkdir(parents=True, exist_ok=True)
    confine(prefix, str(folder / LOCK_FILE))
    with (folder / LOCK_FILE).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_versioned(uri: str) -> tuple[bytes, str | None]:
    """An object's bytes and a version to make a later write_if conditional on (None: the store
    offers none). ObjectNotFound when there is no object."""
    loc = parse_uri(uri)
    if loc.protocol == "s3":
        return s3.get_versioned(s3.client(s3_options()), uri, loc.path)
    data = read_bytes(uri)
    return data, hashlib.sha256(data).hexdigest() if loc.is_local else None


def write_if(data: bytes, uri: str, version: str | None, exists: bool) -> str:
    """Write data to uri only if the object is still at version (exists=False: only if absent).

    S3 sends If-Match / If-None-Match; a local write must run under publish_lock, where the
    comparison is exact. Other stores write unconditionally. Raises WriteConflict on a lost race.
    """
    loc = parse_uri(uri)
    if loc.protocol == "s3":
        s3.put_bytes_if(s3.client(s3_options()), uri, loc.path, data, version if exists else None)
        return hashlib.sha256(data).hexdigest()
    if loc.is_local:
        path = Path(loc.path)
        current = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        if (current is not None) != exists or (exists and current != version):
            raise WriteConflict(f"{uri}: changed by another publisher since it was read")
    return write_bytes(data, uri)
