"""manifest.json, the commit point of a published run: its typed form, checked on every read.

The publisher writes it last under the output prefix, and every reader (the next publisher, a
rerun, `fetch_published`) starts from it, so whatever sits at that key is read before it is
trusted: a list, a number or an object without these fields is refused with the reason, never
indexed blindly. Fields beyond these (the run's `job`, `passed`, `result`, a caller's own metadata)
are kept as written: readers do not rely on them, and a newer worker may add some.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from kompression.api.v1alpha1 import Artifact

MANIFEST_VERSION = 1

# A run id is one folder name under runs/: the publisher's own are "<UTC time>-<8 hex digits>".
RunId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]


class Manifest(BaseModel):
    """What `manifest.json` must hold for a publisher to build on it and a reader to fetch it."""

    model_config = ConfigDict(extra="allow", strict=True)

    version: Literal[1] = Field(description="The layout's version; this worker reads and writes 1.")
    runId: RunId = Field(description="The committed run: its files are under runs/<runId>/.")
    previousRunId: RunId | None = Field(None, description="The run this commit replaced.")
    createdAt: Annotated[str, StringConstraints(max_length=64)] = Field(description="When it was committed (UTC).")
    artifacts: list[Artifact] = Field(description="Every file of the run, with its URI, sha256 and size.")
