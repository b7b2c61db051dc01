"""Multi-process training: prompt shards, rank-independent noise, and two gloo processes on the
CPU that end a training iteration with identical parameters, equal to one process's.

Run as a module, this file is a torchrun worker: ``pipeline.stages.train``'s entry point, with each
rank's trained weights saved to ``$DUMP_RANK_WEIGHTS/rank<r>.safetensors`` afterwards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.config.types import MethodConfig, TrainConfig
from pipeline.models.backends import load_policy
from pipeline.models.weights import trainable_weights
from pipeline.rewards import build_rewards
from pipeline.rl import distributed, rollouts, trainer
from pipeline.rl.distributed import Ranks
from pipeline.rl.launch import Layout, launch
from pipeline.rl.settings import LoopSettings, MethodSpec, loop_settings, method_spec
from pipeline.stages import train
from tests.conftest import REPO
from tests.smoke.tiny import tiny_mini_dir, train_config_json, train_jsons

DUMP = "DUMP_RANK_WEIGHTS"
WORDS = [("CAT", "red"), ("SUN", "blue"), ("TREE", "green"), ("MOON", "black")]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (threads contend on shared cores), as the workers do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("split") / "train.parquet")


def write_split(path: Path) -> Path:
    """A train split of the four WORDS, one prompt each, at ``path``."""
    rows = [
        {"prompt": f'A sign that reads "{w}". The color of the text "{w}" is {c}.', "text": w, "color": c}
        for w, c in WORDS
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path


def _settings(raw: dict) -> tuple[MethodSpec, LoopSettings]:
    settings = loop_settings(TrainConfig(**raw["train"]), raw["sampling"])
    method = method_spec(MethodConfig(**raw["method"]), raw["sampling"]["train_steps"])
    return method, settings


def _args(base: Path, split: Path, out: Path, jsons: tuple[str, str]) -> list[str]:
    return [
        "--method",
        "multi_grpo",
        "--train",
        str(split),
        "--base-model",
        str(base),
        "--config-json",
        jsons[0],
        "--runtime-json",
        jsons[1],
        "--out-dir",
        str(out),
        "--device",
        "cpu",
    ]


def test_shards_cover_the_batch_in_order():
    shards = [distributed.prompt_shard(6, Ranks(r, 3)) for r in range(3)]
    assert [list(range(6))[s] for s in shards] == [[0, 1], [2, 3], [4, 5]]
    assert distributed.prompt_shard(5, Ranks()) == slice(0, 5)
    with pytest.raises(ValueError, match=r"train.prompts_per_iteration 5 is not divisible by the 2"):
        distributed.prompt_shard(5, Ranks(1, 2))


def test_indivisible_batch_fails_before_any_launch(tmp_path, split, monkeypatch):
    def no_launch(*args):
        raise AssertionError("launched")

    monkeypatch.setattr(train, "launch", no_launch)
    jsons = train_jsons(prompts_per_iteration=3, equal_sampling_nfe=False)  # 3 stays 3
    with pytest.raises(SystemExit, match="train.prompts_per_iteration 3 is not divisible by the 2"):
        train.main([*_args(tmp_path, split, tmp_path / "out", jsons), "--nproc", "2"])


def test_main_relaunches_itself_through_torchrun(tmp_path, split, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "launch", lambda *args: calls.append(args) or 7)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = [*_args(tmp_path, split, tmp_path / "out", train_jsons(gpus=2)), "--nproc", "2"]
    assert train.main(argv) == 7  # the launcher's exit code
    assert calls == [(Layout(2), "pipeline.stages.train", argv)]
    # One process that may restart (train.max_restarts) runs under torchrun's agent too.
    config_json, runtime_json = train_jsons()
    restarting = (config_json, json.dumps(json.loads(runtime_json) | {"max_restarts": 1}))
    argv = _args(tmp_path, split, tmp_path / "restarting", restarting)
    assert train.main(argv) == 7 and calls[-1] == (Layout(1, 1, 1), "pipeline.stages.train", argv)


def test_prompt_noise_does_not_depend_on_the_shard(tmp_path):
    """A prompt sampled with others, or alone at its global position, gets the same tree."""
    policy = load_policy("mini", tiny_mini_dir(tmp_path / "mini"), device="cpu")
    method, settings = _settings(json.loads(train_config_json()))
    prompts = ['a sign "AB"', 'a sign "CD"', 'a sign "EF"']
    whole = rollouts.sample_prompts(policy, prompts, 0, method, settings, iteration=3)
    tail = rollouts.sample_prompts(policy, prompts[1:], 1, method, settings, iteration=3)
    mine = whole.edge_prompt >= 1
    torch.testing.assert_close(whole.next_latents[mine], tail.next_latents, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.log_prob[mine], tail.log_prob, rtol=0, atol=1e-6)
    # merged ids: the second forest's nodes follow the first's, its prompts are renumbered
    assert torch.equal(whole.edge_prompt[mine] - 1, tail.edge_prompt)
    assert torch.equal(whole.leaf_prompt, torch.arange(3).repeat_interleave(len(tail.leaf_prompt) // 2))
    child = whole.node_parent >= 0
    assert torch.equal(whole.node_prompt[whole.node_parent[child]], whole.node_prompt[child])
    assert whole.nfe == tail.nfe * 3 // 2


def test_bf16_autocast_trains_float32_weights(tmp_path, split):
    policy = load_policy("mini", tiny_mini_dir(tmp_path / "mini"), device="cpu")
    method, settings = _settings(json.loads(train_config_json(mixed_precision="bf16")))
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    rewards = build_rewards(["ocr", "color", "quality"])
    row = trainer.run_iteration(policy, optimizer, rewards, pd.read_parquet(split), method, settings, 0)
    assert row["trained_edges"] > 0 and torch.isfinite(torch.tensor(row["loss"]))
    after = policy.trainable_parameters()
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def plain_sgd(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Stands in for AdamW where weights are compared: SGD's step is linear in the gradient,
    while AdamW's first step is about ``lr * sign(g)``, blind to a wrong gradient scale and
    flipping with rounding noise where ``g`` is near zero (biases before a GroupNorm)."""
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def test_two_processes_match_one(tmp_path, split, monkeypatch):
    """One iteration (two optimizer steps) with two gloo processes: both ranks end with the
    same weights, equal to one process's on the same global batch within float rounding."""
    base = tiny_mini_dir(tmp_path / "mini")
    # lr 1: steps of about 1e-2, so a gradient wrong by a fraction shows far above 1e-5
    # gpus 2: a tree's reinvested prompts (train.equal_sampling_nfe) stay a multiple of the processes
    config_json, runtime_json = train_jsons(iterations=1, probe_every=1, learning_rate=1.0, gpus=2)
    raw = json.loads(config_json)
    raw["method"]["std_mode"] = "global"  # advantages need the other rank's rewards
    jsons = (json.dumps(raw), runtime_json)
    monkeypatch.setattr(torch.optim, "AdamW", plain_sgd)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(DUMP, str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    assert train.main(_args(base, split, tmp_path / "one", jsons)) == 0
    argv = [*_args(base, split, tmp_path / "two", jsons), "--nproc", "2"]
    assert launch(Layout(2), "tests.smoke.test_distributed", argv) == 0

    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    two, one = (load_file(tmp_path / out / "weights.safetensors") for out in ("two", "one"))
    initial = trainable_weights(load_policy("mini", base, device="cpu"))
    assert ranks[0].keys() == ranks[1].keys() == two.keys() == one.keys() == initial.keys()
    for name in one:
        assert torch.equal(ranks[0][name], ranks[1][name]), f"ranks differ on {name}"
        assert torch.equal(ranks[0][name], two[name])
    difference = max((two[k] - one[k]).abs().max().item() for k in one)
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    print(f"max |two processes - one process| = {difference:.2e}; largest update {moved:.2e}")
    assert moved > 1e-3 and difference < 1e-5

    metrics = {out: pd.read_parquet(tmp_path / out / "metrics.parquet") for out in ("one", "two")}
    assert len(metrics["two"]) == 1  # rank 0 alone writes
    same = ["nfe_sampling", "nfe_training", "nfe_cumulative", "trained_edges", "edges", "reward_mixed"]
    pd.testing.assert_frame_equal(metrics["one"][same], metrics["two"][same], rtol=1e-4)
    assert metrics["two"].grad_norm.item() == pytest.approx(metrics["one"].grad_norm.item(), rel=1e-4)
    probes = {out: pd.read_parquet(tmp_path / out / "probe.parquet") for out in ("one", "two")}
    assert list(probes["two"].iteration) == [0, 1]
    # Weights equal to ~1e-7 can still move a thresholded reward (quality) by a pixel's worth.
    pd.testing.assert_frame_equal(probes["one"], probes["two"], rtol=1e-3)


def _dump_weights_after_training(folder: Path) -> None:
    """Wrap the training run the stage calls (``pipeline.rl.trainer.train``, bound in
    ``pipeline.stages.train``) so that every rank saves its weights when it returns."""
    real = train.train

    def dumping(policy, *args, **kwargs):
        info = real(policy, *args, **kwargs)
        weights = {k: v.contiguous() for k, v in trainable_weights(policy).items()}
        save_file(weights, folder / f"rank{os.environ['RANK']}.safetensors")
        return info

    train.train = dumping


if __name__ == "__main__":
    torch.optim.AdamW = plain_sgd
    _dump_weights_after_training(Path(os.environ[DUMP]))
    sys.exit(train.main())
