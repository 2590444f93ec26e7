"""Distillation: the student learns, refuses bad students, resumes from checkpoints, runs under DDP."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from factories import DigitsCNN, make_ctx, trained_cnn
from kompression.api.constants import ENV_ARCHITECTURE_MODULES
from kompression.api.v1alpha1 import DistillStep
from kompression.worker.data.arrays import digits
from kompression.worker.errors import SpecError, StepInvalid
from kompression.worker.model import DataSets, OnnxModel, TorchModel
from kompression.worker.steps.distill import kd_loss
from kompression.worker.steps.training import accuracy
from kompression.worker.techniques import TECHNIQUES

pytestmark = pytest.mark.usefixtures("one_thread")


distill = TECHNIQUES[DistillStep]


@pytest.fixture(autouse=True)
def _students_from_this_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    # The students are test classes: the operator's allow-list (an env var) must name their module.
    monkeypatch.setenv(ENV_ARCHITECTURE_MODULES, "factories")


SMALL = {"architecture": "factories:DigitsCNN", "architectureArguments": {"width": 6, "hidden": 32}}


def small_data(n: int = 256) -> DataSets:
    train, test = digits("train"), digits("eval")
    assert train.labels is not None
    return DataSets(training=train.head(n), evaluation=test)


def test_kd_loss_is_cross_entropy_at_alpha_zero_and_zero_for_a_perfect_copy() -> None:
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert kd_loss(logits, torch.randn(6, 10), labels, 4.0, 0.0) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels))
    )
    assert float(kd_loss(logits, logits, labels, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_a_fresh_student_learns_from_the_teacher(tmp_path: Path) -> None:
    teacher = trained_cnn()
    step = {"name": "d", "distill": {"student": SMALL, "epochs": 4, "learningRate": 3e-3, "batchSize": 32}}
    result = distill(teacher, make_ctx(step, tmp_path, teacher=teacher, data=small_data(512)))
    assert isinstance(result.model, TorchModel)
    assert int(result.notes["studentParameters"]) * 4 <= int(result.notes["teacherParameters"])
    assert accuracy(result.model.module, digits("eval")) > 0.8


def test_a_student_larger_than_the_teacher_is_refused_with_both_counts(tmp_path: Path) -> None:
    teacher = trained_cnn()
    big = {"architecture": "factories:DigitsCNN", "architectureArguments": {"width": 32}}
    with pytest.raises(StepInvalid, match=r"has [\d,]+ parameters, more than the teacher's 38,314"):
        distill(teacher, make_ctx({"name": "d", "distill": {"student": big}}, tmp_path, teacher=teacher))


def test_a_student_outside_the_allowed_modules_is_never_imported(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    step = {
        "name": "d",
        "distill": {"student": {"architecture": "os:system", "architectureArguments": {"command": f"touch {marker}"}}},
    }
    with pytest.raises(SpecError, match=r"spec.steps\[0\].distill.student.architecture: os:system is not under"):
        distill(trained_cnn(), make_ctx(step, tmp_path, teacher=trained_cnn(), data=small_data(64)))
    assert not marker.exists()


def test_a_student_from_a_step_that_made_onnx_is_refused_naming_the_step(tmp_path: Path) -> None:
    teacher = trained_cnn()
    step = {"name": "d", "distill": {"student": {"fromStep": "int8"}}}
    ctx = make_ctx(step, tmp_path, teacher=teacher, outputs={"int8": OnnxModel(tmp_path / "m.onnx")})
    with pytest.raises(StepInvalid, match="from step int8 is OnnxModel"):
        distill(teacher, ctx)


def test_an_evicted_run_resumes_from_its_last_checkpoint_and_ends_where_an_unbroken_run_ends(tmp_path: Path) -> None:
    teacher = trained_cnn()
    step = {"name": "d", "distill": {"student": SMALL, "epochs": 3, "batchSize": 64}}
    unbroken = distill(teacher, make_ctx(step, tmp_path, teacher=teacher, data=small_data()))

    class Evicted(Exception):
        pass

    def evict_after_first_epoch(fraction: float, message: str) -> None:
        if message.startswith("epoch 2/"):
            raise Evicted

    store: dict[str, dict[str, Any]] = {}
    ctx = make_ctx(step, tmp_path, teacher=teacher, data=small_data(), checkpoints=store)
    ctx.report_progress = evict_after_first_epoch
    with pytest.raises(Evicted):
        distill(teacher, ctx)
    assert store["distill"]["epoch"] == 1  # epochs 0 and 1 are saved, progress for 1 raised

    resumed = distill(teacher, make_ctx(step, tmp_path, teacher=teacher, data=small_data(), checkpoints=store))
    assert resumed.notes["resumedAtEpoch"] == 2
    assert isinstance(resumed.model, TorchModel) and isinstance(unbroken.model, TorchModel)
    for (name, a), b in zip(
        unbroken.model.module.state_dict().items(), resumed.model.module.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = TorchModel(DigitsCNN().eval(), (torch.zeros(1, 1, 8, 8),))  # untrained: only the mechanics matter
    step = {"name": "d", "distill": {"student": SMALL, "epochs": 1, "batchSize": 32}}
    store: dict[str, dict[str, Any]] = {}
    result = distill(teacher, make_ctx(step, Path(out), teacher=teacher, data=small_data(), checkpoints=store))
    assert isinstance(result.model, TorchModel)
    params = {k: v.detach() for k, v in result.model.module.named_parameters()}
    torch.save({"state": params, "saved": sorted(store), "world": result.notes["worldSize"]}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(240)
def test_two_cpu_processes_train_one_student_with_ddp(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: once this pytest process has run a backward pass (any earlier training test),
    # autograd's threads make a forked child's backward fail, so the children start fresh.
    mp.start_processes(  # type: ignore[attr-defined,no-untyped-call]
        _ddp_worker,
        args=(port, str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["saved"] == ["distill"] and ranks[1]["saved"] == []  # only rank 0 checkpoints
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), (
            name
        )  # all-reduced gradients keep the ranks' weights identical
