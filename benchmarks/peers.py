"""lorakit beside the reference trainers any user can run (issues 19 and 29), on the same card in the same call.

Per case (``python3 benchmarks/peers.py --list``):
1. writes, once, full-size random-weight checkpoints in the layout the peer reads: a diffusers folder (transformer,
   VAE, text encoder of the real classes with the real configs, scheduler, tokenizer, model_index.json) for
   diffusers' DreamBooth-LoRA scripts; single files (SAI / LDM keys) plus a tokenizer cache for sd-scripts. Values
   are drawn on the GPU and streamed to disk tensor by tensor (``first_step.write_random_safetensors``: weights
   ~ N(0, 1/fan_in), norm scales 1, biases 0). The tokenizers are of the real classes: CLIP and T5 from lorakit's
   package data (the real vocabularies); the Qwen tokenizers are lorakit's small byte-level BPE of the real class
   (``Qwen2TokenizerFast`` with Qwen's special tokens, the toy world's) whose ids all index the full-size embedding
   table. The prompt is padded to the script's fixed length (512 / 77+256 tokens) either way, so the text tensors
   the timed step sees have the real shapes; the tokenizer runs once, before training.
2. runs the peer's script unchanged (from ``.peers/``, assembled by ``benchmarks/peers_fetch.sh``) through
   ``benchmarks/peers_hook.py`` with the matching settings (rank 16, batch 1, the resolution, bf16, gradient
   checkpointing as in the lorakit row it is set against, cached latents and text where the script offers it, AdamW,
   lr 1e-4), stops it after ``--steps`` optimizer steps and reads its step times (median over the steps after the
   first ``--warm``) and peak ``torch.cuda.max_memory_allocated`` over training (reset after the last
   ``Accelerator.prepare``);
3. runs the matching lorakit rows of ``benchmarks/bench.py`` (``--one``, a fresh process each) with the same step count,
   and prints one table (also ``$OUT/peers.md``, every row as JSON in ``$OUT/peers.jsonl``).

Usage, on the GPU machine from the repository root (wheels installed as benchmarks/README.md says; ``.peers`` carried)::

    python3 benchmarks/peers.py flux2-4b --dir /tmp/peers --steps 20
    python3 benchmarks/peers.py sd35m --dir /tmp/peers --steps 20 --no-lorakit
    python3 benchmarks/peers.py flux2-4b --tiny --dir /tmp/peers-tiny --steps 3 --no-lorakit  # CPU dry run
    python3 benchmarks/peers.py --build-only flux2-4b --dir /tmp/peers                        # files only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = Path(os.environ.get("PEERS_DIR", ROOT / ".peers"))
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

T_START = time.time()
PROMPT = "a photo of sks bench subject"
TINY_RESOLUTION = 64
META_PT = {"format": "pt"}


@dataclass(frozen=True)
class Case:
    peer: str                      # "diffusers" | "sd-scripts"
    script: str                    # file under .peers/<peer>/
    model: str                     # which checkpoint writer (MODELS)
    resolution: int
    gc: bool
    rows: tuple[str, ...]          # lorakit rows of benchmarks/bench.py set against it
    note: str = ""
    extra: tuple[str, ...] = field(default=())


CASES: dict[str, Case] = {
    "flux2-4b": Case("diffusers", "train_dreambooth_lora_flux2_klein.py", "flux2-klein-4b", 1024, True,
                     ("flux2-4b/gc", "flux2-4b/gc+compile", "flux2-4b/fp8c+compile")),
    "flux2-4b-nogc": Case("diffusers", "train_dreambooth_lora_flux2_klein.py", "flux2-klein-4b", 1024, False,
                          ("flux2-4b/nogc+compile",)),
    "flux2-9b": Case("diffusers", "train_dreambooth_lora_flux2_klein.py", "flux2-klein-9b", 1024, True,
                     ("flux2-9b/gc+compile", "flux2-9b/fp8c+compile")),
    "sd35m": Case("sd-scripts", "sd3_train_network.py", "sd35-medium", 1024, True,
                  ("sd35m/gc", "sd35m/gc+compile")),
    "qwenimage": Case("diffusers", "train_dreambooth_lora_qwen_image.py", "qwenimage", 1024, True,
                      ("qwenimage/gc", "qwenimage/fp8")),
    "zimage": Case("diffusers", "train_dreambooth_lora_z_image.py", "zimage", 1024, True,
                   ("zimage/gc", "zimage/gc+compile", "zimage/fp8c+compile")),
    "sd15": Case("sd-scripts", "train_network.py", "sd15", 512, True,
                 ("sd15/gc", "sd15/gc+compile", "sd15/gc+compile-graphs")),
}


# ============================================================================== checkpoint writers


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _clean(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype", "dtype")}


def random_file(path: Path, sd: dict[str, Any], device: str, seed: int, dtype: Any = None,
                metadata: Optional[dict[str, str]] = None) -> Path:
    """``sd`` (name -> meta tensor) written with random values (floating tensors as ``dtype``, others as they are)."""
    import torch

    from first_step import write_random_safetensors

    dtype = dtype or torch.bfloat16
    shapes = {k: (tuple(v.shape), dtype if v.is_floating_point() else v.dtype) for k, v in sd.items()}
    return write_random_safetensors(path, shapes, device, seed=seed, metadata=metadata)


def diffusers_component(folder: Path, model: Any, seed: int, device: str) -> Path:
    """A diffusers model folder: config.json + diffusion_pytorch_model.safetensors (bf16)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    random_file(folder / "diffusion_pytorch_model.safetensors", model.state_dict(), device, seed)
    return folder


def transformers_component(folder: Path, model: Any, seed: int, device: str) -> Path:
    """A transformers model folder: config.json (dtype bf16) + model.safetensors; a tied lm_head is not written."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    model.config.dtype = torch.bfloat16
    model.config.save_pretrained(folder)
    sd = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    random_file(folder / "model.safetensors", sd, device, seed, metadata=META_PT)
    return folder


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def qwen_tokenizer(folder: Path) -> Any:
    """lorakit's small Qwen tokenizer of the real class (the toy world's), saved as a tokenizer folder."""
    from lorakit.models.tokenizers import tiny_qwen_tokenizer

    tok = tiny_qwen_tokenizer(PROMPT.split())
    tok.save_pretrained(str(folder))
    return tok


def write_flux2(folder: Path, size: str, tiny: bool, device: str) -> dict[str, Any]:
    """Diffusers folder of FLUX.2 Klein ``size`` (klein-4b / klein-9b) as ``Flux2KleinPipeline`` loads it."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from lorakit.models.flux2 import configs
    from lorakit.models.flux2 import tiny as small

    tok = qwen_tokenizer(folder / "tokenizer")
    if tiny:  # 31 Qwen3 layers: the script stacks hidden states 10, 20, 30 by default
        tcfg, aecfg = small.TINY_TRANSFORMER, small.TINY_AE
        qcfg = {**small.TINY_QWEN3, "num_hidden_layers": 31, "vocab_size": len(tok)}
    else:
        tcfg, aecfg = configs.transformer_config(size), configs.ae_config()
        qcfg = {k: v for k, v in configs.qwen3_config(size).items() if k != "model_type"}
    with torch.device("meta"):
        tr = Flux2Transformer2DModel(**_clean(tcfg))
        te = Qwen3ForCausalLM(Qwen3Config(**_clean(qcfg)))
        ae = AutoencoderKLFlux2(**_clean(aecfg))
    diffusers_component(folder / "transformer", tr, 0, device)
    transformers_component(folder / "text_encoder", te, 1, device)
    diffusers_component(folder / "vae", ae, 2, device)
    FlowMatchEulerDiscreteScheduler(**_clean(configs.scheduler_config())).save_config(folder / "scheduler")
    write_json(folder / "model_index.json", {
        "_class_name": "Flux2KleinPipeline", "_diffusers_version": "0.42.1", "is_distilled": False,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"], "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"]})
    return {"model": str(folder)}


def write_zimage(folder: Path, tiny: bool, device: str) -> dict[str, Any]:
    """Diffusers folder of Z-Image (6 B single-stream DiT, Qwen3-4B ``Qwen3Model``, FLUX.1's 16-channel AE) as
    ``ZImagePipeline`` loads it."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from lorakit.models.ldm_vae import TINY_AE, ae_config
    from lorakit.models.zimage import configs
    from lorakit.models.zimage import tiny as small

    tok = qwen_tokenizer(folder / "tokenizer")
    if tiny:
        tcfg, aecfg, qcfg = small.TINY_TRANSFORMER, TINY_AE, {**small.TINY_QWEN3, "vocab_size": len(tok)}
    else:
        tcfg, aecfg = configs.transformer_config(), ae_config()
        qcfg = {k: v for k, v in configs.qwen3_config().items() if k != "model_type"}
    with torch.device("meta"):
        tr = ZImageTransformer2DModel(**_clean(tcfg))
        te = Qwen3Model(Qwen3Config(**_clean(qcfg)))
        ae = AutoencoderKL(**_clean(aecfg))
    diffusers_component(folder / "transformer", tr, 0, device)
    transformers_component(folder / "text_encoder", te, 1, device)
    diffusers_component(folder / "vae", ae, 2, device)
    FlowMatchEulerDiscreteScheduler(**_clean(configs.scheduler_config())).save_config(folder / "scheduler")
    write_json(folder / "model_index.json", {
        "_class_name": "ZImagePipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"], "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]})
    return {"model": str(folder)}


QWEN_TE_LAYERS = 4  # of Qwen2.5-VL-7B's 28 (see write_qwenimage)


def write_qwenimage(folder: Path, tiny: bool, device: str) -> dict[str, Any]:
    """Diffusers folder of Qwen-Image (20 B MMDiT, Qwen2.5-VL-7B ``Qwen2_5_VLForConditionalGeneration``,
    ``AutoencoderKLQwenImage``) as ``QwenImagePipeline`` loads it.

    The one departure from the real configs: the text encoder keeps QWEN_TE_LAYERS of its 28 decoder layers and a
    one-block vision tower (widths, vocabulary and the 3584-wide hidden state the transformer reads are the real
    ones). The full set (41 GB transformer + 16.6 GB encoder) does not fit the GPU machine's 64 GB disk beside the
    system; the encoder runs once before training, to fill the text cache, and is off the GPU during the timed steps.
    """
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from lorakit.models.qwenimage import configs
    from lorakit.models.qwenimage import tiny as small
    from lorakit.models.qwenimage.text import tiny_tokenizer

    tok = tiny_tokenizer(PROMPT.split())
    tok.save_pretrained(str(folder / "tokenizer"))
    if tiny:
        tcfg, vcfg = small.TINY_TRANSFORMER, {**small.TINY_VAE, "latents_mean": list(configs.LATENTS_MEAN),
                                               "latents_std": list(configs.LATENTS_STD)}
        text, vision = {**small.TINY_TEXT, "vocab_size": len(tok)}, small.TINY_VISION
    else:
        tcfg, vcfg = configs.transformer_config(), configs.vae_config()
        text = {**configs.text_config(), "num_hidden_layers": QWEN_TE_LAYERS}
        vision = {"depth": 1, "out_hidden_size": text["hidden_size"], "fullatt_block_indexes": [0]}
    text = {**text, "pad_token_id": tok.pad_token_id, "bos_token_id": None, "eos_token_id": tok.eos_token_id}
    with torch.device("meta"):
        tr = QwenImageTransformer2DModel(**_clean(tcfg))
        te = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
        vae = AutoencoderKLQwenImage(**_clean(vcfg))
    diffusers_component(folder / "transformer", tr, 0, device)
    transformers_component(folder / "text_encoder", te, 1, device)
    diffusers_component(folder / "vae", vae, 2, device)
    FlowMatchEulerDiscreteScheduler(**_clean(configs.scheduler_config())).save_config(folder / "scheduler")
    write_json(folder / "model_index.json", {
        "_class_name": "QwenImagePipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"], "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"]})
    return {"model": str(folder)}


def kohya_tokenizers(folder: Path, t5: bool) -> Path:
    """sd-scripts' ``--tokenizer_cache_dir``: the Hub ids it asks for, as folders (``org_name``) of tokenizers built
    from lorakit's package data (CLIP-L / bigG: the real CLIP vocabulary; T5: the real SentencePiece model)."""
    from importlib import resources

    from lorakit.models.tokenizers import t5_tokenizer, write_clip_tokenizer_files

    # vocab.json + merges.txt: what transformers 4's (slow) CLIPTokenizer, which sd-scripts asks for, reads
    write_clip_tokenizer_files(folder / "openai_clip-vit-large-patch14")
    if t5:  # SD3: CLIP-G pads with "!" as SD3's own tokenizer_2 does; T5-XXL (tokenizer.json and spiece.model)
        write_clip_tokenizer_files(folder / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k", pad_token="!")
        t5_dir = folder / "google_t5-v1_1-xxl"
        t5_tokenizer().save_pretrained(str(t5_dir))
        spiece = resources.files("lorakit.assets.tokenizers").joinpath("t5/spiece.model").read_bytes()
        (t5_dir / "spiece.model").write_bytes(spiece)
        # transformers 5 writes extra_special_tokens as a list, which transformers 4 cannot read: its own format
        write_json(t5_dir / "tokenizer_config.json", {
            "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
            "extra_ids": 100, "model_max_length": 512, "legacy": True})
    return folder


def _no_position_ids(sd: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}


def sd3_layout(variant: str, tiny: bool) -> dict[str, dict[str, Any]]:
    """role -> {key: meta tensor} of SD3.5 files as sd-scripts reads them: ``checkpoint`` (the official single file's
    ``model.diffusion_model.*`` MMDiT in SAI names + ``first_stage_model.*`` LDM VAE), and the separate encoders
    ComfyUI users keep: ``clip_l`` / ``clip_g`` (transformers ``CLIPTextModelWithProjection`` names) and ``t5xxl``
    (``T5EncoderModel`` names). ``tiny``: a tiny MMDiT and VAE (the encoders are fixed-size in sd-scripts)."""
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from lorakit.models.ldm_vae import ae_diffusers_to_bfl
    from lorakit.models.sd3 import configs
    from lorakit.models.sd3 import tiny as small
    from lorakit.models.sd3.convert import diffusers_to_original

    tcfg = small.TINY_TRANSFORMER if tiny else configs.transformer_config(variant)
    with torch.device("meta"):
        tr = SD3Transformer2DModel(**_clean(tcfg))
        vae = AutoencoderKL(**_clean(configs.vae_config()))
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**_clean(configs.clip_l_config())))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**_clean(configs.clip_g_config())))
        t5 = T5EncoderModel(T5Config(**_clean(configs.t5_config())))
    ckpt = {"model.diffusion_model." + k: v for k, v in diffusers_to_original(tr.state_dict()).items()}
    ckpt.update({"first_stage_model." + k: v for k, v in ae_diffusers_to_bfl(vae.state_dict()).items()})

    def clip_sd(m: Any) -> dict[str, Any]:
        return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
                for k, v in _no_position_ids(m.state_dict()).items()}

    return {"checkpoint": ckpt, "clip_l": clip_sd(clip_l), "clip_g": clip_sd(clip_g), "t5xxl": dict(t5.state_dict())}


def write_sd3(folder: Path, variant: str, tiny: bool, device: str) -> dict[str, Any]:
    import torch

    names = {"checkpoint": f"sd3.5_{variant}.safetensors", "clip_l": "clip_l.safetensors",
             "clip_g": "clip_g.safetensors", "t5xxl": "t5xxl_fp16.safetensors"}
    paths: dict[str, Any] = {}
    for i, (role, sd) in enumerate(sd3_layout(variant, tiny).items()):
        dtype = torch.float16 if role != "checkpoint" else torch.bfloat16  # as the published files
        paths[role] = str(random_file(folder / names[role], sd, device, seed=i, dtype=dtype))
    paths["tokenizers"] = str(kohya_tokenizers(folder / "tokenizers", t5=True))
    return paths


def sd15_layout() -> dict[str, Any]:
    """{key: meta tensor} of an SD 1.5 single file (LDM names: ``model.diffusion_model.``, ``first_stage_model.``,
    ``cond_stage_model.transformer.``), through lorakit's own SGM converters. Always full size: sd-scripts builds
    SD 1.5's fixed architecture (a ``--tiny`` dry run only lowers the resolution)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorakit.models.sd15 import configs
    from lorakit.models.sd15.convert import TE_PREFIX
    from lorakit.models.unet_parts import te1_to_sgm, unet_to_sgm, vae_to_sgm

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_clean(configs.UNET))
        vae = AutoencoderKL(**_clean(configs.VAE))
        te = CLIPTextModel(CLIPTextConfig(**_clean(configs.TEXT_ENCODER)))
    sd = unet_to_sgm(unet.state_dict(), unet.config)
    sd.update(vae_to_sgm(vae.state_dict(), vae.config))
    sd.update(te1_to_sgm(_no_position_ids(te.state_dict()), prefix=TE_PREFIX))
    return sd


def write_sd15(folder: Path, tiny: bool, device: str) -> dict[str, Any]:
    import torch

    path = random_file(folder / "v1-5-pruned-emaonly.safetensors", sd15_layout(), device, 0, dtype=torch.float16)
    return {"checkpoint": str(path), "tokenizers": str(kohya_tokenizers(folder / "tokenizers", t5=False))}


MODELS: dict[str, Callable[[Path, bool, str], dict[str, Any]]] = {
    "sd35-medium": lambda d, tiny, dev: write_sd3(d, "medium", tiny, dev),
    "sd35-large": lambda d, tiny, dev: write_sd3(d, "large", tiny, dev),
    "sd15": write_sd15,
    "zimage": write_zimage,
    "qwenimage": write_qwenimage,
    "flux2-klein-4b": lambda d, tiny, dev: write_flux2(d, "klein-4b", tiny, dev),
    "flux2-klein-9b": lambda d, tiny, dev: write_flux2(d, "klein-9b", tiny, dev),
}


def build_model(name: str, root: Path, tiny: bool) -> dict[str, Any]:
    """Write model ``name`` under ``root/models`` once (``done.json`` marks a complete set); its paths."""
    folder = root / "models" / f"{name}-{'tiny' if tiny else 'full'}"
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())["paths"]
    if name not in MODELS:
        raise SystemExit(f"peers: no checkpoint writer for {name!r} yet")
    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    paths = MODELS[name](folder, tiny, _device())
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    write_json(done, {"paths": paths, "seconds": seconds, "bytes": size})
    print(f"peers: wrote {name} ({size / 2**30:.2f} GiB) in {seconds:.1f} s", flush=True)
    return paths


def write_images(folder: Path, n: int, size: int) -> Path:
    """``n`` images ``size``² (``folder/1_bench``, with .txt captions, kohya layout) and the same images alone in
    ``folder/images`` (diffusers' DreamBooth datasets open every file of their folder as an image)."""
    from first_step import write_dataset

    write_dataset(folder, n, size)
    only = folder / "images"
    only.mkdir(exist_ok=True)
    for png in sorted((folder / "1_bench").glob("*.png")):
        if not (only / png.name).exists():
            shutil.copyfile(png, only / png.name)
    return folder


# ============================================================================== peer command lines


def diffusers_args(case: Case, paths: dict, data: Path, out: Path, steps: int, tiny: bool) -> list[str]:
    import importlib.util

    report = "tensorboard" if importlib.util.find_spec("tensorboard") else "all"  # "all" = none available
    args = ["--pretrained_model_name_or_path", paths["model"], "--instance_data_dir", str(data / "images"),
            "--instance_prompt", PROMPT, "--output_dir", str(out), "--resolution", str(case.resolution),
            "--train_batch_size", "1", "--rank", "16", "--lora_alpha", "16", "--mixed_precision", "bf16",
            "--cache_latents", "--max_train_steps", str(steps + 2), "--learning_rate", "1e-4",
            "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--optimizer", "AdamW", "--seed", "0",
            "--checkpointing_steps", "1000000", "--report_to", report, "--dataloader_num_workers", "0",
            "--skip_final_inference", *case.extra]
    if case.gc:
        args.append("--gradient_checkpointing")
    return args


def sd_scripts_args(case: Case, paths: dict, data: Path, out: Path, steps: int, tiny: bool) -> list[str]:
    """sd-scripts' LoRA trainer (``train_network.py`` / ``sd3_train_network.py``) with the same settings."""
    res = case.resolution
    args = ["--pretrained_model_name_or_path", paths["checkpoint"], "--tokenizer_cache_dir", paths["tokenizers"],
            "--train_data_dir", str(data), "--caption_extension", ".txt", "--resolution", f"{res},{res}",
            "--train_batch_size", "1", "--output_dir", str(out), "--output_name", "peer", "--save_model_as",
            "safetensors", "--network_dim", "16", "--network_alpha", "16", "--learning_rate", "1e-4",
            "--optimizer_type", "AdamW", "--lr_scheduler", "constant", "--mixed_precision", "bf16",
            "--save_precision", "bf16", "--cache_latents",
            "--max_train_steps", str(steps + 2), "--seed", "0", "--sdpa", "--max_data_loader_n_workers", "0",
            "--max_grad_norm", "1.0", "--network_train_unet_only", *case.extra]  # as lorakit: denoiser LoRA only
    if case.script == "sd3_train_network.py":
        args += ["--network_module", "networks.lora_sd3", "--clip_l", paths["clip_l"], "--clip_g", paths["clip_g"],
                 "--t5xxl", paths["t5xxl"], "--cache_text_encoder_outputs"]  # train_network.py has no such flag
    else:
        args += ["--network_module", "networks.lora"]
    if case.gc:
        args.append("--gradient_checkpointing")
    return args


PEER_ARGS = {"diffusers": diffusers_args, "sd-scripts": sd_scripts_args}


# ============================================================================== running and reading


def peer_stats(stats: dict, warm: int) -> dict[str, Any]:
    """s/step (median/min/max over the steps after ``warm``) and peaks from peers_hook.py's record."""
    ends = stats.get("step_end_s", [])
    times = [b - a for a, b in zip(ends, ends[1:])]  # time of steps 2..n
    steady = times[max(warm - 1, 0):] or times
    peaks = stats.get("step_peak_gib", [])
    return {"steps": len(ends), "step_s": [round(t, 4) for t in times],
            "median_s": statistics.median(steady) if steady else float("nan"),
            "min_s": min(steady) if steady else float("nan"), "max_s": max(steady) if steady else float("nan"),
            "peak_alloc_gib": max(peaks) if peaks else float("nan"),
            "process_peak_gib": max([stats.get("peak_before_prepare_gib", 0.0), *peaks]) if peaks else float("nan"),
            "lora_params": stats.get("lora_params"), "optimizer": stats.get("optimizer"),
            "optimizer_defaults": stats.get("optimizer_defaults"), "shims": stats.get("shims"),
            "device": stats.get("device", "cpu"), "torch": stats.get("torch"), "diffusers": stats.get("diffusers"),
            "transformers": stats.get("transformers"), "aliases": stats.get("aliases")}


def kohya_site(root: Path) -> Path:
    """sd-scripts' pinned transformers 4.54.1 / tokenizers / huggingface_hub / diffusers 0.32.1, installed once from
    ``.peers/kohya-wheels`` into ``root/kohya-site`` (first on the sd-scripts processes' path only: sd-scripts cannot
    run on transformers 5, whose CLIPTextModel lost the ``text_model.`` prefix its SD 1.5 loader writes)."""
    site = root / "kohya-site"
    if (site / "transformers").is_dir():
        return site
    wheels = sorted((PEERS / "kohya-wheels").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"peers: {PEERS / 'kohya-wheels'} is empty: run `bash benchmarks/peers_fetch.sh` and carry .peers")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site.with_name(site.name + ".part")), *map(str, wheels)], check=True)
    site.with_name(site.name + ".part").rename(site)
    return site


def run_peer(name: str, case: Case, root: Path, steps: int, warm: int, tiny: bool, timeout: float,
             deadline: float = float("inf")) -> dict[str, Any]:
    """Build what the peer reads (once), run it for ``steps`` optimizer steps (killed after ``timeout`` s or at
    ``deadline``), and read its record."""
    script = PEERS / case.peer / case.script
    if not script.is_file():
        return {"row": f"{case.peer}:{name}", "error": f"{script} missing: run `bash benchmarks/peers_fetch.sh` here "
                                                         "and carry .peers"}
    if tiny:
        case = dataclasses.replace(case, resolution=TINY_RESOLUTION)
    t0 = time.time()
    paths = build_model(case.model, root, tiny)
    t_build = time.time() - t0
    data = write_images(root / "data" / str(case.resolution), 4, case.resolution)
    run_dir = root / "runs" / f"{name}{'-tiny' if tiny else ''}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    args = PEER_ARGS[case.peer](case, paths, data, run_dir / "output", steps, tiny)
    if tiny and case.peer == "sd-scripts":  # its full-size SD 1.5 U-Net in bf16 convolutions crawls on a CPU
        args[args.index("--mixed_precision") + 1] = "no"
    stats_file = run_dir / "peer_stats.json"
    first = [str(kohya_site(root))] if case.peer == "sd-scripts" else []
    env = {**os.environ, "PEER_STATS": str(stats_file), "PEER_STEPS": str(steps), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(root / "hf-home"),
           "PYTHONPATH": os.pathsep.join([*first, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                    if p and Path(p).resolve() != ROOT), str(PEERS / "site")])}
    cmd = [sys.executable, str(HERE / "peers_hook.py"), str(script), *args]
    (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    print(f"== {case.peer}:{name}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    timeout = max(1.0, min(timeout, deadline - time.time()))
    with open(run_dir / "peer.log", "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                  cwd=str(run_dir))
            code: Optional[int] = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.time() - t0
    row: dict[str, Any] = {"row": f"{case.peer}:{name}", "peer": case.peer, "script": case.script,
                           "resolution": case.resolution, "gc": case.gc, "wall_s": wall, "build_s": t_build,
                           "log": str(run_dir / "peer.log")}
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    if stats:
        row.update(peer_stats(stats, warm))
    if code != 0 or row.get("steps", 0) < steps:
        tail = (run_dir / "peer.log").read_text(errors="replace").strip().splitlines()[-4:]
        row["error"] = ("timed out" if code is None else f"exit {code}") + f" after {row.get('steps', 0)} steps: " + \
            " / ".join(tail)
    return row


def run_lorakit(rows: tuple[str, ...], steps: int, timeout: float) -> list[dict[str, Any]]:
    import bench

    out: list[dict[str, Any]] = []
    for name in rows:
        if name not in bench.ROWS:
            out.append({"row": name, "error": "no such row in benchmarks/bench.py yet"})
            continue
        print(f"== lorakit {name}", flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*(p for p in os.environ.get("PYTHONPATH", "").split(
            os.pathsep) if p), str(ROOT)])}
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, str(HERE / "bench.py"), "--one", name, "--steps", str(steps),
                                   "--spawned", repr(t0)], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:  # where it was: the last lines it printed
            text = "\n".join(t.decode(errors="replace") if isinstance(t, bytes) else t
                             for t in (exc.stdout, exc.stderr) if t)
            tail = " / ".join(text.strip().splitlines()[-6:])
            print(f"   {name}: last output: {tail}", flush=True)
            out.append({"row": name, "error": f"timed out after {timeout:.0f} s", "tail": tail[-1500:]})
            continue
        lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            out.append({"row": name, "error": f"exit {proc.returncode}: " + " / ".join(
                (proc.stderr or proc.stdout).strip().splitlines()[-3:])})
        out += [{k: v for k, v in r.items() if k not in ("log", "profile", "step_timeline")} for r in lines]
    return out


def _gib(x: Any) -> str:
    return "–" if x is None or x != x else f"{x:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| case | row | settings | s/step median (min–max) | peak alloc GiB (training) | process peak GiB | "
             "LoRA params | vs peer (speed-up; memory) | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r.get('case', '')} | {r['row']} | | | | | | | **{r['error'][:300]}** |")
            continue
        peer = r.get("vs")
        speed = f"{peer / r['median_s']:.2f}×" if peer and r.get("median_s") else ""
        if r.get("vs_peak") and r.get("peak_alloc_gib") == r.get("peak_alloc_gib"):  # memory: lorakit / peer
            speed += f" at {r['peak_alloc_gib'] / r['vs_peak']:.2f}× the memory"
        settings = r.get("settings") or (f"{r['script']} bf16 b1 {r['resolution']}² r16 AdamW "
                                         f"{'ckpt' if r['gc'] else 'no-ckpt'} cached latents")
        lines.append(f"| {r.get('case', '')} | {r['row']} | {settings} | {r['median_s']:.3f} ({r['min_s']:.3f}–"
                     f"{r['max_s']:.3f}) | {_gib(r.get('peak_alloc_gib'))} | {_gib(r.get('process_peak_gib'))} | "
                     f"{(r.get('lora_params') or 0) / 1e6:.2f} M | {speed} | {r.get('note', '')} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", help="cases to run (see --list)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/peers"), help="models, images and runs")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warm", type=int, default=5, help="steps left out of the median (the first ones)")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU dry run: checks the wiring, no timings)")
    ap.add_argument("--no-lorakit", action="store_true", help="run the peer only")
    ap.add_argument("--no-peer", action="store_true", help="run the lorakit rows only")
    ap.add_argument("--build-only", action="store_true", help="write the checkpoints and images, run nothing")
    ap.add_argument("--timeout", type=float, default=420, help="seconds for each peer run and each lorakit row")
    ap.add_argument("--budget", type=float, default=560,
                    help="seconds for the whole command (the lent GPU's 10-minute limit): later runs get what is left")
    ap.add_argument("--rows", help="comma-separated lorakit rows to set against the peer instead of the case's own")
    args = ap.parse_args(argv)
    if args.list or not args.cases:
        for name, c in CASES.items():
            print(f"{name}: {c.peer} {c.script} {c.resolution}² {'ckpt' if c.gc else 'no ckpt'} vs {', '.join(c.rows)}")
        return 0
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise SystemExit(f"peers: unknown case(s) {unknown}; see --list")
    if args.build_only:
        for name in args.cases:
            build_model(CASES[name].model, args.dir, args.tiny)
        return 0
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    results: list[dict[str, Any]] = []
    deadline = T_START + args.budget

    def limit() -> float:
        """This run's timeout: --timeout, or what is left of --budget."""
        return min(args.timeout, deadline - time.time())

    def keep(r: dict[str, Any], name: str, ref: Optional[dict[str, Any]]) -> None:
        """Record one result at once (a call cut off at its limit still brings back what finished)."""
        r["case"] = name
        if ref is not None and r is not ref:
            r["vs"], r["vs_peak"] = ref.get("median_s"), ref.get("peak_alloc_gib")
        print(f"== {r['row']} -> {r.get('median_s', r.get('error'))}", flush=True)
        results.append(r)
        if out:
            with open(out / "peers.jsonl", "a") as fh:
                fh.write(json.dumps(r) + "\n")
            (out / "peers.md").write_text(table(results) + "\n")

    for name in args.cases:
        case = CASES[name]
        ref = None
        if not args.no_peer:
            if limit() < 60:
                keep({"row": f"{case.peer}:{name}", "error": "not run: --budget spent"}, name, None)
            else:
                peer = run_peer(name, case, args.dir, args.steps, args.warm, args.tiny, args.timeout, deadline)
                ref = peer if "error" not in peer else None
                keep(peer, name, ref)
                if out and "log" in peer and Path(peer["log"]).is_file():  # the peer's own output comes back too
                    shutil.copyfile(peer["log"], out / f"{name}.log")
        if not args.no_lorakit and not args.tiny:
            for row in (args.rows.split(",") if args.rows else case.rows):
                if limit() < 45:
                    keep({"row": row, "error": "not run: --budget spent"}, name, ref)
                    continue
                for r in run_lorakit((row,), args.steps, limit()):
                    keep(r, name, ref)
    print(table(results))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
