"""The reward interface: ``reward(images, prompts, metadata) -> float32 [N]``.

``metadata`` is one dict per image. Rewards read the target text (``text``; else the
prompt's first double-quoted span) and colour (``color``) from it, and a precomputed
:class:`~pipeline.rewards.ocr.OcrReading` under ``ocr`` if the caller has one, so that
several rewards reading the same image run OCR once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from pipeline.data.curation import first_quoted_span
from pipeline.data.images import as_rgb
from pipeline.data.palette import COLOR_NAMES
from pipeline.rewards.ocr import OcrEngine


@dataclass
class RewardOutput:
    """Scores and their explanations.

    Attributes:
        scores: ``[N]`` float32.
        details: one dict per image of explanation columns (``reason`` is set, non-empty,
            when an image could not be scored and got 0).
    """

    scores: np.ndarray
    details: list[dict] = field(default_factory=list)


class Reward:
    """Base class: subclasses set ``name`` and the metadata below, and implement :meth:`score`.

    The metadata is all that the trainer, the score and report stages, the model card and the
    workflow know of a reward, so a new reward is its module plus one line in the registry
    (``pipeline/rewards/__init__.py``); a config names it like any other.
    """

    name: str = ""
    # How tables, figures and the report name it.
    label: str = ""
    # Whether a larger score is better; the report's standardised gains flip the sign if not.
    higher_is_better: bool = True
    # 0/1 indicators in its details, reported as rates beside its score: detail key -> label.
    indicators: ClassVar[dict[str, str]] = {}
    # The dataclass of its own settings section ``rewards.<name>`` (None: it has none). Fields
    # without a value in the config take the class's defaults; the built-in rewards' classes
    # read theirs from the schema, which also documents them (docs/config.md).
    settings_class: ClassVar[type | None] = None
    # The ``rewards`` config sections it reads: its own, and the shared OCR engine's ("ocr")
    # if it reads text. A stage is handed (and reruns for) these sections only.
    config_sections: ClassVar[tuple[str, ...]] = ()
    # Keys of its own config section that name local folders; the workflow checks that they
    # exist before any job.
    local_folders: ClassVar[tuple[str, ...]] = ()
    # Whether scoring an image reads its text with the OCR engine (callers then run OCR once
    # for every reward that needs it).
    needs_ocr: bool = False
    # Per-image rewards are spread over worker processes by the scoring stage; the others
    # (model-based, batched) run once over all images in the main process.
    per_image: bool = True
    # Whether it runs a model on the job's device (the training policy's GPU; the score
    # stage's GPU, which the workflow then grants it). CPU rewards stay in worker processes.
    on_device: bool = False

    @classmethod
    def read_settings(cls, section: dict):
        """Its settings (an instance of :attr:`settings_class`) from its config section, absent
        keys at their defaults. A key the class lacks, or a value of another type than the
        key's default, is a ValueError naming ``rewards.<name>.<key>``."""
        if cls.settings_class is None:
            if section:
                raise ValueError(f"'rewards.{cls.name}': this reward has no settings ({dict(section)})")
            return None
        fields = {f.name: f for f in dataclasses.fields(cls.settings_class)}
        for key, value in section.items():
            if key not in fields:
                raise ValueError(
                    f"'rewards.{cls.name}.{key}': unknown key (valid keys here: {', '.join(fields)})"
                )
            default = fields[key].default
            if not _same_kind(value, default):
                raise ValueError(
                    f"'rewards.{cls.name}.{key}': {value!r} is invalid: the default is {default!r}, "
                    f"a {type(default).__name__}"
                )
        return cls.settings_class(**section)

    @classmethod
    def from_settings(cls, settings: dict, engine: Callable[[], OcrEngine], device: str) -> Reward:
        """Build from this reward's config section; ``engine()`` returns the shared OCR engine."""
        return cls(**settings)

    # The detail keys every image gets, at their values for an image that is not scored.
    detail_defaults: ClassVar[dict] = {}

    def target(self, prompt: str, meta: dict, row: int):
        """What image ``row`` must show (checked for every row before any is scored); None for
        a reward without a target."""
        return None

    def score_image(self, rgb: np.ndarray, meta: dict, target) -> tuple[float, dict]:
        """One readable image's score and details (over :attr:`detail_defaults`; a ``reason``
        says why it scored 0). ``rgb``: uint8 ``[H, W, 3]``."""
        raise NotImplementedError

    def score(self, images: Sequence, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        """Every image through :meth:`score_image`; one that cannot be read as RGB scores 0 with
        its reason. Batched rewards (PickScore) override this instead."""
        check_lengths(images, prompts, metadata)
        targets = [self.target(p, m, row) for row, (p, m) in enumerate(zip(prompts, metadata, strict=True))]
        scores = np.zeros(len(images), dtype=np.float32)
        details = []
        for row, (image, meta, target) in enumerate(zip(images, metadata, targets, strict=True)):
            rgb, reason = as_rgb(image)
            detail = {"reason": reason} | self.detail_defaults
            if rgb is not None:
                scores[row], found = self.score_image(rgb, meta, target)
                detail |= found
            details.append(detail)
        return RewardOutput(scores, details)

    def __call__(self, images: Sequence, prompts: Sequence[str], metadata: Sequence[dict]) -> np.ndarray:
        return self.score(images, prompts, metadata).scores


def _same_kind(value, default) -> bool:
    """Whether config ``value`` may stand where the settings class has ``default``: the same
    type (an int for a float), or either of them null (an optional key)."""
    if value is None or default is None or default is dataclasses.MISSING:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def target_text(prompt: str, meta: dict, row: int) -> str:
    """The text image ``row`` must show: ``meta['text']`` or the prompt's first quoted span."""
    text = meta.get("text")
    if text is None or (isinstance(text, float) and np.isnan(text)):
        span = first_quoted_span(prompt)
        text = (span.group(1) or span.group(2)) if span else ""
    if not str(text).strip():
        raise ValueError(
            f"row {row}: no target text (no 'text' value and no quoted span in prompt {prompt!r})"
        )
    return str(text)


def target_color(meta: dict, row: int) -> str:
    color = meta.get("color")
    if color not in COLOR_NAMES:
        raise ValueError(f"row {row}: target colour {color!r} is not one of {', '.join(COLOR_NAMES)}")
    return color


def check_lengths(images: Sequence, prompts: Sequence[str], metadata: Sequence[dict]) -> None:
    if not len(images) == len(prompts) == len(metadata):
        raise ValueError(
            f"{len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata rows differ"
        )
