"""WD14-style taggers (SmilingWolf's ``wd-*-tagger`` ONNX models with their ``selected_tags.csv``).

The model takes NHWC float32 pictures in BGR order, 0–255, padded to a white square and resized to the model's
input side; it outputs one probability per CSV row. The CSV's ``category`` column says what a tag is:
9 rating (general/sensitive/questionable/explicit), 4 character, 0 general. Kept: general tags with
probability ≥ ``general_threshold``, character tags ≥ ``character_threshold``, rating tags only when asked.
"""

from __future__ import annotations

import csv
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from lorakit.caption.base import require
from lorakit.errors import ConfigError, ModelLoadError

RATING, GENERAL, CHARACTER = 9, 0, 4
WHERE = ("a SmilingWolf WD14 tagger folder: model.onnx + selected_tags.csv, "
         "e.g. from SmilingWolf/wd-swinv2-tagger-v3")
# tags that are pictures made of underscores: kept as they are (kohya's tagger keeps these too)
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
           "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}


@dataclass(frozen=True)
class TagOptions:
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    blacklist: tuple[str, ...] = ()      # tags never written (compared after underscores → spaces)
    keep_rating: bool = False
    underscores: bool = False            # keep underscores (default: replaced by spaces)


def _tag_name(name: str, keep_underscores: bool) -> str:
    return name if keep_underscores or name in KAOMOJI else name.replace("_", " ")


def read_tags(csv_path: Path) -> list[tuple[str, int]]:
    """(name, category) per output column, from a ``selected_tags.csv`` (columns tag_id,name,category,count)."""
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{csv_path}: cannot read the tag list ({e})") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ModelLoadError(f"{csv_path}: not a WD14 tag list (needs 'name' and 'category' columns)")
    try:
        return [(r["name"], int(r["category"])) for r in rows]
    except ValueError:
        raise ModelLoadError(f"{csv_path}: a 'category' value is not an integer") from None


class WD14Tagger:
    """onnxruntime session over a WD14 tagger folder (``model.onnx`` + ``selected_tags.csv``)."""

    name = "wd14"
    kind = "tags"

    def __init__(self, folder: Path, options: Optional[TagOptions] = None, device: str = "cpu"):
        folder = Path(folder)
        require(folder, ("model.onnx", "selected_tags.csv"), "WD14 tagger", WHERE)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError("the WD14 tagger needs onnxruntime: pip install 'lorakit[caption]'") from None
        self.options = options or TagOptions()
        self.tags = read_tags(folder / "selected_tags.csv")
        providers = (["CUDAExecutionProvider"] if device.startswith("cuda") and "CUDAExecutionProvider"
                     in ort.get_available_providers() else []) + ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)   # 0: onnxruntime's choice
        try:
            self.session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{folder / 'model.onnx'}: onnxruntime cannot load it ({str(e).splitlines()[0]})") \
                from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        side = inp.shape[1]
        if not isinstance(side, int) or inp.shape[1] != inp.shape[2] or inp.shape[3] != 3:
            raise ModelLoadError(f"{folder / 'model.onnx'}: input shape {inp.shape} is not a WD14 tagger's "
                                 f"[batch, side, side, 3]")
        self.side = side
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(self.tags):
            raise ModelLoadError(f"{folder / 'selected_tags.csv'}: {len(self.tags)} tags but model.onnx outputs "
                                 f"{width}; the CSV belongs to another model")
        black = {b.strip().lower().replace("_", " ") for b in self.options.blacklist if b.strip()}
        known = {name.lower().replace("_", " ") for name, _ in self.tags}
        for tag in sorted(black - known):  # a misspelt tag removed nothing, silently
            near = difflib.get_close_matches(tag, sorted(known), n=1, cutoff=0.75)
            raise ConfigError(f"--blacklist: {tag!r} is not a tag of this tagger ({folder / 'selected_tags.csv'})"
                              + (f"; did you mean {near[0]!r}?" if near else ""))
        self._black = black

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """White-padded square, resized to the model side, BGR float32 0–255 (SmilingWolf's own recipe)."""
        img = image.convert("RGB")
        w, h = img.size
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        if side != self.side:
            canvas = canvas.resize((self.side, self.side), Image.Resampling.BICUBIC)
        return np.asarray(canvas, dtype=np.float32)[:, :, ::-1]

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = np.ascontiguousarray(np.stack([self.preprocess(i) for i in images]))
        return self.session.run(None, {self.input_name: batch})[0]

    def select(self, probs: np.ndarray) -> list[str]:
        """Tags of one picture: character tags first, then general tags, each most confident first."""
        o = self.options
        chosen: list[tuple[int, float, str]] = []
        rating: Optional[tuple[float, str]] = None
        for (name, cat), p in zip(self.tags, probs.tolist()):
            tag = _tag_name(name, o.underscores)
            if tag.lower().replace("_", " ") in self._black:
                continue
            if cat == RATING:
                if rating is None or p > rating[0]:
                    rating = (p, tag)
            elif cat == CHARACTER and p >= o.character_threshold:
                chosen.append((0, -p, tag))
            elif cat not in (RATING, CHARACTER) and p >= o.general_threshold:
                chosen.append((1, -p, tag))
        tags = [t for _, _, t in sorted(chosen)]
        if o.keep_rating and rating is not None:
            tags.append(rating[1])
        return tags

    def caption(self, images: Sequence[Image.Image]) -> list[list[str]]:
        return [self.select(p) for p in self.probabilities(images)]
