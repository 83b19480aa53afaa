"""Is the toy model or the LoRA recipe the limit of the learning benchmark? (issue 23)

Trains the shipped toy denoiser on the demo data (12 concept images x 10 repeats + 24 reg images, batch 4, AdamW,
warm-up + cosine, the family's own noising and prediction through its Adapter, the toy's [training] keys) either
with **every base weight trainable** (``--mode full``) or with a LoRA on the family's default targets
(``--mode lora --rank R``), then scores it with the learning benchmark (lorakit.toy.eval.evaluate: concept rate,
colour match, drift). If full fine-tuning tops out where LoRA does, the toy model, not the LoRA recipe, is the limit.

    python benchmarks/toy_ceiling.py --family flux1 --mode full --lr 1e-4 --steps 400
    python benchmarks/toy_ceiling.py --family flux1 --mode lora --rank 8 --lr 6e-3 --steps 400 \
        --set training.guidance_scale=3.5

Prints one JSON line (the scores plus the settings). One torch thread; deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="flux1")
    ap.add_argument("--mode", choices=("full", "lora"), default="full")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", action="append", default=[], help="section.key=value over the toy config (training.*)")
    ap.add_argument("--eval", default="", help="sampler settings to score the one trained model under, ';'-separated, "
                    "each 'steps=N,cfg=X,guidance=G,negative=TEXT' (benchmarks/toy_limits.py); default: the recipe's")
    ap.add_argument("--grid", default="", help="save the trained model's images of the benchmark's trigger prompts "
                    "(rows = prompts, columns = seeds 0-3; first --eval setting) to this PNG")
    ap.add_argument("--large-only", action="store_true", help="train on the large concept images only (the toy VAEs "
                    "blur the small crosses into blobs: benchmarks/toy_limits.py vae); the benchmark asks for large ones")
    ap.add_argument("--toy-root", default="", help="load the toy from this folder (a scratch rebuild) instead of the shipped one")
    ap.add_argument("--train-prompts", action="store_true", help="also score the trained model on the concept images' "
                    "own training captions (seeds 0-3): memorised, or not even that?")
    ap.add_argument("--concept-n", type=int, default=12, help="concept images (write_demo_dataset n; the demo's 12 have "
                    "large crosses in 4 colours only, red and green ones only small)")
    ap.add_argument("--train-te", action="store_true", help="--mode full: the text encoders the adapter can train "
                    "(text_encoder_modules: FLUX.1's CLIP-L) are trainable too; captions are encoded every step")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from PIL import Image

    from lorakit.diffusion import objectives as obj
    from lorakit.toy import world
    from lorakit.toy.build import _cosine_lr, images_to_tensor, toy_batch, toy_config
    from lorakit.toy.eval import evaluate, load_toy
    from lorakit.toy.paths import model_section

    t0 = time.perf_counter()
    root = Path(args.toy_root) if args.toy_root else None
    cfg = toy_config(args.family, model=model_section(args.family, root))
    for item in args.set:  # e.g. training.guidance_scale=3.5 (the value typed like the field's default)
        key, value = item.split("=", 1)
        section, name = key.split(".")
        old = getattr(getattr(cfg, section), name)
        setattr(getattr(cfg, section), name, type(old)(value) if old is not None else value)
    toy = load_toy(args.family, root=root)
    adapter = toy.adapter
    adapter.cfg = cfg
    tmp = Path(tempfile.mkdtemp(prefix="toyceil-"))
    items = []  # (path, caption, weight)
    for folder, weight in ((world.write_demo_dataset(tmp / "train", n=args.concept_n), 10), (world.write_reg_dataset(tmp / "reg"), 1)):
        for png in sorted(folder.glob("*.png")):
            text_ = png.with_suffix(".txt").read_text().strip()
            if args.large_only and weight == 10 and " small " in f" {text_} ":
                continue
            items.append((png, text_, weight))
    with torch.no_grad():
        pixels = images_to_tensor([Image.open(p).convert("RGB") for p, _, _ in items])
        latents = torch.cat([adapter.encode_images(pixels[i:i + 16]) for i in range(0, len(items), 16)]).float()
        text = adapter.encode_text([c for _, c, _ in items])
    weights = torch.tensor([float(w) for _, _, w in items])

    model = adapter.denoiser()
    tes = {}
    if args.train_te:
        adapter.cfg.network.train_text_encoder = True  # text_encoder_modules() then reads the trainable encoders
        tes = adapter.text_encoder_modules()
        if not tes or args.mode != "full":
            raise SystemExit(f"--train-te: {args.family} has no trainable text encoder here, or --mode is not full")
    te_saved = {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in tes.items()}
    captions = [c for _, c, _ in items]
    if args.mode == "full":
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params = [p for p in model.parameters()] + [p for m in tes.values() for p in m.parameters()]
        model.requires_grad_(True)
        for m in tes.values():
            m.requires_grad_(True)
    else:
        from lorakit.lora.inject import inject_lora

        import dataclasses

        targets = adapter.lora_targets(dataclasses.replace(cfg.network, rank=args.rank, alpha=float(args.rank)))
        comp, ranks = next(iter(targets.items()))
        torch.manual_seed(args.seed)
        inject_lora(model, ranks, {k: float(v) for k, v in ranks.items()}, 0.0)
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01 if args.mode == "full" else 0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, args.steps, warmup=10))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    losses = []
    for step in range(args.steps):
        idx = torch.multinomial(weights, args.batch, replacement=True, generator=gen)
        x0 = latents[idx]
        if tes:  # re-encode through the trainable encoders (gradients flow into them)
            with torch.enable_grad():
                text_now = adapter.encode_text([captions[i] for i in idx.tolist()])
            batch = toy_batch(x0, text_now)
        else:
            batch = toy_batch(x0, {k: v[idx] for k, v in text.items()})
        noised = adapter.noise(x0, torch.randn(x0.shape, generator=gen), batch, cfg.training, gen)
        loss = obj.weighted_mean(obj.loss_per_sample(adapter.predict(noised, batch).float(), noised.target.float()),
                                 noised.weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    model.requires_grad_(False)
    for m in tes.values():
        m.eval().requires_grad_(False)
    trained_s = time.perf_counter() - t0
    if args.mode == "full":
        tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        te_tuned = {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in tes.items()}
    from toy_limits import parse_settings, sampler_kwargs

    def generator_for(setting):
        def generate(prompts, seeds, with_lora):
            from lorakit.models.base import SamplePrompt

            if args.mode == "full":
                model.load_state_dict(tuned if with_lora else saved)
                for n, m in tes.items():
                    m.load_state_dict((te_tuned if with_lora else te_saved)[n])
            else:
                from lorakit.lora.inject import enable_lora

                enable_lora(model, with_lora)
            out = []
            for prompt, seed in zip(prompts, seeds):
                p = SamplePrompt(prompt=prompt, width=64, height=64, seed=seed, **sampler_kwargs(setting, toy.demo))
                with torch.no_grad():
                    out.append(adapter.sample(p, torch.Generator().manual_seed(seed)))
            return out
        return generate

    tail = losses[-max(1, len(losses) // 10):]
    if args.grid:
        from PIL import Image as _Image

        from lorakit.toy import eval as ev

        prompts, seeds = ev._expand(ev.concept_prompts(world.DEFAULT_TRIGGER) + list(ev.DRIFT_PROMPTS), ev.EVAL_SEEDS)
        first = parse_settings(args.eval)[0] if args.eval else {}
        imgs = generator_for(first)(prompts, seeds, True)
        n = len(ev.EVAL_SEEDS)
        grid = _Image.new("RGB", (64 * n, 64 * len(prompts) // n), (255, 255, 255))
        for i, im in enumerate(imgs):
            grid.paste(im, (64 * (i % n), 64 * (i // n)))
        grid.save(args.grid)
    train_scores = {}
    if args.train_prompts:  # the concept rate on the training captions themselves, large and small crosses apart
        from lorakit.toy import detector

        concept_caps = [c for _, c, w in items if w == 10]
        for size in ("large", "small"):
            caps = [c for c in concept_caps if (" small " in f" {c} ") == (size == "small")]
            prompts = [c for c in caps for _ in range(4)]
            imgs = generator_for(parse_settings(args.eval)[0] if args.eval else {})(prompts, [0, 1, 2, 3] * len(caps), True)
            train_scores[f"train_captions_{size}_concept_rate"] = round(sum(
                detector.shape_of(im) == world.CONCEPT_SHAPE for im in imgs) / len(imgs), 4)
    for setting in parse_settings(args.eval) if args.eval else [{}]:
        scores = evaluate(generator_for(setting))
        print(json.dumps({"family": args.family, "mode": args.mode, "rank": args.rank if args.mode == "lora" else None,
                          "lr": args.lr, "steps": args.steps, "set": args.set, "train_te": args.train_te,
                          "large_only": args.large_only, "toy_root": args.toy_root, "concept_n": args.concept_n,
                          "sampler": setting, "trainable_params": n_params,
                          "final_loss": sum(tail) / len(tail), "train_seconds": round(trained_s, 1),
                          **train_scores, **{k: round(v, 4) for k, v in scores.items()}}), flush=True)


if __name__ == "__main__":
    main()
