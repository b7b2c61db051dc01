"""Agreement of our curation with a published OCR-Color-10 split.

Raw row agreement is misleading (keeping every prompt already agrees on about 90% of lines),
so this module reports what a curation rule can get wrong:

* the F1 of the *drop* decision over all compared lines (positive class: dropped);
* the F1 of the ``allowed`` label over lines both sides keep (positive class: allowed);
* the colour agreement over lines both sides call ``allowed``;

plus both confusion matrices. Lines are matched on ``line_id``; a published split lists only
kept lines, so a missing id in the compared range counts as dropped there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Agreement:
    drop_f1: float
    allowed_f1: float
    color_agreement: float
    # rows: published label, columns: ours
    drop_confusion: pd.DataFrame
    allowed_confusion: pd.DataFrame
    n_lines: int
    n_both_allowed: int


def f1_score(truth: pd.Series, predicted: pd.Series) -> float:
    """F1 of boolean predictions; 0 when there is no positive on either side."""
    tp = int((truth & predicted).sum())
    fp = int((~truth & predicted).sum())
    fn = int((truth & ~predicted).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


# The columns of a published curation that the comparison reads.
PUBLISHED_COLUMNS = ("line_id", "source", "color")


def read_published(path: Path) -> pd.DataFrame:
    """The published curation at ``path`` (CSV with :data:`PUBLISHED_COLUMNS`); a file that is
    missing, not CSV, lacks a column or has a line id that is not an integer stops the stage
    naming the file and what is wrong."""
    if not path.is_file():
        raise SystemExit(f"--published {path}: no such file")
    try:
        published = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' ParserError is a ValueError
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(f"--published {path}: cannot be read as CSV ({first})") from None
    missing = [column for column in PUBLISHED_COLUMNS if column not in published.columns]
    if missing:
        raise SystemExit(
            f"--published {path}: no column {', '.join(map(repr, missing))} (it has "
            f"{', '.join(map(str, published.columns)) or 'none'}); a published split needs "
            f"{', '.join(PUBLISHED_COLUMNS)}"
        )
    if not pd.api.types.is_integer_dtype(published["line_id"]):
        raise SystemExit(f"--published {path}: column 'line_id' must hold integers (source line numbers)")
    return published


def compare(ours: pd.DataFrame, published: pd.DataFrame, line_ids: range) -> Agreement:
    """Compare two curations over ``line_ids``.

    Args:
        ours: our kept rows, columns ``line_id``, ``source``, ``color``.
        published: the published kept rows, same columns.
        line_ids: the source lines both curations saw.
    """
    ids = pd.Index(list(line_ids), name="line_id")
    label_ours = ours.set_index("line_id")["source"].reindex(ids).fillna("dropped")
    label_pub = published.set_index("line_id")["source"].reindex(ids).fillna("dropped")
    drop_f1 = f1_score(label_pub == "dropped", label_ours == "dropped")

    both_kept = (label_ours != "dropped") & (label_pub != "dropped")
    allowed_f1 = f1_score(label_pub[both_kept] == "allowed", label_ours[both_kept] == "allowed")

    both_allowed = (label_ours == "allowed") & (label_pub == "allowed")
    colour_ours = ours.set_index("line_id")["color"].reindex(ids)[both_allowed]
    colour_pub = published.set_index("line_id")["color"].reindex(ids)[both_allowed]
    n_both_allowed = int(both_allowed.sum())
    colour_agreement = float((colour_ours == colour_pub).mean()) if n_both_allowed else 0.0

    def confusion(pub: pd.Series, our: pd.Series) -> pd.DataFrame:
        table = pd.crosstab(pub.rename("published"), our.rename("ours"))
        return table

    return Agreement(
        drop_f1=drop_f1,
        allowed_f1=allowed_f1,
        color_agreement=colour_agreement,
        drop_confusion=confusion(label_pub == "dropped", label_ours == "dropped"),
        allowed_confusion=confusion(label_pub[both_kept], label_ours[both_kept]),
        n_lines=len(ids),
        n_both_allowed=n_both_allowed,
    )
