"""What a technique needs, declared once on its config class.

Each technique's config (a ``TechniqueConfig``) declares in ``__needs__`` when it needs calibration data,
training data, a tokenizer (the model folder's: format HuggingFace) and a GPU, as predicates over its
own fields, and which worker image runs it. A predicate is evaluated in Python (``Step.needs``, which
the worker acts on) and rendered to CEL (the job-level rules ``job_rules`` makes, which the API server
and ``kompression validate`` enforce), so the two cannot disagree.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import ApiModel

WorkerImage = Literal["worker", "worker-llm"]
# The needs that a job-level rule checks against the rest of the spec, in the order the rules appear.
NEED_NAMES = ("calibration", "training", "tokenizer", "gpu")


def words(values: Iterable[str], conjunction: str = "or") -> str:
    """`a`, `a or b`, `a, b or c`: a list of values as a sentence names them."""
    items = list(values)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {conjunction} " + items[-1]


class Predicate(ABC):
    """A condition on a technique's config: evaluated in Python, rendered to CEL, described in words."""

    @abstractmethod
    def holds(self, config: ApiModel) -> bool:
        """The verdict on a parsed config."""

    @abstractmethod
    def cel(self, var: str) -> str:
        """The same verdict in CEL, on the config at `var` as the API server sees it (defaults applied)."""

    @abstractmethod
    def describe(self) -> str:
        """The condition in words, after the technique's name and "with"; empty for Always."""


@dataclass(frozen=True)
class Always(Predicate):
    def holds(self, config: ApiModel) -> bool:
        return True

    def cel(self, var: str) -> str:
        return "true"

    def describe(self) -> str:
        return ""


@dataclass(frozen=True)
class Never(Predicate):
    def holds(self, config: ApiModel) -> bool:
        return False

    def cel(self, var: str) -> str:
        return "false"

    def describe(self) -> str:
        return "nothing"


@dataclass(frozen=True)
class When(Predicate):
    """A string field takes one of `values`. `unset` is what an optional field without a schema default
    means when left out (its ``*_or_default``); leave it None for a required or defaulted field, which
    is always present once the API server applied the defaults."""

    name: str
    values: tuple[str, ...]
    unset: str | None = None

    def holds(self, config: ApiModel) -> bool:
        value = getattr(config, self.name)
        return (self.unset if value is None else value) in self.values

    def cel(self, var: str) -> str:
        ref = f"{var}.{self.name}"
        test = f"{ref} == '{self.values[0]}'" if len(self.values) == 1 else f"{ref} in {list(self.values)}"
        if self.unset is None:
            return test
        return f"(!has({ref}) || {test})" if self.unset in self.values else f"(has({ref}) && {test})"

    def describe(self) -> str:
        unset = f" (unset means {self.unset})" if self.unset in self.values else ""
        return f"{self.name} {words(self.values)}{unset}"


@dataclass(frozen=True)
class Given(Predicate):
    """An optional field is set."""

    name: str

    def holds(self, config: ApiModel) -> bool:
        return getattr(config, self.name) is not None

    def cel(self, var: str) -> str:
        return f"has({var}.{self.name})"

    def describe(self) -> str:
        return f"a {self.name}"


@dataclass(frozen=True)
class AnyOf(Predicate):
    parts: tuple[Predicate, ...]

    def holds(self, config: ApiModel) -> bool:
        return any(p.holds(config) for p in self.parts)

    def cel(self, var: str) -> str:
        return "(" + " || ".join(p.cel(var) for p in self.parts) + ")"

    def describe(self) -> str:
        return ", or ".join(p.describe() for p in self.parts)


@dataclass(frozen=True)
class AllOf(Predicate):
    parts: tuple[Predicate, ...]

    def holds(self, config: ApiModel) -> bool:
        return all(p.holds(config) for p in self.parts)

    def cel(self, var: str) -> str:
        return "(" + " && ".join(p.cel(var) for p in self.parts) + ")"

    def describe(self) -> str:
        return " and ".join(p.describe() for p in self.parts)


ALWAYS = Always()
NEVER = Never()


@dataclass(frozen=True)
class Needs:
    """What one step (or a whole job) needs, as the worker and the operator act on it."""

    image: WorkerImage
    calibration: bool = False
    training: bool = False
    tokenizer: bool = False
    gpu: bool = False


@dataclass(frozen=True)
class Requires:
    """A technique's declaration of its needs. `advice` replaces a need's default advice in the job
    rule's message (what to do instead), keyed by need name."""

    image: WorkerImage = "worker"
    calibration: Predicate = NEVER
    training: Predicate = NEVER
    tokenizer: Predicate = NEVER
    gpu: Predicate = NEVER
    advice: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.advice) - set(NEED_NAMES)
        if unknown:
            raise ValueError(f"advice for {sorted(unknown)}: the needs are {', '.join(NEED_NAMES)}")

    def of(self, config: ApiModel) -> Needs:
        """The needs of one config of the technique."""
        return Needs(
            self.image,
            calibration=self.calibration.holds(config),
            training=self.training.holds(config),
            tokenizer=self.tokenizer.holds(config),
            gpu=self.gpu.holds(config),
        )

    def predicate(self, need: str) -> Predicate:
        found = getattr(self, need)
        assert isinstance(found, Predicate)
        return found


class TechniqueConfig(ApiModel):
    """The config of one technique: what a step's technique field holds."""

    __needs__: ClassVar[Requires]

    @property
    def needs(self) -> Needs:
        """What this config needs (calibration and training data, a tokenizer, a GPU, its image)."""
        return self.__needs__.of(self)


# --------------------------------------------------------------------------------------------
# the job-level rules, generated from the declarations

# Per need: what the rest of the spec must hold (CEL on the spec), where the error is reported, what
# the technique needs in words and the advice a message gives unless the technique has its own.
_JOB_CHECKS: dict[str, tuple[str, str, str, str]] = {
    "calibration": (
        "has(self.data) && has(self.data.calibration)",
        ".data",
        "needs data.calibration",
        "add a calibration data set",
    ),
    "training": (
        "has(self.data) && has(self.data.training)",
        ".data",
        "needs data.training",
        "add a training data set",
    ),
    "tokenizer": (
        "self.model.format == 'HuggingFace'",
        ".model.format",
        "tokenizes text with the model folder's own tokenizer, so it needs model.format HuggingFace",
        "give a transformers model folder (safetensors weights and its tokenizer)",
    ),
    "gpu": ("self.resources.gpus > 0", ".resources", "needs a GPU", "set resources.gpus to at least 1"),
}


def _step_cel(kind: str, predicate: Predicate) -> str:
    """CEL, inside `self.steps.exists(s, ...)`: step `s` runs `kind` and its config meets `predicate`."""
    where = predicate.cel(f"s.{kind}")
    return f"has(s.{kind})" if where == "true" else f"has(s.{kind}) && {where}"


def _subject(kind: str, predicate: Predicate) -> str:
    described = predicate.describe()
    return f"{kind} with {described}" if described else kind


def image_cel(techniques: Mapping[str, type[TechniqueConfig]], image: WorkerImage, var: str) -> str:
    """CEL: the step at `var` runs in `image`."""
    kinds = [kind for kind, cls in techniques.items() if cls.__needs__.image == image]
    return "(" + " || ".join(f"has({var}.{kind})" for kind in kinds) + ")"


def unmet(kind: str, config: TechniqueConfig | type[TechniqueConfig], need: str) -> str:
    """What a step of `kind` needs and what to do about it: the job rule's message, and the worker's
    when the need is only found unmet where the job runs (a GPU the node does not have)."""
    requires = config.__needs__
    predicate = requires.predicate(need)
    _, _, phrase, advice = _JOB_CHECKS[need]
    return f"{_subject(kind, predicate)} {phrase}; {requires.advice.get(need, advice)}"


def job_rules(techniques: Mapping[str, type[TechniqueConfig]]) -> tuple[Rule, ...]:
    """The CompressionJobSpec rules the declarations imply: one per technique and need it may have,
    then one that keeps a job's steps in one worker image."""
    rules = []
    for need in NEED_NAMES:
        holds, path, _, _ = _JOB_CHECKS[need]
        for kind, cls in techniques.items():
            predicate = cls.__needs__.predicate(need)
            if isinstance(predicate, Never):
                continue
            rules.append(
                Rule(
                    cel=f"!self.steps.exists(s, {_step_cel(kind, predicate)}) || ({holds})",
                    message=unmet(kind, cls, need),
                    field_path=path,
                )
            )
    images: dict[WorkerImage, list[str]] = {}
    for kind, cls in techniques.items():
        images.setdefault(cls.__needs__.image, []).append(kind)
    if len(images) > 1:
        rules.append(
            Rule(
                cel=" || ".join(f"self.steps.all(s, {image_cel(techniques, image, 's')})" for image in images),
                message="a job runs in one worker image: "
                + ", ".join(f"{words(kinds, 'and')} run in the {image} image" for image, kinds in images.items())
                + "; put steps of different images in jobs of their own",
                field_path=".steps",
            )
        )
    return tuple(rules)


def job_needs(techniques: Iterable[TechniqueConfig]) -> Needs:
    """What a job whose steps hold these configs needs: any step's need, and the one image they share."""
    each = [t.needs for t in techniques]
    images = {n.image for n in each}
    if len(images) != 1:
        raise ValueError(f"the steps run in different worker images ({words(sorted(images))})")
    return Needs(
        images.pop(),
        calibration=any(n.calibration for n in each),
        training=any(n.training for n in each),
        tokenizer=any(n.tokenizer for n in each),
        gpu=any(n.gpu for n in each),
    )
