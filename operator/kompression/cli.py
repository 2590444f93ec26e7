"""The `kompression` command line.

API commands (validate, crd, version) live here. The worker's and the operator's commands are
registered by their own packages, whose CLI modules import nothing heavy at module level: the
operator image has no torch and the worker image has no kopf.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from kompression import __version__
from kompression.api.architectures import DEFAULT_ARCHITECTURE_MODULES, module_list_argument
from kompression.api.constants import API_VERSION, ENV_ARCHITECTURE_MODULES, KIND, SWEEP_KIND
from kompression.api.crd import CRD_FILES
from kompression.api.sweep_plan import parse_sweep
from kompression.api.v1alpha1 import CompressionJob
from kompression.api.validation import (
    ManifestUnreadable,
    SpecInvalid,
    check_architectures,
    describe,
    load_documents,
    parse_job,
)
from kompression.controller import cli as controller_cli
from kompression.worker import cli as worker_cli

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def _validate(args: argparse.Namespace) -> int:
    status = EXIT_VALID
    for name in args.files:
        path = Path(name)
        try:
            docs = load_documents(path)
        except ManifestUnreadable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_UNREADABLE
        if not docs:
            print(f"error: {path}: no YAML document found", file=sys.stderr)
            return EXIT_UNREADABLE
        for doc in docs:
            try:
                kind, obj_name = _check(doc, args.architecture_modules)
            except SpecInvalid as exc:
                print(f"{path}: {exc}", file=sys.stderr)
                status = EXIT_INVALID
            else:
                print(f"{path}: {kind} {describe(obj_name or '<unnamed>')} is valid")
    return status


def _check(doc: Any, architecture_modules: tuple[str, ...]) -> tuple[str, str | None]:
    """Parse a CompressionJob or a CompressionSweep (SpecInvalid when it breaks a rule): its kind and name."""
    if isinstance(doc, dict) and doc.get("kind") == SWEEP_KIND:
        sweep = parse_sweep(doc)
        # The template is the job every trial starts from: the cluster's architecture policy applies to it.
        template = CompressionJob(apiVersion=API_VERSION, kind=KIND, metadata=sweep.metadata, spec=sweep.spec.template)
        check_architectures(template, architecture_modules)
        return SWEEP_KIND, sweep.metadata.name
    job = parse_job(doc)
    check_architectures(job, architecture_modules)
    return KIND, job.metadata.name


def _crd(args: argparse.Namespace) -> int:
    _, render = CRD_FILES[args.kind]
    text = render()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# What an image's `kompression version` reports besides the package: the libraries whose versions
# decide what a job can do (the .pt2 loader, the ONNX opsets, the LLM recipes). Read from the
# installed distributions' metadata, so the command imports none of them and works in every image.
VERSION_LIBRARIES = (
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "tensorrt",
    "transformers",
    "llmcompressor",
    "compressed-tensors",
    "nvidia-modelopt",
    "kopf",
    "aiohttp",
)


def _version(_: argparse.Namespace) -> int:
    print(f"kompression {__version__}")
    print(f"python {platform.python_version()}")
    for name in VERSION_LIBRARIES:
        try:
            print(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            print(f"{name} -")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kompression", description="Compress models with a CompressionJob.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check CompressionJob and CompressionSweep manifests against the API's rules")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--architecture-modules",
        type=module_list_argument,
        default=os.environ.get(ENV_ARCHITECTURE_MODULES, ""),
        help=(
            "comma-separated module prefixes `architecture` may name, as the cluster's operator "
            f"allows (env {ENV_ARCHITECTURE_MODULES}; default {','.join(DEFAULT_ARCHITECTURE_MODULES)})"
        ),
    )
    p.set_defaults(func=_validate)

    p = sub.add_parser("crd", help="print a CRD generated from the typed API (the CompressionJob's by default)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument(
        "--kind",
        choices=list(CRD_FILES),
        default=KIND,
        help="which resource's CRD: " + ", ".join(f"{k} (crds/{f})" for k, (f, _) in CRD_FILES.items()),
    )
    p.set_defaults(func=_crd)

    p = sub.add_parser("version", help="print the version, Python's and the installed libraries' ('-': not installed)")
    p.set_defaults(func=_version)

    controller_cli.register(sub)
    worker_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
