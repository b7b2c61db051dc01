"""Pretraining on a tiny config: the loss falls and the saved model reloads to identical outputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pipeline.models import pretraining
from pipeline.models.mini import MiniPolicy, load_mini
from pipeline.runtime.checkpoint import load_checkpoint
from pipeline.stages import pretrain_base
from pipeline.stages.base_model_card import cut_short_warning
from tests.smoke.tiny import TINY_MINI, guard_tripping_after

# The time guard, handed over outside the rerun trigger (pipeline.workflow.stage_params).
RUNTIME = ["--runtime-json", json.dumps({"max_minutes": 5.0, "on_time_limit": "fail"})]

PROMPTS = [(w, c) for w in ("CAT", "SUN", "TREE", "MOON", "LAKE") for c in ("red", "blue", "black")]


def pretrain_args(split, config: dict, out, *extra: str, runtime: list[str] = RUNTIME) -> list[str]:
    """``pipeline.stages.pretrain_base``'s arguments for ``config`` (its JSON), the run-time guard
    and ``extra``."""
    return [
        "--train",
        str(split),
        "--config-json",
        json.dumps(config),
        *runtime,
        "--out-dir",
        str(out),
        *extra,
    ]


def write_split(path):
    """A train split of :data:`PROMPTS` at ``path``."""
    rows = [{"prompt": f'The color of the text "{w}" is {c}.', "text": w, "color": c} for w, c in PROMPTS]
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_loss_falls_and_checkpoint_reloads(tmp_path):
    split = tmp_path / "train.parquet"
    pd.DataFrame(
        [
            {"prompt": f'A sign "{w}". The color of the text "{w}" is {c}.', "text": w, "color": c}
            for w, c in PROMPTS
        ]
    ).to_parquet(split)
    config = {
        "pretrain": {"steps": 40, "batch_size": 8, "checkpoint_every": 20, "warmup_steps": 5},
        "mini": TINY_MINI,
    }
    out = tmp_path / "base"
    assert pretrain_base.main(pretrain_args(split, config, out)) == 0
    losses = pd.read_parquet(out / "metrics.parquet")["loss"]
    assert losses.iloc[-1] < 0.7 * losses.iloc[0]

    saved = MiniPolicy(load_mini(out / "model"), trainable=False)
    model = pretraining.build_model(
        pretraining.MiniModelConfig(**{**TINY_MINI, "block_out_channels": (16, 32, 32)}), 0
    )
    weights, state = load_checkpoint(out / "checkpoint", torch.optim.AdamW(model.parameters()))
    assert state["step"] == 40
    model.load_state_dict(weights)
    from_checkpoint = MiniPolicy(model, trainable=False)
    cond, _ = saved.encode(['A sign "CAT". The color of the text "CAT" is red.'])
    x, sigma = torch.randn(1, 3, 32, 128), torch.tensor([0.5])
    with torch.no_grad():
        torch.testing.assert_close(
            saved.velocity(x, sigma, cond), from_checkpoint.velocity(x, sigma, cond), rtol=0, atol=0
        )


def test_moving_average_is_saved_and_checkpointed(tmp_path):
    """With ``ema_decay`` the saved model holds the averaged weights, which the checkpoint
    keeps beside the raw ones (``ema.<parameter index>``) so that a resumed run continues the average."""
    split = write_split(tmp_path / "train.parquet")
    config = {
        "pretrain": {"steps": 6, "batch_size": 4, "checkpoint_every": 6, "warmup_steps": 1, "ema_decay": 0.5},
        "mini": TINY_MINI,
    }
    out = tmp_path / "base"
    assert pretrain_base.main(pretrain_args(split, config, out)) == 0
    saved = load_mini(out / "model").state_dict()
    model = pretraining.build_model(pretraining.MiniModelConfig(**TINY_MINI), 0)
    weights, _ = load_checkpoint(out / "checkpoint", torch.optim.AdamW(model.parameters()))
    names = [name for name, _ in model.named_parameters()]
    assert {f"ema.{i}" for i in range(len(names))} <= set(weights)
    for i, name in enumerate(names):
        torch.testing.assert_close(saved[name], weights[f"ema.{i}"], rtol=0, atol=0)
    assert any(not torch.equal(saved[name], weights[name]) for name in names)


def test_checkpoint_of_another_model_config_starts_afresh(tmp_path):
    """A leftover checkpoint of another architecture (here without templates) is not
    restored, not even into the optimizer, and training starts again from step 0."""
    split = write_split(tmp_path / "train.parquet")
    out = tmp_path / "base"
    for mini in (TINY_MINI, TINY_MINI | {"template_channels": 2}):
        config = {"pretrain": {"steps": 2, "batch_size": 2, "checkpoint_every": 2}, "mini": mini}
        args = pretrain_args(split, config, out)
        assert pretrain_base.main(args) == 0
    assert json.loads((out / "train_info.json").read_text())["model_config"]["template_channels"] == 2
    assert pd.read_parquet(out / "metrics.parquet")["step"].tolist() == [0, 1]


def test_infinite_gradient_at_the_last_step_fails_and_writes_nothing_non_finite(tmp_path, monkeypatch):
    """A finite loss with an infinite gradient at the last pretraining step: the job fails
    naming the step, the model is not written, and the kept checkpoint is finite and loads."""
    split = write_split(tmp_path / "train.parquet")
    real = pretraining.flow_matching_loss
    calls = {"n": 0}

    def poisoned(predicted, *args):
        calls["n"] += 1
        loss = real(predicted, *args)
        if calls["n"] == 6:
            drift = predicted.sum() - predicted.sum().detach()  # 0, with a gradient
            loss = loss + torch.sqrt(drift.abs())  # value unchanged, gradient infinite
        return loss

    monkeypatch.setattr(pretraining, "flow_matching_loss", poisoned)
    config = {
        "pretrain": {"steps": 6, "batch_size": 4, "checkpoint_every": 3, "warmup_steps": 1},
        "mini": TINY_MINI,
    }
    out = tmp_path / "base"
    args = pretrain_args(split, config, out)
    with pytest.raises(FloatingPointError, match=r"gradient norm is (inf|nan) at step 5"):
        pretrain_base.main(args)
    assert not (out / "model" / "model.safetensors").exists()
    model = pretraining.build_model(
        pretraining.MiniModelConfig(**{**TINY_MINI, "block_out_channels": (16, 32, 32)}), 0
    )
    weights, state = load_checkpoint(out / "checkpoint", torch.optim.AdamW(model.parameters()))
    assert state["step"] == 3 and all(torch.isfinite(w).all() for w in weights.values())


def _pretrain_bytes(split, out, monkeypatch=None, stop_at: int | None = None) -> bytes:
    """Pretrain 10 steps on one thread (checkpoints every 4); with ``stop_at`` the job is
    interrupted at that step first, then rerun to completion. The model file's bytes."""
    config = {
        "pretrain": {"steps": 10, "batch_size": 8, "checkpoint_every": 4, "warmup_steps": 2},
        "mini": TINY_MINI,
    }
    args = pretrain_args(split, config, out, "--threads", "1")
    if stop_at is not None:
        real, calls = pretraining.flow_matching_loss, {"n": 0}

        def interrupted(*loss_args):
            calls["n"] += 1
            if calls["n"] > stop_at:
                raise KeyboardInterrupt  # as a kill would, between checkpoints
            return real(*loss_args)

        monkeypatch.setattr(pretraining, "flow_matching_loss", interrupted)
        with pytest.raises(SystemExit, match=r"interrupted \(Ctrl-C\): the last checkpoint in .* is kept"):
            pretrain_base.main(args)
        monkeypatch.setattr(pretraining, "flow_matching_loss", real)
    assert pretrain_base.main(args) == 0
    return (out / "model" / "model.safetensors").read_bytes()


def test_pretraining_is_bit_reproducible_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    split = write_split(tmp_path / "train.parquet")
    threads = torch.get_num_threads()
    try:
        first = _pretrain_bytes(split, tmp_path / "a")
        assert _pretrain_bytes(split, tmp_path / "b") == first
        assert _pretrain_bytes(split, tmp_path / "c", monkeypatch, stop_at=6) == first
    finally:
        torch.set_num_threads(threads)
    assert torch.are_deterministic_algorithms_enabled() is False  # the stage restores the global switch


@pytest.mark.parametrize("action", ["fail", "stop"])
def test_time_guard_fails_or_marks_the_base_model_cut_short(tmp_path, monkeypatch, action):
    split = write_split(tmp_path / "train.parquet")
    out = tmp_path / "base"
    config = {"pretrain": {"steps": 6, "batch_size": 2, "checkpoint_every": 6}, "mini": TINY_MINI}
    guard = ["--runtime-json", json.dumps({"on_time_limit": action, "max_minutes": 2.0})]
    args = pretrain_args(split, config, out, runtime=guard)
    monkeypatch.setattr(pretraining, "TimeGuard", guard_tripping_after(3))
    if action == "fail":
        with pytest.raises(SystemExit, match=r"pretrain.max_minutes = 2 min: 3 of 6 steps done"):
            pretrain_base.main(args)
        assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
        assert not (out / "train_info.json").exists()
        return
    assert pretrain_base.main(args) == 0
    info = json.loads((out / "train_info.json").read_text())
    assert (info["steps"], info["steps_configured"], info["cut_short"]) == (3, 6, True)
    assert "WARNING: cut short by its time guard after 3 of 6 steps" in cut_short_warning(info)
    assert cut_short_warning(info | {"cut_short": False}) == ""


def test_a_code_edit_retrains_instead_of_resuming_the_finished_checkpoint(tmp_path, monkeypatch, capsys):
    """The workflow reruns pretraining after an edit of its code; the old code's finished
    checkpoint must not stand in for the new code's model."""
    split = write_split(tmp_path / "train.parquet")
    config = {"pretrain": {"steps": 4, "batch_size": 2, "checkpoint_every": 2}, "mini": TINY_MINI}
    args = pretrain_args(split, config, tmp_path / "b")
    assert pretrain_base.main(args) == 0
    assert pretrain_base.main(args) == 0  # same code: resumes at the end, trains nothing
    assert "resuming from step 4" in capsys.readouterr().out
    monkeypatch.setattr(pretrain_base, "sources_digest", lambda entry: "edited")
    assert pretrain_base.main(args) == 0
    out = capsys.readouterr().out
    assert "starting afresh" in out and "step 4/4" in out
