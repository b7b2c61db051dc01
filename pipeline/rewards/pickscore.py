"""``pickscore``: PickScore (a CLIP model fine-tuned on Pick-a-Pic) from local folders.

Score = ``logit_scale * cos(image embedding, text embedding) / 26``, as Flow-GRPO scales it
(so a PickScore of about 22 in papers is about 0.85 here). The model and processor are read
with ``from_pretrained(path, local_files_only=True)``: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.config.schema import defaults_from_schema
from pipeline.data.images import as_rgb
from pipeline.rewards.base import Reward, RewardOutput, check_lengths

# Flow-GRPO divides PickScore by 26 to bring it near [0, 1].
PICKSCORE_SCALE = 26.0


@dataclass(frozen=True)
@defaults_from_schema("rewards.pickscore")
class PickScoreSettings:
    """``rewards.pickscore``: PickScoreReward's arguments of the same names."""

    model_dir: str | None
    processor_dir: str | None
    batch_size: int


class PickScoreReward(Reward):
    """Args:
    model_dir: local folder of the CLIP model (``rewards.pickscore.model_dir``).
    processor_dir: local folder of the CLIP processor (defaults to ``model_dir``).
    device: torch device.
    batch_size: images per forward pass.
    """

    name = "pickscore"
    label = "PickScore"
    settings_class = PickScoreSettings
    config_sections: ClassVar[tuple[str, ...]] = ("pickscore",)
    local_folders: ClassVar[tuple[str, ...]] = ("model_dir",)
    per_image = False
    on_device = True

    def __init__(
        self,
        model_dir: str | None,
        processor_dir: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
    ):
        for key, path in (("model_dir", model_dir), ("processor_dir", processor_dir or model_dir)):
            if not path or not Path(path).is_dir():
                raise FileNotFoundError(f"rewards.pickscore.{key}: local folder {path!r} does not exist")
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self._torch = torch
        self.processor = CLIPProcessor.from_pretrained(processor_dir or model_dir, local_files_only=True)
        self.model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval().to(device)
        self.device, self.batch_size = device, batch_size

    @classmethod
    def from_settings(cls, settings: dict, engine, device: str) -> PickScoreReward:
        return cls(device=device, **settings)

    def score(self, images: Sequence, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        check_lengths(images, prompts, metadata)
        scores = np.zeros(len(images), dtype=np.float32)
        converted = [as_rgb(image) for image in images]
        valid = [i for i, (rgb, _) in enumerate(converted) if rgb is not None]
        for start in range(0, len(valid), self.batch_size):
            rows = valid[start : start + self.batch_size]
            scores[rows] = self._score_batch([converted[i][0] for i in rows], [prompts[i] for i in rows])
        return RewardOutput(scores, [{"reason": reason} for _, reason in converted])

    def _score_batch(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        torch = self._torch
        inputs = self.processor(
            text=prompts, images=images, return_tensors="pt", padding=True, truncation=True
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            # image_embeds / text_embeds are the projected embeddings, [B, D] each.
            output = self.model(**inputs)
            image_embeds = output.image_embeds / output.image_embeds.norm(dim=-1, keepdim=True)
            text_embeds = output.text_embeds / output.text_embeds.norm(dim=-1, keepdim=True)
            logits = self.model.logit_scale.exp() * (image_embeds * text_embeds).sum(dim=-1)
        return (logits / PICKSCORE_SCALE).float().cpu().numpy()
