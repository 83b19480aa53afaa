"""The lorakit command line. Thin: every command parses its arguments and calls into the package.

    lorakit train run.toml [section.key=value ...]     train (or --resume DIR to continue a stopped run)
    lorakit plan run.toml [--card rtx4090] [--gpus N]  the settings, peak memory and s/step on a card
    lorakit config show run.toml [overrides]           the resolved config (after preset and overrides)
    lorakit config schema                              the JSON schema of the config (web UI forms)
    lorakit data check DIR|run.toml                    dataset report before any GPU work
    lorakit caption DIR|dataset.toml --captioner ...   write captions with a local captioner
    lorakit inspect FILE.safetensors                   metadata, modules, rank/alpha, which base it fits
    lorakit verify FILE [--base MODEL]                 per loader: keys applied / ignored / shape mismatches
    lorakit convert FILE --to kohya|diffusers|peft|comfyui   lossless layout conversion
    lorakit resize FILE --rank R | --dynamic sv_fro=0.9 ;  merge A[:w] B[:w] -o OUT [--rank R | --into BASE]
    lorakit extract TUNED BASE --rank R -o OUT ;  package RUN_DIR ;  push RUN_DIR --repo user/name
    lorakit import kohya CONFIG.toml|train.sh|train.bat [--dataset D.toml] -o run.toml
    lorakit import kohya_ss GUI.json | ai-toolkit JOB.yaml | musubi train.sh | onetrainer CONFIG.json  -o run.toml
    lorakit toy path FAMILY | toy dataset DIR | toy build | toy eval
    lorakit demo                                       the toy-world demo (what `make demo` runs)
    lorakit sweep run.toml optimizer.lr=5e-5,1e-4 network.rank=16,32 [--steps N]   grid of runs + comparison
    lorakit ui [--listen --auth user:pass]             the web UI (dataset, train, jobs, watch, compare)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from lorakit.errors import LorakitError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # --help ends here, before any heavy import
    if extra:  # `lorakit plan run.toml --card h100 memory.vram_gb=20`: key=value after an option is an override too
        # (walk8: also a sweep's axes and overrides, `lorakit sweep run.toml a=1,2 --steps 40 save.every_n_steps=10`)
        dest = next((d for d in ("overrides", "args") if isinstance(getattr(args, d, None), list)), None)
        if dest is None or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, dest).extend(extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if (empty := _empty_option(parser, args)) is not None:  # `--extension ""` is not "the default" (fixes7)
        print(f"lorakit: error: {empty}", file=sys.stderr)
        return 2
    from lorakit.logs import quiet_third_party

    quiet_third_party()
    try:
        return int(args.func(args) or 0)
    except LorakitError as exc:
        print(f"lorakit: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lorakit config schema | head`: the reader left early; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not raise again
        return 141
    except OSError as exc:  # a full disk or a file-size limit anywhere: one line, not a traceback (issue 27)
        from lorakit.fsutil import disk_problem

        if disk_problem(exc) is None:
            raise
        print(f"lorakit: error: {disk_problem(exc)} while writing {exc.filename or 'a file'}; files written before "
              "are intact: free some space, then run again (a stopped training run continues with `lorakit train "
              "--resume RUN_FOLDER`)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (cmd_train turns it into one)
        print(f"lorakit: {exc or 'interrupted; the last complete checkpoint is kept (resume with --resume)'}",
              file=sys.stderr)
        return 130
    finally:  # a long command's SIGINT/SIGTERM handlers go back, unless it was stopped (lorakit/interrupts.py)
        from lorakit.interrupts import release

        release()


def _empty_option(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Optional[str]:
    """The line refusing an option given an empty value (`--license ""`) whose default is not empty, else None:
    an explicit empty value used to read as the option left out (a silent default)."""
    import re

    chain, p = [parser], parser
    while sub := next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None):
        if (p := sub.choices.get(getattr(args, sub.dest or "", None) or "")) is None:
            break
        chain.append(p)
    for action in (a for p in reversed(chain) for a in p._actions):
        if action.option_strings and action.default != "" and getattr(args, action.dest, None) == "":
            opt = max(action.option_strings, key=len)
            what = re.sub(r"\s*\(default[^)]*\)|;\s*default\b.*$", "", action.help or "").strip()
            return (f"{opt} was given an empty value; give a value{f' ({what})' if what else ''} or leave {opt} "
                    "out for its default")
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorakit", description="Train image LoRAs locally (SDXL, FLUX.1, FLUX.2, SD3.5, "
                                "Qwen-Image, Z-Image, SD 1.5).")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a LoRA from a TOML config")
    t.add_argument("config", nargs="?", help="run.toml")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR (its config.toml is used; DIR "
                   "may be a copied or moved run folder)")
    t.add_argument("--force-resume", action="store_true", help="resume even if the settings changed")
    # issue 24: data-parallel over N processes on this machine (docs/multi-gpu.md); training.batch_size is per process
    t.add_argument("--gpus", type=int, default=1, help="train on N GPUs of this machine (one process each)")
    t.add_argument("--machine-rank", type=int, default=0, help="this machine's number (distributed.num_machines > 1)")
    t.set_defaults(func=cmd_train)

    # issue 28: the automatic memory/speed plan for a card, without running anything
    pl = sub.add_parser("plan", help="the settings, peak memory and s/step a run would get on a card (runs nothing)")
    pl.add_argument("config", help="run.toml")
    pl.add_argument("overrides", nargs="*", help="section.key=value overrides")
    pl.add_argument("--card", help="a card of lorakit's table (rtx4090, rtx3060-12g, h100, ...); default: this GPU")
    pl.add_argument("--gpus", type=int, default=1, help="also the memory of each of N cards, with and without "
                    "distributed.shard = \"base\" (issue 24)")
    pl.set_defaults(func=lambda args: __import__("lorakit.train.planview", fromlist=["main"]).main(
        args.config, args.overrides, args.card, args.gpus))

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
    dc.add_argument("--family", default=None, help="check for this model family (default: a run.toml's, else the "
                    "strictest installed)")
    dc.set_defaults(func=cmd_data_check)

    from lorakit.caption.cli import add_parser as add_caption_parser  # light: argparse only

    add_caption_parser(sub)

    i = sub.add_parser("inspect", help="show a LoRA file's metadata, modules and fit")
    i.add_argument("file", help="a LoRA file, a run folder or a diffusers / PEFT LoRA folder")
    i.add_argument("--base", help="check the modules against this base checkpoint (default: full size, or the run's)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_inspect)

    _add_lora_tools(sub)

    toy = sub.add_parser("toy", help="the embedded toy world")
    tsub = toy.add_subparsers(dest="toy_command")
    tp = tsub.add_parser("path", help="print the [model] table of a run on the toy (no FAMILY: the toy families)")
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
    te.add_argument("--caption", action="store_true", help="caption the demo images with the toy captioner first")
    te.add_argument("--quality", action="store_true", help="the toy recipe's best measured setting (issue 23's bar)")
    te.set_defaults(func=cmd_toy_eval)

    demo = sub.add_parser("demo", help="train a LoRA on the toy world (what `make demo` runs)")
    demo.add_argument("--family", default=None, help="a family with a toy (`lorakit toy path` lists them); default: "
                      "the one whose toy recipe says default_demo")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--steps", type=int, default=None)
    demo.add_argument("--caption", action="store_true", help="caption the demo images with the toy captioner first")
    demo.set_defaults(func=cmd_demo)

    sw = sub.add_parser("sweep", help="train a grid of settings and compare them (or: sweep report DIR)",
                        description="lorakit sweep run.toml optimizer.lr=5e-5,1e-4 network.rank=16,32 [--steps N] "
                        "[--out DIR] | lorakit sweep --resume DIR | lorakit sweep report DIR | "
                        "lorakit sweep preset DIR PRESET.toml")
    sw.add_argument("args", nargs="*", help="run.toml then section.key=v1,v2,... (or: report DIR, or: preset DIR "
                    "PRESET.toml)")
    sw.add_argument("--resume", metavar="DIR", help="continue the interrupted sweep in DIR")
    sw.add_argument("--steps", type=int, default=None, help="training.max_steps of every point")
    sw.add_argument("--out", metavar="DIR", default=None, help="the sweep folder (default: <save.dir>/<name>-sweep)")
    sw.add_argument("--concept", action="store_true", help="toy world only: also score concept rate and drift")
    sw.add_argument("--gpus", metavar="0,1", default=None, help="run points at once, each a `lorakit train` on its "
                    "card (as many per card as the memory plan fits)")
    sw.add_argument("--parallel", metavar="N", type=int, default=None, help="on the CPU: N points at once (each a "
                    "process); on GPUs: at most N per card")
    sw.set_defaults(func=cmd_sweep)

    ui = sub.add_parser("ui", help="the web UI (Gradio; needs the ui extra)")
    ui.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    ui.add_argument("--listen", action="store_true", help="serve other hosts too (needs --auth or --auth-file)")
    ui.add_argument("--auth", metavar="USER:PASSWORD", help="credentials for the page")
    ui.add_argument("--auth-file", metavar="FILE", help="a file of user:password lines")
    ui.add_argument("--home", default=os.environ.get("LORAKIT_HOME", "~/.lorakit"),
                    help="where jobs, uploads and runs are kept (default: $LORAKIT_HOME or ~/.lorakit)")
    ui.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                    help="with --listen: a folder the page may use besides --home and the current folder")
    ui.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload (one file or zip), in MB")
    ui.set_defaults(func=cmd_ui)
    return p


# ---------------------------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from lorakit.config.load import load_config
    from lorakit.interrupts import install
    from lorakit.train.loop import train

    install()  # SIGTERM (a scheduler, `kill`, a UI's stop) ends the run as Ctrl-C does; a later second one aborts

    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.toml"
        if not cfg_path.is_file():
            raise LorakitError(f"--resume: {cfg_path} not found; is {run_dir} a lorakit run folder?")
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        from lorakit.config.load import parse_override  # a resumed run stays in DIR: save.dir/name would do nothing
        moved = sorted({".".join(parse_override(o)[0]) for o in overrides} & {"save.dir", "save.name"})
        if moved:
            raise LorakitError(f"--resume: {moved[0]} cannot change: the run stays in {run_dir} and keeps its file "
                               f"names (nothing was changed); to train into another folder, copy {run_dir} there and "
                               "resume the copy")
        cfg = load_config(cfg_path, overrides)
        _print_notes(cfg)
        if (launched := _launch(args, cfg, run_dir)) is not None:
            return launched
        train(cfg, resume=True, force=args.force_resume, run_dir=run_dir)  # DIR itself, wherever it now lives
        return 0
    if not args.config:
        raise LorakitError("train: give a run.toml (or --resume DIR)")
    cfg = load_config(args.config, args.overrides)
    _print_notes(cfg)
    if (launched := _launch(args, cfg, Path(cfg.save.dir) / cfg.save.name)) is not None:
        return launched
    train(cfg)
    return 0


def _print_notes(cfg) -> None:
    """What the loader adapted (memory.cache_text_encoder_outputs turned off, …): said before training, once (rank 0
    or a single process), as `lorakit config show` says it."""
    from lorakit.config.load import cfg_notes

    if os.environ.get("RANK", "0") == "0":
        for note in cfg_notes(cfg):
            print(f"note: {note}", flush=True)


def _launch(args, cfg, run_dir: Path) -> Optional[int]:
    """--gpus N / several machines: lorakit's launcher starts and watches the processes (each runs this same command
    as one rank); None when this process trains itself (alone, or a rank of a launcher: WORLD_SIZE is set)."""
    if "WORLD_SIZE" in os.environ or (args.gpus == 1 and cfg.distributed.num_machines == 1):
        return None
    from lorakit.train.distributed import launch

    argv = (["train"] + ([args.config] if args.config else []) + list(args.overrides)
            + (["--resume", args.resume] if args.resume else []) + (["--force-resume"] if args.force_resume else []))
    return launch(cfg, args.gpus, args.machine_rank, argv, run_dir)


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
    import math

    from lorakit.caption.text import family_limit
    from lorakit.fsutil import write_json
    from lorakit.models.registry import families, get_family

    target = Path(args.target)
    batch_size, accumulation = args.batch_size or 1, 1
    family = _family_flag(args.family)
    if target.suffix == ".toml" and target.is_file() and _is_kohya_dataset_toml(target):
        data = DataCfg(config=str(target))  # a kohya dataset TOML ([[datasets]]) given directly
    elif target.suffix == ".toml" and target.is_file():
        cfg = load_config(target, args.overrides)
        data, family = cfg.data, cfg.model.family
        batch_size = args.batch_size or cfg.training.batch_size
        accumulation = cfg.training.gradient_accumulation
    elif target.is_dir():
        if args.overrides:  # data.min_bucket_reso=64 ...: validated as in a run config
            named = any(o.startswith("model.family=") for o in args.overrides)
            cfg = load_config(None, [f"data.dir={target}", *args.overrides]
                              + ([] if named else [f"model.family={family or families()[0]}"])
                              + ([] if any(o.startswith("model.checkpoint=") for o in args.overrides)
                                 else ["model.checkpoint=(not needed by data check)"]))
            data, family = cfg.data, family or (cfg.model.family if named else None)
            batch_size = args.batch_size or cfg.training.batch_size     # training.batch_size=4 (was: batch 1)
            accumulation = cfg.training.gradient_accumulation
        else:
            data = DataCfg(dir=str(target))
    else:
        raise LorakitError(f"data check: {target} is neither a dataset folder nor a .toml file")
    # the family's bucket divisibility, caption limit and tokenizer; without one, the strictest installed family's
    checked = [family] if family else families()
    divisibility = math.lcm(*(get_family(f).SPEC.bucket_divisibility for f in checked))
    limit, counter = min((family_limit(f) for f in checked), key=lambda lc: lc[0])
    if data.max_token_length > 75:  # walk7o: SDXL's long captions (chunks of 75 between BOS and EOS) are read whole
        limit = max(limit, data.max_token_length + 2)
    if not family:
        print(f"no family given: buckets and caption lengths checked for the strictest of {', '.join(checked)} "
              "(--family, or a run.toml, checks one)")
    try:
        dataset = scan_dataset(data, divisibility=divisibility, count_tokens=counter, max_tokens=limit)
    except LorakitError as exc:  # no usable image: the report the message points at, then the line
        if getattr(exc, "report", None) is not None:
            print(exc.report.to_table(batch_size=batch_size, accumulation=accumulation))
        raise
    report = dataset.report
    from lorakit.data.report import duplicate_captions

    report.problems += duplicate_captions(dataset)
    print(report.to_table(batch_size=batch_size, accumulation=accumulation) if _accepts(report.to_table, "batch_size")
          else report.to_table())
    out = Path(args.json) if args.json else None
    if out:
        write_json(out, report.to_json(batch_size, accumulation), default=str)  # (was: batch 1 always)
        print(f"report written to {out}")
    return 0 if report.usable else 1


def cmd_inspect(args) -> int:
    from lorakit.lora.inspect import inspect_file, render, run_base

    base = Path(args.base) if getattr(args, "base", None) else None
    info = inspect_file(Path(args.file), _keymaps(), base)
    if (base is None and "fit" in info and (info["fit"]["unmatched"] or info["fit"].get("shape_mismatch"))
            and run_base(Path(info["file"])) is not None):
        try:
            info = inspect_file(Path(args.file), _keymaps(), run_base(Path(info["file"])))  # the run's own base
        except LorakitError:
            pass  # the run's base does not say more than the full-size check already shown
    print(json.dumps(info, indent=2, default=str) if args.json else render(info))
    return 0


def _family_flag(name: Optional[str], toy: bool = False) -> Optional[str]:
    """``--family NAME`` checked where the command starts: one line naming the flag (not model.family), the names it
    takes and the nearest one; None passes (the command's default)."""
    if name is None:
        return None
    from lorakit.config.messages import suggest

    if toy:
        from lorakit.toy.paths import toy_families

        names, what = tuple(toy_families()), "a family with a toy model"
    else:
        from lorakit.models.registry import families

        names, what = tuple(families()), "an installed family"
    if name in names:
        return name
    hint = suggest(str(name), names)
    raise LorakitError(f"--family: {name!r} is not {what}; use one of {', '.join(names)}"
                       + (f" (did you mean {hint}?)" if hint else ""))


def cmd_toy_path(args) -> int:
    from lorakit.toy.paths import toy_families, toy_paths

    if args.family is None:
        print("\n".join(toy_families()))
        return 0
    _family_flag(args.family, toy=True)
    from lorakit.config.toml_io import toml_value
    from lorakit.toy.paths import model_section

    toy_paths(args.family)  # one line naming a missing toy file and the command that builds it
    print(f"# the toy {args.family} base model: paste this table into a run config\n[model]")
    print("\n".join(f"{key} = {toml_value(value)}" for key, value in model_section(args.family).items()))
    return 0


def cmd_toy_dataset(args) -> int:
    from lorakit.toy.world import write_demo_dataset

    path = write_demo_dataset(Path(args.dir))
    print(f"demo dataset written to {path}")
    return 0


def cmd_toy_build(args) -> int:
    from lorakit.toy.__main__ import main as toy_main

    family = args.family if args.family == "all" else _family_flag(args.family, toy=True)
    return int(toy_main(["build", "--family", family]) or 0)


def cmd_toy_eval(args) -> int:
    from lorakit.toy.demo import run_eval
    from lorakit.toy.paths import default_toy_family

    result = run_eval(_family_flag(args.family, toy=True) or default_toy_family(), Path(args.out), steps=args.steps,
                      caption=args.caption, quality=args.quality)
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args) -> int:
    from lorakit.toy.demo import run_demo
    from lorakit.toy.paths import default_toy_family

    run_demo(_family_flag(args.family, toy=True) or default_toy_family(), Path(args.out), steps=args.steps,
             caption=args.caption)
    return 0


def cmd_sweep(args) -> int:
    from lorakit.interrupts import install
    from lorakit.sweep import report as sweep_report
    from lorakit.sweep.run import Sweep, create, run_sweep

    if args.parallel is not None and args.parallel < 1:
        raise LorakitError(f"sweep --parallel must be at least 1, got {args.parallel}")
    if args.args[:1] in (["preset"], ["report"]):  # walk8: options these take no part in were ignored silently
        allowed = ("concept", "parallel") if args.args[0] == "report" and args.concept else ("concept",)
        given = [f"--{n}" for n in ("resume", "steps", "out", "gpus", "parallel", "concept")
                 if getattr(args, n) not in (None, False) and n not in allowed]
        if given:
            raise LorakitError(f"sweep {args.args[0]}: {', '.join(given)} {'has' if len(given) == 1 else 'have'} no "
                               "meaning here; drop " + ("it" if len(given) == 1 else "them")
                               + (" (--parallel N scores N points at once with --concept)"
                                  if given == ["--parallel"] and args.args[0] == "report" else ""))
    if args.args[:1] == ["preset"]:  # lorakit sweep preset DIR PRESET.toml [--concept]
        if len(args.args) != 3:
            raise LorakitError("sweep preset: give the sweep folder and the preset: lorakit sweep preset DIR "
                               "PRESET.toml [--concept]")
        from lorakit.sweep.preset import update_preset

        changed = update_preset(Path(args.args[1]), Path(args.args[2]), concept=args.concept)
        print(f"{args.args[2]}: " + ", ".join(f"{k} = {v}" for k, v in changed.items()) + " (the evidence is in "
              "the comment above each)")
        return 0
    if args.args[:1] == ["report"]:
        if len(args.args) != 2:
            raise LorakitError("sweep report: give the sweep folder: lorakit sweep report DIR")
        if args.concept:
            sweep_report.evaluate_concept(Path(args.args[1]), jobs=args.parallel or 1)
        sweep_report.write_report(Path(args.args[1]))
        return 0
    install()  # SIGINT/SIGTERM as for train (lorakit/interrupts.py)
    from lorakit.sweep.parallel import parse_gpus

    gpus = parse_gpus(args.gpus)  # refused before the sweep folder is made
    if args.resume:
        if args.args or args.steps is not None or args.out:
            raise LorakitError("sweep --resume DIR: the grid, --steps and --out come from DIR/sweep.json; "
                               "give no others (--gpus and --parallel may change)")
        sweep = Sweep(Path(args.resume))
    elif len(args.args) < 2:
        raise LorakitError("sweep: give run.toml and at least one section.key=v1,v2 (or --resume DIR, or report DIR)")
    else:
        sweep = create(Path(args.args[0]), args.args[1:], steps=args.steps,
                       out=Path(args.out) if args.out else None)
    try:
        run_sweep(sweep, gpus=gpus, parallel=args.parallel)
    except LorakitError as exc:  # a new sweep whose first point could not start: nothing blocks the corrected command
        if args.resume or not sweep.discard_untrained():
            raise
        raise LorakitError(f"{str(exc).split('; `lorakit sweep --resume')[0]}; nothing was trained, so {sweep.root} "
                           "was removed and the corrected command starts cleanly") from None
    if args.concept:
        sweep_report.evaluate_concept(sweep.root, jobs=args.parallel or 1)
        sweep_report.write_report(sweep.root)
    return 0


def cmd_ui(args) -> int:
    from lorakit.ui.app import parse_auth

    if args.listen and not parse_auth(args.auth, args.auth_file):  # refused before anything starts
        raise LorakitError("ui --listen: refusing to serve other hosts without a password; add --auth user:password "
                           "or --auth-file FILE (lines of user:password)")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LorakitError("ui: Gradio is not installed; pip install 'lorakit[ui]'") from None
    from lorakit.ui.app import serve

    serve(home=Path(args.home), port=args.port, listen=args.listen, auth=args.auth, auth_file=args.auth_file,
          allow_roots=args.allow_root, max_upload_mb=args.max_upload_mb)
    return 0


# ---------------------------------------------------------------------------------------------- helpers


# ------------------------------------------------------------------------------- LoRA tools (issue 22)


def _add_lora_tools(sub) -> None:
    v = sub.add_parser("verify", help="how ComfyUI, Forge, diffusers and kohya would load a LoRA file")
    v.add_argument("file")
    v.add_argument("--base", help="also check shapes against this single-file base checkpoint")
    v.add_argument("--family", help="force the family (default: the one the names fit)")
    v.add_argument("--json", action="store_true", help="print JSON")
    v.set_defaults(func=cmd_verify)
    c = sub.add_parser("convert", help="convert a LoRA between layouts (ΔW kept exactly)")
    c.add_argument("file")
    c.add_argument("--to", required=True, choices=("kohya", "diffusers", "peft", "comfyui"))
    c.add_argument("-o", "--out", help="output file (a folder for peft); default next to the input")
    c.add_argument("--base", help="single-file base checkpoint whose own module names to use (other topologies)")
    c.add_argument("--family")
    c.set_defaults(func=cmd_convert)
    r = sub.add_parser("resize", help="lower a LoRA's rank by SVD, reporting the kept energy per module")
    r.add_argument("file")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--rank", type=int)
    g.add_argument("--dynamic", metavar="METHOD=X", help="sv_ratio=X, sv_fro=X or sv_cumulative=X")
    r.add_argument("-o", "--out")
    r.add_argument("--family")
    r.add_argument("--verbose", action="store_true", help="one line per module")
    r.set_defaults(func=cmd_resize)
    m = sub.add_parser("merge", help="merge LoRAs (concat or SVD), or bake them into a checkpoint (--into)")
    m.add_argument("loras", nargs="+", metavar="LORA[:weight]")
    m.add_argument("-o", "--out", required=True)
    m.add_argument("--rank", type=int, help="SVD to this rank (default: exact concatenation)")
    m.add_argument("--into", metavar="BASE", help="single-file checkpoint to merge into (streamed)")
    m.add_argument("--family")
    m.set_defaults(func=cmd_merge)
    e = sub.add_parser("extract", help="a LoRA from the difference of two checkpoints (SVD)")
    e.add_argument("tuned")
    e.add_argument("base")
    e.add_argument("--rank", type=int, required=True)
    e.add_argument("-o", "--out", required=True)
    e.add_argument("--min-diff", type=float, default=1e-6, help="skip weights whose max |Δ| is at most this")
    e.add_argument("--verbose", action="store_true")
    e.set_defaults(func=cmd_extract)
    p = sub.add_parser("package", help="a CivitAI-ready folder from a run (LoRA, previews, README, civitai.json)")
    p.add_argument("run_dir")
    p.add_argument("-o", "--out")
    p.add_argument("--step", type=int, help="package this step's checkpoint (default: the final LoRA)")
    p.add_argument("--license", help="licence text for the model card (default: the base model's)")
    p.set_defaults(func=cmd_package)
    u = sub.add_parser("push", help="upload a run's package to the Hugging Face Hub")
    u.add_argument("run_dir")
    u.add_argument("--repo", required=True, metavar="user/name")
    u.add_argument("--private", action="store_true")
    u.add_argument("--dry-run", action="store_true")
    u.add_argument("--step", type=int)
    u.set_defaults(func=cmd_push)
    im = sub.add_parser("import", help="import a config from another trainer")
    isub = im.add_subparsers(dest="import_command")
    ik = isub.add_parser("kohya", help="an sd-scripts --config_file TOML (and dataset TOML) -> run.toml; or the "
                         "training command line in a .sh / .bat / .ps1 / text file (FluxGym's train.sh / train.bat)")
    ik.add_argument("config", help="the --config_file TOML, or a script / text file holding the "
                    "`accelerate launch ... *train_network.py --option value ...` command")
    ik.add_argument("--dataset", help="the sd-scripts --dataset_config TOML")
    ik.add_argument("-o", "--out", required=True)
    ik.add_argument("--family", help="the model family (default: from network_module)")
    ik.set_defaults(func=cmd_import_kohya)
    iss = isub.add_parser("kohya_ss", help="a kohya_ss GUI config (the JSON its LoRA tab saves) -> run.toml; "
                          "epochs become steps by counting the 'N_name' image folders, lr_warmup %% becomes steps")
    iss.add_argument("config", help="the kohya_ss GUI JSON")
    iss.add_argument("-o", "--out", required=True, help="the run.toml to write (never overwritten)")
    iss.add_argument("--family", help="the model family (default: from the sdxl / flux1 / sd3 boxes and the base "
                     "model file)")
    iss.set_defaults(func=cmd_import_kohya_ss)
    iat = isub.add_parser("ai-toolkit", help="an ostris ai-toolkit job YAML -> run.toml and <out>.dataset.toml "
                          "(its dataset folders as a kohya dataset TOML)")
    iat.add_argument("config", help="the ai-toolkit YAML (config.process[0] is imported)")
    iat.add_argument("-o", "--out", required=True, help="the run.toml to write (never overwritten)")
    iat.add_argument("--family", help="the model family (default: from model.arch / is_flux / is_xl / the model "
                     "name or file)")
    iat.set_defaults(func=cmd_import_aitoolkit)
    imu = isub.add_parser("musubi", help="a musubi-tuner training command (flux_2 / qwen_image / zimage "
                          "_train_network.py in a .sh / .bat / text file, or its --config_file TOML) -> run.toml and "
                          "<out>.dataset.toml (its dataset TOML in kohya's schema)")
    imu.add_argument("config", help="the script / text file holding the training command (or a --config_file TOML)")
    imu.add_argument("--dataset", help="musubi's dataset TOML (default: the command's --dataset_config)")
    imu.add_argument("-o", "--out", required=True, help="the run.toml to write (never overwritten)")
    imu.add_argument("--family", help="the model family (default: from the script name or network_module)")
    imu.set_defaults(func=cmd_import_musubi)
    iot = isub.add_parser("onetrainer", help="a OneTrainer saved config (JSON) -> run.toml and <out>.dataset.toml "
                          "(its concepts as a kohya dataset TOML)")
    iot.add_argument("config", help="the JSON OneTrainer saves (concepts inline, or its concept_file_name)")
    iot.add_argument("-o", "--out", required=True, help="the run.toml to write (never overwritten)")
    iot.add_argument("--family", help="the model family (default: from model_type and the base model file)")
    iot.set_defaults(func=cmd_import_onetrainer)


def _keymaps(family: Optional[str] = None) -> list:
    from lorakit.models.registry import families, get_family

    names = [family] if family else families()
    if family and family not in families():  # walk8: named model.family, a key these tools do not have
        from lorakit.errors import ConfigError

        raise ConfigError(f"--family: unknown family {family!r}; available: {', '.join(families())}")
    maps = [get_family(n).full_lora_keymap() for n in names if hasattr(get_family(n), "full_lora_keymap")]
    return [k for m in maps for k in (m if isinstance(m, (list, tuple)) else [m])]  # one map per size (FLUX.2)


def _named_family(path: Path, family: Optional[str]) -> Optional[str]:
    """--family, else the family a LoRA file's ss_base_model_version names when one key map has it: FLUX.1 and
    FLUX.2 LoRAs share BFL's module names, and by names alone a FLUX.2 LoRA was converted with FLUX.1's."""
    if family or not Path(path).is_file():
        return family
    from lorakit.lora.inspect import _claims
    from lorakit.models.registry import families
    from lorakit.safetensors_header import read_safetensors_header

    try:
        _, meta = read_safetensors_header(path)
    except LorakitError:
        return None  # the reader that follows says what is wrong with the file
    named = [f for f in families() if _claims(f, str((meta or {}).get("ss_base_model_version", "")))]
    return named[0] if len(named) == 1 and _keymaps(named[0]) else None


def _default_out(src: Path, suffix: str, layout: str) -> Path:
    return src.with_name(src.stem + suffix + ("" if layout == "peft" else ".safetensors"))


def _note_peft_in_memory(path: Path) -> None:
    """The one note for a file of PEFT's in-memory names (….lora_A.default.weight): convert, resize and merge read it
    at scale 1, as no lora_alpha travels with it (loadleft: resize and merge read it without the note)."""
    from lorakit.safetensors_header import read_safetensors_header

    if not path.is_file():
        return
    try:
        header, _ = read_safetensors_header(path)
    except LorakitError:
        return  # the reader that follows says what is wrong with the file
    if any(k.endswith(".lora_A.default.weight") for k in header):
        print(f"note: {path} holds PEFT's in-memory names (….lora_A.default.weight), which carry no lora_alpha: "
              "read at scale 1 (alpha = rank); if the adapter was trained with lora_alpha ≠ r, scale the result "
              "(lorakit merge OUT:<lora_alpha/r>)")


def _refuse_not_lora(path: Path, tensors: dict, does: str) -> None:
    """A file in no LoRA layout (a checkpoint, an encoder, ...): one line saying what it is (``does``: what the
    command does with LoRA files)."""
    from lorakit.lora.formats.layouts import detect_layout

    if detect_layout(tensors) is None and path.is_file():
        from lorakit.models.registry import identify

        if does.startswith("verify") and any(k.endswith(".lora_A.default.weight") for k in tensors):
            raise LorakitError(f"{path}: PEFT's in-memory names (….lora_A.default.weight: a model's state_dict saved "
                               "as is), which no loader reads; `lorakit convert FILE --to diffusers` (or --to kohya) "
                               "writes a file they read")
        if does.startswith("convert") and any(k.endswith(".lora_A.default.weight") for k in tensors):
            return  # read as the adapter "default"'s factors (lorakit.lora.formats.layouts.read_lora); load_state notes
        kind = identify(path)
        raise LorakitError(f"{path}: not a LoRA: this is {kind.what}; {does} LoRA files" if kind.role != "lora"
                           else f"{path}: unknown LoRA layout; {does.split()[0]} reads kohya, comfyui, diffusers, peft")


def _refuse_family_misfit(path: Path, tensors: dict, family: str, extra: set = frozenset()) -> None:
    """--family that fits none of a LoRA's modules: one line naming the family the file fits (its metadata's first:
    FLUX.2 shares FLUX.1's names) and what to pass; nothing when no family fits (the reader says so)."""
    from lorakit.lora.formats.layouts import choose_family, detect_layout, group_keys, stem_widths

    layout = detect_layout(tensors) or "kohya"
    groups = group_keys(tensors)[0]
    stems = sorted(set(groups) | set(extra))
    if choose_family(layout, stems, _keymaps(family), stem_widths(groups))[1]:
        return
    named = _named_family(path, None)
    other, m = choose_family(layout, stems, _keymaps(named), stem_widths(groups)) if named else (None, 0)
    if not m:
        other, m = choose_family(layout, stems, _keymaps(), stem_widths(groups))
    if m:
        raise LorakitError(f"{path}: no module fits {family} (--family); it fits {other.family} "
                           f"({m} of {len(stems)} modules): drop --family or pass --family {other.family}")


def cmd_verify(args) -> int:
    from lorakit.lora.formats.layouts import choose_family, detect_layout, group_keys, stem_widths
    from lorakit.lora.io import load_lora_file
    from lorakit.lora.tools.files import base_keymap
    from lorakit.lora.tools.verify import render, verify
    from lorakit.lora.variant_keys import LYCORIS_SUFFIXES

    if Path(args.file).is_dir():  # walk8: was "no such file"
        from lorakit.lora.tools.files import PEFT_WEIGHTS

        peft = Path(args.file) / PEFT_WEIGHTS
        raise LorakitError(f"{args.file}: a folder; verify reads one .safetensors file"
                           + (f" (this PEFT adapter's: {peft})" if peft.is_file() else ""))
    tensors, _ = load_lora_file(Path(args.file))
    lyco = {k.rsplit(".", 1)[0] for k in tensors if k.endswith(LYCORIS_SUFFIXES)}  # LoHa/LoKr/DoRA (issue 23)
    if not lyco:
        _refuse_not_lora(Path(args.file), tensors, "verify checks")
    maps = _keymaps(_named_family(Path(args.file), args.family))
    layout = detect_layout(tensors) or "kohya"
    groups = group_keys(tensors)[0]
    stems = sorted(set(groups) | lyco)
    keys, n = choose_family(layout, stems, maps, stem_widths(groups))
    if args.family and n == 0:  # --family that fits none of the file's modules: say which family it fits
        _refuse_family_misfit(Path(args.file), tensors, args.family, lyco)
    if args.base:
        keys = base_keymap(keys, Path(args.base))
    report = verify(tensors, keys)
    _in_file_names(report, Path(args.file))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ok"] else 1


def _in_file_names(report: dict, path: Path) -> None:
    """The keys a verify report lists, in the file's own names (diffusers' training-script names are read as
    lora_A / lora_B: lorakit.lora.io.canonical_pair_names)."""
    from lorakit.lora.io import pair_renames
    from lorakit.safetensors_header import read_safetensors_header

    back = {new: old for old, new in pair_renames(read_safetensors_header(path)[0]).items()}
    if not back:
        return
    for r in report["loaders"].values():
        if isinstance(r.get("ignored"), list):
            r["ignored"] = sorted(back.get(k, k) for k in r["ignored"])
        if isinstance(r.get("mismatched"), list):
            r["mismatched"] = sorted((back.get(k, k), why) for k, why in r["mismatched"])


def cmd_convert(args) -> int:
    from lorakit.lora.tools.files import base_keymap, check_out, load_state, save_state

    src = Path(args.file)
    if args.out:
        check_out(Path(args.out), folder=args.to == "peft")
    if src.is_file():  # a checkpoint given as the LoRA; a LoRA of another family: say which --family it takes
        from lorakit.lora.io import load_lora_file
        from lorakit.lora.variant_keys import LYCORIS_SUFFIXES
        tensors = load_lora_file(src)[0]
        if not any(k.endswith(LYCORIS_SUFFIXES) for k in tensors):
            _refuse_not_lora(src, tensors, "convert converts")
        if args.family:
            _refuse_family_misfit(src, tensors, args.family)
    family = _named_family(src, args.family)
    maps = _keymaps(family)
    state = load_state(src, maps, family)
    _note_peft_in_memory(src)
    keys = state.keys or next(k for k in maps if k.family == state.family)
    if args.base:
        keys = base_keymap(keys, Path(args.base))
        state = load_state(src, [keys], keys.family)
    _refuse_unmatched(state, src)
    out = Path(args.out) if args.out else _default_out(src, f"-{args.to}", args.to)
    check_out(out, folder=args.to == "peft")
    try:
        files = save_state(state, keys, args.to, out, metadata={"lorakit_converted_from": state.layout})
    except ValueError as exc:  # fused rows that do not split as the full-size model's (a toy, a pruned model)
        raise LorakitError(f"{src}: {exc} (the {keys.family} key map's sizes); a LoRA of a model of another size "
                           "converts with --base <its base checkpoint>; nothing written") from None
    print(f"{state.layout} -> {args.to}: {len(state.modules)} modules ({state.family}) written to "
          + ", ".join(str(f) for f in files))
    return 0


def _refuse_unmatched(state, src: Path, keep_foreign: bool = False) -> None:
    """convert needs every key placed; resize/merge keep kohya modules of another topology by name."""
    left = state.unplaced() if keep_foreign else state.unmatched
    if left:
        raise LorakitError(f"{src}: {len(left)} keys fit no {state.family} module (e.g. {left[0]}); nothing "
                           "written (`lorakit verify` lists them)" + (
                               "; a LoRA of a model of another size (a toy, a pruned model) converts with --base <its "
                               "base checkpoint>" if not keep_foreign else ""))  # walk8: the way out was not said
    if keep_foreign and state.foreign:
        print(f"note: {len(state.foreign)} modules fit no full-size {state.family} module (another topology, e.g. "
              f"{sorted(state.foreign)[0]}); kept under their names")


def cmd_resize(args) -> int:
    from lorakit.lora.formats.layouts import LoraState
    from lorakit.lora.tools.files import check_out, common_dtype, load_state, save_state
    from lorakit.lora.tools.ops import resize

    src = Path(args.file)
    if args.out:  # a PEFT adapter folder is resized into a folder of its layout (was: a folder named -o x.safetensors)
        check_out(Path(args.out), folder=src.is_dir())
    family = _named_family(src, args.family)  # walk8: a FLUX.2 LoRA was read (and named) as FLUX.1 here
    maps = _keymaps(family)
    state = load_state(src, maps, family)
    _refuse_unmatched(state, src, keep_foreign=True)
    _note_peft_in_memory(src)
    if args.rank is not None:
        method, value = "rank", float(args.rank)
    else:
        method, _, x = args.dynamic.partition("=")
        if method not in ("sv_ratio", "sv_fro", "sv_cumulative") or not x:
            raise LorakitError(f"--dynamic {args.dynamic}: use sv_ratio=X, sv_fro=X or sv_cumulative=X")
        try:
            value = float(x)
        except ValueError:
            raise LorakitError(f"--dynamic {args.dynamic}: {x!r} is not a number (e.g. {method}=0.9)") from None
    modules, rows = resize(state.modules, method, value)
    keys = state.keys or next(k for k in maps if k.family == state.family)
    tag = f"-r{args.rank}" if args.rank is not None else f"-{method}{value:g}"
    out = Path(args.out) if args.out else _default_out(src, tag, state.layout)
    check_out(out, folder=state.layout == "peft")
    save_state(LoraState(modules, state.metadata, state.layout, state.family, foreign=state.foreign), keys,
               state.layout, out,
               dtype=common_dtype(state), metadata={"lorakit_resized": f"{method}={value:g}"})
    _print_rows(rows, "new_rank", args.verbose)
    print(f"written to {out}")
    return 0


def _print_rows(rows: list, rank_key: str, verbose: bool, err_key: str = "energy") -> None:
    if verbose:
        for r in rows:
            print(f"  {r['module']}: rank {r.get('rank')} -> {r.get(rank_key)}  {err_key} {r[err_key]:.4f}")
    vals = sorted(r[err_key] for r in rows)
    ranks = sorted(r[rank_key] for r in rows)
    if vals:
        print(f"{len(rows)} modules; rank min {ranks[0]} / median {ranks[len(ranks) // 2]} / max {ranks[-1]}; "
              f"{err_key} min {vals[0]:.4f} / median {vals[len(vals) // 2]:.4f} / max {vals[-1]:.4f}")


def _weighted_path(text: str) -> tuple[Path, float]:
    head, sep, tail = text.rpartition(":")
    if sep and not Path(text).exists():
        try:
            weight = float(tail)
        except ValueError:
            if Path(head).is_file():  # FILE:weight with a weight that is no number
                raise LorakitError(f"{text}: the weight after ':' must be a number, e.g. {head}:0.8") from None
        else:
            if not math.isfinite(weight):  # walk8: nan / inf were taken and wrote a LoRA of NaN weights
                raise LorakitError(f"{text}: the weight after ':' must be a finite number, e.g. {head}:0.8")
            return Path(head), weight
    return Path(text), 1.0


def _single_checkpoint(flag: str, path: Path, does: str) -> None:
    """extract's TUNED / BASE and merge's --into: one .safetensors checkpoint; a folder or a pickle is named with its
    flag and what to give (loadleft: was "fold: cannot read (Is a directory)", the pickle's line without the flag)."""
    from lorakit.safetensors_header import weights_format

    if not path.exists():
        raise LorakitError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise LorakitError(f"{flag} {path}: a folder; {does} reads one single-file .safetensors checkpoint (as "
                           "ComfyUI's models/checkpoints/ holds), not a diffusers folder")
    if path.is_file() and weights_format(path) == "pickle":
        raise LorakitError(f"{flag} {path}: a PyTorch pickle (.ckpt / .pt / .bin content); {does} reads .safetensors "
                           "checkpoints: convert it to .safetensors first (only if you trust the file)")
    if path.is_file() and weights_format(path) == "safetensors":
        from lorakit.safetensors_header import quantized_tensor, read_safetensors_header

        scaled = quantized_tensor(read_safetensors_header(path)[0])
        if scaled is not None:  # loadleft: the raw fp8 values were read without their scale (a wrong ΔW, silently)
            raise LorakitError(f"{flag} {path}: a scaled-fp8 / quantized file (e.g. {scaled!r}: its weights are "
                               f"stored times a scale); {does} reads bf16, fp16, fp32 or plain fp8 weights: give "
                               "the model's bf16 or fp16 file")


def _checkpoint_family(path: Path) -> Optional[str]:
    """The family whose checkpoint ``path`` is (header only), when it has LoRA key maps; else None."""
    from lorakit.models.registry import identify

    try:
        kind = identify(path)
    except LorakitError:
        return None
    return kind.family if kind.role == "checkpoint" and kind.family and _keymaps(kind.family) else None


def cmd_merge(args) -> int:
    from lorakit.lora.formats.layouts import LoraState
    from lorakit.lora.tools.files import base_keymap, check_out, common_dtype, load_state, merge_into, save_state
    from lorakit.lora.tools.ops import check_not_void, check_rank, merge

    if args.into and args.rank is not None:
        raise LorakitError("merge --into: --rank has no meaning when merging into a checkpoint; drop it")
    check_rank(args.rank, "merge")
    check_out(Path(args.out))
    if args.into:
        _single_checkpoint("--into", Path(args.into), "merge --into")
    weighted = [_weighted_path(text) for text in args.loras]  # a bad weight is named before the key maps load
    maps = _keymaps(args.family)
    into_family = _checkpoint_family(Path(args.into)) if args.into and not args.family else None
    loras = []
    for path, w in weighted:
        family = _named_family(path, args.family)  # walk8: as convert, a FLUX.2 LoRA is FLUX.2's (was FLUX.1's)
        state = None
        if family is None and into_family is not None:  # loadleft: names FLUX.1 shares with SDXL (lora_te1_…) were
            try:                                        # read as FLUX.1's when --into is an SDXL checkpoint
                state = load_state(path, _keymaps(into_family), into_family)
            except LorakitError:
                state = None  # fits nothing of the checkpoint's family: read as before, the mismatch said below
        if state is None:
            state = load_state(path, _keymaps(family) if family != args.family else maps, family)
        _refuse_unmatched(state, path, keep_foreign=True)
        _note_peft_in_memory(path)
        loras.append((state, w))
    fams = {s.family for s, _ in loras}
    if len(fams) > 1:
        raise LorakitError(f"merge: the LoRAs are for different families ({', '.join(sorted(fams))})")
    sizes = {(s.keys.variant if s.keys is not None else None) for s, _ in loras}
    if len(sizes) > 1 and None not in sizes:  # loadleft: FLUX.2 Klein 4B + 9B was a per-module shape message
        fits = ", ".join(f"{p.name} fits {s.family} {s.keys.variant}" for (p, _), (s, _) in zip(weighted, loras))
        raise LorakitError(f"merge: the LoRAs are for different sizes of one model ({fits}); merge LoRAs of one "
                           "size; nothing written")
    keys = loras[0][0].keys or next(k for k in maps if k.family == loras[0][0].family)
    out = Path(args.out)
    if args.into:
        if all(w == 0 for _, w in loras):  # walk8: baked nothing into a copy of the checkpoint
            raise LorakitError("merge --into: every weight is 0, so the checkpoint would not change; nothing written")
        info = merge_into(Path(args.into), loras, base_keymap(keys, Path(args.into), flag="--into"), out,
                          files=[path.name for path, _ in weighted])
        print(f"{info['weights_changed']} of {info['tensors']} tensors changed; written to {out}")
        return 0
    modules, rows = merge([(s.modules, w) for s, w in loras], rank=args.rank)
    check_not_void([(s.modules, w) for s, w in loras], modules)
    meta = dict(loras[0][0].metadata)
    meta["lorakit_merged_from"] = json.dumps([{"file": path.name, "weight": w} for path, w in weighted])  # (was
    # the argument's text: "b.safetensors:0.5" as the file name)
    save_state(LoraState(modules, meta, "kohya", keys.family), keys, "kohya", out, dtype=common_dtype(loras[0][0]))
    _print_rows(rows, "rank", False)
    print(f"written to {out}")
    return 0


def cmd_extract(args) -> int:
    from lorakit.lora.tools.files import _checkpoint_modules, base_keymap, extract_from, save_state
    from lorakit.lora.io import read_safetensors_header
    from lorakit.models.registry import get_family

    from lorakit.lora.tools.ops import check_rank

    check_rank(args.rank, "extract")
    from lorakit.lora.tools.files import check_out

    check_out(Path(args.out))
    if not math.isfinite(args.min_diff) or args.min_diff < 0:
        raise LorakitError(f"extract: --min-diff must be a number ≥ 0, got {args.min_diff:g}")
    tuned, base = Path(args.tuned), Path(args.base)
    for flag, path in (("TUNED", tuned), ("BASE", base)):
        _single_checkpoint(f"extract: {flag}", path, "extract")
    from lorakit.models.registry import identify
    kinds = {}
    for flag, path in (("TUNED", tuned), ("BASE", base)):  # a LoRA, an encoder, a VAE: what it is, not "no weight"
        kind = kinds[flag] = identify(path)
        if kind.role in ("lora", "component"):
            raise LorakitError(f"extract: {flag} {path} is {kind.what}; extract takes two checkpoints of one family "
                               "(the fine-tuned model and its base) and writes the LoRA of their difference")
    fam_t, fam_b = kinds["TUNED"].family, kinds["BASE"].family
    if fam_t and fam_b and fam_t != fam_b:  # loadleft: was "share no sdxl LoRA-target weight; are they the same ...?"
        raise LorakitError(f"extract: TUNED {tuned} is {kinds['TUNED'].what} ({fam_t}), BASE {base} is "
                           f"{kinds['BASE'].what} ({fam_b}); extract takes two checkpoints of one family: give the "
                           f"{fam_t} base the tuned model was trained from")
    header, _ = read_safetensors_header(tuned)
    maps = _keymaps()
    keys = max(maps, key=lambda k: len(_checkpoint_modules(k, header)[0]))
    if not _checkpoint_modules(keys, header)[0]:
        raise LorakitError(f"extract: {tuned} holds no weight of a known family's LoRA targets")
    state, rows = extract_from(tuned, base, base_keymap(keys, tuned), args.rank, min_diff=args.min_diff)
    if not state.modules:
        raise LorakitError(f"extract: {tuned} and {base} do not differ (max |Δ| ≤ {args.min_diff}); nothing to extract")
    spec = get_family(keys.family).SPEC
    state.metadata.update(ss_network_module=spec.network_module, ss_base_model_version=spec.metadata_base_version)
    save_state(state, keys, "kohya", Path(args.out), dtype=torch_dtype_of(base))
    _print_rows([r for r in rows if r["rank"]], "rank", args.verbose, "rel_error")
    skipped = sum(1 for r in rows if not r["rank"])
    print(f"{len(state.modules)} modules extracted" + (f", {skipped} unchanged weights skipped" if skipped else "")
          + f"; written to {args.out}")
    return 0


def torch_dtype_of(path: Path):
    from lorakit.lora.tools.files import checkpoint_dtype

    return checkpoint_dtype(path)


def cmd_package(args) -> int:
    from lorakit.publish import package_run

    out = package_run(Path(args.run_dir), Path(args.out) if args.out else None, step=args.step,
                      license_text=args.license)
    print(f"package written to {out}")
    return 0


def cmd_push(args) -> int:
    from lorakit.publish import push_run

    return push_run(Path(args.run_dir), args.repo, private=args.private, dry_run=args.dry_run, step=args.step)


def cmd_import_kohya(args) -> int:
    from lorakit.config.kohya_import import import_kohya_files

    text, mapped, dropped, notes = import_kohya_files(Path(args.config), Path(args.dataset) if args.dataset else None,
                                               family=args.family)
    out = Path(args.out)
    from lorakit.config.importing import write_new

    write_new({out: text})
    for src, dst in mapped:
        print(f"mapped   {src} -> {dst}")
    for key, why in dropped:
        print(f"dropped  {key}: {why}")
    for note in notes:
        print(f"note: {note}")
    print(f"{len(mapped)} keys mapped, {len(dropped)} dropped; written to {out}")
    return 0


def _print_import(result, kind: str) -> int:
    from lorakit.config.importing import write_new

    write_new(result.files)
    for src, dst in result.mapped:
        print(f"mapped   {src} -> {dst}")
    for key, why in result.dropped:
        print(f"dropped  {key}: {why}")
    for note in result.notes:
        print(f"note: {note}")
    written = " and ".join(str(p) for p in result.files)
    print(f"{len({k for k, _ in result.mapped})} {kind} keys mapped, {len(result.dropped)} not carried over; "
          f"written to {written}")
    return 0


def cmd_import_kohya_ss(args) -> int:
    from lorakit.config.importing import check_new
    from lorakit.config.kohya_ss_import import import_kohya_ss_gui

    check_new([Path(args.out)])
    return _print_import(import_kohya_ss_gui(Path(args.config), Path(args.out), family=_family_flag(args.family)),
                         "kohya_ss")


def cmd_import_aitoolkit(args) -> int:
    from lorakit.config.aitoolkit_import import dataset_path, import_aitoolkit
    from lorakit.config.importing import check_new

    check_new([Path(args.out), dataset_path(Path(args.out))])
    return _print_import(import_aitoolkit(Path(args.config), Path(args.out), family=_family_flag(args.family)),
                         "ai-toolkit")


def cmd_import_musubi(args) -> int:
    from lorakit.config.importing import check_new
    from lorakit.config.musubi_import import dataset_path, import_musubi

    check_new([Path(args.out), dataset_path(Path(args.out))])
    return _print_import(import_musubi(Path(args.config), Path(args.out), family=_family_flag(args.family),
                                       dataset=Path(args.dataset) if args.dataset else None), "musubi-tuner")


def cmd_import_onetrainer(args) -> int:
    from lorakit.config.importing import check_new
    from lorakit.config.onetrainer_import import dataset_path, import_onetrainer

    check_new([Path(args.out), dataset_path(Path(args.out))])
    return _print_import(import_onetrainer(Path(args.config), Path(args.out), family=_family_flag(args.family)),
                         "OneTrainer")


def _is_kohya_dataset_toml(path: Path) -> bool:
    import tomllib

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(doc.get("datasets"), list)


# ---------------------------------------------------------------------------------------------- helpers


def _accepts(fn, name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
