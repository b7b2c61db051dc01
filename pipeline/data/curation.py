"""OCR-Color-10 curation rules: decide, for one OCR prompt, whether to keep, augment or drop it.

A prompt carries its target text in the first double-quoted span (Flow-GRPO's OCR format).
What matters is how *that text* is described, not colours elsewhere in the scene, so every
rule looks only at a window of words around the quoted span inside its own sentence:

* the text is described in an off-palette or ambiguous colour (golden, navy, colourful, two
  colours joined by "and"), or as light rather than ink (neon, glowing, flashing, ...) with no
  palette colour owning it, so its colour cannot be named from the palette -> ``drop``;
* a palette colour describes the text or the surface it is printed on -> ``allowed`` with
  that colour (the prompt is kept verbatim);
* nothing describes its colour -> ``augmented``: a sentence naming a drawn colour is appended.

The window sizes and word lists are module constants documented below; they were chosen on
general grounds (how English attaches adjectives to the noun phrase around a quotation) and
the agreement with the published split is measured, not fitted, by ``pipeline.data.agreement``.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from pipeline.data.palette import COLOR_NAMES, PALETTE

# Straight and typographic double quotes; the span must be non-empty.
QUOTED_SPAN = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d')
# Sentence ends: . ! ? followed by whitespace (one inside the quoted span is ignored, so a
# full stop inside the text never splits a sentence).
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")

# Words before / after the quoted span that can still describe it. Eight words covers
# "in bold, red letters that read" and "in an ominous, glowing red" but not the far end of a
# long scene clause.
WINDOW_BEFORE = 8
WINDOW_AFTER = 8
# A clause break this close is still part of the same noun phrase ("glowing red button
# labeled ..."): beyond it, words describe something else.
CLAUSE_BREAK = re.compile(r"[;:()\u2014]| - ")

# Light sources: text made of light has no ink colour from the palette unless a palette
# colour is named for the light itself.
LIGHT_WORDS = frozenset(
    "neon neon-lit glow glows glowing luminous illuminated shimmering holographic hologram "
    "flashing flashes blinking blinks".split()
)
# Colour words outside the palette, or words that name several colours at once.
OFF_PALETTE_WORDS = frozenset(
    "gold golden navy silver colorful colourful multicolored multi-colored multicoloured "
    "multi-coloured rainbow neon-colored teal cyan magenta crimson turquoise beige gray grey "
    "maroon violet".split()
)

# Nouns that end an "in ..." phrase describing how the text is drawn.
TEXT_NOUNS = frozenset(
    "letters lettering letter text font fonts ink thread threads script digits characters "
    "type typeface paint lights light strokes handwriting".split()
)

GENERATED_SENTENCE = 'The color of the text "{text}" is {color}.'


@dataclass(frozen=True)
class Decision:
    """What curation does with one prompt.

    Attributes:
        action: ``allowed`` (keep verbatim), ``augmented`` (append a colour sentence) or
            ``drop``.
        text: the first quoted span (empty when there is none).
        color: the palette colour read from the prompt (``allowed`` only, else ``None``).
        reason: why a prompt is dropped (``None`` otherwise).
    """

    action: str
    text: str
    color: str | None = None
    reason: str | None = None


def first_quoted_span(prompt: str) -> re.Match | None:
    """The first non-empty double-quoted span of ``prompt`` (straight or curly quotes)."""
    return QUOTED_SPAN.search(prompt)


def _words_around(prompt: str, span: re.Match) -> tuple[list[str], list[str]]:
    """Lower-case words that can describe the quoted span: before it (nearest first), after it.

    Before the span: back to the previous comma or clause break ("large, glowing text reads").
    After the span: nothing if a comma follows it (", surrounded by colorful tags" describes
    the scene); an ``in ...`` phrase up to its noun, across commas ("in bold, neon letters");
    otherwise the words up to the next comma ("printed boldly in red on a white background").
    """
    # The sentence around the span, by position: a sentence end inside the span (its own
    # punctuation) does not count, and no character of the prompt serves as a marker (a NUL
    # byte in a prompt once collided with the mask that did).
    ends = [m for m in SENTENCE_END.finditer(prompt) if m.end() <= span.start() or m.start() >= span.end()]
    start = max((m.end() for m in ends if m.end() <= span.start()), default=0)
    stop = min((m.start() for m in ends if m.start() >= span.end()), default=len(prompt))
    before, after = prompt[start : span.start()], prompt[span.end() : stop]
    # Punctuation that introduces the quotation ("reads, ", "letters: ") belongs to it.
    before = re.split(r",|" + CLAUSE_BREAK.pattern, before.rstrip(" ,:"))[-1]
    words_before = [w.lower() for w in WORD.findall(before)][::-1][:WINDOW_BEFORE]
    if after.lstrip().startswith(","):
        return words_before, []
    after = CLAUSE_BREAK.split(after)[0]
    words_after = [w.lower() for w in WORD.findall(after)]
    if words_after[:1] == ["in"]:
        end = next((i for i, w in enumerate(words_after) if w in TEXT_NOUNS), WINDOW_AFTER - 1)
        return words_before, words_after[: min(end + 1, WINDOW_AFTER)]
    words_after = [w.lower() for w in WORD.findall(after.split(",")[0])]
    return words_before, words_after[:WINDOW_AFTER]


def _joined_colours(words: list[str]) -> bool:
    """True if two palette colours are joined by "and"/"or" ("red and white decal")."""
    for i in range(len(words) - 2):
        if words[i] in COLOR_NAMES and words[i + 1] in ("and", "or", "&") and words[i + 2] in COLOR_NAMES:
            return True
    return False


def decide(prompt: str) -> Decision:
    """Apply the curation rules to one prompt (see the module docstring)."""
    span = first_quoted_span(prompt)
    if span is None:
        return Decision("drop", "", reason="no_quoted_text")
    text = (span.group(1) or span.group(2)).strip()
    if not text:
        return Decision("drop", "", reason="no_quoted_text")
    before, after = _words_around(prompt, span)
    window = before + after
    if any(w in OFF_PALETTE_WORDS for w in window):
        return Decision("drop", text, reason="off_palette_color")
    if _joined_colours(before[::-1]) or _joined_colours(after):
        return Decision("drop", text, reason="several_colors")
    colour_before = next((w for w in before if w in COLOR_NAMES), None)
    colour_after = next((w for w in after if w in COLOR_NAMES), None)
    lit = any(w in LIGHT_WORDS for w in window)
    if lit and colour_after is not None:
        # "... in glowing green letters": the colour is that of light, not of ink.
        return Decision("drop", text, reason="light_colored_text")
    if lit and colour_before is None:
        return Decision("drop", text, reason="light_without_color")
    colour = colour_after or colour_before
    if colour is not None:
        return Decision("allowed", text, color=colour)
    return Decision("augmented", text)


def augment(prompt: str, text: str, color: str) -> str:
    """``prompt`` with the sentence naming ``color`` for ``text`` appended."""
    return f"{prompt.rstrip()} {GENERATED_SENTENCE.format(text=text, color=color)}"


COLUMNS = ("line_id", "prompt", "text", "color", "source", "color_r", "color_g", "color_b")


def balanced_colors(n_draws: int, already: Counter, seed: int) -> list[str]:
    """Draw ``n_draws`` colour names so that ``already`` plus the draws is as even as possible.

    Each colour's quota is the even share of the final total minus what it already has; the
    quotas are pooled, shuffled with ``seed`` and the first ``n_draws`` taken.
    """
    total = n_draws + sum(already.values())
    share = math.ceil(total / len(COLOR_NAMES))
    pool = [c for c in COLOR_NAMES for _ in range(max(0, share - already[c]))]
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[:n_draws]


def curate(prompts: list[str], line_ids: range, seed: int) -> tuple[pa.Table, dict]:
    """Curate ``prompts[i]`` for every ``i`` in ``line_ids``; return the table and statistics."""
    decisions = [(i, prompts[i], decide(prompts[i])) for i in line_ids]
    drops = Counter(d.reason for _, _, d in decisions if d.action == "drop")
    allowed = Counter(d.color for _, _, d in decisions if d.action == "allowed")
    n_augmented = sum(d.action == "augmented" for _, _, d in decisions)
    draws = iter(balanced_colors(n_augmented, allowed, seed))

    rows = {name: [] for name in COLUMNS}
    for line_id, prompt, decision in decisions:
        if decision.action == "drop":
            continue
        colour = decision.color if decision.action == "allowed" else next(draws)
        if decision.action == "augmented":
            prompt = augment(prompt, decision.text, colour)
        r, g, b = PALETTE[colour]
        for name, value in zip(
            COLUMNS, (line_id, prompt, decision.text, colour, decision.action, r, g, b), strict=True
        ):
            rows[name].append(value)
    schema = pa.schema(
        [("line_id", pa.int64())]
        + [(name, pa.string()) for name in ("prompt", "text", "color", "source")]
        + [(name, pa.uint8()) for name in ("color_r", "color_g", "color_b")]
    )
    table = pa.Table.from_pydict(rows, schema=schema)
    stats = {
        "lines": len(line_ids),
        "line_start": line_ids.start,
        "line_stop": line_ids.stop,
        "kept": table.num_rows,
        "dropped": dict(sorted(drops.items())),
        "by_source": dict(sorted(Counter(rows["source"]).items())),
        "by_color": {c: rows["color"].count(c) for c in COLOR_NAMES},
        "seed": seed,
    }
    return table, stats
