"""OCR: PP-OCR through ``rapidocr`` (ONNX models shipped in the wheel) or ``paddleocr``.

The OCR reward follows Flow-GRPO: both strings lower-cased with spaces removed (after NFKC,
which folds the full-width characters some PP-OCR models emit); 1 if the target is a
substring of the recognised text, else ``1 - min(levenshtein, len(target)) / len(target)``.

Two reading modes: ``det`` (text detection, then recognition of every detected line: scene
images) and ``rec`` (the whole image is one text line: about 30x faster, and the detector
misses text in small single-line images). ``auto`` picks ``rec`` for single-line shapes.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass

import numpy as np
from PIL import Image
from rapidfuzz.distance import Levenshtein

# ``auto`` reads an image as one line when it is at most this tall (pixels) and at least
# this many times as wide as it is tall (the mini model's images are 32 x 128).
SINGLE_LINE_MAX_HEIGHT = 96
SINGLE_LINE_MIN_ASPECT = 2.5

# Longest side (pixels) OCR reads at: larger images are downscaled first (aspect kept, boxes
# mapped back). PP-OCR's detector works at ~960 px; at 4000 x 4000 the reading of large,
# legible text degraded ("HELLO" -> "HELLC 0") and took 5x as long as at 960 (measured).
OCR_MAX_SIDE = 1024

BACKENDS = ("rapidocr", "paddleocr")
MODES = ("auto", "det", "rec")


@dataclass(frozen=True)
class OcrReading:
    """What OCR read in one image.

    Attributes:
        text: the recognised lines joined by spaces ("" when nothing was read).
        confidence: mean recognition confidence of the lines (0 when nothing was read).
        boxes: axis-aligned ``(x0, y0, x1, y1)`` pixel boxes of the detected lines; in
            ``rec`` mode one box covering the whole image.
        mode: ``det`` or ``rec``, the mode actually used.
    """

    text: str
    confidence: float
    boxes: tuple[tuple[int, int, int, int], ...]
    mode: str


def normalise(text: str) -> str:
    """Flow-GRPO's comparison form: NFKC, lower case, no whitespace."""
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def ocr_score(recognised: str, target: str) -> tuple[float, int]:
    """``(score in [0, 1], edit distance)`` of ``recognised`` text against ``target``.

    The distance is 0 when the target is a substring of the recognised text and is capped
    at the target's length. An empty target is the caller's error.
    """
    have, want = normalise(recognised), normalise(target)
    if not want:
        raise ValueError("empty OCR target text")
    distance = 0 if want in have else min(Levenshtein.distance(have, want), len(want))
    return 1.0 - distance / len(want), distance


def exact_match(recognised: str, target: str) -> bool:
    """OCR accuracy: the recognised text equals the target (comparison form)."""
    return normalise(recognised) == normalise(target)


def is_single_line(shape: tuple[int, ...]) -> bool:
    height, width = shape[:2]
    return height <= SINGLE_LINE_MAX_HEIGHT and width >= SINGLE_LINE_MIN_ASPECT * height


def _axis_aligned(box: np.ndarray) -> tuple[int, int, int, int]:
    """``[4, 2]`` corner points -> ``(x0, y0, x1, y1)`` integer box."""
    box = np.asarray(box, dtype=np.float64).reshape(-1, 2)
    x0, y0 = np.floor(box.min(axis=0)).astype(int)
    x1, y1 = np.ceil(box.max(axis=0)).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


class OcrEngine:
    """PP-OCR reader, built once per process.

    Args:
        backend: ``rapidocr`` (default; models ship inside the package) or ``paddleocr``
            (needs ``paddleocr`` installed and local model folders).
        mode: ``auto``, ``det`` or ``rec`` (module docstring).
        threads: onnxruntime threads per engine (0 = onnxruntime's default); the scoring
            stage runs one single-threaded engine per worker process.
        paddle_det_dir, paddle_rec_dir: local PaddleOCR model folders (``paddleocr`` only).
    """

    def __init__(
        self,
        backend: str = "rapidocr",
        mode: str = "auto",
        threads: int = 0,
        paddle_det_dir: str | None = None,
        paddle_rec_dir: str | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(
                f"rewards.ocr.backend: unknown OCR backend {backend!r} (valid: {', '.join(BACKENDS)})"
            )
        if mode not in MODES:
            raise ValueError(f"rewards.ocr.mode: unknown mode {mode!r} (valid: {', '.join(MODES)})")
        self.backend, self.mode = backend, mode
        if backend == "rapidocr":
            from rapidocr import RapidOCR

            params = {"Global.log_level": "error", "Global.text_score": 0.0}
            if threads > 0:
                params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
                params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
            self._engine = RapidOCR(params=params)
        else:
            self._engine = _paddle_engine(paddle_det_dir, paddle_rec_dir)

    def read(self, rgb: np.ndarray) -> OcrReading:
        """Read ``rgb`` (uint8 ``[H, W, 3]``), downscaled to :data:`OCR_MAX_SIDE` if larger;
        the boxes are in ``rgb``'s own pixel coordinates."""
        scale = OCR_MAX_SIDE / max(rgb.shape[:2])
        if scale >= 1:
            return self._read(rgb)
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        reading = self._read(small)
        boxes = tuple(
            (
                int(x0 / scale),
                int(y0 / scale),
                min(rgb.shape[1], int(np.ceil(x1 / scale))),
                min(rgb.shape[0], int(np.ceil(y1 / scale))),
            )
            for x0, y0, x1, y1 in reading.boxes
        )
        return dataclasses.replace(reading, boxes=boxes)

    def _read(self, rgb: np.ndarray) -> OcrReading:
        mode = self.mode if self.mode != "auto" else ("rec" if is_single_line(rgb.shape) else "det")
        if self.backend == "paddleocr":
            return _paddle_read(self._engine, rgb)
        if mode == "rec":
            out = self._engine(rgb, use_det=False, use_cls=False, use_rec=True)
            texts, scores = list(out.txts or ()), list(out.scores or ())
            boxes = ((0, 0, rgb.shape[1], rgb.shape[0]),) if any(t.strip() for t in texts) else ()
        else:
            out = self._engine(rgb, use_det=True, use_cls=False, use_rec=True)
            texts, scores = list(out.txts or ()), list(out.scores or ())
            boxes = tuple(_axis_aligned(b) for b in (out.boxes if out.boxes is not None else ()))
        kept = [(t, s) for t, s in zip(texts, scores, strict=False) if t.strip()]
        text = " ".join(t.strip() for t, _ in kept)
        confidence = float(np.mean([s for _, s in kept])) if kept else 0.0
        return OcrReading(text, confidence, boxes, mode)


def _paddle_engine(det_dir: str | None, rec_dir: str | None):
    try:
        from paddleocr import PaddleOCR
    except ImportError:
        raise RuntimeError(
            "rewards.ocr.backend is 'paddleocr' but the paddleocr package is not installed; "
            "install paddlepaddle and paddleocr, or use backend 'rapidocr' (same PP-OCR models, ONNX)"
        ) from None
    if not det_dir or not rec_dir:
        raise RuntimeError(
            "rewards.ocr.backend 'paddleocr' needs local model folders in rewards.ocr.paddle_det_dir "
            "and rewards.ocr.paddle_rec_dir (nothing is downloaded)"
        )
    return PaddleOCR(
        text_detection_model_dir=det_dir,
        text_recognition_model_dir=rec_dir,
        use_doc_orientation_classify=False,
        use_doc_unwarping=False,
        use_textline_orientation=False,
    )


def _paddle_read(engine, rgb: np.ndarray) -> OcrReading:
    """PaddleOCR 3.x ``predict`` (detection + recognition whatever the mode): result dicts
    with ``rec_texts``, ``rec_scores``, ``rec_boxes``."""
    result = engine.predict(rgb[..., ::-1].copy())[0]  # PaddleOCR expects BGR arrays
    texts, scores = list(result["rec_texts"]), list(result["rec_scores"])
    boxes = tuple((int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in result["rec_boxes"])
    kept = [(t, s) for t, s in zip(texts, scores, strict=False) if t.strip()]
    confidence = float(np.mean([s for _, s in kept])) if kept else 0.0
    return OcrReading(" ".join(t for t, _ in kept), confidence, boxes, "det")
