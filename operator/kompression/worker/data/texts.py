"""Text data files, read the same way for every model that tokenizes: a ``.txt`` file holds one
sample per line (blank lines skipped); a ``.jsonl`` file holds one JSON object per line with either
a ``text`` string or a ``messages`` conversation (``[{"role": ..., "content": ...}, ...]``) that the
model's own chat template renders, and, for labelled data, an integer ``label`` on every line.

A chat template is code from the model folder. Jinja's sandbox keeps it away from Python's
internals, but not from running long (two nested loops of its MAX_RANGE, 100,000 steps each) or
from building a gigabyte string in one C operation (``'x' * 10**9``, ``'x'.ljust(10**9)``), and
neither can be interrupted inside the worker's own process. So every conversation of a file is
rendered in one forked child process: the parent gives it RENDER_SECONDS per line and kills it
past that, the child's address space may grow by RENDER_MEMORY at most, and a rendered line longer
than the line's own text allows (render_limit) is refused."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompression.worker.errors import DataError, ModelError

TEXT_SUFFIXES = (".txt", ".jsonl")

# Real templates render a conversation in about a millisecond (compiling the template on the first
# line included: tens of milliseconds); 5 s is thousands of times that, even on a throttled CPU.
RENDER_SECONDS = 5.0
# What the child may allocate beyond what it inherits: real renders need kilobytes to megabytes.
RENDER_MEMORY = 1 << 30
# A rendered conversation holds its messages' text (no longer than the JSON line that carries
# them) and what the template adds: role markers and at most a default system prompt, kilobytes
# in real templates. Twice the line plus a mebibyte is far above that.
RENDER_EXTRA_CHARS = 1 << 20
# Above this, a tokenizer's model_max_length is transformers' "no limit" sentinel (int(1e30)).
NO_LIMIT = 1_000_000
# Class indices: any real classifier has fewer classes, and labels stay exact in every integer dtype.
MAX_LABEL = 2**31 - 1

_HEADER = struct.Struct("!BQ")  # one rendered line from the child: a status and the payload's size
_RENDERED, _TOO_LONG, _FAILED, _OUT_OF_MEMORY = range(4)


@dataclass(frozen=True)
class TextSamples:
    """The samples of one file, in file order; labels only when every line has one."""

    texts: list[str]
    labels: np.ndarray | None


@dataclass(frozen=True)
class _Chat:
    """One `messages` line to render: where it is, the conversation, and the longest rendering allowed."""

    where: str
    messages: list[dict[str, Any]]
    limit: int


def model_max_length(tokenizer: Any) -> int | None:
    """The tokenizer's length limit in tokens (None: it states none). tokenizer_config.json sets it,
    and transformers keeps whatever it holds: a value that is no positive number would fail every
    tokenizer call that truncates with a TypeError, so it is refused here, naming the file."""
    value = getattr(tokenizer, "model_max_length", None)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 1:
        raise ModelError(
            f"spec.model.uri: tokenizer_config.json's model_max_length must be a positive number of tokens, got "
            f"{str(value)[:40]!r}"
        )
    return None if value > NO_LIMIT else int(value)


def render_limit(line: str) -> int:
    """The most characters a line's rendered conversation may have."""
    return 2 * len(line) + RENDER_EXTRA_CHARS


def read_texts(path: Path, field: str, tokenizer: Any) -> TextSamples:
    """Every sample of a .txt or .jsonl file; `messages` lines are rendered with the tokenizer's chat template."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{field}: {path.name} is not text data; use .txt (one sample per line) or .jsonl")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{field}: cannot read {path.name} as UTF-8 text ({exc})") from None
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise DataError(f"{field}: {path.name} holds no text sample")
    if suffix == ".txt":
        return TextSamples([line for _, line in numbered], None)
    texts: list[str | _Chat] = []
    labels: list[int] = []
    for n, line in numbered:
        where = f"{field}: {path.name} line {n}"
        row = _row(line, where)
        texts.append(_sample(row, line, where, tokenizer))
        label = row.get("label")
        if label is not None:
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= MAX_LABEL:
                got = _shown(label) if type(label) is int else f"a JSON {_json_type(label)}"
                raise DataError(f"{where}: `label` must be an integer class index from 0 to {MAX_LABEL}, got {got}")
            labels.append(label)
    if labels and len(labels) != len(texts):
        raise DataError(f"{field}: {path.name}: {len(labels)} of {len(texts)} lines have a `label`; label all or none")
    chats = [t for t in texts if isinstance(t, _Chat)]
    rendered = iter(_render_chats(chats, tokenizer)) if chats else iter(())
    samples = [t if isinstance(t, str) else next(rendered) for t in texts]
    return TextSamples(samples, np.asarray(labels, dtype=np.int64) if labels else None)


def _row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{where}: its JSON is nested too deeply to read; a line is one flat object") from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise DataError(f"{where} is not JSON this reader accepts ({exc})") from None
    if not isinstance(row, dict):
        raise DataError(f'{where} must be a JSON object, e.g. {{"text": "..."}}, got a JSON {_json_type(row)}')
    return row


def _sample(row: dict[str, Any], line: str, where: str, tokenizer: Any) -> str | _Chat:
    text, messages = row.get("text"), row.get("messages")
    if (text is None) == (messages is None):
        raise DataError(
            f'{where} needs exactly one of a `text` string ({{"text": "..."}}) or a `messages` conversation '
            '({"messages": [{"role": "user", "content": "..."}]})'
        )
    if text is not None:
        if not isinstance(text, str):
            raise DataError(f"{where}: `text` must be a string, got a JSON {_json_type(text)}")
        return _text(text, where)
    if not (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise DataError(f'{where}: `messages` must be a non-empty list of {{"role": str, "content": str}} objects')
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where}: `messages` are rendered with the model's chat template, and its tokenizer has none "
            "(tokenizer_config.json or chat_template.jinja); give the sample as `text` instead"
        )
    return _Chat(where, messages, render_limit(line))


def _text(text: str, where: str) -> str:
    """The sample, if it is text a tokenizer can read: JSON's \\ud800-style escapes can spell a lone
    UTF-16 surrogate, which is no character at all and which tokenizers refuse with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{where}: holds a lone UTF-16 surrogate ({text[exc.start]!r} at character {exc.start}), which is "
            "not text; write characters outside the BMP as a surrogate pair or as UTF-8"
        ) from None
    return text


def _render_chats(chats: list[_Chat], tokenizer: Any) -> list[str]:
    """Each conversation rendered by the tokenizer's chat template, in a child process that is
    bounded per line in time, memory and output (the module's docstring says why)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: render, report, and leave without running the parent's exit handlers
        try:
            os.close(read_end)
            _render_in_child(chats, tokenizer, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        return [_finish(chat, *_receive(read_end, chat), tokenizer) for chat in chats]
    finally:
        os.close(read_end)
        os.kill(pid, signal.SIGKILL)  # done or not, the child has nothing left to do
        os.waitpid(pid, 0)


def _render_in_child(chats: list[_Chat], tokenizer: Any, out: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    inherited = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    limit = inherited + RENDER_MEMORY
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    with os.fdopen(out, "wb") as stream:
        for chat in chats:
            try:
                rendered = str(tokenizer.apply_chat_template(chat.messages, tokenize=False))
                status, payload = (_RENDERED, rendered) if len(rendered) <= chat.limit else (_TOO_LONG, "")
            except MemoryError:
                status, payload = _OUT_OF_MEMORY, ""
            except Exception as exc:  # whatever the template raises is the line's error, reported as such
                status, payload = _FAILED, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            data = payload.encode("utf-8", "surrogatepass")
            stream.write(_HEADER.pack(status, len(data)) + data)
            stream.flush()


def _receive(fd: int, chat: _Chat) -> tuple[int, bytes]:
    """The child's answer for one line, within RENDER_SECONDS of asking for it."""
    deadline = time.monotonic() + RENDER_SECONDS
    header = _read(fd, _HEADER.size, deadline, chat)
    status, size = _HEADER.unpack(header)
    return status, _read(fd, size, deadline, chat)


def _read(fd: int, size: int, deadline: float, chat: _Chat) -> bytes:
    chunks: list[bytes] = []
    while size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise DataError(
                f"{chat.where}: the model's chat template ran longer than {RENDER_SECONDS:g} s on this "
                "conversation (real templates take milliseconds)"
            )
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise DataError(f"{chat.where}: the process rendering the model's chat template died on this line")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _finish(chat: _Chat, status: int, payload: bytes, tokenizer: Any) -> str:
    if status == _TOO_LONG:
        raise DataError(
            f"{chat.where}: the model's chat template renders this conversation longer than {chat.limit} "
            f"characters (twice the line plus {RENDER_EXTRA_CHARS}); real templates add only role markers "
            "and a system prompt"
        )
    if status == _OUT_OF_MEMORY:
        raise DataError(
            f"{chat.where}: the model's chat template needs more than {RENDER_MEMORY >> 20} MiB to render "
            "this conversation (real templates need kilobytes)"
        )
    text = payload.decode("utf-8", "surrogatepass")
    if status == _FAILED:
        raise DataError(f"{chat.where}: the model's chat template fails on this conversation ({text})")
    rendered = _text(text, chat.where)
    # Templates usually write the BOS token themselves; a tokenizer that adds its own would then
    # start the sample with two, so the template's is dropped for such tokenizers only.
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if bos and rendered.startswith(bos) and list(tokenizer("x")["input_ids"][:1]) == [bos_id]:
        rendered = rendered[len(bos) :]
    return rendered


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _shown(number: int) -> str:
    shown = str(number)
    return shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} digits)"
