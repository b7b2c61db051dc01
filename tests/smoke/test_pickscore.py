"""PickScore loading and scoring on a tiny CLIP model and processor built and saved here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from pipeline.data.text_images import LIGHT, render
from pipeline.rewards import build_rewards
from pipeline.rewards.pickscore import PICKSCORE_SCALE


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer built from its vocabulary (no files, no hub)."""
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pickscore")
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "processor")
    return folder, model, processor


def test_pickscore_matches_a_direct_computation(tiny_pickscore):
    folder, model, processor = tiny_pickscore
    reward = build_rewards(
        ["pickscore"],
        {"pickscore": {"model_dir": str(folder / "model"), "processor_dir": str(folder / "processor")}},
    )["pickscore"]
    images = [render("HELLO", (220, 30, 30), LIGHT), render("CAT", (30, 70, 220), LIGHT)]
    prompts = ['A red sign "HELLO"', 'A blue sign "CAT"']
    out = reward.score(images, prompts, [{}, {}])

    # Independent path: CLIP's own similarity matrix, whose diagonal pairs image i with text i.
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.diagonal() / PICKSCORE_SCALE
    np.testing.assert_allclose(out.scores, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert out.scores.dtype == np.float32


def test_pickscore_bad_images_score_zero(tiny_pickscore):
    folder, _, _ = tiny_pickscore
    reward = build_rewards(
        ["pickscore"],
        {"pickscore": {"model_dir": str(folder / "model"), "processor_dir": str(folder / "processor")}},
    )["pickscore"]
    out = reward.score([np.zeros((32, 128, 3), np.uint8)], ["x"], [{}])
    assert out.scores[0] == 0 and out.details[0]["reason"] == "blank"


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="rewards.pickscore.model_dir.*does not exist"):
        build_rewards(["pickscore"], {"pickscore": {"model_dir": str(tmp_path / "absent")}})


def test_training_scores_pickscore_on_the_policy_device_and_ocr_in_cpu_workers(tiny_pickscore):
    from pipeline.rl.trainer import rollout_scorer

    folder, _, _ = tiny_pickscore
    settings = {"pickscore": {"model_dir": str(folder / "model"), "processor_dir": str(folder / "processor")}}
    # The meta device stands in for a GPU: a model left on the CPU would show here.
    scorer = rollout_scorer(["pickscore", "color"], settings, 2, torch.device("meta"))
    try:
        devices = {p.device.type for p in scorer.rewards["pickscore"].model.parameters()}
        assert devices == {"meta"}
        assert scorer.pooled == ["color"] and list(scorer.local) == ["pickscore"]
    finally:
        scorer.close()
