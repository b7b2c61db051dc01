"""Agreement figures: hand-computed F1s, and our rules against the published split."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.data.agreement import compare, f1_score
from pipeline.data.curation import curate
from pipeline.data.prompt_files import read_prompts
from pipeline.stages import dataset_card


def test_f1_by_hand():
    truth = pd.Series([True, True, False, False, True])
    pred = pd.Series([True, False, True, False, True])
    # tp=2, fp=1, fn=1 -> 4 / (4 + 1 + 1)
    assert f1_score(truth, pred) == 4 / 6
    assert f1_score(pd.Series([False]), pd.Series([False])) == 0.0


def test_compare_by_hand():
    ours = pd.DataFrame(
        {
            "line_id": [0, 1, 2, 4],
            "source": ["allowed", "augmented", "allowed", "augmented"],
            "color": ["red", "blue", "blue", "red"],
        }
    )
    published = pd.DataFrame(
        {
            "line_id": [0, 2, 3, 4],
            "source": ["allowed", "allowed", "augmented", "allowed"],
            "color": ["red", "green", "pink", "red"],
        }
    )
    result = compare(ours, published, range(5))
    # drops: ours {3}, published {1}: no true positive
    assert result.drop_f1 == 0.0
    # both keep 0, 2, 4: published allowed {0,2,4}, ours allowed {0,2} -> tp 2, fn 1
    assert result.allowed_f1 == 4 / 5
    # both allowed 0, 2: colours agree on 0 only
    assert result.color_agreement == 0.5
    assert result.n_both_allowed == 2


def test_rules_agree_with_published_split(shared_data):
    """Acceptance: our rules on lines 0-554 of Flow-GRPO's OCR test prompts vs the published
    OCR-Color-10 test split (targets from the issue: 0.55, 0.75, 0.90)."""
    prompts = read_prompts(shared_data / "flow_grpo_ocr_test.txt")
    table, _ = curate(prompts, range(555), seed=0)
    published = pd.read_csv(shared_data / "ocr_color_10_test.csv")
    result = compare(table.to_pandas(), published, range(555))
    print(
        f"drop F1 {result.drop_f1:.3f}, allowed F1 {result.allowed_f1:.3f}, "
        f"colour agreement {result.color_agreement:.3f}"
    )
    assert result.drop_f1 >= 0.55
    assert result.allowed_f1 >= 0.75
    assert result.color_agreement >= 0.90


def test_a_line_separator_inside_a_prompt_shifts_no_line_id(shared_data, tmp_path):
    """U+2028 inside one prompt of Flow-GRPO's file: it stays one line, so every other line keeps
    its id and its curation, and the comparison with the published split still lines up."""
    original = (shared_data / "flow_grpo_ocr_test.txt").read_bytes().split(b"\n")
    edited = list(original)
    edited[10] = edited[10].replace(b" ", "\u2028".encode(), 1)
    source = tmp_path / "prompts.txt"
    source.write_bytes(b"\n".join(edited))
    prompts = read_prompts(source)
    assert len(prompts) == len(read_prompts(shared_data / "flow_grpo_ocr_test.txt"))
    ours = curate(prompts, range(555), seed=0)[0].to_pandas().set_index("line_id")
    reference = curate(read_prompts(shared_data / "flow_grpo_ocr_test.txt"), range(555), seed=0)[0]
    reference = reference.to_pandas().set_index("line_id")
    others = [i for i in reference.index if i != 10]
    assert ours.loc[[i for i in others if i in ours.index], "source"].equals(reference.loc[others, "source"])
    published = pd.read_csv(shared_data / "ocr_color_10_test.csv")
    assert compare(ours.reset_index(), published, range(555)).drop_f1 >= 0.55


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "line_id,prompt,text,source\n0,p,t,allowed\n",
            r"no column 'color' \(it has line_id, prompt, text, source\)",
        ),
        ("line_id,prompt\n0,p\n", r"no column 'source', 'color'"),
        ("line_id,source,color\nfirst,allowed,red\n", r"column 'line_id' must hold integers"),
        ('line_id,source,color\n0,"allowed,red\n', r"cannot be read as CSV"),
        ("", r"cannot be read as CSV"),
    ],
)
def test_a_published_split_without_its_columns_stops_the_card_naming_the_file(tmp_path, text, expected):
    published = tmp_path / "published.csv"
    published.write_text(text, encoding="utf-8")
    stats = tmp_path / "stats.json"
    stats.write_text('{"line_start": 0, "line_stop": 1}', encoding="utf-8")
    args = [
        "--name",
        "n",
        "--stats",
        f"test={stats}",
        "--published",
        str(published),
        "--out",
        str(tmp_path / "R.md"),
    ]
    with pytest.raises(SystemExit, match=rf"--published {published}: {expected}"):
        dataset_card.main(args)
    assert not (tmp_path / "R.md").exists()
