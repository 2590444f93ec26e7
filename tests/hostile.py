"""What more than one test folder needs to build a hostile model folder and to show that a run
reached no network. tests/worker imports it through tests/conftest.py's sys.path entry, tests/llm
through its own conftest's."""

from __future__ import annotations

import json
from pathlib import Path

# Before anything else in a process: every name lookup and every socket connection other than a
# local (AF_UNIX) one is written to $NETWORK_LOG. A refused connection alone would prove nothing: the
# hub client and datasets' download counter swallow their errors, so the log shows each attempt.
AUDIT = """\
import os, runpy, socket, sys
def _audit(event, args, log=os.environ["NETWORK_LOG"]):
    if event == "socket.getaddrinfo" or (event == "socket.connect" and args[0].family != socket.AF_UNIX):
        with open(log, "a") as f:
            f.write(f"{event} {args[1] if event == 'socket.connect' else args[0]!r}\\n")
sys.addaudithook(_audit)
"""
# `python -c GUARD run JOB.yaml ...` is `kompression run` under the audit hook.
GUARD = AUDIT + 'sys.argv[0] = "kompression"\nrunpy.run_module("kompression", run_name="__main__")\n'


def plant_tokenizer_code(folder: Path, marker: Path) -> None:
    """A tokenizer_config.json whose auto_map names a module of the folder that writes `marker` when
    imported: the marker appearing means the folder's Python ran."""
    (folder / "evil_tokenizer.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config |= {
        "auto_map": {"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]},
        "tokenizer_class": "EvilTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
