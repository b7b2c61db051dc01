"""Checkpoints resume whole or stop the job naming the file and the remedy."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import save_file

from pipeline.runtime.checkpoint import load_checkpoint, save_checkpoint


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def saved(tmp_path):
    model, optimizer = _model_and_optimizer()
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, model.state_dict(), optimizer, {"step": 7, "history": [], "config_hash": "h"})
    return folder


def test_a_whole_checkpoint_restores_weights_optimizer_and_counter(saved):
    model, optimizer = _model_and_optimizer()
    weights, state = load_checkpoint(saved, torch.optim.AdamW(model.parameters()), "h")
    assert state["step"] == 7 and set(weights) == set(model.state_dict())


def _corrupt(folder, how: str) -> None:
    if how == "state not JSON":
        (folder / "state.json").write_text("{not json")
    elif how == "state without its counter":
        state = json.loads((folder / "state.json").read_text())
        del state["step"]
        (folder / "state.json").write_text(json.dumps(state))
    elif how == "state missing":
        (folder / "state.json").unlink()
    elif how == "weights valid but empty":
        save_file({}, folder / "weights.safetensors")
    elif how == "optimizer valid but empty":
        save_file({}, folder / "optimizer.safetensors")
    elif how == "header too large":
        (folder / "weights.safetensors").write_bytes(b"\xff" * 8)
    elif how == "header too small":
        (folder / "weights.safetensors").write_bytes(b"")
    elif how == "header incomplete":
        (folder / "optimizer.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{")
    elif how == "weights file missing":
        (folder / "weights.safetensors").unlink()


@pytest.mark.parametrize(
    ("how", "file", "says"),
    [
        ("state not JSON", "state.json", "cannot be read as JSON"),
        ("state without its counter", "state.json", "no 'step'"),
        ("state missing", "state.json", "is missing"),
        (
            "weights valid but empty",
            "weights.safetensors",
            "4 of the 4 tensors that state.json records are missing",
        ),
        ("optimizer valid but empty", "optimizer.safetensors", "tensors that state.json records are missing"),
        ("header too large", "weights.safetensors", "cannot be read as safetensors"),
        ("header too small", "weights.safetensors", "cannot be read as safetensors"),
        ("header incomplete", "optimizer.safetensors", "cannot be read as safetensors"),
        ("weights file missing", "weights.safetensors", "cannot be read as safetensors"),
    ],
)
def test_a_damaged_checkpoint_stops_naming_the_file_and_the_remedy(saved, how, file, says):
    _corrupt(saved, how)
    model, _ = _model_and_optimizer()
    with pytest.raises(SystemExit) as stopped:
        load_checkpoint(saved, torch.optim.AdamW(model.parameters()), "h")
    message = str(stopped.value)
    assert str(saved / file) in message and says in message
    assert f"delete {saved} to start the run afresh" in message


def test_no_checkpoint_and_another_config_still_start_afresh(tmp_path, saved):
    model, optimizer = _model_and_optimizer()
    assert load_checkpoint(tmp_path / "none", optimizer, "h") is None
    assert load_checkpoint(saved, optimizer, "another config") is None
    # A kill between the two renames of a save leaves only the .old folder: it resumes.
    shutil.move(saved, saved.with_name("checkpoint.old"))
    assert load_checkpoint(saved, optimizer, "h")[1]["step"] == 7


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_safetensors_outputs_follow_the_umask(tmp_path, umask_022):
    """save_file replaces the file it writes with a 0600 one; outputs are 0644 under umask 022."""
    from tests.smoke.tiny import tiny_mini_dir

    folder = tiny_mini_dir(tmp_path / "mini")  # save_mini, as pretraining writes the base model
    model, optimizer = _model_and_optimizer()
    save_checkpoint(tmp_path / "checkpoint", model.state_dict(), optimizer, {"step": 1})
    written = [folder / "model.safetensors", *(tmp_path / "checkpoint").glob("*.safetensors")]
    assert len(written) == 3 and {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}


def test_a_damaged_base_model_names_its_file(tmp_path):
    from pipeline.models.mini import load_mini
    from tests.smoke.tiny import tiny_mini_dir

    folder = tiny_mini_dir(tmp_path / "mini")
    (folder / "model.safetensors").write_bytes(b"\xff" * 8)
    with pytest.raises(
        SystemExit, match=r"model.safetensors: cannot be read as safetensors .*rerun pretrain_base"
    ):
        load_mini(folder)
    save_file({}, folder / "model.safetensors")
    with pytest.raises(SystemExit, match=r"model.safetensors: does not fit .*config.json"):
        load_mini(folder)
