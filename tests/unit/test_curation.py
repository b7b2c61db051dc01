"""Curation rules on hand-written prompts, the balanced colour draw and determinism."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from pipeline.data import curation
from pipeline.data.curation import augment, decide
from pipeline.data.palette import COLOR_NAMES
from pipeline.data.prompt_files import read_prompts
from pipeline.stages import curate_dataset


@pytest.mark.parametrize(
    ("prompt", "action", "color", "reason"),
    [
        ('A shop sign that reads "OPEN" above the door.', "augmented", None, None),
        ('A poster with "SALE" in bold red letters, in a window.', "allowed", "red", None),
        ('A sticky note, bright yellow, that says "CALL MOM" on a fridge.', "augmented", None, None),
        ('A small yellow sticky note reads "CALL MOM" on a fridge.', "allowed", "yellow", None),
        ('A label printed with "FRAGILE" in black ink.', "allowed", "black", None),
        ('A neon sign glowing "BAR" over a street.', "drop", None, "light_without_color"),
        ('A sign shows "EXIT" in glowing green letters.', "drop", None, "light_colored_text"),
        ('A glowing red button labeled "PUSH" on a panel.', "allowed", "red", None),
        ('A flag embroidered with "CREW" in deep navy thread.', "drop", None, "off_palette_color"),
        ('A trophy with golden letters spelling "CHAMP" on a shelf.', "drop", None, "off_palette_color"),
        ('A red and white decal that reads "FAST" on a car.', "drop", None, "several_colors"),
        ("A plain wall with no writing at all.", "drop", None, "no_quoted_text"),
        ('An empty quote "" on a sign.', "drop", None, "no_quoted_text"),
        # Colours elsewhere in the scene do not describe the text.
        ('A road sign that says "STOP", under a clear blue sky.', "augmented", None, None),
        ('A blue sky over a field. A wooden sign says "FARM".', "augmented", None, None),
        ("A banner reads \u201cHELLO\u201d in bold purple letters.", "allowed", "purple", None),
    ],
)
def test_decide(prompt, action, color, reason):
    decision = decide(prompt)
    assert (decision.action, decision.color, decision.reason) == (action, color, reason)


@pytest.mark.parametrize(
    "prompt",
    [
        'A big red\x00 ball. A sign reads "SALE" above the door.',
        'A sign reads "SALE" above the door. A red\x00 ball.',
        'A poster\x00 with "SALE" in bold red letters, in a window.',
    ],
)
def test_a_nul_byte_outside_the_text_does_not_change_the_decision(prompt):
    """The span was once masked with a NUL, so a NUL in the prompt picked the wrong sentence."""
    with_nul, without = decide(prompt), decide(prompt.replace("\x00", ""))
    assert (with_nul.action, with_nul.color, with_nul.reason) == (
        without.action,
        without.color,
        without.reason,
    )


def test_text_is_first_quoted_span():
    decision = decide('A sign reads "FIRST" and another "SECOND".')
    assert decision.text == "FIRST"


def test_augment_appends_the_colour_sentence():
    out = augment('A sign reads "OPEN".', "OPEN", "blue")
    assert out == 'A sign reads "OPEN". The color of the text "OPEN" is blue.'


def test_balanced_colors_even_out_allowed_counts():
    already = Counter({"red": 5})
    draws = curation.balanced_colors(45, already, seed=3)
    totals = Counter(draws) + already
    assert len(draws) == 45
    assert set(totals) == set(COLOR_NAMES)
    assert max(totals.values()) - min(totals.values()) <= 1
    assert draws == curation.balanced_colors(45, already, seed=3)
    assert draws != curation.balanced_colors(45, already, seed=4)


def _write_source(tmp_path):
    lines = [
        'A poster that reads "SALE" in a shop window.',
        'A mug printed with "TEA" in bold red letters.',
        "No quoted text here.",
        'A neon sign glowing "BAR" over a street.',
    ] + [f'A sign that reads "WORD{i}" by a road.' for i in range(20)]
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(lines) + "\n")
    return source


def test_cli_output_columns_counts_and_determinism(tmp_path):
    source = _write_source(tmp_path)
    first, second, other_seed = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    stats = tmp_path / "stats.json"
    assert (
        curate_dataset.main(
            ["--source", str(source), "--out", str(first), "--seed", "7", "--stats", str(stats)]
        )
        == 0
    )
    assert curate_dataset.main(["--source", str(source), "--out", str(second), "--seed", "7"]) == 0
    assert curate_dataset.main(["--source", str(source), "--out", str(other_seed), "--seed", "8"]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other_seed.read_bytes()

    table = pq.read_table(first).to_pandas()
    assert list(table.columns) == list(curation.COLUMNS)
    assert len(table) == 22
    assert 2 not in set(table.line_id) and 3 not in set(table.line_id)
    row = table.set_index("line_id").loc[1]
    assert (row.source, row.color, row.text) == ("allowed", "red", "TEA")
    assert (row.color_r, row.color_g, row.color_b) == (220, 30, 30)
    augmented = table[table.source == "augmented"]
    assert all(
        p.endswith(f'The color of the text "{t}" is {c}.')
        for p, t, c in zip(augmented.prompt, augmented.text, augmented.color, strict=True)
    )
    counts = json.loads(stats.read_text())
    assert counts["dropped"] == {"no_quoted_text": 1, "light_without_color": 1}
    assert counts["by_source"] == {"allowed": 1, "augmented": 21}


def test_cli_line_range(tmp_path):
    source = _write_source(tmp_path)
    out = tmp_path / "a.parquet"
    assert curate_dataset.main(["--source", str(source), "--out", str(out), "--lines", "4:10"]) == 0
    assert sorted(pq.read_table(out).column("line_id").to_pylist()) == list(range(4, 10))


def test_cli_missing_source_names_the_file(tmp_path):
    with pytest.raises(SystemExit, match="no_such.txt"):
        curate_dataset.main(["--source", str(tmp_path / "no_such.txt"), "--out", str(tmp_path / "x.parquet")])


def test_lines_end_at_newlines_only(tmp_path):
    """16 prompts holding U+2028, NEL, form feed and vertical tab stay 16 line ids (splitlines
    made 20 of them, shifting every later id); CRLF ends a line too; a BOM is dropped."""
    separators = ["\u2028", "\u0085", "\x0c", "\x0b"]
    prompts = [f'A sign "W{i}"{separators[i % 4] if i % 3 == 0 else ""} in red' for i in range(16)]
    source = tmp_path / "prompts.txt"
    source.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(prompts).encode() + b"\r\n")
    assert read_prompts(source) == prompts


def test_invalid_utf8_names_the_line_and_byte(tmp_path):
    source = tmp_path / "prompts.txt"
    source.write_bytes(b'A sign "OK"\nA sign "B\xffD"\n')  # 12 bytes, then 9 before the bad one
    with pytest.raises(
        SystemExit, match=r"prompts.txt: line 1 \(0-based\) is not UTF-8: .* at byte 21 of the file"
    ):
        read_prompts(source)
