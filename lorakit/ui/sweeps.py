"""The Sweeps tab: a sweep folder's comparison (the ranking table, the grid image, the overlaid loss curves, the best
LoRA files to download) as `lorakit sweep` writes it; made on the spot (lorakit.sweep.report) when the folder has none
yet or its points moved on since. Sweeps are started from the command line (`lorakit sweep run.toml key=a,b ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError


def comparison(folder: Path) -> dict[str, Any]:
    """ranking markdown, grid and curve paths and the points' states of the sweep in ``folder``."""
    from lorakit.sweep.report import write_report
    from lorakit.sweep.run import Sweep

    manifest = Sweep(folder).read()  # LorakitError when it is no sweep folder
    out = folder / "comparison"
    ranking = out / "ranking.md"
    stale = not ranking.is_file() or (folder / "sweep.json").stat().st_mtime > ranking.stat().st_mtime
    if stale:
        write_report(folder, log=lambda *_: None)
    states = ", ".join(f"{p['name']}: {p['state']}" for p in manifest["points"])
    best = [str(folder / f) for f in ("best.safetensors", "best-concept.safetensors") if (folder / f).is_file()]
    return {"markdown": ranking.read_text(encoding="utf-8") + f"\n\nPoints: {states}",
            "grid": str(out / "grid.png") if (out / "grid.png").is_file() else None,
            "curves": str(out / "loss_curves.png") if (out / "loss_curves.png").is_file() else None,
            "best": best or None}


def page(gr, state, u) -> None:
    gr.Markdown("A sweep trains one run per combination of settings and ranks them by validation loss. Start one "
                "with `lorakit sweep run.toml optimizer.lr=5e-5,1e-4 network.rank=16,32 --steps N`; show its "
                "folder here.")
    with gr.Row():
        u.sw_dir = gr.Textbox(label="Sweep folder", value=str(state.home / "sweeps"), elem_id="sw-dir", scale=4)
        u.sw_show = gr.Button("Show comparison", elem_id="sw-show", scale=1)
    u.sw_table = gr.Markdown(elem_id="sw-table")
    u.sw_best = gr.File(label="Best LoRA (by validation loss; by concept rate on the toy world)", file_count="multiple",
                        interactive=False, elem_id="sw-best")
    with gr.Row():
        u.sw_grid = gr.Image(label="Samples (rows: settings, columns: prompts)", interactive=False,
                             elem_id="sw-grid")
        u.sw_curves = gr.Image(label="Training (solid) and validation (dashed) loss", interactive=False,
                               elem_id="sw-curves")


def events(gr, state, u) -> None:
    def show(text):
        try:
            folder = state.roots.check(text, "Sweep folder")
            state.allow(folder)
            found = comparison(folder)
        except LorakitError as exc:
            return f"⚠ {exc}", None, None, None
        return found["markdown"], found["grid"], found["curves"], found["best"]

    u.sw_show.click(show, [u.sw_dir], [u.sw_table, u.sw_grid, u.sw_curves, u.sw_best])
