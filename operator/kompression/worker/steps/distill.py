"""Knowledge distillation: a student learns the teacher's softened outputs plus the true labels.

Checkpoints every epoch so an evicted pod resumes; under torchrun (WORLD_SIZE > 1) the student
trains with DistributedDataParallel, each rank on its own shard of the data.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel

from kompression.api.v1alpha1 import DistillStep
from kompression.worker import distributed
from kompression.worker.errors import StepInvalid
from kompression.worker.formats.safetensors_weights import build_architecture
from kompression.worker.formats.size import parameter_count
from kompression.worker.model import Model, TorchModel
from kompression.worker.steps.training import batches, check_labels, labelled
from kompression.worker.techniques import StepContext, StepResult

CHECKPOINT = "distill"


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels).

    T^2 keeps the soft-target gradients on the same scale as the hard ones (Hinton et al.).
    """
    soft = functional.kl_div(
        functional.log_softmax(student / temperature, dim=1),
        functional.softmax(teacher / temperature, dim=1),
        reduction="batchmean",
    )
    return alpha * temperature**2 * soft + (1 - alpha) * functional.cross_entropy(student, labels)


def distill(model: Model, ctx: StepContext[DistillStep]) -> StepResult:
    del model  # the student is named by the config, the teacher is always the original model
    cfg = ctx.config
    if ctx.teacher is None:
        raise StepInvalid(
            f"step {ctx.name}: distillation needs the original model in a PyTorch format as the teacher; "
            "an ONNX original cannot teach"
        )
    student_source = _student(cfg, ctx)
    teacher_params, student_params = parameter_count(ctx.teacher.module), parameter_count(student_source.module)
    if student_params > teacher_params:
        raise StepInvalid(
            f"step {ctx.name}: the student has {student_params:,} parameters, more than the teacher's "
            f"{teacher_params:,}; distillation should make the model smaller"
        )
    data = labelled(ctx.data.training, ctx.name, "distillation")
    rank, world, device = distributed.join_group(ctx.device)

    teacher = copy.deepcopy(ctx.teacher.module).to(device).eval()
    student = copy.deepcopy(student_source.module).to(device)
    _check_outputs_match(teacher, student, ctx.teacher.example_inputs, device, ctx.name)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.learningRate)
    start = _resume(student, optimizer, ctx)
    trained: nn.Module = DistributedDataParallel(student) if world > 1 else student

    mean_loss = float("nan")
    for epoch in range(start, cfg.epochs):
        trained.train()
        total, count = 0.0, 0
        for x, y in batches(data, cfg.batchSize, device, shuffle=True, seed=ctx.seed + epoch, shard=(rank, world)):
            with torch.no_grad():
                soft_targets = teacher(*x)
            logits = trained(*x)
            check_labels(logits, y)
            loss = kd_loss(logits, soft_targets, y, cfg.temperature, cfg.alpha)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        mean_loss = total / max(count, 1)
        if rank == 0:  # every rank holds the same weights after DDP's all-reduce
            ctx.save_checkpoint(
                CHECKPOINT,
                {
                    "student": student.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "loss": mean_loss,
                },
            )
        ctx.report_progress((epoch + 1) / cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs}: loss {mean_loss:.4f}")

    notes: dict[str, float | int | str] = {
        "teacherParameters": teacher_params,
        "studentParameters": student_params,
        "epochs": cfg.epochs,
        "resumedAtEpoch": start,
        "worldSize": world,
    }
    if not math.isnan(mean_loss):  # NaN when every epoch was already done before a resume
        notes["finalLoss"] = round(mean_loss, 6)
    return StepResult(TorchModel(student.eval(), student_source.example_inputs), notes)


def _student(cfg: DistillStep, ctx: StepContext[DistillStep]) -> TorchModel:
    ref = cfg.student
    if ref.fromStep is not None:
        earlier = ctx.outputs.get(ref.fromStep)
        if earlier is None:
            raise StepInvalid(f"step {ctx.name}: student.fromStep {ref.fromStep} is not an earlier step's output")
        if not isinstance(earlier, TorchModel):
            raise StepInvalid(
                f"step {ctx.name}: the student from step {ref.fromStep} is {type(earlier).__name__}, not a "
                "PyTorch model; distil before quantizing to ONNX or building an engine"
            )
        return earlier
    assert ref.architecture is not None and ctx.teacher is not None  # the API's rule: exactly one is set
    torch.manual_seed(ctx.seed)  # the same fresh student on every rank and every rerun
    field = f"{ctx.field}.student.architecture"
    return TorchModel(
        build_architecture(ref.architecture, ref.architectureArguments, field), ctx.teacher.example_inputs
    )


def _check_outputs_match(
    teacher: nn.Module, student: nn.Module, example: tuple[torch.Tensor, ...], device: str, step: str
) -> None:
    inputs = [x.to(device) for x in example]
    with torch.no_grad():
        t_shape, s_shape = teacher(*inputs).shape, student.eval()(*inputs).shape
    if t_shape != s_shape:
        raise StepInvalid(
            f"step {step}: the student's output shape {tuple(s_shape)} differs from the teacher's {tuple(t_shape)}"
        )


def _resume(student: nn.Module, optimizer: torch.optim.Optimizer, ctx: StepContext[DistillStep]) -> int:
    """The epoch to start at: after the last checkpointed one, or 0 when none fits this student."""
    state: dict[str, Any] | None = ctx.load_checkpoint(CHECKPOINT)
    if state is None:
        return 0
    try:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError):
        # A checkpoint of another student (the spec changed): start over rather than fail.
        ctx.report_progress(0.0, "checkpoint does not fit this student; starting from epoch 1")
        return 0
    return int(state["epoch"]) + 1
