"""The lorakit command line. Thin: every command parses its arguments and calls into the package.

    lorakit train run.toml [section.key=value ...]     train (or --resume DIR to continue a stopped run)
    lorakit config show run.toml [overrides]           the resolved config (after preset and overrides)
    lorakit config schema                              the JSON schema of the config (web UI forms)
    lorakit data check DIR|run.toml                    dataset report before any GPU work
    lorakit inspect FILE.safetensors                   metadata, modules, rank/alpha, which base it fits
    lorakit toy path FAMILY | toy dataset DIR | toy build | toy eval
    lorakit demo                                       the toy-world demo (what `make demo` runs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from lorakit.errors import LorakitError


def main(argv: Optional[Sequence[str]] = None) -> int:
    from lorakit.logs import quiet_third_party

    quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LorakitError as exc:
        print(f"lorakit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lorakit: interrupted; the last complete checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorakit", description="Train image LoRAs (SDXL, FLUX.1) locally.")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a LoRA from a TOML config")
    t.add_argument("config", nargs="?", help="run.toml")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR (its config.toml is used)")
    t.add_argument("--force-resume", action="store_true", help="resume even if the settings changed")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("config", help="show the resolved config or its schema")
    csub = c.add_subparsers(dest="config_command")
    cs = csub.add_parser("show", help="print the resolved config as TOML")
    cs.add_argument("config")
    cs.add_argument("overrides", nargs="*")
    cs.set_defaults(func=cmd_config_show)
    cj = csub.add_parser("schema", help="print the JSON schema of the config")
    cj.set_defaults(func=cmd_config_schema)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command")
    dc = dsub.add_parser("check", help="report on a dataset before training")
    dc.add_argument("target", help="a dataset folder or a run.toml")
    dc.add_argument("overrides", nargs="*")
    dc.add_argument("--json", metavar="FILE", help="also write the report as JSON here")
    dc.add_argument("--batch-size", type=int, default=None)
    dc.set_defaults(func=cmd_data_check)

    i = sub.add_parser("inspect", help="show a LoRA file's metadata, modules and fit")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_inspect)

    toy = sub.add_parser("toy", help="the embedded toy world")
    tsub = toy.add_subparsers(dest="toy_command")
    tp = tsub.add_parser("path", help="print the toy base files as 'role path' lines (no FAMILY: the toy families)")
    tp.add_argument("family", nargs="?")
    tp.set_defaults(func=cmd_toy_path)
    td = tsub.add_parser("dataset", help="write the demo dataset (kohya folder layout)")
    td.add_argument("dir")
    td.set_defaults(func=cmd_toy_dataset)
    tb = tsub.add_parser("build", help="rebuild the toy base models")
    tb.add_argument("--family", default="all", help="a family with a toy, or 'all'")
    tb.set_defaults(func=cmd_toy_build)
    te = tsub.add_parser("eval", help="learning benchmark: train on the toy world and score the concept")
    te.add_argument("--family", default=None, help="a family with a toy (default: the demo's)")
    te.add_argument("--out", default="demo-output/eval")
    te.add_argument("--steps", type=int, default=None)
    te.set_defaults(func=cmd_toy_eval)

    demo = sub.add_parser("demo", help="train a LoRA on the toy world (what `make demo` runs)")
    demo.add_argument("--family", default=None, help="a family with a toy (`lorakit toy path` lists them); default: "
                      "the one whose toy recipe says default_demo")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--steps", type=int, default=None)
    demo.set_defaults(func=cmd_demo)
    return p


# ---------------------------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from lorakit.config.load import load_config
    from lorakit.train.loop import train

    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.toml"
        if not cfg_path.is_file():
            raise LorakitError(f"--resume: {cfg_path} not found; is {run_dir} a lorakit run folder?")
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        cfg = load_config(cfg_path, overrides)
        train(cfg, resume=True, force=args.force_resume)
        return 0
    if not args.config:
        raise LorakitError("train: give a run.toml (or --resume DIR)")
    cfg = load_config(args.config, args.overrides)
    train(cfg)
    return 0


def cmd_config_show(args) -> int:
    from lorakit.config.load import cfg_notes, dump_toml, load_config

    cfg = load_config(args.config, args.overrides)
    for note in cfg_notes(cfg):
        print(f"# note: {note}")
    print(dump_toml(cfg), end="")
    return 0


def cmd_config_schema(args) -> int:
    from lorakit.config.jsonschema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_data_check(args) -> int:
    from lorakit.config.load import load_config
    from lorakit.config.schema import DataCfg
    from lorakit.data.scan import scan_dataset
    from lorakit.fsutil import write_json

    target = Path(args.target)
    batch_size = args.batch_size or 1
    if target.suffix == ".toml" and target.is_file():
        cfg = load_config(target, args.overrides)
        data = cfg.data
        batch_size = args.batch_size or cfg.training.batch_size
        from lorakit.models.registry import get_family

        divisibility = get_family(cfg.model.family).SPEC.bucket_divisibility
    elif target.is_dir():
        data = DataCfg(dir=str(target))
        divisibility = 64
    else:
        raise LorakitError(f"data check: {target} is neither a dataset folder nor a .toml file")
    counter = _clip_token_counter()
    dataset = scan_dataset(data, divisibility=divisibility, count_tokens=counter, max_tokens=77)
    report = dataset.report
    print(report.to_table(batch_size=batch_size) if _accepts(report.to_table, "batch_size") else report.to_table())
    out = Path(args.json) if args.json else None
    if out:
        write_json(out, report.to_json(), default=str)
        print(f"report written to {out}")
    return 0 if report.usable else 1


def cmd_inspect(args) -> int:
    from lorakit.lora.inspect import inspect_file, render

    info = inspect_file(Path(args.file))
    print(json.dumps(info, indent=2, default=str) if args.json else render(info))
    return 0


def cmd_toy_path(args) -> int:
    from lorakit.toy.paths import toy_families, toy_paths

    if args.family is None:
        print("\n".join(toy_families()))
        return 0
    for role, path in toy_paths(args.family).items():
        print(f"{role} {path}")
    return 0


def cmd_toy_dataset(args) -> int:
    from lorakit.toy.world import write_demo_dataset

    path = write_demo_dataset(Path(args.dir))
    print(f"demo dataset written to {path}")
    return 0


def cmd_toy_build(args) -> int:
    from lorakit.toy.__main__ import main as toy_main

    return int(toy_main(["build", "--family", args.family]) or 0)


def cmd_toy_eval(args) -> int:
    from lorakit.toy.demo import run_eval
    from lorakit.toy.paths import default_toy_family

    result = run_eval(args.family or default_toy_family(), Path(args.out), steps=args.steps)
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args) -> int:
    from lorakit.toy.demo import run_demo
    from lorakit.toy.paths import default_toy_family

    run_demo(args.family or default_toy_family(), Path(args.out), steps=args.steps)
    return 0


# ---------------------------------------------------------------------------------------------- helpers


def _clip_token_counter():
    try:
        from lorakit.models.tokenizers import clip_tokenizer

        tok = clip_tokenizer()
        return lambda text: len(tok(text, truncation=False)["input_ids"])
    except Exception:  # the data check still runs without token counts; the report says so
        return None


def _accepts(fn, name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
