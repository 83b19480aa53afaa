"""`lorakit sweep` without training: the grid parsing and its refusals, the manifest, resuming an interrupted sweep,
and the comparison (ranking, grid image, curves) over run folders whose metrics a stand-in trainer writes.
The same flow with real tiny SDXL runs is tests/integration/test_sweep.py (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from lorakit.cli import main
from lorakit.config.load import dump_toml
from lorakit.errors import ConfigError, LorakitError
from lorakit.sweep import report
from lorakit.sweep.grid import parse_grid, points, split_values
from lorakit.sweep.run import Sweep, create, run_sweep

SAMPLE_WH = (32, 48)


def write_config(tmp: Path) -> Path:
    (tmp / "data" / "2_zkx shape").mkdir(parents=True)
    (tmp / "run.toml").write_text(
        '[model]\nfamily = "sdxl"\ncheckpoint = "base.safetensors"\n[data]\ndir = "data"\n'
        'validation_split = 0.25\n[training]\nmax_steps = 5\n'
        '[sample]\nprompts = ["a red zkx --d 1", "a blue circle --d 2"]\n[save]\ndir = "out"\nname = "t"\n')
    return tmp / "run.toml"


def fake_val(lr: float, rank: int, step: int) -> float:
    """A made-up validation curve whose minimum depends on the settings (so the ranking is not the grid order)."""
    return 1.0 + (math.log10(lr) + 3.6) ** 2 * 0.01 + 0.001 * rank + 0.02 * (step - 3 - rank % 3) ** 2 / (step + 1)


class FakeTrain:
    """Stands in for train.loop.train: writes the files a real run writes that the sweep reads."""

    def __init__(self, interrupt_at: str | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, cfg, resume=False, log=print):
        run = Path(cfg.save.dir) / cfg.save.name
        self.calls.append((cfg.save.name, resume))
        if not resume:
            (run / "samples").mkdir(parents=True)
            (run / "config.toml").write_text(dump_toml(cfg))
        if cfg.save.name == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        lr, rank, steps = cfg.optimizer.lr, cfg.network.rank, cfg.training.max_steps
        rows = []
        for s in range(0, steps + 1):
            if s:
                rows.append({"step": s, "loss": 1.5 - 0.01 * s * rank, "lr": lr})
            rows.append({"step": s, "val_loss": fake_val(lr, rank, s)})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for i in range(2):
            Image.new("RGB", SAMPLE_WH, (40 * rank, 60 * i, 100)).save(
                run / "samples" / f"{cfg.save.name}_after_{i:02d}_{i + 1}.png")
        # the final LoRA and the best step's (-best, as save.keep_best keeps it): values that name the point and step
        import torch
        from safetensors.torch import save_file

        best = min(range(1, steps + 1), key=lambda s: (fake_val(lr, rank, s), s))
        for suffix, step in (("", steps), ("-best", best)):
            save_file({"lora_unet_x.lora_down.weight": torch.full((rank, 3), lr * 1000 + step)},
                      str(run / f"{cfg.save.name}{suffix}.safetensors"), metadata={"ss_network_dim": str(rank)})
        (run / "run.json").write_text(json.dumps({"status": "finished", "step": steps,
                                                  "best_lora": str(run / f"{cfg.save.name}-best.safetensors")}))


def test_values_split_outside_brackets_and_points_cover_the_grid():
    assert split_values("[0.9,0.99],[0.9,0.999]") == ["[0.9,0.99]", "[0.9,0.999]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    grid = parse_grid(["optimizer.lr=5e-5,1e-4,2e-4", "network.rank=16,32"])
    pts = points(grid)
    assert len(pts) == 6 and len({p.name for p in pts}) == 6
    assert [dict(p.settings) for p in pts][:2] == [{"optimizer.lr": "5e-5", "network.rank": "16"},
                                                   {"optimizer.lr": "5e-5", "network.rank": "32"}]


@pytest.mark.parametrize("args, words", [
    (["optimizer.lrr=1e-4,2e-4"], "optimizer.lrr: unknown key"),
    (["network.rank=16,abc"], "network.rank: must be an integer"),
    (["optimizer.lr=1e-4,-1"], "optimizer.lr"),
    (["save.name=a,b"], "save.name cannot be swept"),
    (["network.rank=16,,32"], "network.rank: an empty value"),
    (["network.rank=16,16"], "network.rank: a value is listed twice"),
    (["network.rank=16,32", "network.rank=8,4"], "network.rank is given twice"),
    (["network.rank=16"], "no key has two or more values"),
    (["rank=16,32"], "expected section.key=value"),
])
def test_bad_grid_refused_with_the_key_before_anything_runs(tmp_path, args, words):
    toml = write_config(tmp_path)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        create(toml, args, out=tmp_path / "sw")
    assert not (tmp_path / "sw").exists()


def rank_from_metrics(root: Path) -> list[str]:
    """Independent of lorakit.sweep.report: min validation loss after step 0 of each point's metrics.jsonl."""
    best = {}
    for d in root.iterdir():
        if (d / "metrics.jsonl").is_file():
            rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
            best[d.name] = min(r["val_loss"] for r in rows if "val_loss" in r and r["step"] >= 1)
    return sorted(best, key=lambda n: (best[n], n))


def test_sweep_runs_every_point_and_ranks_by_validation_loss(tmp_path):
    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4", "network.rank=2,4", "log.progress=false"], steps=4,
                   out=tmp_path / "sw")
    fake = FakeTrain()
    result = run_sweep(sweep, log=lambda *_: None, train_fn=fake)
    manifest = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [p["state"] for p in manifest["points"]] == ["finished"] * 4
    assert manifest["grid"] == {"optimizer.lr": ["1e-4", "3e-4"], "network.rank": ["2", "4"]}
    assert manifest["overrides"] == ["log.progress=false"]
    assert [c[1] for c in fake.calls] == [False] * 4
    assert [p["name"] for p in result["points"]] == rank_from_metrics(tmp_path / "sw")
    top = result["points"][0]
    rows = [json.loads(x) for x in (tmp_path / "sw" / top["name"] / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r and r["step"] >= 1}
    assert top["best_step"] == min(vals, key=lambda s: (vals[s], s)) and top["best_val_loss"] == min(vals.values())
    cmp = tmp_path / "sw" / "comparison"
    k = -(-report.MIN_CELL // min(SAMPLE_WH))
    grid = Image.open(cmp / "grid.png")
    assert grid.size == (report.LABEL_W + 2 * SAMPLE_WH[0] * k, report.HEADER_H + 4 * SAMPLE_WH[1] * k)
    # row r, column c holds point r's sample c, enlarged
    x, y = report.LABEL_W + SAMPLE_WH[0] * k + 5, report.HEADER_H + 3 * SAMPLE_WH[1] * k + 5
    rank4 = result["points"][3]["settings"]["network.rank"]
    assert grid.getpixel((x, y)) == (40 * int(rank4), 60, 100)
    assert Image.open(cmp / "loss_curves.png").size == (960, 540)
    md = (cmp / "ranking.md").read_text()
    assert md.index(result["points"][0]["name"]) < md.index(result["points"][3]["name"])
    assert json.loads((cmp / "ranking.json").read_text())["points"] == result["points"]
    # every point's config: the sweep's steps and folder, its own settings
    cfg = (tmp_path / "sw" / manifest["points"][3]["name"] / "config.toml").read_text()
    assert "max_steps = 4" in cfg and "lr = 0.0003" in cfg and "rank = 4" in cfg
    # a second sweep into the same folder is refused; nothing overwritten
    with pytest.raises(LorakitError, match="not empty"):
        create(toml, ["optimizer.lr=1e-4,3e-4"], out=tmp_path / "sw")


def test_interrupted_sweep_resumes_the_interrupted_point_and_keeps_finished_ones(tmp_path, capsys):
    toml = write_config(tmp_path)
    args = ["optimizer.lr=1e-4,3e-4", "network.rank=2,4"]
    sweep = create(toml, args, steps=4, out=tmp_path / "sw")
    names = [p["name"] for p in sweep.read()["points"]]
    fake = FakeTrain(interrupt_at=names[2])
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        run_sweep(sweep, log=lambda *_: None, train_fn=fake)
    states = [p["state"] for p in Sweep(tmp_path / "sw").read()["points"]]
    assert states == ["finished", "finished", "interrupted", "pending"]
    run_sweep(Sweep(tmp_path / "sw"), log=lambda *_: None, train_fn=fake)
    # finished points are not run again; the interrupted one resumes; the pending one starts fresh
    assert fake.calls == [(names[0], False), (names[1], False), (names[2], False), (names[2], True),
                          (names[3], False)]
    resumed = json.loads((tmp_path / "sw" / "comparison" / "ranking.json").read_text())["points"]
    straight = create(toml, args, steps=4, out=tmp_path / "sw2")
    run_sweep(straight, log=lambda *_: None, train_fn=FakeTrain())
    again = json.loads((tmp_path / "sw2" / "comparison" / "ranking.json").read_text())["points"]
    assert [(p["name"], p["best_val_loss"], p["best_step"]) for p in resumed] == \
        [(p["name"], p["best_val_loss"], p["best_step"]) for p in again]
    # `lorakit sweep report DIR` re-creates the comparison from the folders
    (tmp_path / "sw2" / "comparison" / "ranking.json").unlink()
    assert main(["sweep", "report", str(tmp_path / "sw2")]) == 0
    assert json.loads((tmp_path / "sw2" / "comparison" / "ranking.json").read_text())["points"] == again


def test_cli_refusals(tmp_path, capsys):
    toml = write_config(tmp_path)
    assert main(["sweep", str(toml)]) == 2
    assert "at least one section.key=v1,v2" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path / "nope")]) == 2
    assert "no sweep.json" in capsys.readouterr().err
    assert main(["sweep", str(toml), "network.rank=4,8", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_ui_sweeps_tab_shows_the_same_comparison(tmp_path):
    from lorakit.ui.sweeps import comparison

    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4"], steps=3, out=tmp_path / "sw")
    run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())
    (tmp_path / "sw" / "comparison" / "ranking.md").unlink()          # made again on the spot
    shown = comparison(tmp_path / "sw")
    ranked = json.loads((tmp_path / "sw" / "comparison" / "ranking.json").read_text())["points"]
    table = [line for line in shown["markdown"].splitlines() if line.startswith("| ") and "rank" not in line]
    assert [line.split(" | ")[1] for line in table] == [p["name"] for p in ranked]
    assert Image.open(shown["grid"]).size[1] == report.HEADER_H + 2 * SAMPLE_WH[1] * 4
    assert Path(shown["curves"]).is_file()
    assert shown["best"] == [str(tmp_path / "sw" / "best.safetensors")] and "Best LoRA by validation loss" in \
        shown["markdown"]
    with pytest.raises(LorakitError, match="no sweep.json"):
        comparison(tmp_path)


def test_concept_scores_join_the_table_and_the_pick_is_checked(tmp_path):
    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4", "network.rank=2,4"], steps=4, out=tmp_path / "sw")
    run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())
    rates = {}
    for i, p in enumerate(sweep.read()["points"]):
        rates[p["name"]] = [0.5, 0.9, 0.7, 0.8][i]
        (tmp_path / "sw" / p["name"] / "eval.json").write_text(json.dumps(
            {"concept_rate_after": rates[p["name"]], "drift_concept_leak": 0.01 * i}))
    result = report.write_report(tmp_path / "sw", log=lambda *_: None)
    picked = result["points"][0]["name"]
    best = max(rates, key=rates.get)
    gap = 0.9 - rates[picked]
    assert result["concept_check"] == {"picked": picked, "picked_lora": "final", "picked_concept_rate": rates[picked],
                                       "picked_final_concept_rate": rates[picked], "best": best,
                                       "best_lora": "final", "best_concept_rate": 0.9, "gap": gap, "score_gap": 0.0,
                                       "within_tolerance": gap <= 0.1, "tolerance": 0.1,
                                       "meet_bar": sorted((n for n in rates if rates[n] >= 0.8),
                                                          key=[e["name"] for e in result["points"]].index)}
    md = (tmp_path / "sw" / "comparison" / "ranking.md").read_text()
    assert "concept rate" in md and f"| {rates[picked]} |" in md and "a gap of" in md
    assert ("within 0.1" if gap <= 0.1 else "more than 0.1") in md
    # best-concept.safetensors: the final LoRA of the highest concept rate, with the settings in its metadata
    from safetensors import safe_open

    with safe_open(str(tmp_path / "sw" / "best-concept.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["lorakit_sweep"])
        value = f.get_tensor("lora_unet_x.lora_down.weight")
    settings = next(p["settings"] for p in sweep.read()["points"] if p["name"] == best)
    assert info["point"] == best and info["settings"] == settings and info["ranked_by"].startswith("concept")
    assert value.flatten()[0].item() == pytest.approx(float(settings["optimizer.lr"]) * 1000 + 4)
    assert f"Best LoRA by concept rate (toy world): `{tmp_path / 'sw' / 'best-concept.safetensors'}`" in md


def test_best_safetensors_is_the_pick_s_best_step_with_its_settings(tmp_path):
    from safetensors import safe_open

    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4", "network.rank=2,4"], steps=5, out=tmp_path / "sw")
    result = run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())
    top = result["points"][0]
    best = tmp_path / "sw" / "best.safetensors"
    with safe_open(str(best), "pt") as f:
        meta = f.metadata()
        value = f.get_tensor("lora_unet_x.lora_down.weight")
    info = json.loads(meta["lorakit_sweep"])
    lr, rank = float(top["settings"]["optimizer.lr"]), int(top["settings"]["network.rank"])
    # independent: the fake validation curve's lowest step
    want = min(range(1, 6), key=lambda s: (fake_val(lr, rank, s), s))
    assert value.shape == (rank, 3) and value.flatten()[0].item() == pytest.approx(lr * 1000 + want)
    assert info["point"] == top["name"] and info["settings"] == top["settings"] and info["best_step"] == want
    assert info["ranked_by"] == "validation loss" and meta["ss_network_dim"] == str(rank)  # the point's own metadata
    assert result["best"]["best"]["path"] == str(best) and not (tmp_path / "sw" / "best-concept.safetensors").exists()
    # written again only when the pick or its source changes
    mtime = best.stat().st_mtime_ns
    report.write_report(tmp_path / "sw", log=lambda *_: None)
    assert best.stat().st_mtime_ns == mtime
    # a best step whose LoRA was not kept: not written, and the log says so
    (tmp_path / "sw" / top["name"] / f"{top['name']}-best.safetensors").unlink()
    best.unlink()
    lines = []
    report.write_report(tmp_path / "sw", log=lines.append)
    if want != 5:
        assert not best.exists() and any("save.keep_best = true keeps it" in line for line in lines)


def test_sweep_preset_writes_the_winner_with_its_evidence(tmp_path, capsys):
    import tomllib

    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4", "network.rank=2,4"], steps=5, out=tmp_path / "sw")
    result = run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())
    top = result["points"][0]
    preset = tmp_path / "p.toml"
    original = ('# a preset\n[network]\nrank = 32   # capacity\nalpha = 16\n\n[optimizer]\nname = "adamw"\n'
                'lr = 1e-4                  # SDXL tolerates this well\n\n[training]\nmax_steps = 10\n')
    preset.write_text(original)
    assert main(["sweep", "preset", str(tmp_path / "sw"), str(preset)]) == 0
    assert "the evidence is in the comment" in capsys.readouterr().out
    text = preset.read_text()
    data = tomllib.loads(text)
    assert data["optimizer"]["lr"] == float(top["settings"]["optimizer.lr"])
    assert data["network"] == {"rank": int(top["settings"]["network.rank"]), "alpha": 16}
    assert data["training"] == {"max_steps": 10} and data["optimizer"]["name"] == "adamw"
    assert "# SDXL tolerates this well" in text and "# capacity" in text and text.startswith("# a preset\n")
    note = f"# sweep sw (4 points, ranked by best validation loss): lr = {top['settings']['optimizer.lr']} was best"
    assert note in text and f"val loss {report._fmt(top['best_val_loss'])}" in text
    # a second update replaces the note instead of stacking another
    assert main(["sweep", "preset", str(tmp_path / "sw"), str(preset)]) == 0
    assert preset.read_text() == text
    # no concept scores: refused, the preset unchanged
    assert main(["sweep", "preset", str(tmp_path / "sw"), str(preset), "--concept"]) == 2
    assert "no best-concept point" in capsys.readouterr().err and preset.read_text() == text


def test_concept_at_the_best_step_is_compared_like_with_like(tmp_path):
    """eval.json's at_best_step (the LoRA validation picked): its own columns; the verdict takes the pick's best-step
    rate and the best over every scored LoRA; best-concept.safetensors is that LoRA's file."""
    from safetensors import safe_open

    toml = write_config(tmp_path)
    sweep = create(toml, ["optimizer.lr=1e-4,3e-4", "network.rank=2,4"], steps=5, out=tmp_path / "sw")
    ranked = run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())["points"]
    picked, other = ranked[0], ranked[1]
    final_rates = {e["name"]: 0.3 for e in ranked}
    final_rates[other["name"]] = 0.8
    step_rates = {picked["name"]: 0.75, other["name"]: 0.85}  # the best: other's best-step LoRA
    for e in ranked:
        at = {"step": e["best_step"], "concept_rate_after": step_rates.get(e["name"], 0.1), "drift_concept_leak": 0.0,
              "drift_shape_agreement": 0.5, "concept_score_after": 0.6} if e["name"] in step_rates else \
             {"step": e["best_step"] + 1, "concept_rate_after": 1.0}  # a stale step: not this run's best, ignored
        (tmp_path / "sw" / e["name"] / "eval.json").write_text(json.dumps(
            {"concept_rate_after": final_rates[e["name"]], "drift_concept_leak": 0.0, "drift_shape_agreement": 1.0,
             "concept_score_after": 0.5, "at_best_step": at}))
    result = report.write_report(tmp_path / "sw", log=lambda *_: None)
    pick = result["concept_check"]
    assert pick["picked"] == picked["name"] and pick["picked_lora"] == f"step {picked['best_step']}"
    assert pick["picked_concept_rate"] == 0.75 and pick["picked_final_concept_rate"] == 0.3
    assert pick["best"] == other["name"] and pick["best_lora"] == f"step {other['best_step']}"
    assert pick["gap"] == pytest.approx(0.10) and pick["within_tolerance"] and pick["score_gap"] == pytest.approx(0.0)
    assert pick["meet_bar"] == [other["name"]]
    by_name = {e["name"]: e for e in result["points"]}
    assert by_name[picked["name"]]["drift_shape_agreement_at_best_step"] == 0.5
    assert all("concept_rate_after_at_best_step" not in e for n, e in by_name.items() if n not in step_rates)
    md = (tmp_path / "sw" / "comparison" / "ranking.md").read_text()
    assert "concept rate @ best step" in md and "shape kept @ best step" in md
    assert f"({picked['name']}, step {picked['best_step']} LoRA) has concept rate 0.750" in md
    # best-concept.safetensors: the other point's best-step file (the fake trainer's value lr*1000 + step)
    with safe_open(str(tmp_path / "sw" / "best-concept.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["lorakit_sweep"])
        value = f.get_tensor("lora_unet_x.lora_down.weight").flatten()[0].item()
    lr = float(other["settings"]["optimizer.lr"])
    assert value == pytest.approx(lr * 1000 + other["best_step"]) and info["concept_rate"] == 0.85
    assert info["source"].endswith(f"{other['name']}-best.safetensors")


def test_scoring_adds_the_best_step_lora_and_keeps_earlier_final_scores(tmp_path, monkeypatch):
    """_score_point scores the best step's file (not the final) unless that step is the last; an eval.json without
    it is completed without scoring the final LoRA again; a step whose LoRA was not kept says so."""
    import lorakit.toy.demo as demo
    import lorakit.toy.eval as toy_eval

    toml = write_config(tmp_path)
    sweep = create(toml, ["network.rank=2,4"], steps=5, out=tmp_path / "sw")  # best steps 5 (the last) and 4
    ranked = run_sweep(sweep, log=lambda *_: None, train_fn=FakeTrain())["points"]
    scored = []
    monkeypatch.setattr(demo, "lora_generator", lambda cfg, run, lora_file=None: lora_file)
    monkeypatch.setattr(toy_eval, "evaluate", lambda gen, trigger: scored.append(gen) or
                        {"concept_rate_after": 0.2 if gen is None else 0.7, "drift_shape_agreement": 1.0})
    monkeypatch.setattr(report, "_toy_run", lambda cfg: True)
    e = next(e for e in ranked if e["best_step"] != e["last_step"])
    run_dir = tmp_path / "sw" / e["name"]
    (run_dir / "eval.json").write_text(json.dumps({"concept_rate_after": 0.25}))  # scored before: final only
    for other in ranked:
        if other is not e:
            (tmp_path / "sw" / other["name"] / "eval.json").write_text(json.dumps({"concept_rate_after": 0.1}))
    lines = []
    assert report.evaluate_concept(tmp_path / "sw", log=lines.append) == len(ranked)
    have = json.loads((run_dir / "eval.json").read_text())
    assert have["concept_rate_after"] == 0.25 and have["at_best_step"]["step"] == e["best_step"]
    assert have["at_best_step"]["concept_rate_after"] == 0.7
    assert run_dir / f"{e['name']}-best.safetensors" in scored and None not in scored  # the final was not re-scored
    last = next(o for o in ranked if o is not e)  # its best step is its last: the final scores, not scored again
    assert json.loads((tmp_path / "sw" / last["name"] / "eval.json").read_text())["at_best_step"] == \
        {"step": 5, "lora": str(tmp_path / "sw" / last["name"] / f"{last['name']}-best.safetensors"),
         "concept_rate_after": 0.1}
    assert report.evaluate_concept(tmp_path / "sw", log=lines.append) == 0  # complete now
    # the best step's file gone: no score, one line saying so; the final scores stay
    (run_dir / "eval.json").write_text(json.dumps({"concept_rate_after": 0.25}))
    (run_dir / f"{e['name']}-best.safetensors").unlink()
    lines.clear()
    report.evaluate_concept(tmp_path / "sw", log=lines.append)
    have = json.loads((run_dir / "eval.json").read_text())
    assert "concept_rate_after" not in have["at_best_step"] and have["concept_rate_after"] == 0.25
    assert any(f"{e['name']}: best validation step not scored: no LoRA of step {e['best_step']} was kept" in x
               for x in lines)
