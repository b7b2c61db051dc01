"""GRPO training on tiny models: parameters move, frozen ones do not; resume; NaN handling."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from pipeline.config.types import MethodConfig, TrainConfig
from pipeline.models.backends import load_policy
from pipeline.rewards import build_rewards
from pipeline.rl import rollouts, trainer, update
from pipeline.rl.settings import loop_settings, method_spec
from pipeline.rl.trainer import run_iteration
from pipeline.runtime.checkpoint import load_checkpoint, save_checkpoint
from pipeline.runtime.time_guard import TimeGuard
from pipeline.stages import train
from tests.conftest import REPO
from tests.smoke.tiny import guard_tripping_after, tiny_mini_dir, train_config_json, train_jsons


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
    rows = [
        {"prompt": f'A sign that reads "{w}". The color of the text "{w}" is {c}.', "text": w, "color": c}
        for w, c in [("CAT", "red"), ("SUN", "blue"), ("TREE", "green"), ("MOON", "black")]
    ]
    path = tmp_path_factory.mktemp("split") / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def _one_iteration(policy, split, raw):
    cfg = TrainConfig(**raw["train"])
    settings = loop_settings(cfg, raw["sampling"])
    method = method_spec(MethodConfig(**raw["method"]), raw["sampling"]["train_steps"])
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    rewards = build_rewards(["ocr", "color", "quality"])
    return run_iteration(policy, optimizer, rewards, pd.read_parquet(split), method, settings, 0)


def test_edge_fraction_trains_that_share_of_the_edges(tmp_path, train_split):
    mini = tiny_mini_dir(tmp_path / "mini")
    trained = {}
    for fraction in (1.0, 0.5):
        policy = load_policy("mini", mini, device="cpu")
        raw = json.loads(train_config_json("flow_grpo", edge_fraction=fraction, train_last_step=True))
        trained[fraction] = _one_iteration(policy, train_split, raw)["trained_edges"]
    assert trained[1.0] > 0
    assert trained[0.5] == round(trained[1.0] / 2)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_one_step_changes_trainable_and_nothing_frozen(tmp_path, train_split, lora_rank):
    policy = load_policy(
        "mini", tiny_mini_dir(tmp_path / "mini"), lora_rank=lora_rank, lora_alpha=lora_rank, device="cpu"
    )
    if lora_rank:  # LoRA's B starts at zero; give it a value so its gradient reaches A too
        with torch.no_grad():
            for p in policy.trainable_parameters():
                p.add_(0.01 * torch.randn_like(p))
    trainable = {id(p) for p in policy.trainable_parameters()}
    before = {n: p.detach().clone() for n, p in policy.module.named_parameters()}
    row = _one_iteration(policy, train_split, json.loads(train_config_json()))
    assert row["trained_edges"] > 0
    changed = {n for n, p in policy.module.named_parameters() if not torch.equal(before[n], p)}
    frozen = {n for n, p in policy.module.named_parameters() if id(p) not in trainable}
    assert changed, "no trainable parameter moved"
    assert not changed & frozen, f"frozen parameters changed: {sorted(changed & frozen)[:3]}"


def test_sd3_lora_step(tmp_path, train_split):
    from pipeline.models.sd3_random import build_random_sd3

    folder = build_random_sd3(tmp_path / "sd3", "tiny")
    policy = load_policy("sd3", folder, lora_rank=4, lora_alpha=8, resolution=64, device="cpu")
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in policy.module.named_parameters()}
    _one_iteration(policy, train_split, json.loads(train_config_json("flow_grpo")))
    changed = {n for n, p in policy.module.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora" in n for n in changed)


def _train_args(tmp_path, split, jsons):
    return [
        "--method",
        "multi_grpo",
        "--train",
        str(split),
        "--base-model",
        str(tmp_path / "mini"),
        "--config-json",
        jsons[0],
        "--runtime-json",
        jsons[1],
        "--out-dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]


def test_killed_run_resumes_and_completes(tmp_path, train_split):
    tiny_mini_dir(tmp_path / "mini")
    jsons = train_jsons(iterations=4, checkpoint_every=1, probe_every=2)
    args = [sys.executable, "-m", "pipeline.stages.train", *_train_args(tmp_path, train_split, jsons)]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "out" / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert state.exists(), "no checkpoint was written"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = json.loads(state.read_text())["iteration"]
    assert done < 4, "the run finished before it could be killed"
    assert train.main(_train_args(tmp_path, train_split, jsons)) == 0
    metrics = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert list(metrics.iteration) == [0, 1, 2, 3]
    probes = pd.read_parquet(tmp_path / "out" / "probe.parquet")
    assert list(probes.iteration) == [0, 2, 4]  # none repeated or lost across the kill
    assert (tmp_path / "out" / "weights.safetensors").exists()


def test_one_ctrl_c_stops_training_with_its_reward_workers_and_a_rerun_resumes(tmp_path, train_split):
    """Ctrl-C sends SIGINT to the terminal's whole process group: the stage and its reward
    workers. The workers leave it to the stage, which ends its pool and stops within seconds
    (it hung on a dead pool's lock), its last checkpoint intact; a rerun resumes."""
    tiny_mini_dir(tmp_path / "mini")
    jsons = train_jsons(iterations=5, checkpoint_every=1, score_workers=2)
    args = [sys.executable, "-m", "pipeline.stages.train", *_train_args(tmp_path, train_split, jsons)]
    process = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # As in a terminal: a shell's background job (CI's, maybe) inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    state = tmp_path / "out" / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert state.exists(), process.stdout.read() if process.poll() is not None else "no checkpoint yet"
    time.sleep(0.5)  # into the next iteration's rollouts and scoring
    interrupted = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("one Ctrl-C did not stop training within 30 s") from None
    assert process.returncode != 0 and time.monotonic() - interrupted < 30
    assert "interrupted (Ctrl-C): the last checkpoint in" in output, output  # one was complete
    _wait_until_the_group_is_gone(process.pid)
    done = json.loads(state.read_text())["iteration"]
    assert 1 <= done < 5, "the run finished before it could be interrupted"
    assert train.main(_train_args(tmp_path, train_split, jsons)) == 0
    assert list(pd.read_parquet(tmp_path / "out" / "metrics.parquet").iteration) == [0, 1, 2, 3, 4]


def _wait_until_the_group_is_gone(pgid: int, seconds: float = 10.0) -> None:
    """No process of group ``pgid`` (the stage's reward workers, its forkserver) outlives it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError(
        f"processes of the stopped stage's group {pgid} were still running after {seconds} s"
    )


def test_a_split_smaller_than_an_iteration_stops_before_the_model_loads(tmp_path, train_split):
    """The DAG's check bounds the split by its source; curation may still drop prompts."""
    jsons = train_jsons(prompts_per_iteration=6, equal_sampling_nfe=False)
    with pytest.raises(SystemExit, match=r"train.parquet: 4 prompts, fewer than the 6 distinct prompts"):
        train.main(_train_args(tmp_path, train_split, jsons))  # no base model in tmp_path: not loaded


def test_nan_loss_stops_with_an_error_and_keeps_the_checkpoint(tmp_path, train_split, monkeypatch):
    tiny_mini_dir(tmp_path / "mini")
    real = update.ppo_clip_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan"), stats) if calls["n"] > 1 else (loss, stats)

    monkeypatch.setattr(update, "ppo_clip_loss", poisoned)
    jsons = train_jsons(iterations=3, checkpoint_every=1, optimizer_steps_per_iteration=1, microbatch=1000)
    with pytest.raises(SystemExit, match="iteration 1: loss is nan; the last good checkpoint is kept"):
        train.main(_train_args(tmp_path, train_split, jsons))
    state = json.loads((tmp_path / "out" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 1


def test_probe_is_deterministic_and_sees_the_policy_change(tmp_path, train_split):
    policy = load_policy("mini", tiny_mini_dir(tmp_path / "mini"), device="cpu")
    raw = json.loads(train_config_json())
    settings = loop_settings(TrainConfig(**raw["train"]), raw["sampling"])
    batch = rollouts.probe_batch(pd.read_parquet(train_split), 3, seed=0)
    assert len(batch) == 3 and batch.equals(rollouts.probe_batch(pd.read_parquet(train_split), 3, seed=0))
    rewards = build_rewards(["ocr", "color", "quality"])
    first, second = (rollouts.probe(policy, rewards, batch, settings, steps=3) for _ in range(2))
    assert first == second
    rows = 2 if settings.guidance > 1 else 1  # conditional (+ unconditional) rows per call
    assert first["nfe_probe"] == 3 * 3 * rows  # prompts x steps x rows
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.5 * torch.randn_like(p))
    moved = rollouts.probe(policy, rewards, batch, settings, steps=3)
    assert moved["quality_mean"] != first["quality_mean"]


def test_infinite_gradient_with_finite_loss_stops_before_the_step(tmp_path, train_split, monkeypatch):
    """A finite loss whose gradient is infinite (sqrt at 0) in the last optimizer step of the
    second iteration: the job stops naming the iteration and step, nothing non-finite is
    written, and the last good checkpoint loads."""
    tiny_mini_dir(tmp_path / "mini")
    real = update.ppo_clip_loss
    calls = {"n": 0}

    def poisoned(log_prob, *args, **kwargs):
        calls["n"] += 1
        loss, stats = real(log_prob, *args, **kwargs)
        if calls["n"] == 4:
            drift = log_prob.sum() - log_prob.sum().detach()  # 0, with a gradient
            loss = loss + torch.sqrt(drift.abs())  # value unchanged, gradient infinite
        return loss, stats

    monkeypatch.setattr(update, "ppo_clip_loss", poisoned)
    jsons = train_jsons(
        iterations=3, checkpoint_every=1, optimizer_steps_per_iteration=2, microbatch=1000, probe_prompts=0
    )
    with pytest.raises(SystemExit, match=r"iteration 1: gradient norm is (inf|nan) at optimizer step 2 of 2"):
        train.main(_train_args(tmp_path, train_split, jsons))
    assert calls["n"] == 4
    assert not (tmp_path / "out" / "weights.safetensors").exists()
    policy = load_policy("mini", tmp_path / "mini", device="cpu")
    optimizer = torch.optim.AdamW(policy.trainable_parameters())
    weights, state = load_checkpoint(tmp_path / "out" / "checkpoint", optimizer, counter="iteration")
    assert state["iteration"] == 1
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_checkpoint_refuses_non_finite_weights_and_keeps_the_previous(tmp_path):
    weights = {"w": torch.ones(3)}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    save_checkpoint(tmp_path / "ckpt", weights, optimizer, {"iteration": 1})
    with pytest.raises(
        FloatingPointError, match=r"checkpoint .*ckpt: non-finite values in w; nothing written"
    ):
        save_checkpoint(
            tmp_path / "ckpt", {"w": torch.tensor([1.0, float("inf"), 0.0])}, optimizer, {"iteration": 2}
        )
    restored, state = load_checkpoint(tmp_path / "ckpt", optimizer, counter="iteration")
    assert state["iteration"] == 1 and torch.equal(restored["w"], torch.ones(3))


def test_time_guard_fails_keeps_a_checkpoint_and_a_rerun_finishes(tmp_path, train_split, monkeypatch):
    tiny_mini_dir(tmp_path / "mini")
    jsons = train_jsons(iterations=4, checkpoint_every=4, on_time_limit="fail", max_minutes=8.0)
    monkeypatch.setattr(trainer, "TimeGuard", guard_tripping_after(2))
    with pytest.raises(SystemExit, match=r"time guard train.max_minutes = 8 min: 2 of 4 iterations done"):
        train.main(_train_args(tmp_path, train_split, jsons))
    state = json.loads((tmp_path / "out" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 2  # saved by the guard, between the configured checkpoints
    assert not (tmp_path / "out" / "train_info.json").exists()
    monkeypatch.setattr(trainer, "TimeGuard", TimeGuard)
    assert train.main(_train_args(tmp_path, train_split, jsons)) == 0
    assert list(pd.read_parquet(tmp_path / "out" / "metrics.parquet").iteration) == [0, 1, 2, 3]
    info = json.loads((tmp_path / "out" / "train_info.json").read_text())
    assert info["iterations"] == info["iterations_configured"] == 4 and not info["cut_short"]


def test_time_guard_stop_marks_the_run_cut_short(tmp_path, train_split, monkeypatch):
    tiny_mini_dir(tmp_path / "mini")
    jsons = train_jsons(iterations=4, on_time_limit="stop", max_minutes=3.0)
    monkeypatch.setattr(trainer, "TimeGuard", guard_tripping_after(2))
    assert train.main(_train_args(tmp_path, train_split, jsons)) == 0
    info = json.loads((tmp_path / "out" / "train_info.json").read_text())
    assert (info["iterations"], info["iterations_configured"], info["cut_short"]) == (2, 4, True)


@pytest.mark.parametrize("records_names", [True, False])
def test_a_checkpoint_without_the_trained_weights_never_resumes(tmp_path, train_split, records_names):
    """Its weights.safetensors valid but empty: the run would have saved the untrained base as
    its result. With or without the names state.json records (older checkpoints lack them),
    the job stops naming the file."""
    tiny_mini_dir(tmp_path / "mini")
    jsons = train_jsons(iterations=2, checkpoint_every=1, probe_prompts=0)
    umask = os.umask(0o022)
    try:
        assert train.main(_train_args(tmp_path, train_split, jsons)) == 0
    finally:
        os.umask(umask)
    # The outputs follow the umask (safetensors' save_file alone leaves its files 0600).
    written = [tmp_path / "out" / "weights.safetensors", *(tmp_path / "out" / "snapshots").iterdir()]
    assert len(written) == 3 and {stat.S_IMODE(path.stat().st_mode) for path in written} == {0o644}
    checkpoint = tmp_path / "out" / "checkpoint"
    save_file({}, checkpoint / "weights.safetensors")
    if not records_names:
        state = json.loads((checkpoint / "state.json").read_text())
        del state["tensors"]
        (checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(
        SystemExit, match=r"weights.safetensors: .*missing.*delete .*checkpoint to start the run afresh"
    ):
        train.main(_train_args(tmp_path, train_split, jsons))
