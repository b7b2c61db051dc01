"""Caption curation (PickScore-25k style) and its dataset card."""

from __future__ import annotations

import json

import pandas as pd

from pipeline.stages import curate_captions, dataset_card


def test_captions_are_normalised_and_dropped_by_reason(tmp_path):
    source = tmp_path / "captions.txt"
    source.write_text(
        "  a red  fox jumps over the lazy dog \n"  # kept, whitespace collapsed
        "\n"  # empty
        "two words\n"  # too short for min_words 6
        "a red fox jumps over the lazy dog\n"  # duplicate of line 0 once normalised
        "an old lighthouse on a rocky coast at night\n",
        encoding="utf-8",
    )
    out, stats_path = tmp_path / "train.parquet", tmp_path / "stats.json"
    argv = ["--source", str(source), "--out", str(out), "--min-words", "6", "--stats", str(stats_path)]
    assert curate_captions.main(argv) == 0
    table = pd.read_parquet(out)
    assert list(table.line_id) == [0, 4]
    assert table.prompt.iloc[0] == "a red fox jumps over the lazy dog"
    assert set(table.source) == {"caption"} and set(table.text) == {""}
    stats = json.loads(stats_path.read_text())
    assert stats["dropped"] == {"duplicate": 1, "empty": 1, "too_short": 1}
    assert (stats["lines"], stats["kept"]) == (5, 2)

    card = dataset_card.render_card("pickscore", {"train": stats, "test": stats}, None, None)
    assert "fewer than 6 words" in card and "| too_short | 1 | 1 |" in card
    assert "By colour" not in card


def test_line_range_and_no_minimum(tmp_path):
    source = tmp_path / "captions.txt"
    source.write_text("one\ntwo\nthree\n", encoding="utf-8")
    table, stats = curate_captions.curate_captions(source.read_text().splitlines(), range(1, 3), 0)
    assert table.column("prompt").to_pylist() == ["two", "three"]
    assert stats["dropped"] == {}
