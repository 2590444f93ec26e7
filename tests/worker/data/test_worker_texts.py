"""Text data files: .txt lines, .jsonl `text` or `messages` rendered with the model's chat template."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kompression.api.v1alpha1 import DataSource, ModelInput
from kompression.worker.data import texts
from kompression.worker.data.arrays import read_text
from kompression.worker.data.texts import RENDER_SECONDS, read_texts
from kompression.worker.errors import DataError, ModelError
from kompression.worker.llm import token_ids as llm_text

TINY_LLAMA = Path(__file__).parents[2] / "llm" / "fixtures" / "tiny-llama"
TEMPLATE = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"


@pytest.fixture(scope="module")
def plain() -> object:
    return AutoTokenizer.from_pretrained(TINY_LLAMA, local_files_only=True)


def _chat_tokenizer(folder: Path, adds_bos: bool) -> object:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_LLAMA / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    if adds_bos:  # as Llama's own tokenizers do: every encoding starts with <s>
        tokenizer = json.loads((folder / "tokenizer.json").read_text())
        bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
        tokenizer["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        }
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> object:
    return _chat_tokenizer(tmp_path_factory.mktemp("chat-llama"), adds_bos=False)


def _jsonl(tmp_path: Path, *rows: object) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_txt_keeps_every_non_blank_line_in_order(tmp_path: Path, plain: object) -> None:
    path = tmp_path / "calib.txt"
    path.write_text("first line\n\n   \nsecond line\n")
    samples = read_texts(path, "spec.data.calibration", plain)
    assert samples.texts == ["first line", "second line"]
    assert samples.labels is None


def test_messages_are_rendered_by_the_chat_template_with_one_bos(tmp_path: Path, chat: object) -> None:
    # This tokenizer adds no BOS of its own, so the template's stays.
    conversation = [{"role": "user", "content": "the licence"}, {"role": "assistant", "content": "is free"}]
    path = _jsonl(tmp_path, {"messages": conversation, "label": 1}, {"text": "plain text", "label": 0})
    samples = read_texts(path, "spec.data.evaluation", chat)
    assert samples.texts[0] == "<s><|user|>\nthe licence</s>\n<|assistant|>\nis free</s>\n"
    assert samples.texts[1] == "plain text"
    assert samples.labels is not None and samples.labels.tolist() == [1, 0]
    ids = chat(samples.texts[0])["input_ids"]  # type: ignore[operator]
    assert ids[0] == chat.bos_token_id  # type: ignore[attr-defined]
    assert ids.count(chat.bos_token_id) == 1  # type: ignore[attr-defined]


def test_a_tokenizer_that_adds_its_own_bos_gets_the_template_without_one(tmp_path: Path) -> None:
    tokenizer = _chat_tokenizer(tmp_path, adds_bos=True)
    path = _jsonl(tmp_path, {"messages": [{"role": "user", "content": "the licence"}]})
    rendered = read_texts(path, "spec.data.calibration", tokenizer).texts[0]
    assert rendered == "<|user|>\nthe licence</s>\n"
    ids = tokenizer(rendered)["input_ids"]  # type: ignore[operator]
    assert ids[0] == 1 and ids.count(1) == 1


def test_messages_without_a_chat_template_name_the_line_and_the_way_out(tmp_path: Path, plain: object) -> None:
    path = _jsonl(tmp_path, {"text": "fine"}, {"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(DataError, match=r"spec\.data\.calibration: data\.jsonl line 2: .*has none .*as `text` instead"):
        read_texts(path, "spec.data.calibration", plain)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "a", "messages": [{"role": "user", "content": "b"}]}, "needs exactly one of a `text` string"),
        ({"prompt": "neither"}, "needs exactly one of a `text` string"),
        ({"messages": []}, "`messages` must be a non-empty list"),
        ({"messages": [{"role": "user"}]}, "`messages` must be a non-empty list"),
        ({"text": 3}, "`text` must be a string, got a JSON number"),
        ({"text": ["a"]}, "`text` must be a string, got a JSON array"),
        (
            {"text": "a", "label": "cat"},
            "`label` must be an integer class index from 0 to 2147483647, got a JSON string",
        ),
        (
            {"text": "a", "label": True},
            "`label` must be an integer class index from 0 to 2147483647, got a JSON boolean",
        ),
        ({"text": "a", "label": -1}, "`label` must be an integer class index from 0 to 2147483647, got -1"),
        (
            {"text": "a", "label": 2**63},
            "`label` must be an integer class index from 0 to 2147483647, got 9223372036854775808",
        ),
        ({"messages": "hi"}, "`messages` must be a non-empty list"),
        ({"messages": [["user", "hi"]]}, "`messages` must be a non-empty list"),
        ({"messages": [{"role": "user", "content": 3}]}, "`messages` must be a non-empty list"),
        ({"messages": [{"role": None, "content": "hi"}]}, "`messages` must be a non-empty list"),
    ],
)
def test_malformed_lines_are_data_errors_naming_file_and_line(
    tmp_path: Path, chat: object, row: dict[str, object], message: str
) -> None:
    path = _jsonl(tmp_path, {"text": "fine"}, row)
    with pytest.raises(DataError, match=r"data\.jsonl line 2.*" + re.escape(message)):
        read_texts(path, "spec.data.training", chat)


def test_labels_on_some_lines_only_are_refused(tmp_path: Path, plain: object) -> None:
    path = _jsonl(tmp_path, {"text": "a", "label": 1}, {"text": "b"})
    with pytest.raises(DataError, match="1 of 2 lines have a `label`; label all or none"):
        read_texts(path, "spec.data.training", plain)


def test_an_empty_file_and_a_non_text_suffix_are_refused(tmp_path: Path, plain: object) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match=r"empty\.txt holds no text sample"):
        read_texts(empty, "spec.data.evaluation", plain)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.csv is not text data; use \.txt .* or \.jsonl"):
        read_texts(csv, "spec.data.evaluation", plain)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "its JSON is nested too deeply to read"),
        ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "its JSON is nested too deeply to read"),
        ('{"text": "a", "label": ' + "9" * 5000 + "}", "is not JSON this reader accepts"),
        ('["a list"]', 'must be a JSON object, e.g. {"text": "..."}, got a JSON array'),
        ("42", 'must be a JSON object, e.g. {"text": "..."}, got a JSON number'),
        ('"text"', 'must be a JSON object, e.g. {"text": "..."}, got a JSON string'),
        ("null", 'must be a JSON object, e.g. {"text": "..."}, got a JSON null'),
        ('{"text": "a\\ud800b"}', "holds a lone UTF-16 surrogate ('\\ud800' at character 1), which is not text"),
    ],
)
def test_hostile_json_lines_are_data_errors_naming_file_and_line(
    tmp_path: Path, plain: object, line: str, message: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=r"spec\.data\.calibration: data\.jsonl line 2.*" + re.escape(message)):
        read_texts(path, "spec.data.calibration", plain)


def test_a_surrogate_pair_is_one_character_and_stays(tmp_path: Path, plain: object) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "smile \\ud83d\\ude00"}\n')
    assert read_texts(path, "spec.data.calibration", plain).texts == ["smile \U0001f600"]


def test_a_lone_surrogate_in_a_message_is_refused_after_rendering(tmp_path: Path, chat: object) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "x\\udfff"}]}\n')
    with pytest.raises(DataError, match=r"data\.jsonl line 1: holds a lone UTF-16 surrogate \('\\udfff'"):
        read_texts(path, "spec.data.calibration", chat)


def test_text_that_is_not_utf8_is_refused(tmp_path: Path, plain: object) -> None:
    for name in ("latin1.txt", "latin1.jsonl"):
        path = tmp_path / name
        path.write_bytes(b'{"text": "caf\xe9"}\n')
        with pytest.raises(DataError, match=rf"cannot read {re.escape(name)} as UTF-8 text"):
            read_texts(path, "spec.data.evaluation", plain)


# --- chat templates are the model author's code: bounded per line ------------------------------

LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# Real templates, in the shapes they come in: ChatML with a default system prompt and a
# generation prompt, and a Llama-2-style one with a namespace, a role check and raise_exception.
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA2 = (
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = '<<SYS>>\n' + m['content'] + '\n<</SYS>>\n\n' %}{% elif m['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + ns.system + m['content'] | tojson + ' [/INST]' }}{% set ns.system = '' %}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' ' + eos_token }}"
    "{% else %}{{ raise_exception('Only system, user and assistant roles are supported') }}{% endif %}{% endfor %}"
)


def _templated(folder: Path, template: str) -> object:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_LLAMA / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.mark.parametrize("template", [TEMPLATE, CHATML, LLAMA2], ids=["plain", "chatml", "llama2"])
def test_real_templates_render_exactly_as_transformers_does(tmp_path: Path, template: str) -> None:
    tokenizer = _templated(tmp_path, template)
    conversations = [
        [{"role": "user", "content": "the licence"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": 'a "quoted" word'}],
        [
            {"role": "user", "content": "ünïcödé and emoji \U0001f600"},
            {"role": "assistant", "content": "fine"},
            {"role": "user", "content": "  padded  "},
        ],
    ]
    path = _jsonl(tmp_path, *({"messages": c} for c in conversations))
    texts = read_texts(path, "spec.data.calibration", tokenizer).texts
    assert texts == [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]  # type: ignore[attr-defined]
    assert len(set(texts)) == 3


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (LOOPS, r"ran longer than 5 s on this conversation"),
        (  # it stops at 5 s or at 1 GiB of output, whichever comes first on the machine
            "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
            r"(ran longer than 5 s|needs more than 1024 MiB)",
        ),
        ("{{ 'x' * 3000000000 }}", r"needs more than 1024 MiB to render this conversation"),
        ("{{ ('x' * 1000000).ljust(2000000000) }}", r"needs more than 1024 MiB"),
        (
            "{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}",
            r"renders this conversation longer than 1048\d+ characters",
        ),
        (
            "{{ raise_exception('Only user and assistant roles are supported') }}",
            r"fails on this conversation \(TemplateError: Only user",
        ),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", r"fails on this conversation \(RecursionError"),
        ("{{ (2 ** 20000) | string }}", r"fails on this conversation \(ValueError: Exceeds the limit"),
        ("{{ messages.__class__ }}{{ ''.__class__.__mro__ }}", r"fails on this conversation \(SecurityError"),
    ],
    ids=[
        "nested-loops",
        "nested-loops-writing",
        "huge-string",
        "huge-ljust",
        "long-output",
        "raises",
        "recursion",
        "bigint",
        "escape",
    ],
)
def test_a_hostile_chat_template_is_stopped_and_names_the_line(tmp_path: Path, template: str, message: str) -> None:
    tokenizer = _templated(tmp_path, template)
    path = _jsonl(tmp_path, {"text": "fine"}, {"messages": [{"role": "user", "content": "hi"}]})
    before = _children()  # the suite's own servers (the test bed's) are children of this process too
    started = time.monotonic()
    with pytest.raises(
        DataError, match=r"^spec\.data\.calibration: data\.jsonl line 2: the model's chat template " + message
    ):
        read_texts(path, "spec.data.calibration", tokenizer)
    assert time.monotonic() - started < RENDER_SECONDS + 5
    assert not multiprocessing.active_children() and _children() == before  # the renderer is gone


def test_every_line_gets_its_own_time_and_the_renderer_is_reaped_on_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow but finite template, its time per line measured here; the budget is set to three
    # lines' time and the file to six budgets' worth of lines: only a per-line budget lets it pass.
    slow = "{% for i in range(3000) %}{% for j in range(300) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
    tokenizer = _templated(tmp_path, slow)
    started = time.monotonic()
    tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)  # type: ignore[attr-defined]
    per_line = time.monotonic() - started
    monkeypatch.setattr(texts, "RENDER_SECONDS", 3 * per_line)
    count = 18
    path = _jsonl(tmp_path, *({"messages": [{"role": "user", "content": f"line {i}"}]} for i in range(count)))
    before = _children()
    started = time.monotonic()
    assert read_texts(path, "spec.data.calibration", tokenizer).texts == [f"line {i}" for i in range(count)]
    assert time.monotonic() - started > 2 * texts.RENDER_SECONDS
    assert _children() == before


def _children() -> list[str]:
    """This process's child processes, as the kernel lists them (sorted, to compare)."""
    return sorted(Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split())


@pytest.mark.parametrize("value", ["abc", -1, 0, None, [512], True], ids=repr)
def test_a_tokenizer_limit_that_is_no_number_is_a_model_error_on_both_paths(tmp_path: Path, value: object) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_LLAMA / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": value}))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    path = tmp_path / "calib.txt"
    path.write_text("the licence is free\n")
    source = DataSource.model_validate({"uri": "file://calib.txt", "padding": "Longest"})
    declared = [ModelInput(name="input_ids", shape=[-1, -1], dtype="int64")]
    if value is None:  # transformers reads null as unset: no limit, which the fixed maxLength paths never need
        assert llm_text.tokenize(tokenizer, ["the licence is free"], source, "spec.data.calibration")
        return
    message = r"^spec\.model\.uri: tokenizer_config\.json's model_max_length must be a positive number of tokens"
    with pytest.raises(ModelError, match=message):
        read_text(path, "spec.data.calibration", source, declared, tokenizer)
    with pytest.raises(ModelError, match=message):
        llm_text.tokenize(tokenizer, ["the licence is free"], source, "spec.data.calibration")
