"""``lorakit caption DIR|dataset.toml``: the arguments and the command (heavy imports happen inside ``run``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorakit.errors import ConfigError

HELP = """Caption every image of a kohya folder (or of a kohya dataset TOML) with a local captioner.
Existing captions are kept unless --overwrite (which keeps a .bak); an interrupted run resumes where it
stopped when started again with the same options."""


def add_parser(sub) -> None:
    c = sub.add_parser("caption", help="write captions next to a dataset's images with a local captioner",
                       description=HELP)
    c.add_argument("target", help="a folder of images, a parent of 'N_trigger class' folders, or a dataset .toml")
    c.add_argument("--captioner", required=True, choices=("wd14", "florence2", "vlm", "blip", "toy"),
                   help="wd14: ONNX tagger; florence2; vlm: Qwen2.5-VL/Qwen3-VL; blip; toy: the toy-world captioner")
    c.add_argument("--model", help="the captioner's local folder (nothing is downloaded)")
    g = c.add_argument_group("caption text")
    g.add_argument("--trigger", default="", help="trigger word, written first (default: the folder's class tokens)")
    g.add_argument("--class", dest="class_word", default="", help="class word written after the trigger")
    g.add_argument("--replace", action="append", default=[], metavar="WORD",
                   help="a word the captioner uses for the subject; replaced by the trigger (repeatable)")
    g.add_argument("--prefix", default="")
    g.add_argument("--suffix", default="")
    g.add_argument("--mode", choices=("tags", "sentence"), help="default: tags for wd14, sentence otherwise")
    g.add_argument("--family", default="sdxl", help="model family whose text limit the captions must fit")
    g.add_argument("--max-tokens", type=int, help="caption token limit (default and maximum: the family's)")
    g.add_argument("--extension", help="caption file extension (default .txt, or the TOML's caption_extension)")
    r = c.add_argument_group("run")
    r.add_argument("--overwrite", action="store_true", help="replace existing captions (each kept as .bak)")
    r.add_argument("--restart", action="store_true", help="ignore the progress of an interrupted run")
    r.add_argument("--batch-size", type=int, help="images per batch (default: 8 on a GPU, 1 on the CPU)")
    r.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1")
    r.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="transformers captioners (default: bf16 on GPU)")
    m = c.add_argument_group("captioner options")
    m.add_argument("--general-threshold", type=float, default=0.35, help="wd14")
    m.add_argument("--character-threshold", type=float, default=0.85, help="wd14")
    m.add_argument("--blacklist", default="", help="wd14: comma-separated tags never written")
    m.add_argument("--keep-rating", action="store_true", help="wd14: also write the rating tag")
    m.add_argument("--keep-underscores", action="store_true", help="wd14: keep underscores in tags")
    m.add_argument("--task", default="<DETAILED_CAPTION>", help="florence2: <CAPTION>, <DETAILED_CAPTION>, "
                   "<MORE_DETAILED_CAPTION>")
    m.add_argument("--purpose", default="character", choices=("character", "style", "product"), help="vlm")
    m.add_argument("--instruction", help="vlm: the instruction instead of the purpose's ({subject} = class word)")
    m.add_argument("--instruction-file", help="vlm: read the instruction from this file")
    m.add_argument("--prompt", default="", help="blip: text the caption starts with, e.g. 'a photo of'")
    m.add_argument("--max-new-tokens", type=int, help="generation length (transformers captioners)")
    m.add_argument("--num-beams", type=int, help="beam search width (transformers captioners)")
    c.set_defaults(func=cmd_caption)


def captioner_options(args) -> dict:
    """Only the options of the chosen captioner; one given for another captioner is refused, not ignored."""
    name = args.captioner
    own = {
        "wd14": {"general_threshold", "character_threshold", "blacklist", "keep_rating", "keep_underscores"},
        "florence2": {"task", "max_new_tokens", "num_beams", "dtype"},
        "vlm": {"purpose", "instruction", "instruction_file", "max_new_tokens", "num_beams", "dtype"},
        "blip": {"prompt", "max_new_tokens", "num_beams", "dtype"}, "toy": {"max_new_tokens", "num_beams", "dtype"},
    }[name]
    defaults = {"general_threshold": 0.35, "character_threshold": 0.85, "blacklist": "", "keep_rating": False,
                "keep_underscores": False, "task": "<DETAILED_CAPTION>", "purpose": "character", "instruction": None,
                "instruction_file": None, "prompt": "", "max_new_tokens": None, "num_beams": None, "dtype": None}
    for k, d in defaults.items():
        if k not in own and getattr(args, k) != d:
            raise ConfigError(f"--{k.replace('_', '-')}: not an option of the {name} captioner")
    for k in ("general_threshold", "character_threshold"):  # a percentage (35) selected no tag: captions of the lead
        if not 0.0 < getattr(args, k) <= 1.0:
            raise ConfigError(f"--{k.replace('_', '-')}: a probability in (0, 1], e.g. 0.35, got {getattr(args, k):g}")
    for k in ("max_new_tokens", "num_beams"):  # 0 failed every image with transformers' error, one by one
        if getattr(args, k) is not None and getattr(args, k) < 1:
            raise ConfigError(f"--{k.replace('_', '-')}: must be at least 1, got {getattr(args, k)}")
    if name == "wd14":
        return {"general_threshold": args.general_threshold, "character_threshold": args.character_threshold,
                "blacklist": tuple(b for b in args.blacklist.split(",") if b.strip()),
                "keep_rating": args.keep_rating, "underscores": args.keep_underscores}
    out = {k: getattr(args, k) for k in ("max_new_tokens", "num_beams", "dtype") if getattr(args, k) is not None}
    if name == "florence2":
        out["task"] = args.task
    elif name == "vlm":
        if args.instruction and args.instruction_file:
            raise ConfigError("--instruction-file: give --instruction or --instruction-file, not both")
        instruction = args.instruction
        if args.instruction_file:
            try:
                instruction = Path(args.instruction_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(f"--instruction-file: cannot read {args.instruction_file} ({e.strerror})") from None
        out.update(purpose=args.purpose, instruction=instruction, subject=args.class_word or "the subject")
    elif name == "blip" and args.prompt:
        out["prompt"] = args.prompt
    return out


def cmd_caption(args) -> int:
    from lorakit.caption.backends import load_captioner
    from lorakit.caption.base import pick_device
    from lorakit.caption.run import caption_dataset, list_targets
    from lorakit.caption.text import TextOptions, family_limit

    limit, counter = family_limit(args.family)
    if args.max_tokens is not None and not 1 <= args.max_tokens <= limit:
        raise ConfigError(f"--max-tokens: {args.max_tokens} is outside 1..{limit} ({args.family}'s text encoders "
                          f"read {limit} tokens)")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size: must be at least 1")
    if args.replace and not args.trigger:
        raise ConfigError("--replace: needs --trigger (the word that replaces it)")
    target = Path(args.target)
    targets, progress, problems = list_targets(target, args.extension)
    device = pick_device(args.device)
    opts = TextOptions(trigger=args.trigger, class_word=args.class_word, prefix=args.prefix, suffix=args.suffix,
                       replace=tuple(args.replace), mode=args.mode, max_tokens=args.max_tokens or limit)
    batch = args.batch_size or (8 if device.startswith("cuda") else 1)
    from lorakit.interrupts import install

    install()  # Ctrl-C/SIGTERM as for train: one stop, exit 130 (lorakit/interrupts.py)
    try:
        captioner = load_captioner(args.captioner, args.model, device=device, **captioner_options(args))
        summary = caption_dataset(targets, captioner, opts, progress_file=progress, model=str(args.model or ""),
                                  overwrite=args.overwrite, restart=args.restart, batch_size=batch,
                                  count_tokens=counter, root=target if target.is_dir() else target.parent)
    except KeyboardInterrupt:
        print(f"lorakit: interrupted; the captions written are kept and {progress} records them: run the same "
              f"command again to resume", file=sys.stderr)
        return 130
    summary.problems = problems
    print(summary.table())
    return 1 if summary.count("failed") else 0
