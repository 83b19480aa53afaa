"""The toy captioner: a tiny BLIP (``BlipForConditionalGeneration``) trained on the toy world's scenes.

Real captioner weights cannot be downloaded here, so lorakit trains one of the real classes itself and ships
it beside the toy base models (``lorakit/toy/assets/captioner/``, about 1 MB). It writes the toy world's own
caption sentences ("a [small] red cross [at the top left] on a blue background") and is loaded by the same
BLIP back-end a user's ``Salesforce/blip-image-captioning-*`` folder goes through.

    python -m lorakit.caption.toy train [--out DIR] [--steps N]    # rebuild it (one CPU thread, fixed seeds)
    python -m lorakit.caption.toy measure [--model DIR] [--n N]    # accuracy per attribute on held-out scenes
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

from lorakit.toy import world
from lorakit.toy.paths import ASSETS

TOY_CAPTIONER = ASSETS / "captioner"
TRAIN_SEED, HELDOUT_SEED = 11, 77
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]   # BLIP's BERT specials + its [DEC] bos
ATTRIBUTES = ("shape", "colour", "background", "size")
_CAPTION = re.compile(r"^a (?:(small) )?(\w+) (\w+) on a (\w+) background$")


def scene_caption(scene: world.Scene) -> str:
    """What the toy captioner says: the toy world's sentence with the concept under its real name ("cross"),
    without the position (scenes are drawn at all five positions, but a first captioner trained to say them
    learned the rest and left the position at chance, so it is not asked for)."""
    return world.caption(replace(scene, position="center"), trigger=world.CONCEPT_SHAPE)


def parse_caption(text: str) -> Optional[dict[str, str]]:
    """Attributes read back from a toy caption, or None when it is not a toy-world sentence."""
    m = _CAPTION.match(text.strip().lower())
    if not m:
        return None
    size, colour, shape, background = m.groups()
    return {"shape": shape, "colour": colour, "background": background, "size": size or "large"}


def scene_attributes(scene: world.Scene) -> dict[str, str]:
    return {a: getattr(scene, a) for a in ATTRIBUTES}


def train_scenes(n: int) -> list[world.Scene]:
    return world.sample_scenes(n, TRAIN_SEED, shapes=world.ALL_SHAPES, positions=tuple(world.POSITIONS))


def heldout_scenes(n: int, exclude: Sequence[world.Scene] = ()) -> list[world.Scene]:
    """n scenes from another seed, none identical (same attributes and jitter) to a training scene."""
    seen = set(exclude)
    out: list[world.Scene] = []
    for s in world.sample_scenes(4 * n, HELDOUT_SEED, shapes=world.ALL_SHAPES, positions=tuple(world.POSITIONS)):
        if s not in seen:
            out.append(s)
        if len(out) == n:
            break
    return out


def build_processor(image_size: int = world.IMAGE_SIZE):
    """BlipProcessor: BLIP's PIL image processor at the toy image size + a BERT WordPiece tokenizer whose
    vocabulary is the toy world's words (built in memory, no download)."""
    from transformers import BertTokenizerFast, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    words = {"a", "small", "on", "background", *world.ALL_SHAPES, *world.COLOURS}
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(words))}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True, additional_special_tokens=["[DEC]"])
    ip = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=ip, tokenizer=tok)


def build_model(vocab_size: int, image_size: int = world.IMAGE_SIZE, hidden: int = 64, layers: int = 2):
    from transformers import BlipConfig, BlipForConditionalGeneration

    ids = {s: i for i, s in enumerate(SPECIALS)}
    cfg = BlipConfig(
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, image_size=image_size, patch_size=8),
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, encoder_hidden_size=hidden,
                         max_position_embeddings=32, bos_token_id=ids["[DEC]"], pad_token_id=ids["[PAD]"],
                         sep_token_id=ids["[SEP]"], eos_token_id=ids["[SEP]"]),
    )
    return BlipForConditionalGeneration(cfg)


def _pixels(processor, scenes: Sequence[world.Scene]):
    import torch

    chunks = [processor(images=[world.render(s) for s in scenes[i:i + 512]], return_tensors="pt")["pixel_values"]
              for i in range(0, len(scenes), 512)]
    return torch.cat(chunks)


def train(out: Path, steps: int = 2000, n_train: int = 12000, batch: int = 64, lr: float = 2e-3,
          log=print) -> dict[str, Any]:
    """Train the toy BLIP on rendered scenes and save it (model + processor) to ``out``; returns the record."""
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    processor = build_processor()
    model = build_model(len(processor.tokenizer.get_vocab()))
    scenes = train_scenes(n_train)
    pixels = _pixels(processor, scenes)
    tok = processor.tokenizer([scene_caption(s) for s in scenes], padding="longest", return_tensors="pt")
    ids = tok["input_ids"].clone()
    ids[:, 0] = model.config.text_config.bos_token_id
    mask = tok["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    gen = torch.Generator().manual_seed(0)
    model.train()
    curve = []
    for step in range(steps):
        idx = torch.randint(0, len(scenes), (batch,), generator=gen)
        loss = model(pixel_values=pixels[idx], input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
        if (step + 1) % 100 == 0:
            log(f"step {step + 1}/{steps} loss {sum(curve[-100:]) / 100:.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    record = {"class": type(model).__name__, "params": params, "steps": steps, "batch": batch, "lr": lr,
              "train_scenes": n_train, "train_seed": TRAIN_SEED, "seconds": round(time.perf_counter() - t0, 1),
              "loss_first_100": round(sum(curve[:100]) / 100, 4), "loss_last_100": round(sum(curve[-100:]) / 100, 4),
              "torch": torch.__version__}
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def measure(model_dir: Path = TOY_CAPTIONER, n: int = 500, batch: int = 64,
            exclude_train: int = 12000) -> dict[str, Any]:
    """Caption ``n`` held-out scenes with the model through the BLIP back-end; accuracy per attribute."""
    from lorakit.caption.backends import load_captioner

    scenes = heldout_scenes(n, train_scenes(exclude_train) if exclude_train else ())
    cap = load_captioner("blip", model_dir, device="cpu", max_new_tokens=16)
    texts: list[str] = []
    for i in range(0, len(scenes), batch):
        texts += cap.caption([world.render(s) for s in scenes[i:i + batch]])
    right = {a: 0 for a in ATTRIBUTES}
    unparsed = 0
    for scene, text in zip(scenes, texts):
        got = parse_caption(text)
        if got is None:
            unparsed += 1
            continue
        for a, v in scene_attributes(scene).items():
            right[a] += got[a] == v
    acc = {a: right[a] / len(scenes) for a in ATTRIBUTES}
    return {"n": len(scenes), "accuracy": acc, "all_correct": sum(t == scene_caption(s) for s, t in zip(scenes, texts))
            / len(scenes), "unparsed": unparsed, "examples": list(zip(map(scene_caption, scenes[:3]), texts[:3]))}


def caption_demo_dataset(dataset_dir: Path, trigger: str, log=print) -> None:
    """``lorakit demo --caption``: the toy captioner writes the demo's captions (existing ones are kept).

    Concept images (``train/``): the captioner's word for the concept ("cross") is replaced by the trigger, the
    guide's way of naming the subject by its trigger. Regularisation images (``reg/``): plain captions, without
    the folder's class word in front (the toy base was trained on bare sentences).
    """
    from lorakit.caption.backends import load_captioner
    from lorakit.caption.run import caption_dataset, list_targets
    from lorakit.caption.text import TextOptions

    captioner = load_captioner("toy", device="cpu", max_new_tokens=16)
    for name, opts in (("train", TextOptions(trigger=trigger, replace=(world.CONCEPT_SHAPE,))), ("reg", TextOptions())):
        targets, progress, problems = list_targets(dataset_dir / name)
        if name == "reg":
            targets = [replace(t, lead="") for t in targets]  # dataclasses.replace
        summary = caption_dataset(targets, captioner, opts, progress_file=progress, model="toy", batch_size=16,
                                  log=lambda _: None)
        summary.problems = problems
        log(f"toy captioner on {dataset_dir / name}:\n{summary.table()}")


def main(argv: Optional[list[str]] = None) -> int:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    p = argparse.ArgumentParser(prog="python -m lorakit.caption.toy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default=str(TOY_CAPTIONER))
    t.add_argument("--steps", type=int, default=2000)
    m = sub.add_parser("measure")
    m.add_argument("--model", default=str(TOY_CAPTIONER))
    m.add_argument("--n", type=int, default=500)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.command == "train":
        print(json.dumps(train(Path(args.out), steps=args.steps), indent=2))
    else:
        print(json.dumps(measure(Path(args.model), n=args.n), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
