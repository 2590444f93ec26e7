"""hack/node.sh import: containerd 1.6.20 may collect a snapshot an import is unpacking onto
(containerd/containerd#3787). That race cannot be produced on demand, so a `ctr` placed ahead of
the real one answers the first import with containerd's own error, then hands every call to the
real `ctr` and the node's real containerd."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.cluster import bin_dir
from testbed.node import RealNode, node_sh

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
RACE = (
    'ctr: failed to prepare extraction snapshot "extract-1-abcd sha256:b38d": '
    "parent snapshot sha256:74de does not exist: not found"
)


def _ctr_failing_first_import(directory: Path, message: str) -> Path:
    """A `ctr` that fails the first `images import` with `message` and counts every import."""
    real = shutil.which("ctr")
    assert real is not None
    directory.mkdir()
    wrapper = directory / "ctr"
    wrapper.write_text(
        "#!/bin/bash\n"
        'case " $* " in *" images import "*)\n'
        f'  echo import >>"{directory}/imports"\n'
        f'  if [ ! -e "{directory}/failed" ]; then touch "{directory}/failed"; echo {message!r} >&2; exit 1; fi ;;\n'
        "esac\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return directory


def _ctr(node: RealNode, *args: str) -> list[str]:
    return ["ctr", "--address", str(node.testbed_dir / "node" / "containerd.sock"), "--namespace", "k8s.io", *args]


def _in_containerd(node: RealNode, tag: str) -> bool:
    listing = subprocess.run(
        _ctr(node, "images", "ls", "-q"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tag in listing.split()


@pytest.fixture
def fresh_tag(real_node: RealNode, request: pytest.FixtureRequest) -> Iterator[str]:
    """A tag of the (tiny) pause image that the node's containerd has never imported."""
    tag = f"localhost/kompression-import-{request.node.name[-40:].replace('_', '-')}:test"
    subprocess.run(["buildah", "tag", PAUSE_IMAGE, tag], check=True, capture_output=True)
    yield tag
    subprocess.run(_ctr(real_node, "images", "rm", "--sync", tag), check=False, capture_output=True)
    subprocess.run(["buildah", "rmi", tag], check=False, capture_output=True)
    # node.sh's record of what it imported, beside the image store it outlives runs with.
    (bin_dir().parent / "node" / "containerd" / "imported" / tag.replace("/", "_").replace(":", "_")).unlink(
        missing_ok=True
    )


def test_an_import_that_loses_its_parent_snapshot_to_the_collector_is_imported_again(
    real_node: RealNode, fresh_tag: str, tmp_path: Path
) -> None:
    fake = _ctr_failing_first_import(tmp_path / "bin", RACE)

    imported = node_sh(real_node.testbed_dir, "import", fresh_tag, timeout=300, path_prefix=fake)

    assert imported.returncode == 0, imported.stderr
    assert "containerd#3787" in imported.stderr
    assert (fake / "imports").read_text().split() == ["import", "import"]
    assert _in_containerd(real_node, fresh_tag)


def test_any_other_import_failure_stops_at_once_and_names_the_image_and_containerds_error(
    real_node: RealNode, fresh_tag: str, tmp_path: Path
) -> None:
    fake = _ctr_failing_first_import(tmp_path / "bin", "ctr: unexpected EOF")

    imported = node_sh(real_node.testbed_dir, "import", fresh_tag, timeout=300, path_prefix=fake)

    assert imported.returncode == 1
    assert f"importing {fresh_tag} failed: ctr: unexpected EOF" in imported.stderr
    assert (fake / "imports").read_text().split() == ["import"]
    assert not _in_containerd(real_node, fresh_tag)
