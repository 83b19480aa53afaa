"""benchmarks/peers.py (issues 19 and 29: lorakit beside diffusers' scripts and sd-scripts): the checkpoint writers
produce files the peers' loaders accept, the step/peak hook records what it says, and the torchvision / cv2
stand-ins compute what torchvision / OpenCV compute for the peers' data loading.

The checks against sd-scripts' own model classes need ``.peers`` (``bash benchmarks/peers_fetch.sh``); without it
they are skipped and the same files are checked against lorakit's readers only. The end-to-end dry runs (the peer
script itself for a few steps on the CPU, tiny configs) are slow-marked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
import peers_hook  # noqa: E402

SD_SCRIPTS = peers.PEERS / "sd-scripts"


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_random_file_metadata_and_integer_buffers(tmp_path):
    from safetensors import safe_open

    with torch.device("meta"):
        bn = torch.nn.BatchNorm1d(3)
        lin = torch.nn.Linear(4, 5)
    sd = {**{"bn." + k: v for k, v in bn.state_dict().items()}, **{"lin." + k: v for k, v in lin.state_dict().items()}}
    path = peers.random_file(tmp_path / "m.safetensors", sd, "cpu", seed=0, metadata=peers.META_PT)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert set(got) == set(sd)
    assert got["bn.num_batches_tracked"].dtype == torch.int64
    assert got["lin.weight"].dtype == torch.bfloat16 and got["lin.weight"].shape == (5, 4)
    assert torch.equal(got["lin.bias"], torch.zeros(5, dtype=torch.bfloat16))
    assert torch.equal(got["bn.weight"], torch.ones(3, dtype=torch.bfloat16))
    w = got["lin.weight"].float()
    assert 0 < w.std() < 1.5 / math.sqrt(4) and len(set(w.flatten().tolist())) > 10  # random, ~1/sqrt(fan_in)


def test_sd3_medium_layout_is_what_lorakit_reads_as_sd35_medium():
    from lorakit.models.sd3.convert import detect, strip_prefix

    lay = peers.sd3_layout("medium", tiny=False)
    mmdit = {k: v for k, v in lay["checkpoint"].items() if k.startswith("model.diffusion_model.")}
    shape = detect(strip_prefix(mmdit), "sd3.5_medium.safetensors")
    assert (shape.depth, shape.width, shape.dual_layers) == (24, 1536, tuple(range(13)))
    assert shape.pos_embed_max_size == 384
    vae = [k for k in lay["checkpoint"] if k.startswith("first_stage_model.")]
    assert "first_stage_model.encoder.conv_in.weight" in vae and "first_stage_model.decoder.conv_out.weight" in vae
    assert len(vae) + len(mmdit) == len(lay["checkpoint"])
    # the separate encoders as ComfyUI keeps them: CLIP-L 12 layers of 768, bigG 32 of 1280 with projection, T5-XXL
    assert lay["clip_l"]["text_model.embeddings.token_embedding.weight"].shape == (49408, 768)
    assert lay["clip_g"]["text_projection.weight"].shape == (1280, 1280)
    assert sum("layers.31.mlp.fc2.weight" in k for k in lay["clip_g"]) == 1
    assert lay["t5xxl"]["shared.weight"].shape == (32128, 4096)
    assert not any(k.endswith("position_ids") for k in lay["clip_l"])


@pytest.mark.skipif(not (SD_SCRIPTS / "library" / "sd3_models.py").is_file(),
                    reason=".peers/sd-scripts missing (bash benchmarks/peers_fetch.sh)")
def test_sd3_layout_matches_sd_scripts_models_key_for_key():
    peers_hook.install_shims()
    sys.path.insert(0, str(SD_SCRIPTS))
    sys.path.append(str(peers.PEERS / "site"))
    from accelerate import init_empty_weights

    from library import sd3_models, sd3_utils  # sd-scripts' own classes and state-dict analysis

    lay = peers.sd3_layout("medium", tiny=False)
    mm = {k[len("model.diffusion_model."):]: v for k, v in lay["checkpoint"].items()
          if k.startswith("model.diffusion_model.")}
    with init_empty_weights():
        model = sd3_models.create_sd3_mmdit(sd3_utils.analyze_state_dict_state(mm), "torch")
    assert model.model_type == "5-medium"
    assert _shapes(model.state_dict()) == _shapes(mm)
    with torch.device("meta"):
        vae = sd3_models.SDVAE(torch.bfloat16, "meta")
    got = {k[len("first_stage_model."):]: v for k, v in lay["checkpoint"].items() if k.startswith("first_stage_model.")}
    assert _shapes(vae.state_dict()) == _shapes(got)


def test_sd15_layout_is_what_lorakit_reads_as_sd15():
    from lorakit.models.sd15.convert import detect

    sd = peers.sd15_layout()
    header = {k: {"dtype": "F16", "shape": list(v.shape), "data_offsets": [0, 0]} for k, v in sd.items()}
    variant = detect(header, {}, Path("v1-5.safetensors"))
    assert "v" not in str(getattr(variant, "prediction", "eps")).lower().replace("eps", "")
    assert sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape == (49408, 768)
    assert any(k.startswith("first_stage_model.decoder.") for k in sd)


def test_kohya_tokenizer_cache_holds_the_real_vocabularies(tmp_path):
    from transformers import CLIPTokenizer, T5TokenizerFast

    root = peers.kohya_tokenizers(tmp_path, t5=True)
    assert {p.name for p in root.iterdir()} == {"openai_clip-vit-large-patch14", "google_t5-v1_1-xxl",
                                                  "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"}
    for sub in ("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"):
        assert {"vocab.json", "merges.txt"} <= {p.name for p in (root / sub).iterdir()}  # transformers 4's slow class
    clip = CLIPTokenizer.from_pretrained(str(root / "openai_clip-vit-large-patch14"))
    assert clip("a photo")["input_ids"] == [49406, 320, 1125, 49407]  # CLIP's published ids
    g = CLIPTokenizer.from_pretrained(str(root / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"))
    assert g.pad_token == "!" and g.convert_tokens_to_ids("!") == 0
    cfg = json.loads((root / "google_t5-v1_1-xxl" / "tokenizer_config.json").read_text())
    assert isinstance(cfg["extra_ids"], int) and "extra_special_tokens" not in cfg
    t5 = T5TokenizerFast.from_pretrained(str(root / "google_t5-v1_1-xxl"))
    assert t5("a photo")["input_ids"] == [3, 9, 1202, 1]  # T5's SentencePiece ids ("▁", "a", "▁photo", "</s>")


def test_flux2_tiny_folder_loads_through_the_klein_pipeline(tmp_path):
    from diffusers import Flux2KleinPipeline
    from safetensors.torch import load_file

    peers.write_flux2(tmp_path, "klein-4b", tiny=True, device="cpu")
    pipe = Flux2KleinPipeline.from_pretrained(str(tmp_path), torch_dtype=torch.bfloat16)
    stored = load_file(str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))
    loaded = pipe.transformer.state_dict()
    assert set(stored) == set(loaded)
    assert all(torch.equal(stored[k], loaded[k]) for k in stored)  # the file's values, not a fresh init
    te = load_file(str(tmp_path / "text_encoder" / "model.safetensors"))
    assert torch.equal(te["model.embed_tokens.weight"], pipe.text_encoder.model.embed_tokens.weight)
    ids = pipe.tokenizer(peers.PROMPT)["input_ids"]
    assert max(ids) < pipe.text_encoder.config.vocab_size


def test_peer_stats_reads_the_hook_record():
    ends = [0.0, 1.0, 1.5, 2.25, 2.75, 3.5]  # ends of steps 1-6: steps 2-6 took 1.0, 0.5, 0.75, 0.5, 0.75
    stats = {"step_end_s": ends, "step_peak_gib": [3.0, 4.0, 4.5, 4.5, 4.5, 4.5], "peak_before_prepare_gib": 9.0,
             "lora_params": 123}
    got = peers.peer_stats(stats, warm=2)  # steps 1-2 left out: steps 3-6
    assert got["median_s"] == pytest.approx(statistics_median([0.5, 0.75, 0.5, 0.75]))
    assert (got["min_s"], got["max_s"]) == (0.5, 0.75)
    assert got["peak_alloc_gib"] == 4.5 and got["process_peak_gib"] == 9.0 and got["steps"] == 6


def statistics_median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def test_hook_records_each_optimizer_step_in_process(monkeypatch):
    monkeypatch.delenv("PEER_STEPS", raising=False)
    monkeypatch.setattr(peers_hook, "STATS", {"step_end_s": [], "step_peak_gib": []})
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(peers_hook._after_step)
    try:
        for _ in range(4):
            m(torch.ones(1, 3)).sum().backward()
            opt.step()
    finally:
        handle.remove()
    rec = peers_hook.STATS
    assert len(rec["step_end_s"]) == 4 and rec["lora_params"] == 3 * 2 + 2
    assert rec["optimizer"] == "torch.optim.adamw.AdamW" and rec["optimizer_defaults"]["lr"] == 1e-3
    assert rec["step_end_s"] == sorted(rec["step_end_s"])


@pytest.mark.slow
def test_hook_counts_optimizer_steps_and_stops_the_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nfrom accelerate import Accelerator\n"
        "acc = Accelerator(cpu=True)\nm = torch.nn.Linear(3, 2)\n"
        "opt = torch.optim.AdamW(m.parameters(), lr=1e-3)\nm, opt = acc.prepare(m, opt)\n"
        "for i in range(50):\n    loss = m(torch.ones(1, 3)).sum()\n    acc.backward(loss)\n"
        "    opt.step()\n    opt.zero_grad()\n"
        "open('finished', 'w').write('ran all 50')\n")
    stats = tmp_path / "stats.json"
    proc = subprocess.run([sys.executable, str(BENCH / "peers_hook.py"), str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PEER_STATS": str(stats), "PEER_STEPS": "7",
                               "OMP_NUM_THREADS": "1", "PYTHONPATH": ":".join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(stats.read_text())
    assert len(rec["step_end_s"]) == 7 and rec["stopped_after_steps"] == 7
    assert not (tmp_path / "finished").exists()  # stopped right after step 7
    assert rec["lora_params"] == 3 * 2 + 2 and rec["optimizer"] == "torch.optim.adamw.AdamW"
    assert rec["prepare_calls"] == 1
    assert all(b > a for a, b in zip(rec["step_end_s"], rec["step_end_s"][1:]))


def test_torchvision_stand_in_matches_direct_computation():
    from PIL import Image

    sys.path.insert(0, str(BENCH / "peers_shim"))
    try:
        import importlib

        tv = importlib.import_module("torchvision.transforms")
        F = importlib.import_module("torchvision.transforms.functional")
    finally:
        sys.path.remove(str(BENCH / "peers_shim"))
    if not getattr(importlib.import_module("torchvision"), "__version__", "").endswith("peers-shim"):
        pytest.skip("a real torchvision is installed")
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    t = F.normalize(F.to_tensor(img), [0.5], [0.5])
    ref = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1) * 2 - 1
    assert torch.allclose(t, ref, atol=1e-6)
    crop = F.center_crop(img, (4, 4))  # rows 1..4, columns 3..6
    assert np.array_equal(np.asarray(crop), arr[1:5, 3:7])
    assert np.array_equal(np.asarray(F.hflip(img)), arr[:, ::-1])
    assert np.array_equal(np.asarray(F.crop(img, 2, 1, 3, 5)), arr[2:5, 1:6])
    small = F.resize(img, [3, 5], interpolation=tv.InterpolationMode.BILINEAR)
    assert small.size == (5, 3)
    assert F.resize(img, 3).size == (5, 3)  # shorter side to 3
    i, j, h, w = tv.RandomCrop.get_params(img, output_size=(4, 4))
    assert (h, w) == (4, 4) and 0 <= i <= 2 and 0 <= j <= 6
    assert torch.equal(tv.Compose([tv.ToTensor(), tv.Normalize([0.5], [0.5])])(img), t)


def test_cv2_stand_in_matches_direct_computation():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cv2_shim", BENCH / "peers_shim" / "cv2" / "__init__.py")
    cv2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv2)
    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert np.array_equal(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB), arr[..., ::-1])
    out = cv2.resize(arr, (3, 2), interpolation=cv2.INTER_AREA)  # dsize is (width, height)
    assert out.shape == (2, 3, 3)
    assert np.allclose(out[0, 0].astype(float), arr[:2, :2].reshape(-1, 3).mean(0), atol=1)  # area = box mean
    with pytest.raises(NotImplementedError):
        cv2.cvtColor(arr, 999)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["flux2-4b", "zimage", "qwenimage"])
def test_peer_script_dry_run_on_cpu(tmp_path, case):
    """The diffusers script itself, unchanged, for 3 steps on tiny configs (about a minute each)."""
    if not (peers.PEERS / "diffusers" / peers.CASES[case].script).is_file():
        pytest.skip(".peers missing (bash benchmarks/peers_fetch.sh)")
    assert peers.main([case, "--tiny", "--dir", str(tmp_path), "--steps", "3", "--warm", "1", "--no-lorakit"]) == 0
    rec = json.loads((tmp_path / "runs" / f"{case}-tiny" / "peer_stats.json").read_text())
    assert rec["stopped_after_steps"] == 3 and rec["lora_params"] > 0
