"""The study's design keys: reinvested prompts (equal sampling NFE), noisier branch steps,
the control arm's inverse-std weights, and the report's test against that control."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from pipeline.config.load import check_rewards, load
from pipeline.config.schema import ConfigError
from pipeline.config.types import TRAIN_RUNTIME_KEYS
from pipeline.reporting.analysis import comparisons
from pipeline.rl.settings import LoopSettings, MethodSpec, inverse_std_weights, run_plan, scored_rewards
from pipeline.rl.update import edge_transitions
from pipeline.sampling.schedule import flow_sigmas, sde_mean_x_coefficient
from pipeline.sampling.sde import sde_step_with_logprob
from pipeline.sampling.tree import sample_tree
from pipeline.sampling.tree_schedule import TreeSchedule, equal_nfe_prompts
from pipeline.workflow import stage_params
from tests.unit.test_config import default_raw
from tests.unit.test_tree import LinearPolicy


def test_equal_nfe_prompts_by_hand():
    # Two roots, 2-way at steps 1 and 3, 10 steps: nodes per depth 2, 2, 4, 4, 8 x 6 -> 60
    # evaluations per prompt for 8 leaves, where 8 independent leaves cost 80.
    tree = TreeSchedule(num_steps=10, roots=2, branch_steps=(1, 3), branch_factors=(2, 2))
    assert tree.nfe_per_prompt() == 60
    assert equal_nfe_prompts(32, tree) == 43  # 32 * 80 / 60 = 42.7; 43 * 60 = 2580 vs 2560
    assert equal_nfe_prompts(32, tree, multiple=8) == 40  # 5.33 shares of 8 -> 5
    assert equal_nfe_prompts(32, TreeSchedule(num_steps=10, roots=8)) == 32  # flat: unchanged
    # One root, 2-way at steps 0, 1, 2: 1 + 2 + 4 + 8 x 7 = 63 for 8 leaves.
    branch = TreeSchedule(num_steps=10, roots=1, branch_steps=(0, 1, 2), branch_factors=(2, 2, 2))
    assert branch.nfe_per_prompt() == 63 and equal_nfe_prompts(16, branch) == 20


def test_sde_mean_coefficient_by_hand():
    sigmas = torch.tensor([1.0, 0.9, 0.5, 0.0])
    coefficient = sde_mean_x_coefficient(sigmas, 0.7)
    # step 0: std_t^2 = 0.49 * 1 / (1 - 0.9) = 4.9, times |dt| 0.1 / (2 * 1) -> 1 - 0.245
    assert coefficient[0].item() == pytest.approx(0.755, abs=1e-6)
    # step 1: std_t^2 = 0.49 * 0.9 / 0.1 = 4.41, times 0.4 / 1.8 -> 1 - 0.98
    assert coefficient[1].item() == pytest.approx(0.02, abs=1e-6)
    # twice the noise flips the first step's mean: 1 - 4 * 0.245 < 0.03
    assert sde_mean_x_coefficient(sigmas, 1.4)[0].item() == pytest.approx(0.02, abs=1e-6)
    assert sde_mean_x_coefficient(sigmas, 1.5)[0].item() < 0


def test_a_branch_noise_scale_that_flips_the_mean_is_refused_before_training():
    from pipeline.stages.train import check_branch_noise

    schedule = TreeSchedule(num_steps=10, roots=1, branch_steps=(0, 1), branch_factors=(2, 2))
    sampling = {"sde_type": "sde", "noise_level": 0.7, "shift": 3.0}
    sigmas = flow_sigmas(10, 3.0)
    flipping = next(scale for scale in (2.0, 4.0, 8.0) if sde_mean_x_coefficient(sigmas, 0.7 * scale)[0] <= 0)
    check_branch_noise(MethodSpec(schedule, "mix_then_normalize"), {"sampling": sampling})
    with pytest.raises(SystemExit, match=rf"'branch_noise_scale' \({flipping}\): .* branch steps \[0"):
        check_branch_noise(
            MethodSpec(schedule, "mix_then_normalize", branch_noise_scale=flipping), {"sampling": sampling}
        )
    # An ODE sampler takes no noisy step: nothing to refuse.
    check_branch_noise(
        MethodSpec(schedule, "mix_then_normalize", branch_noise_scale=flipping),
        {"sampling": dict(sampling, sde_type="ode")},
    )


def test_a_per_row_noise_level_is_each_rows_own_step():
    torch.manual_seed(0)
    x, v, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    levels = torch.tensor([0.5, 0.7, 1.0])
    together = sde_step_with_logprob(v, x, 0.8, 0.6, levels, noise=noise)
    for row, level in enumerate(levels.tolist()):
        alone = sde_step_with_logprob(
            v[row : row + 1], x[row : row + 1], 0.8, 0.6, level, noise=noise[row : row + 1]
        )
        assert torch.allclose(together.prev_sample[row], alone.prev_sample[0])
        assert torch.allclose(together.log_prob[row], alone.log_prob[0])
    with pytest.raises(ValueError, match="some rows are 0"):
        sde_step_with_logprob(v, x, 0.8, 0.6, torch.tensor([0.0, 0.7, 0.7]), noise=noise)


def test_branch_steps_sample_with_the_scaled_noise_and_the_loss_reads_it_back():
    schedule = TreeSchedule(num_steps=6, roots=1, branch_steps=(0, 2), branch_factors=(2, 2))
    policy, sigmas = LinearPolicy(), flow_sigmas(6, 1.0)
    rollout = sample_tree(
        policy, ['a "AB"'], schedule, sigmas, noise_level=0.5, branch_noise_scale=1.6, seed=3
    )
    branching = torch.isin(rollout.edge_step, torch.tensor([0, 2]))
    assert torch.allclose(rollout.noise_level[branching], torch.tensor(0.8))
    assert torch.allclose(rollout.noise_level[~branching], torch.tensor(0.5))
    # A branch child's next latents are its parent's mean plus the scaled std times noise: the
    # siblings differ by 0.8's std, not 0.5's.
    settings = LoopSettings(
        prompts_per_iteration=1,
        clip_range=1e-3,
        beta=0.0,
        max_grad_norm=1.0,
        optimizer_steps_per_iteration=1,
        microbatch=64,
        guidance=1.0,
        noise_level=0.5,
        sde_type="sde",
        shift=1.0,
        max_batch=64,
    )
    cond, uncond = policy.encode(rollout.prompts)
    index = torch.arange(len(rollout.edge_child))[rollout.trainable]
    step, _ = edge_transitions(policy, rollout, index, cond, uncond, settings)
    # Re-evaluated at the sampling weights, every edge's log-probability is the sampler's.
    assert torch.allclose(step.log_prob, rollout.log_prob[index], atol=1e-5)
    assert MethodSpec(schedule, "mix_then_normalize").branch_noise_scale == 1.0


def _plan(raw: dict, method: str, card=None):
    cfg = load(raw, check_paths=False)
    params = json.loads(json.dumps(stage_params.train_params(cfg, method, 0)))
    runtime = {key: getattr(cfg.train, key) for key in TRAIN_RUNTIME_KEYS}
    return run_plan(params, runtime, card)


def test_run_plan_reinvests_a_trees_savings_in_prompts():
    raw = default_raw()
    raw["methods"]["tree_grpo"] |= {"roots": 2, "branch_steps": [1, 3], "branch_factors": [2, 2]}
    raw["train"] |= {"prompts_per_iteration": 32, "equal_sampling_nfe": True, "sde_steps": 4}
    _, method, settings = _plan(raw, "tree_grpo")
    per_iteration = settings.prompts_per_iteration * method.schedule.nfe_per_prompt()
    assert settings.prompts_per_iteration == 43 and abs(per_iteration / (32 * 80) - 1) < 0.05
    _, _, flat = _plan(raw, "flow_grpo")
    assert flat.prompts_per_iteration == 32
    raw["train"]["equal_sampling_nfe"] = False
    assert _plan(raw, "tree_grpo")[2].prompts_per_iteration == 32


def test_a_methods_own_reward_weights_and_the_card_weights(tmp_path):
    raw = default_raw()
    raw["evaluation"]["equal_nfe_reference"] = None
    raw["methods"] = {
        "own": {"roots": 8, "reward_weights": {"ocr": 2.0}},
        "control": {"roots": 8, "inverse_std_weights": True, "std_mode": "global"},
    }
    assert _plan(raw, "own")[2].reward_weights == {"ocr": 2.0}
    card = tmp_path / "figures.json"
    card.write_text(json.dumps({"ocr_group_std": 0.25, "color_group_std": 0.1, "quality_group_std": 0.5}))
    assert _plan(raw, "control", card)[2].reward_weights == {"ocr": 4.0, "color": 10.0, "quality": 2.0}
    assert inverse_std_weights({"ocr_group_std": 0.5}, ["ocr"], card) == {"ocr": 2.0}
    # A reward without spread is left out, as B leaves it out; with none, nothing is trained.
    assert inverse_std_weights({"ocr_group_std": 0.5}, ["ocr", "color"], card) == {
        "ocr": 2.0,
        "color": 0.0,
    }
    with pytest.raises(SystemExit, match="no trained reward \\(ocr, color\\) has a within-group spread"):
        inverse_std_weights({"ocr_group_std": 0.0}, ["ocr", "color"], card)
    with pytest.raises(SystemExit, match="needs the base model's group spreads"):
        _plan(raw, "control")
    # A reward the card weighs 0 is still scored: its mean shows the arm's progress on it.
    card.write_text(json.dumps({"ocr_group_std": 0.0, "color_group_std": 0.1, "quality_group_std": 0.5}))
    cfg = _plan(raw, "control", card)[0]
    assert cfg.reward_weights["ocr"] == 0.0 and "ocr" not in cfg.trained_rewards()
    control_raw = {"method": {"inverse_std_weights": True}}
    assert set(scored_rewards(cfg, control_raw)) == {"ocr", "color", "quality"}
    assert "ocr" not in scored_rewards(cfg, {"method": {"inverse_std_weights": False}})


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"inverse_std_weights": True, "mixing": "normalize_then_mix"}, "takes mixing mix_then_normalize"),
        ({"inverse_std_weights": True, "reward_weights": {"ocr": 1.0}}, "and no methods.bad.reward_weights"),
        ({"reward_weights": {"sharpness": 1.0}}, "'methods.bad.reward_weights': unknown reward 'sharpness'"),
        ({"branch_noise_scale": 0}, "'methods.bad.branch_noise_scale': 0 is invalid: 0 is less"),
    ],
)
def test_bad_design_keys_name_the_key(method, expected):
    raw = default_raw()
    raw["evaluation"]["equal_nfe_reference"] = None
    raw["methods"] = {"bad": method}
    with pytest.raises(ConfigError, match=expected):
        cfg = load(raw, check_paths=False)
        check_rewards(cfg, {"ocr": None, "color": None, "quality": None}, check_paths=False)


def test_the_card_weights_need_the_mini_backends_card():
    raw = copy.deepcopy(default_raw())
    raw["model"] |= {"backend": "sd3", "path": "/nowhere"}
    raw["evaluation"]["equal_nfe_reference"] = None
    raw["methods"] = {"control": {"inverse_std_weights": True}}
    with pytest.raises(ConfigError, match="needs the base model card, which only the mini"):
        load(raw, check_paths=False)


def test_grouping_is_tested_against_the_control_and_the_2x2_survives_it():
    methods = {"flow_grpo": 0.0, "reward_group": 0.5, "tree_grpo": 0.0, "multi_grpo": 0.5, "control": 0.5}
    runs = pd.DataFrame(
        [
            {"method": m, "seed": s, "B": shift + 0.1 * s + 0.01 * ((s * 7 + i) % 3)}
            for s in range(4)
            for i, (m, shift) in enumerate(methods.items())
        ]
    )
    design = {
        "flow_grpo": (False, False),
        "reward_group": (False, True),
        "tree_grpo": (True, False),
        "multi_grpo": (True, True),
        "control": (False, False),
    }
    tests = comparisons(runs, ["B"], "flow_grpo", design, 0.05, control="control").set_index("comparison")
    assert tests.loc["2x2 grouping", "estimate"] == pytest.approx(0.5, abs=0.02)
    # The control carries grouping's effect, so grouping does not beat it.
    assert tests.loc["reward_group - control", "estimate"] == pytest.approx(0.0, abs=0.02)
    assert "multi_grpo - control" not in tests.index  # a tree arm is not the flat control's pair
    assert "2x2 tree" in tests.index and "control - flow_grpo" in tests.index
