"""A sweep's comparison, written into ``<sweep>/comparison/`` (and re-made by `lorakit sweep report DIR`):

* ``ranking.json`` / ``ranking.md``: the points ranked by their lowest validation loss (a point without a validation
  set, or that failed, ranks after those with one: by its smoothed final training loss, then by name), with the step
  of that loss, the final losses and, where the toy world's learning benchmark was run (``--concept``), its concept
  rate and drift;
* ``loss_curves.png``: every point's training loss (smoothed, solid) and validation loss (dashed, markers), one
  colour per point;
* ``grid.png``: rows = points (labelled with their settings, the step and the validation loss), columns = the sample
  prompts, each cell the point's last sample of that prompt (the same seeds in every row: the seeds come from
  the shared config). Samples smaller than ``MIN_CELL`` pixels are enlarged by a whole factor (nearest neighbour).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

from lorakit.fsutil import write_json, write_text

LABEL_W = 240       # width of the label column of grid.png
HEADER_H = 32       # height of its prompt row
MIN_CELL = 128      # samples smaller than this are enlarged by a whole factor
SMOOTH_TAIL = 0.1   # the final training loss: the mean of the last 10 % of logged steps (at least one)


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    from lorakit.train.metrics import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")


def point_summary(root: Path, point: dict[str, Any]) -> dict[str, Any]:
    """What the comparison shows of one point, read from its run folder."""
    from lorakit.train.metrics import series
    from lorakit.train.validation import best_of

    run_dir = root / point["name"]
    rows = _rows(run_dir)
    steps, losses = series(rows, "loss")
    vsteps, vlosses = series(rows, "val_loss")
    tail = losses[-max(1, math.ceil(len(losses) * SMOOTH_TAIL)):] if losses else []
    best = best_of(rows)
    out: dict[str, Any] = {
        "name": point["name"], "label": point["label"], "settings": point["settings"], "state": point["state"],
        "last_step": steps[-1] if steps else None,
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "best_val_loss": best[1] if best else None, "best_step": best[0] if best else None,
        # after step 0, as best_val_loss (walk8: a point that failed before its first validation showed the loss
        # before training as its "final val loss")
        "final_val_loss": next((v for s, v in zip(reversed(vsteps), reversed(vlosses)) if s >= 1), None),
    }
    if point.get("error"):
        out["error"] = point["error"]
    if not run_dir.is_dir():  # walk8: a point whose folder was deleted or moved was shown "finished", all "—"
        out["state"], out["error"] = "missing", f"its run folder {run_dir} is gone (deleted or moved)"
    ev = run_dir / "eval.json"
    if ev.is_file():
        scores = json.loads(ev.read_text())
        out.update({k: scores.get(k) for k in CONCEPT_KEYS})
        at = scores.get("at_best_step") or {}
        if at.get("step") is not None and at.get("step") == out["best_step"]:  # the LoRA validation picked
            out["concept_step"] = at["step"]
            out.update({f"{k}{AT_BEST}": at.get(k) for k in CONCEPT_KEYS})
            if at.get("error"):
                out["concept_step_error"] = at["error"]
    return out


CONCEPT_KEYS = ("concept_rate_after", "concept_score_after", "drift_concept_leak", "drift_shape_agreement",
                "drift_pixel")
AT_BEST = "_at_best_step"  # suffix of the scores of the best validation step's LoRA (issue 23: like with like)


def concept_loras(e: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """The scored LoRAs of a point: ("final" | "step N", concept rate, concept leak, concept score)."""
    out = []
    for label, sfx in (("final", ""), (f"step {e.get('concept_step')}", AT_BEST)):
        rate = e.get(f"concept_rate_after{sfx}")
        if rate is not None:
            out.append((label, rate, e.get(f"drift_concept_leak{sfx}") or 0.0,
                        e.get(f"concept_score_after{sfx}") or 0.0))
    return out


def rank(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best validation loss first; points without one after, by final training loss; ties by name."""
    def key(e: dict[str, Any]):
        has_val = e["best_val_loss"] is not None and e["state"] == "finished"
        train = e["final_train_loss"] if e["final_train_loss"] is not None else math.inf
        return (0 if has_val else 1, e["best_val_loss"] if has_val else train, e["name"])
    ranked = sorted(entries, key=key)
    for i, e in enumerate(ranked, 1):
        e["rank"] = i
    return ranked


PICK_TOLERANCE = 0.1  # issue 23: the validation-loss pick within 0.1 of the best concept score
BAR_RATE, BAR_LEAK = 0.8, 0.1  # the toy world's learning bar: concept rate at least 0.8, concept leak at most 0.1


def concept_check(ranked: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Where the toy benchmark scored the points: how far the validation-loss pick is from the best concept rate
    (and concept score), whether that is within :data:`PICK_TOLERANCE`, and which points meet the learning bar.

    Like with like: the pick is scored on the LoRA validation picks (its best step's file, where that was scored;
    else its final LoRA), the best over every scored LoRA of every point (final and best step)."""
    scored = [e for e in ranked if e.get("concept_rate_after") is not None and e["state"] == "finished"]
    if not scored:
        return None
    picked = scored[0]  # ranked order: the lowest validation loss first
    mine = concept_loras(picked)
    picked_lora = mine[-1]  # its best step's LoRA where scored (it comes last), else the final one
    best, best_lora = concept_best(scored)
    gap = best_lora[1] - picked_lora[1]
    score_gap = max(c[3] for e in scored for c in concept_loras(e)) - picked_lora[3]
    return {"picked": picked["name"], "picked_lora": picked_lora[0], "picked_concept_rate": picked_lora[1],
            "picked_final_concept_rate": picked["concept_rate_after"], "best": best["name"],
            "best_lora": best_lora[0], "best_concept_rate": best_lora[1], "gap": gap, "score_gap": score_gap,
            "within_tolerance": gap <= PICK_TOLERANCE + 1e-9, "tolerance": PICK_TOLERANCE,
            "meet_bar": [e["name"] for e in scored if meets_bar(e)]}


def meets_bar(e: dict[str, Any]) -> bool:
    """One of the point's scored LoRAs (final or best step) meets the toy bar."""
    return any(rate >= BAR_RATE - 1e-9 and leak <= BAR_LEAK + 1e-9 for _, rate, leak, _ in concept_loras(e))


def concept_best(scored: list[dict[str, Any]]) -> tuple[dict[str, Any], tuple[str, float, float, float]]:
    """The best (point, LoRA) by the toy benchmark: highest concept rate, then least concept leak, then ranking
    order, then the final LoRA before the best step's."""
    cands = [(e, c, i) for e in scored for i, c in enumerate(concept_loras(e))]
    e, c, _ = max(cands, key=lambda t: (t[1][1], -t[1][2], -t[0]["rank"], -t[2]))
    return e, c


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def ranking_markdown(ranked: list[dict[str, Any]], grid: dict[str, list[str]]) -> str:
    concept = any("concept_rate_after" in e for e in ranked)
    cols = ["rank", "point", *grid, "best val loss", "at step", "final val loss", "final train loss"]
    cols += ["concept rate", "concept score", "concept leak (drift)", "shape kept (drift)"] if concept else []
    at_best = concept and any(f"concept_rate_after{AT_BEST}" in e for e in ranked)
    cols += ["concept rate @ best step", "concept score @ best step", "concept leak @ best step",
             "shape kept @ best step"] if at_best else []
    cols.append("state")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in ranked:
        cells = [e["rank"], e["name"], *(e["settings"].get(k) for k in grid), e["best_val_loss"], e["best_step"],
                 e["final_val_loss"], e["final_train_loss"]]
        cells += [e.get("concept_rate_after"), e.get("concept_score_after"), e.get("drift_concept_leak"),
                  e.get("drift_shape_agreement")] if concept else []
        cells += [e.get(f"{k}{AT_BEST}") for k in CONCEPT_KEYS[:4]] if at_best else []
        cells.append(e["state"])
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(root: Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write comparison/ for the sweep in ``root``; returns what ranking.json holds."""
    from lorakit.sweep.run import Sweep

    root = Path(root)
    manifest = Sweep(root).read()
    ranked = rank([point_summary(root, p) for p in manifest["points"]])
    out = root / "comparison"
    out.mkdir(exist_ok=True)
    has_val = any(e["best_val_loss"] is not None for e in ranked)
    result = {"sweep": str(root), "grid": manifest["grid"], "ranked_by": "best validation loss" if has_val else
              "final training loss (no validation set: add data.validation_split)", "points": ranked}
    curves = loss_curves(root, manifest, out / "loss_curves.png")
    grid = grid_image(root, manifest, ranked, out / "grid.png")
    result["files"] = {"loss_curves": str(curves) if curves else None, "grid": str(grid) if grid else None}
    md = f"# Sweep {root.name}\n\nRanked by {result['ranked_by']}.\n\n" + ranking_markdown(ranked, manifest["grid"])
    pick = concept_check(ranked)
    if pick:
        result["concept_check"] = pick
        md += (f"\nThe validation-loss pick ({pick['picked']}, {pick['picked_lora']} LoRA) has concept rate "
               f"{pick['picked_concept_rate']:.3f}; the best concept rate is {pick['best_concept_rate']:.3f} "
               f"({pick['best']}, {pick['best_lora']} LoRA): a gap of "
               f"{pick['gap']:.3f} ({'within' if pick['within_tolerance'] else 'more than'} {PICK_TOLERANCE:g}; "
               f"concept score gap {pick['score_gap']:.3f}). Meeting the toy bar (concept rate ≥ {BAR_RATE:g}, "
               f"concept leak ≤ {BAR_LEAK:g}): {', '.join(pick['meet_bar']) or 'none'}.\n")
    best = write_best(root, ranked, pick, log=log)
    if best:
        result["best"] = best
        md += "\n" + "".join(f"Best LoRA by {b['by']}: `{b['path']}` ({b['point']}: {b['label']}; from "
                              f"{Path(b['source']).name})\n" for b in best.values())
    write_json(out / "ranking.json", result, indent=2, default=str)
    write_text(out / "ranking.md", md)
    if ranked and ranked[0]["state"] == "finished":
        top = ranked[0]
        score = (f"validation loss {_fmt(top['best_val_loss'])} at step {_fmt(top['best_step'])}" if has_val else
                 f"final training loss {_fmt(top['final_train_loss'])} (no validation set)")
        log(f"best: {top['name']} ({top['label']}): {score}" +
            (f"; its LoRA: {best['best']['path']}" if "best" in best else ""))
    if "best-concept" in best:
        log(f"best by concept rate: {pick['best']} ({pick['best_lora']}: {pick['best_concept_rate']:.3f}); its LoRA: "
            f"{best['best-concept']['path']}")
    made = ["ranking.md"] + (["grid.png"] if grid else []) + (["loss_curves.png"] if curves else [])
    log(f"comparison: {out} ({', '.join(made)})" + ("" if grid else "; no grid.png: no point drew sample images "
                                                    "(sample.prompts)"))
    return result


def point_lora(root: Path, e: dict[str, Any], *, best_step: bool) -> Optional[Path]:
    """A finished point's LoRA file: with ``best_step``, the one of its lowest validation loss (``-best``, kept by
    save.keep_best, or the checkpoint of that step, or the final LoRA when that step is the last), else the final."""
    run_dir = root / e["name"]
    final = run_dir / f"{e['name']}.safetensors"
    if not best_step or e.get("best_step") is None:
        return final if final.is_file() else None
    return step_lora(run_dir, e["name"], int(e["best_step"]), e["last_step"])


def step_lora(run_dir: Path, name: str, step: int, last_step: Optional[int]) -> Optional[Path]:
    """The LoRA file of ``step`` in a run folder: ``-best`` when it holds that step (save.keep_best), the step
    checkpoint, the LoRA a run extended past ``step`` delivered there (``<name>.until-stepN.safetensors``), or the
    final LoRA when ``step`` is the last; None when none was kept."""
    from lorakit.safetensors_header import read_safetensors_header
    from lorakit.sweep.run import run_status

    kept = run_status(run_dir).get("best_lora")
    here = run_dir / f"{name}-best.safetensors"  # also where a moved or copied run folder keeps it
    for path in ([Path(kept)] if kept and Path(kept).parent == run_dir else []) + [here]:
        if path.is_file() and read_safetensors_header(path)[1].get("lorakit_best_step") in (None, str(step)):
            return path
    for path in (run_dir / f"{name}-step{step:08d}.safetensors", run_dir / f"{name}.until-step{step:08d}.safetensors"):
        if path.is_file():
            return path
    final = run_dir / f"{name}.safetensors"
    return final if final.is_file() and step == last_step else None


def write_best(root: Path, ranked: list[dict[str, Any]], pick: Optional[dict[str, Any]], *,
               log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """``best.safetensors`` (the validation-loss pick's LoRA, at its best step) and, where the toy benchmark scored
    the points, ``best-concept.safetensors`` (the LoRA with the highest concept rate: a point's final LoRA or
    its best step's, whichever was scored higher) in the sweep folder: the point's tensors with its metadata plus ``lorakit_sweep`` (JSON: point, settings, ranked by,
    its numbers, the source file). Rewritten only when the pick or its source changed."""
    from lorakit.lora.io import load_lora_file, save_safetensors_atomic
    from lorakit.safetensors_header import read_safetensors_header

    done: dict[str, dict[str, Any]] = {}
    top = ranked[0] if ranked and ranked[0]["state"] == "finished" else None
    chosen = []
    if top is not None:
        by = "validation loss" if top["best_val_loss"] is not None else "final training loss"
        chosen.append(("best.safetensors", by, top, top["best_val_loss"] is not None))
    if pick:
        chosen.append(("best-concept.safetensors", "concept rate (toy world)",
                       next(e for e in ranked if e["name"] == pick["best"]), pick["best_lora"] != "final"))
    for filename, by, e, at_best_step in chosen:
        src = point_lora(root, e, best_step=at_best_step)
        if src is None:
            log(f"{filename}: {e['name']} kept no LoRA of step {e['best_step']} (save.keep_best = true keeps it); "
                "not written" if at_best_step and e.get("best_step") is not None else
                f"{filename}: {e['name']}'s final LoRA {root / e['name'] / (e['name'] + '.safetensors')} is missing "
                "(deleted or moved); not written")  # walk8: was "kept no LoRA of step None (save.keep_best …)"
            continue
        stat = src.stat()
        info = {"point": e["name"], "label": e["label"], "settings": e["settings"], "ranked_by": by,
                "best_val_loss": e["best_val_loss"], "best_step": e["best_step"],
                "concept_rate": e.get(f"concept_rate_after{AT_BEST if at_best_step else ''}"),
                "concept_leak": e.get(f"drift_concept_leak{AT_BEST if at_best_step else ''}"),
                "source": str(src), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
        text = json.dumps(info, sort_keys=True, default=str)
        path = root / filename
        if not (path.is_file() and read_safetensors_header(path)[1].get("lorakit_sweep") == text):
            tensors, meta = load_lora_file(src)
            save_safetensors_atomic(path, tensors, {**meta, "lorakit_sweep": text})
        done[filename.removesuffix(".safetensors")] = {"by": by, "path": str(path), **info}
    return done


def _score_point(run_dir: str, final: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The learning benchmark on one point's final LoRA (``final``: its scores from an earlier eval.json) and on the
    LoRA of its lowest validation loss (``at_best_step``: step, file and scores; the final scores when that step is
    the last; an ``error`` when that step's LoRA was not kept or cannot be read back). A top-level function: it
    also runs in worker processes."""
    from lorakit.config.load import load_config
    from lorakit.errors import LorakitError
    from lorakit.logs import quiet_third_party
    from lorakit.toy.demo import lora_generator
    from lorakit.toy.eval import evaluate
    from lorakit.toy.world import DEFAULT_TRIGGER
    from lorakit.train.metrics import series
    from lorakit.train.validation import best_of

    quiet_third_party()  # a worker process starts without the CLI's settings
    run = Path(run_dir)
    cfg = load_config(run / "config.toml")
    scores = dict(final) if final else evaluate(lora_generator(cfg, run), DEFAULT_TRIGGER)
    scores.pop("at_best_step", None)
    rows = _rows(run)
    best, steps = best_of(rows), series(rows, "loss")[0]
    if best is None:
        return scores
    step, last = best[0], (steps[-1] if steps else None)
    src = step_lora(run, cfg.save.name, step, last)
    at: dict[str, Any] = {"step": step, "lora": str(src) if src else None}
    if src is None:
        at["error"] = f"no LoRA of step {step} was kept (save.keep_best = true keeps it)"
    elif step == last:
        at.update({k: v for k, v in scores.items() if k in CONCEPT_KEYS or k.startswith(("concept_", "drift_"))})
    else:
        try:
            at.update(evaluate(lora_generator(cfg, run, src), DEFAULT_TRIGGER))
        except LorakitError as exc:
            at["error"] = str(exc)
    scores["at_best_step"] = at
    return scores


def _needs_score(run_dir: Path) -> Optional[dict[str, Any]]:
    """None when ``eval.json`` is complete; else what it holds already ({} when it is absent): a point scored before
    the best step's LoRA was (or whose best step moved) is completed, its final scores kept."""
    ev = run_dir / "eval.json"
    if not ev.is_file():
        return {}
    from lorakit.train.validation import best_of

    scores = json.loads(ev.read_text())
    best = best_of(_rows(run_dir))
    if best is None or (scores.get("at_best_step") or {}).get("step") == best[0]:
        return None
    return scores


def _toy_run(cfg) -> bool:
    """Whether a point trains its family's toy base model (the only one the concept score knows)."""
    from lorakit.toy.paths import model_section, toy_families

    family = cfg.model.family
    return family in toy_families() and \
        Path(model_section(family)["checkpoint"]).resolve() == Path(cfg.model.checkpoint).resolve()


def _score_job(job: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return _score_point(job[0], job[1] or None)


def evaluate_concept(root: Path, *, log: Callable[[str], None] = print, jobs: int = 1) -> int:
    """The toy world's learning benchmark (concept rate and drift, lorakit.toy.eval) on every finished point that
    has no complete eval.json yet: its final LoRA and the LoRA of its lowest validation loss (``jobs`` points at
    once, each in its own process, when above 1); refused for a point that does not train the toy base model.
    Returns how many were scored."""
    from lorakit.config.load import load_config
    from lorakit.errors import ConfigError
    from lorakit.fsutil import write_json as _write
    from lorakit.sweep.run import Sweep

    todo = []
    for p in Sweep(root).read()["points"]:
        run_dir = Path(root) / p["name"]
        if p["state"] != "finished":
            continue
        have = _needs_score(run_dir)
        if have is None:
            continue
        cfg = load_config(run_dir / "config.toml")
        if not _toy_run(cfg):
            raise ConfigError(f"--concept: the concept score needs the toy world's base model; {p['name']} trains on "
                              f"{cfg.model.checkpoint} (`lorakit toy path {cfg.model.family}` lists the toy files)")
        todo.append((str(run_dir), have))

    def done(run_dir: str, scores: dict[str, Any]) -> None:
        _write(Path(run_dir) / "eval.json", scores, indent=2)
        err = (scores.get("at_best_step") or {}).get("error")
        if err:
            log(f"{Path(run_dir).name}: best validation step not scored: {err}")

    if jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        log(f"concept score of {len(todo)} points, {min(jobs, len(todo))} at once (toy world learning benchmark)")
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            for (run_dir, _), scores in zip(todo, pool.map(_score_job, todo)):
                done(run_dir, scores)
        return len(todo)
    for run_dir, have in todo:
        log(f"concept score of {Path(run_dir).name} (toy world learning benchmark)")
        done(run_dir, _score_job((run_dir, have)))
    return len(todo)


# ------------------------------------------------------------------------------------------ pictures

def loss_curves(root: Path, manifest: dict[str, Any], path: Path) -> Optional[Path]:
    """Every point's smoothed training loss (solid) and validation loss (dashed, markers) on one axis."""
    from lorakit.train.metrics import series, smooth

    curves = []
    for p in manifest["points"]:
        rows = _rows(root / p["name"])
        curves.append((p, series(rows, "loss"), series(rows, "val_loss")))
    if not any(len(t[0]) or len(v[0]) for _, t, v in curves):
        return None
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 5.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours = [f"C{i % 10}" for i in range(len(curves))]
    for (p, (ts, tl), (vs, vl)), c in zip(curves, colours):
        if ts:
            ax.plot(ts, smooth(tl), color=c, linewidth=1.4, label=f"{p['label']} (train, smoothed)")
        if vs:
            ax.plot(vs, vl, color=c, linewidth=1.2, linestyle="--", marker="o", markersize=3,
                    label=f"{p['label']} (validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training (solid) and validation (dashed) loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    from lorakit.fsutil import write_bytes

    return write_bytes(path, buf.getvalue())


def point_samples(run_dir: Path, name: str) -> dict[int, Path]:
    """prompt index → the point's last sample of it (the "after" sample of a finished run, else the newest)."""
    from lorakit.train.rundir import glob_escape

    found: dict[int, tuple[str, Path]] = {}
    for f in (run_dir / "samples").glob(f"{glob_escape(name)}_*.png"):
        parts = f.stem[len(name) + 1:].split("_")
        if len(parts) != 3 or not parts[1].isdigit() or parts[0] == "before":
            continue
        order = "~" if parts[0] == "after" else parts[0]  # "after" sorts last
        idx = int(parts[1])
        if idx not in found or order > found[idx][0]:
            found[idx] = (order, f)
    return {i: p for i, (_, p) in found.items()}


def prompt_texts(run_dir: Path) -> list[str]:
    import tomllib

    try:
        prompts = tomllib.loads((run_dir / "config.toml").read_text()).get("sample", {}).get("prompts", [])
    except (OSError, ValueError):
        return []
    return [p.split(" --")[0].strip() for p in prompts]


def grid_size(rows: int, cols: int, cell: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of grid.png for ``cell`` = (w, h) of one enlarged sample."""
    return LABEL_W + cols * cell[0], HEADER_H + rows * cell[1]


def cell_size(sample: tuple[int, int]) -> tuple[int, int]:
    """A sample's (w, h) enlarged by the whole factor that brings its smaller side to at least MIN_CELL."""
    k = max(1, -(-MIN_CELL // min(sample)))
    return sample[0] * k, sample[1] * k


def grid_image(root: Path, manifest: dict[str, Any], ranked: list[dict[str, Any]], path: Path) -> Optional[Path]:
    """rows = points (in ranking order), columns = sample prompts; None when no point has samples."""
    from PIL import Image, ImageDraw

    from lorakit.data.images import open_image, save_image

    samples = {e["name"]: point_samples(root / e["name"], e["name"]) for e in ranked}
    cols = max((max(s) + 1 for s in samples.values() if s), default=0)
    if cols == 0:
        return None
    first = next(p for s in samples.values() for p in s.values())
    cw, ch = cell = cell_size(open_image(first).size)
    texts = next((prompt_texts(root / e["name"]) for e in ranked if prompt_texts(root / e["name"])), [])
    img = Image.new("RGB", grid_size(len(ranked), cols, cell), "white")
    d = ImageDraw.Draw(img)
    chars = max(8, cw // 6)
    for c in range(cols):
        label = texts[c] if c < len(texts) else f"prompt {c}"
        d.text((LABEL_W + c * cw + 4, 4), label[:chars], fill="black")
        if len(label) > chars:
            d.text((LABEL_W + c * cw + 4, 16), label[chars:2 * chars], fill="black")
    for r, e in enumerate(ranked):
        y = HEADER_H + r * ch
        lines = [f"{e['rank']}. {e['name']}", *e["label"].split(", "), f"step {_fmt(e['last_step'])}",
                 f"val {_fmt(e['best_val_loss'])} @ {_fmt(e['best_step'])}"]
        if e["state"] != "finished":
            lines.append(e["state"])
        for i, line in enumerate(lines[: max(1, ch // 12)]):
            d.text((6, y + 4 + 12 * i), line[:38], fill="black")
        for c in range(cols):
            x = LABEL_W + c * cw
            p = samples[e["name"]].get(c)
            if p is None:
                d.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(220, 220, 220))
                d.text((x + 6, y + ch // 2 - 6), "no sample", fill="black")
                continue
            img.paste(open_image(p).convert("RGB").resize((cw, ch), Image.NEAREST), (x, y))
    return save_image(img, path)
