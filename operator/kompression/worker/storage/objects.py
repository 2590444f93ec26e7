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

What a source holds is vetted before anything reads it (``source``, ``fetch``, ``download``):

- a folder in an object store is listed first, and every key must map to a path inside the
  destination (no ``..``, ``.`` or empty segments, nothing that resolves above it) before a byte is
  written; the copy then names every destination itself instead of letting fsspec derive them;
- a ``file://`` or ``pvc://`` source is read in place, so it must be a regular file, or a folder of
  regular files and folders only: a symbolic link (wherever it points), a fifo, a socket or a
  device anywhere in it is refused, and so is a link as the URI's last component. A downloaded
  folder is vetted the same way.

Both refusals raise ``UnsafeSource``: permanent, never retried; the worker reports it as a
ModelError or DataError for the field that named the URI.

A ``file://`` output prefix is confined: ``confine`` refuses a path whose symbolic links lead out
of the prefix, so that a symlinked ``runs/`` cannot make the publisher write or delete elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kompression.api.uris import ENV_PVC_ROOT, PVC_MOUNT_ROOT
from kompression.worker.errors import StorageError, StorageRefused, WorkerError
from kompression.worker.storage import s3
from kompression.worker.storage.retry import (
    BOTOCORE_ATTEMPTS,
    ObjectNotFound,
    WriteConflict,
    request_timeout,
    with_retries,
)

__all__ = ["ObjectNotFound", "StorageError", "StorageRefused", "UnsafeSource", "WriteConflict", "with_retries"]

CHECKSUM_SETTINGS = ("when_required", "when_supported")
CHUNK = 1 << 20
# A published file: read by anyone who may read the volume, written by its owner only.
PUBLISHED_FILE_MODE = 0o644
LOCK_FILE = ".publish.lock"
# The longest file name Linux file systems take (bytes); a longer key could never be written.
NAME_MAX = 255
ACCEPTED_ENTRIES = (
    "a model or data source may hold only regular files and folders: copy the file the link points to "
    "into its place (cp -L), and leave fifos, sockets and devices out"
)
ACCEPTED_KEYS = (
    "keys below the folder's prefix must be plain relative paths: no '..', '.' or empty segments, no NUL, "
    f"at most {NAME_MAX} bytes per name"
)


class UnsafeSource(StorageRefused):
    """A source holds what the worker will not (or cannot) read or copy: an object key that would land
    outside the destination, a symbolic link, a fifo or a device, a file its permissions keep from it. Permanent (a retry sees the same listing);
    callers turn it into ModelError or DataError for the field that named the URI."""


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


def _claim_mount(claim: str) -> Path:
    """Where a claim is mounted: under /mnt/pvc in the operator's Job, under $KOMPRESSION_PVC_ROOT locally."""
    return Path(os.environ.get(ENV_PVC_ROOT) or PVC_MOUNT_ROOT) / claim


def _claim_path(uri: str, rest: str) -> Path:
    claim, _, path = rest.partition("/")
    mount = _claim_mount(claim)
    if not claim or not mount.is_dir():
        raise StorageError(
            f"{uri}: the claim {claim!r} is not mounted at {mount}. In the operator's Job every claim that "
            f"spec.model, spec.data and spec.output name is mounted there; for a local run set {ENV_PVC_ROOT} "
            "to a folder that holds one sub-folder per claim"
        )
    mount = mount.resolve()
    target = (mount / path).resolve()
    if not target.is_relative_to(mount):
        raise UnsafeSource(
            f"{uri}: the path leaves the claim's volume ({target} is outside {mount}); a pvc:// path must stay "
            "inside its claim, without '..' or links that lead out of it"
        )
    return target


def _literal_path(uri: str) -> Path:
    """The local path a URI names, with its last component as written (not resolved), so that a
    link there is seen as a link."""
    scheme, _, rest = uri.rpartition("://")
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        return _claim_mount(claim) / path
    return Path.cwd() / (rest if scheme == "file" else uri)


def refuse_aliased_claim_path(uri: str) -> None:
    """Refuse a pvc:// URI whose path inside the claim passes through a symbolic link.

    The operator keeps one live job per output prefix by comparing the prefixes' spelling; it cannot
    see inside a claim, so a link there (alias -> real) would let pvc://c/alias/out and
    pvc://c/real/out publish to one folder side by side. The claim's mount point itself is the
    administrator's and may be anything."""
    scheme, _, rest = uri.partition("://")
    if scheme != "pvc":
        return
    claim, _, path = rest.partition("/")
    here = _claim_mount(claim)
    for part in (p for p in path.split("/") if p):
        here /= part
        if here.is_symlink():
            raise StorageRefused(
                f"{uri}: {here} is a symbolic link (to {os.readlink(here)}); a pvc:// output prefix must name "
                "its folder without links, so that no other spelling of it can reach the same folder. Name the "
                "folder the link points to instead"
            )


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


def check_key(uri: str, key: str) -> tuple[str, ...]:
    """The segments of an object key relative to a folder's prefix; UnsafeSource for a key that
    could name a path outside the destination, or none at all."""
    segments = tuple(key.split("/"))
    for segment in segments:
        if segment in ("", ".", "..") or "\0" in segment or len(segment.encode()) > NAME_MAX:
            raise UnsafeSource(f"{uri}: the object key {key!r} below this folder is refused; {ACCEPTED_KEYS}")
    return segments


def _folder_plan(uri: str, fs: Any, base: str, dest: Path) -> list[tuple[str, Path]]:
    """Every object below base paired with its local path under dest, all checked before any write."""
    root = dest.resolve()
    plan = []
    for found in fs.find(base):
        name = str(found)
        if not name.startswith(base + "/"):
            raise UnsafeSource(f"{uri}: the listing returned {name!r}, which is not below {base!r}; {ACCEPTED_KEYS}")
        key = name[len(base) + 1 :]
        if key.endswith("/"):  # a folder marker (an empty object some tools create): nothing to copy
            check_key(uri, key[:-1])
            continue
        local = dest.joinpath(*check_key(uri, key))
        if not local.resolve().is_relative_to(root):
            raise UnsafeSource(f"{uri}: the object key {key!r} would be written to {local.resolve()}, outside {root}")
        plan.append((name, local))
    return plan


def download(uri: str, dest: Path, sha256: str | None = None) -> Path:
    """Copy a file (or a folder, recursively) to dest; verify its sha256 when one is given.

    A folder's keys are all checked before anything is written (``check_key``); a local source is
    vetted for links and special files first (``vet_local``), and a downloaded folder after."""
    loc = parse_uri(uri)
    if loc.is_local:
        vet_local(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs = filesystem(loc.protocol)
    base = loc.path.rstrip("/")

    def fetch() -> None:
        if fs.isdir(base):
            plan = _folder_plan(uri, fs, base, dest)
            dest.mkdir(exist_ok=True)
            if plan:
                # Lists on both sides: fsspec copies to exactly these paths and derives none itself.
                fs.get([remote for remote, _ in plan], [str(local) for _, local in plan])
        elif fs.exists(base):
            fs.get(base, str(dest))
        else:
            raise FileNotFoundError(base)

    with_retries(uri, "download", fetch)
    if dest.is_dir():
        _vet_tree(uri, dest)
        if sha256 is not None:
            raise StorageError(f"{uri}: a sha256 names one file, and this URI is a folder")
    elif sha256 is not None:
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
                # mkstemp's 0600 would hide a published file from every other user of the volume (a
                # serving pod, the next job, its author): it gets what umask 022 gives a new file.
                os.fchmod(fd, PUBLISHED_FILE_MODE)
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


def read_bytes(uri: str, start: int | None = None, end: int | None = None) -> bytes:
    """The object's bytes, or only those from start to end (a ranged GET on object storage)."""
    loc = parse_uri(uri)
    fs = filesystem(loc.protocol)
    return with_retries(uri, "read", lambda: bytes(fs.cat_file(loc.path, start=start, end=end)))


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


def _refuse_entry(uri: str, where: Path, mode: int) -> None:
    if stat.S_ISLNK(mode):
        raise UnsafeSource(f"{uri}: {where} is a symbolic link (to {os.readlink(where)}); {ACCEPTED_ENTRIES}")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"
        raise UnsafeSource(f"{uri}: {where} is {kind}; {ACCEPTED_ENTRIES}")
    # Said here, by name: the readers behind would report an unreadable file as a malformed one.
    if not os.access(where, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0)):
        raise UnsafeSource(
            f"{uri}: {where} is not readable by the worker (uid {os.getuid()}, gid {os.getgid()}); make it "
            "readable to that user (chmod a+r, a+rx for folders), or give the pod a fsGroup that may read it"
        )


def _vet_tree(uri: str, root: Path) -> None:
    """Refuse a folder that holds, at any depth, anything but regular files and folders."""
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                _refuse_entry(uri, Path(entry.path), mode)
                if stat.S_ISDIR(mode):
                    folders.append(Path(entry.path))


def vet_local(uri: str) -> Path:
    """The path of a local (file:// or pvc://) source that is safe to read in place: a regular file,
    or a folder of regular files and folders, with no link as its last component. UnsafeSource
    otherwise, ObjectNotFound when it is not there."""
    loc = parse_uri(uri)
    literal = _literal_path(uri)

    def vet() -> Path:
        mode = os.lstat(literal).st_mode
        _refuse_entry(uri, literal, mode)
        if stat.S_ISDIR(mode):
            _vet_tree(uri, Path(loc.path))
        return Path(loc.path)

    return with_retries(uri, "check", vet)


def fetch(uri: str, folder: Path) -> Path:
    """A vetted local path for uri: a local source in place, any other downloaded under folder.
    The one way the worker reads a model, a data set or a task file (through ``source``)."""
    loc = parse_uri(uri)
    if loc.is_local:
        return vet_local(uri)
    name = loc.path.rstrip("/").rsplit("/", 1)[-1]
    # The URI's last name, unless it could step out of the per-URI folder (check_key covers the rest).
    safe = name if name not in ("", ".", "..") else "source"
    return download(uri, folder / hashlib.sha256(uri.encode()).hexdigest()[:16] / safe)


def source(uri: str, folder: Path, error: type[WorkerError], field: str, dest: Path | None = None) -> Path:
    """fetch (or, with dest, download to exactly dest) a model, data or task URI, a missing or
    refused source reported as the field's own error (ModelError, DataError): it is the author's to
    fix, not a storage fault to retry."""
    try:
        return fetch(uri, folder) if dest is None else download(uri, dest)
    except ObjectNotFound:
        raise error(f"{field}: {uri} does not exist") from None
    except UnsafeSource as exc:
        raise error(f"{field}: {exc.message}") from None


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
