"""`python -m kompression`: the CLI, also what torchrun launches on multi-GPU workers."""

from kompression.cli import main

raise SystemExit(main())
