"""Run every benchmark one after another (so they don't compete for the 2 cores), then gather
their figures from benchmarks/results/*.md into benchmarks/RESULTS.md.

    python benchmarks/run_all.py            # run all, then collect
    python benchmarks/run_all.py --collect  # only collect the figures already measured
    python benchmarks/run_all.py pruning    # run bench_pruning.py only, then collect
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# Order of the sections in RESULTS.md: the worker's techniques, the pipeline, then the operator.
ORDER = [
    "pruning",
    "int8",
    "encoder_int8",
    "distill",
    "lowrank",
    "quickstart",
    "sweep",
    "sweep_cluster",
    "resnet18_e2e",
    "architectures",
    "heads",
    "llm",
    "llm_methods",
    "llm_methods_selected",
    "llm_resume",
    "llm_memory",
    "operator",
    "churn",
    "gpu",
]

HEADER = """# Benchmark results

Every figure below was measured by the script named in its section, on the machine it names,
side by side in one run, as the median of at least 5 repetitions. Regenerate with `make bench`.
"""


# Benchmarks that run in an environment of their own (llm-compressor pins an older torch: `make setup-llm`).
INTERPRETERS = {
    name: HERE.parent / ".venv-llm" / "bin" / "python" for name in ("llm", "llm_methods", "llm_resume", "llm_memory")
}


def run(names: list[str]) -> int:
    failed = 0
    for name in names:
        script = HERE / f"bench_{name}.py"
        print(f"== {script.name}", flush=True)
        python = str(INTERPRETERS.get(name, sys.executable))
        if subprocess.run([python, str(script)], cwd=HERE.parent, check=False).returncode != 0:
            print(f"!! {script.name} failed", file=sys.stderr)
            failed += 1
    return failed


def collect() -> None:
    sections = {p.stem: p.read_text().strip() for p in sorted(RESULTS.glob("*.md"))}
    ordered = [sections.pop(k) for k in ORDER if k in sections] + list(sections.values())
    (HERE / "RESULTS.md").write_text(HEADER + "\n" + "\n\n".join(ordered) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: every bench_*.py)")
    parser.add_argument("--collect", action="store_true", help="only rebuild RESULTS.md")
    args = parser.parse_args()
    failed = 0
    if not args.collect:
        names = args.names or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
        failed = run(names)
    collect()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
