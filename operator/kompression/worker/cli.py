"""Commands of the worker, registered on the kompression CLI.

Nothing heavy is imported at module level: `kompression validate` must stay fast and the operator
image has no torch. The pipeline is imported when a worker command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from kompression.api import failures
from kompression.api.architectures import allowed_modules
from kompression.api.constants import API_VERSION, ENV_JOB_FILE, ENV_STORAGE_RETRY_SECONDS, ENV_WORKDIR, ExitCode
from kompression.api.failures import Reason
from kompression.api.report import WorkerReport
from kompression.api.sweep_plan import explain, parse_sweep
from kompression.api.v1alpha1 import CompressionJob, CompressionSweep, MemoryPlan
from kompression.api.validation import ManifestUnreadable, SpecInvalid, check_architectures, load_documents, parse_job
from kompression.extras import EXTRAS, ExtraMissing, Need, require
from kompression.worker.errors import WorkerError
from kompression.worker.report.files import table
from kompression.worker.report.live import Reporter, libraries_logged, reserved_stdout, write_termination_message


def register(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Add this package's subcommands."""
    p = sub.add_parser("run", help="run a CompressionJob here (also what the worker pod runs)")
    p.add_argument("job", nargs="?", metavar="JOB.yaml", help=f"the manifest (default: ${ENV_JOB_FILE})")
    p.add_argument("--output", metavar="URI", help="publish under this prefix instead of spec.output.uri")
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "json"),
        default="auto",
        help="progress display: a bar on a terminal, JSON lines otherwise (auto)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for training steps (default 0)")
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="run on N local ranks with torchrun (one per GPU): distillation trains with DDP, an LLM job "
        "calibrates with llm-compressor's distributed oneshot",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "plan",
        help="plan an LLM job's peak host memory, GPU memory and scratch disk from its model folder's config.json "
        "and safetensors headers, reading no weight (what the operator's planning pod runs)",
    )
    p.add_argument("job", nargs="?", metavar="JOB.yaml", help=f"the manifest (default: ${ENV_JOB_FILE})")
    p.set_defaults(func=_plan)

    p = sub.add_parser("sweep", help="run a CompressionSweep's trials here and report their Pareto front")
    p.add_argument("sweep", metavar="SWEEP.yaml", help="the CompressionSweep manifest")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="trials at once: 1 (default) runs them in this process one after another, N in N processes",
    )
    p.add_argument("--seed", type=int, default=0, help="every trial's random seed (default 0)")
    p.add_argument("--explain", action="store_true", help="print the trials the sweep would make, and run nothing")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("example-model", help="train the quickstart's small CNN on digits and save it (TorchExport)")
    p.add_argument("--output", metavar="URI", required=True, help="where to write the .pt2 file")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    p.set_defaults(func=_example_model)


# Nothing a job loads comes from a model hub. huggingface_hub, transformers and datasets read these
# when first imported, so `run` sets them before anything imports those (the images set them too).
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# transformers comes with the worker extra, but only format HuggingFace imports it.
WORKER_CORE = tuple(m for m in EXTRAS["worker"] if m != "transformers")


def job_needs(job: CompressionJob) -> list[Need]:
    """What `kompression run` must be able to import for this job, by extra."""
    if job.spec.image == "worker-llm":
        return [Need(f"an {job.spec.steps[-1].kind} step", "llm", EXTRAS["llm"])]
    needs = [Need("`kompression run`", "worker", WORKER_CORE)]
    if job.spec.model.format == "HuggingFace":
        needs.append(Need("model format HuggingFace", "worker", ("transformers",)))
    if any(s.tensorrt is not None for s in job.spec.steps):
        needs.append(Need("a tensorrt step", "tensorrt", EXTRAS["tensorrt"]))
    return needs


def _rank_argv(args: argparse.Namespace) -> list[str]:
    """The same `run` for each rank, minus the rank count: a rank must not relaunch."""
    argv = ["run", *([args.job] if args.job else []), "--progress", args.progress, "--seed", str(args.seed)]
    return argv + (["--output", args.output] if args.output else [])


def _fail_early(reason: Reason, message: str, code: int) -> int:
    """A failure before the pipeline exists still gets a termination message."""
    print(f"error: {message}", file=sys.stderr)
    write_termination_message(WorkerReport(phase="Failed", reason=reason, message=message[:4096]))
    return code


def _job_or_exit_code(arg: str | None) -> CompressionJob | int:
    """The job manifest `arg` (else $KOMPRESSION_JOB_FILE) names, or the exit code of its refusal."""
    name = arg or os.environ.get(ENV_JOB_FILE)
    if not name:
        return _fail_early(
            failures.INVALID_SPEC.reason, f"no job manifest: pass JOB.yaml or set {ENV_JOB_FILE}", ExitCode.INVALID_SPEC
        )
    try:
        docs = load_documents(Path(name))
        if len(docs) != 1:
            raise ManifestUnreadable(f"{name}: expected exactly one CompressionJob document, found {len(docs)}")
        job = parse_job(docs[0])
        # What `kompression validate` refuses, refused before anything is downloaded or imported.
        check_architectures(job, allowed_modules(os.environ))
    except (ManifestUnreadable, SpecInvalid) as exc:
        return _fail_early(failures.INVALID_SPEC.reason, str(exc), ExitCode.INVALID_SPEC)
    return job


def _plan(args: argparse.Namespace) -> int:
    job = _job_or_exit_code(args.job)
    if isinstance(job, int):
        return job
    from kompression.worker import memory  # the storage clients: only once the manifest passed

    try:
        planned = memory.plan(job)
    except WorkerError as exc:
        return _fail_early(exc.reason, exc.message, exc.exit_code)
    if planned is None:
        report = WorkerReport(
            phase="Succeeded",
            message="no memory plan: the job has no LLM step, or its model "
            "folder gives none (loading it names what is wrong)",
        )
    else:
        plan = MemoryPlan.model_validate(planned.to_wire())
        report = WorkerReport(phase="Succeeded", memoryPlan=plan, message=f"planned {planned.describe()}")
    # The operator's planning pod leaves it as its termination message; a user reads it here.
    print(report.model_dump_json(by_alias=True, exclude_none=True, exclude_defaults=True))
    write_termination_message(report)
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    os.environ.update(OFFLINE_ENVIRONMENT)
    job = _job_or_exit_code(args.job)
    if isinstance(job, int):
        return job
    try:
        require(*job_needs(job))
    except ExtraMissing as exc:
        return _fail_early(failures.RUNTIME_MISSING.reason, str(exc), exc.exit_code)

    from kompression.worker import distributed  # torch: only once the extras check passed

    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return distributed.launch(args.nproc_per_node, _rank_argv(args))
    if job.spec.output.retrySeconds is not None:  # the pod has it in its environment already
        os.environ[ENV_STORAGE_RETRY_SECONDS] = str(job.spec.output.retrySeconds)
    distributed.bind_device()
    mode = args.progress if args.progress != "auto" else ("bar" if sys.stdout.isatty() else "json")
    with _terminal(mode, job) as (out, err):
        return _execute(job, args, Reporter(job, mode, stream=out, leader=distributed.is_leader()), err)


@contextlib.contextmanager
def _terminal(mode: str, job: CompressionJob) -> Iterator[tuple[TextIO, TextIO]]:
    """Streams for progress and for Kompression's own messages, kept clear of library output:
    JSON lines keep stdout to themselves; a bar keeps the terminal, and library output goes to a
    log that is named at the end (or removed when nothing was written to it)."""
    if mode == "json":
        with reserved_stdout() as stream:
            yield stream, sys.stderr
        return
    folder = Path(os.environ.get(ENV_WORKDIR) or tempfile.gettempdir())
    log = folder / f"kompression-{job.metadata.name}-{os.getpid()}-libraries.log"
    try:
        with libraries_logged(log) as streams:
            yield streams
    finally:
        if log.exists() and log.stat().st_size:
            print(f"(output of the libraries, e.g. onnxruntime's calibrator: {log})", file=sys.stderr)
        else:
            log.unlink(missing_ok=True)


def _execute(job: CompressionJob, args: argparse.Namespace, reporter: Reporter, err: TextIO) -> int:
    # torch: only once the extras check passed (the techniques' libraries load as their steps run)
    from kompression.worker import distributed, pipeline
    from kompression.worker.storage import publish

    workdir = Path(os.environ[ENV_WORKDIR]) if os.environ.get(ENV_WORKDIR) else None
    try:
        # A manifest at the output prefix that publication could not build on fails now, before
        # the model is even fetched, not after all the compute.
        publish.check_prefix(args.output or job.spec.output.uri)
        _, rows = pipeline.run(job, pipeline.RunOptions(output=args.output, seed=args.seed, workdir=workdir), reporter)
    except WorkerError as exc:
        reporter.finish("Failed", exc.reason, exc.message)
        print(f"error ({exc.reason}, exit code {exc.exit_code}): {exc.message}", file=err)
        return exc.exit_code
    except Exception as exc:
        reporter.finish("Failed", failures.UNEXPECTED.reason, f"{type(exc).__name__}: {exc}")
        traceback.print_exc(file=err)
        return ExitCode.UNEXPECTED
    finally:
        distributed.leave_group()
    report = reporter.finish("Succeeded")
    if reporter.mode == "bar":
        print(table(rows), file=reporter.stream)
        result = report.result
        if result is not None:
            # Each figure only exists when it was measured (no evaluation data: no accuracy delta).
            figures = [
                f"compression {result.compressionRatio:.2f}x" if result.compressionRatio is not None else "",
                f"accuracy delta {result.accuracyDelta:+.4f}" if result.accuracyDelta is not None else "",
                f"speedup {result.speedup:.2f}x" if result.speedup is not None else "",
            ]
            if result.speedup is not None and result.speedupBaseline is not None:
                figures[-1] += f" (original re-timed on {result.speedupBaseline.device}, where the final model ran)"
            summary = ", ".join(f for f in figures if f)
            where = f"published under {args.output or job.spec.output.uri}"
            print(f"\n{summary}; {where}" if summary else f"\n{where}", file=reporter.stream)
    return ExitCode.OK


def _checked_sweep(args: argparse.Namespace) -> CompressionSweep:
    """The sweep, refused (ManifestUnreadable, SpecInvalid, ExtraMissing) before any trial runs."""
    docs = load_documents(Path(args.sweep))
    if len(docs) != 1:
        raise ManifestUnreadable(f"{args.sweep}: expected exactly one CompressionSweep document, found {len(docs)}")
    sweep = parse_sweep(docs[0])
    if args.workers < 1:
        raise ManifestUnreadable(f"--workers {args.workers}: give a number of trials at once, 1 or more")
    if not args.explain:
        # The trials' jobs differ only in the axes' values: the template needs what all of them need.
        first = CompressionJob(apiVersion=API_VERSION, kind="CompressionJob", spec=sweep.spec.template)
        check_architectures(first, allowed_modules(os.environ))
        command = Need("`kompression run`", "worker", WORKER_CORE)
        require(*(replace(n, what="`kompression sweep`") if n == command else n for n in job_needs(first)))
    return sweep


def _sweep(args: argparse.Namespace) -> int:
    os.environ.update(OFFLINE_ENVIRONMENT)
    try:
        sweep = _checked_sweep(args)
        if args.explain:
            print(explain(sweep), end="")
            return ExitCode.OK
        from kompression.worker import sweep as local  # torch: only once the extras check passed

        workdir = Path(os.environ[ENV_WORKDIR]) if os.environ.get(ENV_WORKDIR) else None
        options = local.SweepOptions(workers=args.workers, seed=args.seed, workdir=workdir, stream=sys.stdout)
        result = local.run(sweep, options)
    except (ManifestUnreadable, SpecInvalid) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.INVALID_SPEC
    except ExtraMissing as exc:  # also search TPE's Optuna, asked for when it plans
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except WorkerError as exc:
        print(f"error ({exc.reason}, exit code {exc.exit_code}): {exc.message}", file=sys.stderr)
        return exc.exit_code
    status = result.status
    print(
        f"\nsweep {status.phase}: {status.trialsDone} of {status.trialsTotal} trials done, Pareto front "
        f"{', '.join(status.paretoFront) or '(none passed its gates)'}; {result.reused} of "
        f"{result.reused + result.executed} step executions reused; report under {sweep.spec.template.output.uri}"
    )
    if status.phase == "Succeeded":
        return ExitCode.OK
    print(
        f"error: {status.counts.failed if status.counts else 0} trials failed, more than maxFailedTrials "
        f"{sweep.spec.maxFailedTrials}; no further trial was started",
        file=sys.stderr,
    )
    return ExitCode.UNEXPECTED


def _example_model(args: argparse.Namespace) -> int:
    try:
        require(Need("`kompression example-model`", "worker", WORKER_CORE))
    except ExtraMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    from kompression.worker.example_model import build  # torch: only once the extras check passed

    try:
        accuracy, size = build(args.output, seed=args.seed, epochs=args.epochs)
    except WorkerError as exc:
        print(f"error ({exc.reason}): {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {args.output}: {size / 1e6:.2f} MB, held-out accuracy {accuracy:.4f}")
    return ExitCode.OK
