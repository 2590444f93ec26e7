"""Hostile sources, built for real: object keys that leave the folder's prefix on the moto S3
server, links, fifos and links-as-the-URI in file:// and pvc:// sources. Each is refused before
anything is written or read, as ModelError (exit 3) for spec.model and DataError (exit 4) for
spec.data, naming the entry; nothing lands outside the destination and nothing is published."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from encoder_helpers import SENTENCES, encoder_inputs, save_tiny_bert
from factories import job, npz, save_tiny, write_job
from kompression.api.constants import ExitCode
from kompression.cli import main
from kompression.worker.data.arrays import digits
from kompression.worker.errors import DataError, ModelError, StorageRefused
from kompression.worker.storage import objects, retry

pytestmark = pytest.mark.timeout(300)

# Enough ".." to climb out of any temporary folder, then back down into an absolute path.
CLIMB = "../" * 40


@pytest.fixture
def s3env(s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(retry.ENV_RETRY_SECONDS, "20")  # a misclassified refusal would spin this long
    return s3


def _escaping_key(prefix: str, outside: Path) -> str:
    """An object key below prefix that, joined onto any local folder, names outside/escaped."""
    return f"{prefix}/{CLIMB}{str(outside).lstrip('/')}/escaped"


# --------------------------------------------------------------------------------------------
# object keys


def test_a_key_that_leaves_the_prefix_is_refused_before_anything_is_written(s3env: Any, tmp_path: Path) -> None:
    bucket = s3env.create_bucket()
    outside = tmp_path / "outside"
    outside.mkdir()
    s3env.client.put_object(Bucket=bucket, Key="model/config.json", Body=b"{}")
    s3env.client.put_object(Bucket=bucket, Key=_escaping_key("model", outside), Body=b"planted")
    dest = tmp_path / "downloads" / "model"
    with pytest.raises(objects.UnsafeSource, match=r"object key '\.\./\.\./.*escaped' below this folder is refused"):
        objects.download(f"s3://{bucket}/model", dest)
    assert list(outside.iterdir()) == []
    assert not dest.exists()  # not even the harmless config.json: the check runs before any write


@pytest.mark.parametrize(
    "key",
    ["model/a//b.json", "model/./b.json", "model/sub/../b.json", "model/" + "n" * 256],
    ids=["empty-segment", "dot", "dot-dot-inside", "name-too-long"],
)
def test_keys_that_are_not_plain_relative_paths_are_refused(s3env: Any, tmp_path: Path, key: str) -> None:
    bucket = s3env.create_bucket()
    s3env.client.put_object(Bucket=bucket, Key=key, Body=b"x")
    with pytest.raises(objects.UnsafeSource, match=r"no '\.\.', '\.' or empty segments"):
        objects.download(f"s3://{bucket}/model", tmp_path / "dl")
    assert not (tmp_path / "dl").exists()


def test_a_folder_of_plain_keys_and_folder_markers_downloads(s3env: Any, tmp_path: Path) -> None:
    bucket = s3env.create_bucket()
    for key in ("model/config.json", "model/sub/", "model/sub/weights.bin", "model/..hidden"):
        s3env.client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    dest = objects.download(f"s3://{bucket}/model", tmp_path / "dl")
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["..hidden", "config.json", "sub/weights.bin"]
    assert (dest / "sub" / "weights.bin").read_bytes() == b"model/sub/weights.bin"


def test_fsspecs_own_refusal_is_permanent_not_retried(s3env: Any, tmp_path: Path) -> None:
    """fsspec >= 2026.9 refuses such a copy itself (a ValueError); it must fail at the first attempt
    (exit 9), never be retried for the whole budget as a transient fault and end in exit 5."""
    bucket = s3env.create_bucket()
    outside = tmp_path / "outside"
    outside.mkdir()
    s3env.client.put_object(Bucket=bucket, Key=_escaping_key("model", outside), Body=b"planted")
    fs = objects.filesystem("s3")
    attempts = []

    def recursive_get() -> None:
        attempts.append(1)
        fs.get(f"{bucket}/model/", str(tmp_path / "dl"), recursive=True)

    with pytest.raises(StorageRefused, match=r"outside the destination") as caught:
        retry.with_retries(f"s3://{bucket}/model", "download", recursive_get)
    assert caught.value.exit_code == ExitCode.STORAGE_REFUSED and attempts == [1]
    assert list(outside.iterdir()) == []


def test_kompression_run_refuses_a_model_folder_whose_key_leaves_it(
    s3env: Any, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3env.create_bucket()
    bert = save_tiny_bert(workdir / "bert")
    for path in sorted(p for p in bert.rglob("*") if p.is_file()):
        objects.upload(path, f"s3://{bucket}/bert/{path.relative_to(bert).as_posix()}")
    outside = workdir / "outside"
    outside.mkdir()
    s3env.client.put_object(Bucket=bucket, Key=_escaping_key("bert", outside), Body=b"planted")
    jsonl = workdir / "sentences.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    body = job(
        f"s3://{bucket}/bert",
        f"s3://{bucket}/out/",
        steps=[{"name": "export", "onnx": {}}],
        data={"evaluation": {"uri": f"file://{jsonl}", "metric": "CosineSimilarity", "maxLength": 16}},
    )
    body["spec"]["model"] = {"uri": f"s3://{bucket}/bert", "format": "HuggingFace", "inputs": encoder_inputs(16)}
    assert main(["run", str(write_job(workdir / "job.yaml", body)), "--progress", "json"]) == ExitCode.MODEL_ERROR
    err = capsys.readouterr().err
    assert "spec.model.uri" in err and "escaped' below this folder is refused" in err
    assert list(outside.iterdir()) == []
    assert objects.list_files(f"s3://{bucket}/out/") == []


def test_kompression_run_refuses_a_data_folder_whose_key_leaves_it(
    s3env: Any, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3env.create_bucket()
    objects.upload(save_tiny(workdir / "model.pt2"), f"s3://{bucket}/tiny/model.pt2")
    outside = workdir / "outside"
    outside.mkdir()
    s3env.client.put_object(Bucket=bucket, Key="data/val.npz", Body=b"unused")
    s3env.client.put_object(Bucket=bucket, Key=_escaping_key("data", outside), Body=b"planted")
    body = job(
        f"s3://{bucket}/tiny/model.pt2",
        f"s3://{bucket}/out/",
        data={"evaluation": {"uri": f"s3://{bucket}/data", "metric": "Top1Accuracy"}},
    )
    assert main(["run", str(write_job(workdir / "job.yaml", body)), "--progress", "json"]) == ExitCode.DATA_ERROR
    assert "spec.data" in capsys.readouterr().err
    assert list(outside.iterdir()) == []
    assert objects.list_files(f"s3://{bucket}/out/") == []


def test_the_llm_paths_fetch_applies_the_same_check(s3env: Any, tmp_path: Path) -> None:
    """objects.source, through which the LLM runner and its task files fetch, is the same path, and
    reports the refusal as the field's own error (exit 4 for a task file, never a storage fault)."""
    bucket = s3env.create_bucket()
    outside = tmp_path / "outside"
    outside.mkdir()
    s3env.client.put_object(Bucket=bucket, Key=_escaping_key("tasks", outside), Body=b"planted")
    with pytest.raises(DataError, match=r"spec\.data\.tasks\[0\]: .*object key .* is refused"):
        objects.source(f"s3://{bucket}/tasks", tmp_path / "work", DataError, "spec.data.tasks[0]")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "key", ["..", "a/../../b", "/abs", "a//b", ".", "a/./b", "x\0y", "n" * 256], ids=lambda k: repr(k)[:12]
)
def test_the_key_check_every_store_shares(key: str) -> None:
    """gs:// and az:// folders go through the same listing and check_key as s3://."""
    with pytest.raises(objects.UnsafeSource, match=r"object key .* is refused"):
        objects.check_key("gs://b/model", key)


def test_plain_keys_pass_the_check() -> None:
    assert objects.check_key("az://c/model", "sub/..weights.bin") == ("sub", "..weights.bin")


# --------------------------------------------------------------------------------------------
# links and special files in sources read in place


def _plant(folder: Path, kind: str, outside: Path) -> str:
    """Put one hostile entry into folder; returns its name."""
    if kind == "environ":
        (folder / "chat_template.jinja").symlink_to("/proc/self/environ")
        return "chat_template.jinja"
    if kind == "weights":
        weights = folder / "model.safetensors"
        shutil.move(weights, outside / "model.safetensors")
        weights.symlink_to(outside / "model.safetensors")
        return "model.safetensors"
    if kind == "inside":
        (folder / "tokenizer_copy.json").symlink_to(folder / "tokenizer.json")
        return "tokenizer_copy.json"
    if kind == "nested":
        (folder / "sub").mkdir()
        (folder / "sub" / "token").symlink_to("../../outside/secret")
        return "sub/token"
    os.mkfifo(folder / "vocab.fifo")
    return "vocab.fifo"


HOSTILE = ["environ", "weights", "inside", "nested", "fifo"]


def _hf_job(model_uri: str, workdir: Path) -> Path:
    jsonl = workdir / "sentences.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    body = job(
        model_uri,
        f"file://{workdir}/out/",
        steps=[{"name": "export", "onnx": {}}],
        data={"evaluation": {"uri": f"file://{jsonl}", "metric": "CosineSimilarity", "maxLength": 16}},
    )
    body["spec"]["model"] = {"uri": model_uri, "format": "HuggingFace", "inputs": encoder_inputs(16)}
    return write_job(workdir / "job.yaml", body)


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_huggingface_folder_with_a_link_or_fifo_is_refused_by_name(
    tiny_bert: Path, workdir: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    folder = workdir / "model"
    shutil.copytree(tiny_bert, folder)
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "secret").write_text("token")
    name = _plant(folder, kind, outside)
    assert main(["run", str(_hf_job(f"file://{folder}", workdir)), "--progress", "json"]) == ExitCode.MODEL_ERROR
    err = capsys.readouterr().err
    assert f"{folder / name}" in err and "only regular files and folders" in err, err
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("kind", ["environ", "fifo"])
def test_a_pvc_model_folder_with_a_link_or_fifo_is_refused(
    tiny_bert: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    root = workdir / "mnt-pvc"
    folder = root / "models" / "bert"
    shutil.copytree(tiny_bert, folder)
    monkeypatch.setenv("KOMPRESSION_PVC_ROOT", str(root))
    name = _plant(folder, kind, workdir)
    assert main(["run", str(_hf_job("pvc://models/bert", workdir)), "--progress", "json"]) == ExitCode.MODEL_ERROR
    assert f"{folder / name}" in capsys.readouterr().err


def test_a_model_uri_whose_last_component_is_a_link_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = save_tiny(workdir / "real.pt2")
    link = workdir / "model.pt2"
    link.symlink_to(real)
    assert (
        main(["run", str(write_job(workdir / "job.yaml", job(f"file://{link}", "file://out/")))])
        == ExitCode.MODEL_ERROR
    )
    assert f"{link} is a symbolic link (to {real})" in capsys.readouterr().err
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("kind", ["file-link", "folder-link", "fifo"])
def test_data_that_is_or_holds_a_link_or_fifo_is_a_data_error(
    workdir: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    evaluation = digits("eval")
    real = npz(workdir / "real.npz", evaluation.inputs["x"], evaluation.labels)
    if kind == "file-link":
        data = workdir / "val.npz"
        data.symlink_to(real)
        entry = data
    elif kind == "folder-link":
        data = workdir / "data"
        data.mkdir()
        entry = data / "val.npz"
        entry.symlink_to(real)
    else:
        data = workdir / "val.npz"
        os.mkfifo(data)
        entry = data
    body = job(
        f"file://{save_tiny(workdir / 'model.pt2')}",
        "file://out/",
        data={"evaluation": {"uri": f"file://{data}", "metric": "Top1Accuracy"}},
    )
    assert main(["run", str(write_job(workdir / "job.yaml", body))]) == ExitCode.DATA_ERROR
    err = capsys.readouterr().err
    assert "spec.data" in err and str(entry) in err
    assert not (workdir / "out").exists()


def test_the_llm_paths_fetch_refuses_links_as_a_model_error(tiny_bert: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    (folder / "chat_template.jinja").symlink_to("/proc/self/environ")
    with pytest.raises(
        ModelError, match=r"spec\.model\.uri: .*chat_template\.jinja is a symbolic link \(to /proc/self/environ\)"
    ):
        objects.source(f"file://{folder}", tmp_path / "work", ModelError, "spec.model.uri")


def test_a_folder_reached_through_a_linked_parent_is_read(tiny_bert: Path, tmp_path: Path) -> None:
    """Only the source itself and what it holds are vetted: an administrator's link higher up the
    path (a mount point moved elsewhere) is not the source's content."""
    (tmp_path / "real").mkdir()
    shutil.copytree(tiny_bert, tmp_path / "real" / "model")
    (tmp_path / "models").symlink_to(tmp_path / "real")
    path = objects.source(f"file://{tmp_path}/models/model", tmp_path / "work", ModelError, "spec.model.uri")
    assert (path / "config.json").is_file()


# --------------------------------------------------------------------------------------------
# the same check on gs:// and az://


def test_a_gcs_key_that_leaves_the_prefix_is_refused(gcs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in gcs.env.items():
        monkeypatch.setenv(key, value)
    bucket = gcs.create_bucket()
    outside = tmp_path / "outside"
    outside.mkdir()
    for key in ("model/config.json", _escaping_key("model", outside)):
        # The JSON API takes the object name as a query parameter: the ".." segments are stored as is.
        url = f"{gcs.endpoint_url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(key, safe='')}"
        urllib.request.urlopen(urllib.request.Request(url, data=b"planted", method="POST"), timeout=10).close()
    with pytest.raises(objects.UnsafeSource, match=r"escaped' below this folder is refused"):
        objects.download(f"gs://{bucket}/model", tmp_path / "dl")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "dl").exists()


def test_an_azure_blob_name_that_is_not_a_plain_path_is_refused(
    azurite: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blob Storage resolves ".." in a blob's URL before it stores the blob, so a name that climbs out
    cannot be planted there (Azurite answers ResourceNotFound); an empty segment can."""
    for key, value in azurite.env.items():
        monkeypatch.setenv(key, value)
    container = azurite.create_container()
    with azurite.client() as service:
        client = service.get_container_client(container)
        for name in ("model/config.json", "model/sub//escaped"):
            client.upload_blob(name, b"planted")
    with pytest.raises(objects.UnsafeSource, match=r"object key 'sub//escaped' below this folder is refused"):
        objects.download(f"az://{container}/model", tmp_path / "dl")
    assert not (tmp_path / "dl").exists()


def test_a_pvc_output_prefix_through_a_link_is_refused_before_any_work(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator compares output prefixes by their spelling; a link inside the claim
    (alias -> real) would give one folder two spellings, so the worker refuses it, exit 9."""
    root = workdir / "mnt-pvc"
    (root / "outputs" / "real").mkdir(parents=True)
    (root / "outputs" / "alias").symlink_to("real")
    monkeypatch.setenv("KOMPRESSION_PVC_ROOT", str(root))
    model = save_tiny(workdir / "model.pt2")
    body = job(f"file://{model}", "pvc://outputs/alias/out/")
    assert main(["run", str(write_job(workdir / "job.yaml", body)), "--progress", "json"]) == ExitCode.STORAGE_REFUSED
    assert f"{root / 'outputs' / 'alias'} is a symbolic link (to real)" in capsys.readouterr().err
    assert list((root / "outputs" / "real").iterdir()) == []
    objects.refuse_aliased_claim_path("pvc://outputs/real/out/")  # the folder's own spelling is fine


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder every user may enter (pytest's own are root's alone), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="kompression-perm-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def _as_the_pod_user(uri: str) -> str:
    """storage.source(uri) in a forked child running as the worker pod's UID and GID 65532: the
    ModelError it raises, or "" when it reads the source."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        message, code = "", 0
        try:
            os.setgid(65532)
            os.setuid(65532)
            objects.source(uri, Path("/tmp"), ModelError, "spec.model")
        except ModelError as e:
            message = str(e)
        except BaseException as e:  # anything else fails the test, named
            message, code = f"{type(e).__name__}: {e}", 1
        os.write(write_end, message.encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said
    return said


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs the check as another user")
def test_a_file_the_worker_may_not_read_is_refused_by_name_not_misread(shared_folder: Path) -> None:
    """As the worker pod's UID: a model file only its (root) owner may read is a ModelError that says
    so, not "not a zip file" from the archive reader that could not open it."""
    model = shared_folder / "model.pt2"
    model.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    model.chmod(0o600)
    refused = _as_the_pod_user(f"file://{model}")
    assert refused.startswith(f"spec.model: file://{model}: {model} is not readable by the worker (uid 65532"), refused
    assert "chmod a+r" in refused
    model.chmod(0o644)
    assert _as_the_pod_user(f"file://{model}") == ""


def test_published_local_files_are_readable_by_every_user_of_the_volume(tmp_path: Path) -> None:
    src = tmp_path / "artifact.onnx"
    src.write_bytes(b"weights")
    target = tmp_path / "out" / "model.onnx"
    objects.upload(src, f"file://{target}")
    assert target.read_bytes() == b"weights"
    assert target.stat().st_mode & 0o777 == objects.PUBLISHED_FILE_MODE == 0o644
