"""Text data files: .txt lines, .jsonl `text` or `messages` rendered with the model's chat template."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kompression.worker.errors import DataError
from kompression.worker.texts import read_texts

TINY_LLAMA = Path(__file__).parents[1] / "llm" / "fixtures" / "tiny-llama"
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
        ({"text": 3}, "`text` must be a string, got int"),
        ({"text": "a", "label": "cat"}, "`label` must be an integer class index, got 'cat'"),
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
