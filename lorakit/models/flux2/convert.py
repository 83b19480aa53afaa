"""FLUX.2 weight layouts: what a file is, which size it is, and BFL <-> diffusers conversion.

BFL single files (``flux2-klein-4b.safetensors`` ..., ComfyUI's ``diffusion_models/`` copies with or without the
``model.diffusion_model.`` prefix, bf16 or fp8) are converted with diffusers' own
``convert_flux2_transformer_checkpoint_to_diffusers`` (it splits the fused double-block qkv by thirds, so it works at
any width, tiny test models included). The inverse (:func:`diffusers_to_bfl`) writes the single files of the toy
model and is tested as the exact inverse of diffusers' function. The FLUX.2 autoencoder file is the LDM layout of
FLUX.1's plus ``encoder.quant_conv`` / ``decoder.post_quant_conv`` and the latent batch norm ``bn.*``.

Everything here works on a mapping name -> tensor *or* name -> shape (a safetensors header), so the size of a
50 GB file is known before a byte of it is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import torch

from lorakit.errors import ModelLoadError
from lorakit.models import common
from lorakit.models.common import strip_prefix, tensor_shape as _shape, wrong_file  # noqa: F401 (re-exported)

from . import configs

PREFIXES = common.DIT_PREFIXES        # full checkpoints and ComfyUI saves (common.strip_prefix drops them)
# one tensor that only a FLUX.2 transformer has, in each layout (diffusers' single-file detector uses the first)
BFL_MARK = "double_stream_modulation_img.lin.weight"
DIFFUSERS_MARK = "double_stream_modulation_img.linear.weight"


def layout(sd: Mapping[str, Any]) -> Optional[str]:
    """'bfl' / 'diffusers' for a FLUX.2 transformer state dict (prefix already stripped), else None."""
    if BFL_MARK in sd:
        return "bfl"
    if DIFFUSERS_MARK in sd:
        return "diffusers"
    return None


def what_is(sd: Mapping[str, Any]) -> str:
    """A short description of what a weights file holds (tensors or header entries), for the one-line refusal of a
    wrong file: lorakit's one detector (:func:`lorakit.models.registry.identify_header`)."""
    from lorakit.models.registry import identify_header
    return identify_header({k: {"shape": list(_shape(v))} for k, v in sd.items() if k != "__metadata__"}).what


@dataclass(frozen=True)
class Shape:
    """What the weights of a FLUX.2 transformer say about it."""

    size: str                  # "klein-4b" | "klein-9b" | "dev" | "custom" (any other width: tiny test models)
    hidden: int
    num_double: int
    num_single: int
    text_dim: int              # width of the prompt embedding (3 x the text encoder's hidden size)
    in_channels: int
    guidance: bool             # a guidance embedder (dev): the model takes the guidance value as an input
    head_dim: int

    @property
    def klein(self) -> bool:
        return self.size != "dev"


def _count(keys: Iterable[str], pattern: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def detect(sd: Mapping[str, Any], where: str = "transformer") -> Shape:
    """Size and facts of a FLUX.2 transformer from its tensors or header shapes (BFL or diffusers names).

    The size comes from the hidden width (3072 Klein 4B, 4096 Klein 9B, 6144 dev) and must agree with the block
    counts, the text width and the guidance embedder; a file that is not FLUX.2 is refused with what it is."""
    sd = strip_prefix(sd)
    kind = layout(sd)
    if kind is None:
        raise ModelLoadError(f"{where}: this is {what_is(sd)}, not a FLUX.2 transformer (Klein 4B/9B or dev)")
    if kind == "bfl":
        img_in, txt_in = "img_in.weight", "txt_in.weight"
        q_norm = "double_blocks.0.img_attn.norm.query_norm.scale"
        nd, ns = _count(sd, r"double_blocks\.(\d+)\."), _count(sd, r"single_blocks\.(\d+)\.")
        guidance = "guidance_in.in_layer.weight" in sd
    else:
        img_in, txt_in = "x_embedder.weight", "context_embedder.weight"
        q_norm = "transformer_blocks.0.attn.norm_q.weight"
        nd, ns = _count(sd, r"transformer_blocks\.(\d+)\."), _count(sd, r"single_transformer_blocks\.(\d+)\.")
        guidance = "time_guidance_embed.guidance_embedder.linear_1.weight" in sd
    try:
        hidden, in_ch = _shape(sd[img_in])
        text_dim = _shape(sd[txt_in])[1]
        head_dim = _shape(sd[q_norm])[0] if q_norm in sd else 128
    except KeyError as e:
        raise ModelLoadError(f"{where}: FLUX.2 transformer without tensor {e.args[0]!r}; truncated file?") from None
    size = configs.HIDDEN_TO_SIZE.get(hidden, "custom")
    if size != "custom":
        want = configs.SIZE_FACTS[size]
        got = (nd, ns, text_dim, guidance)
        if got != want:
            raise ModelLoadError(f"{where}: FLUX.2 transformer of width {hidden} ({size}) but with {nd} double / {ns} "
                                 f"single blocks, text width {text_dim}, guidance embedder {guidance}; expected "
                                 f"{want[0]} / {want[1]}, {want[2]}, {want[3]}: a pruned or merged file is not "
                                 "supported")
    return Shape(size, hidden, nd, ns, text_dim, in_ch, guidance, head_dim)


def transformer_config(shape: Shape, base: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """diffusers config for a detected shape: the shipped one of its size, widths and depths from the weights."""
    cfg = dict(configs.transformer_config(shape.size if shape.size != "custom" else "klein-4b"))
    cfg.update(base or {})
    rope = cfg.get("axes_dims_rope") or [32, 32, 32, 32]
    if sum(rope) != shape.head_dim:                       # tiny heads: four equal even axes
        part = 2 * max(1, shape.head_dim // 8)
        rope = [part] * 3 + [shape.head_dim - 3 * part]
    cfg.update({"in_channels": shape.in_channels, "num_layers": shape.num_double,
                "num_single_layers": shape.num_single, "attention_head_dim": shape.head_dim,
                "num_attention_heads": shape.hidden // shape.head_dim, "joint_attention_dim": shape.text_dim,
                "guidance_embeds": shape.guidance, "axes_dims_rope": list(rope)})
    return cfg


# ----------------------------------------------------------------------------------------------- transformer

def bfl_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL FLUX.2 transformer state dict -> diffusers names, through diffusers' own single-file converter."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    return convert_flux2_transformer_checkpoint_to_diffusers(strip_prefix(sd))


_GLOBAL_NAMES = {  # BFL -> diffusers, 1:1 Linears outside the blocks
    "img_in": "x_embedder", "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.linear": "proj_out",
}
DOUBLE_NAMES = {  # inside double block i: BFL -> diffusers (qkv are fused in BFL: three diffusers Linears)
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",), "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.linear_in",), "img_mlp.2": ("ff.linear_out",),
    "txt_mlp.0": ("ff_context.linear_in",), "txt_mlp.2": ("ff_context.linear_out",),
}
SINGLE_NAMES = {"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",)}
_NORMS_DOUBLE = {"img_attn.norm.query_norm.scale": "attn.norm_q.weight",
                 "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
                 "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
                 "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight"}
_NORMS_SINGLE = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def diffusers_to_bfl(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``Flux2Transformer2DModel`` state dict -> BFL names (qkv fused, final shift/scale swapped back)."""
    nd = _count(sd, r"transformer_blocks\.(\d+)\.")
    ns = _count(sd, r"single_transformer_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return sd[name]

    for bfl, dif in _GLOBAL_NAMES.items():
        if f"{dif}.weight" in sd:
            out[f"{bfl}.weight"] = take(f"{dif}.weight")
    out["final_layer.adaLN_modulation.1.weight"] = _swap_halves(take("norm_out.linear.weight"))
    for i in range(nd):
        t = f"transformer_blocks.{i}."
        for bfl, parts in DOUBLE_NAMES.items():
            out[f"double_blocks.{i}.{bfl}.weight"] = torch.cat([take(f"{t}{p}.weight") for p in parts], 0)
        for bfl, dif in _NORMS_DOUBLE.items():
            out[f"double_blocks.{i}.{bfl}"] = take(t + dif)
    for i in range(ns):
        t = f"single_transformer_blocks.{i}."
        for bfl, (dif,) in SINGLE_NAMES.items():
            out[f"single_blocks.{i}.{bfl}.weight"] = take(f"{t}{dif}.weight")
        for bfl, dif in _NORMS_SINGLE.items():
            out[f"single_blocks.{i}.{bfl}"] = take(t + dif)
    left = sorted(set(sd) - used)
    if left:
        raise ModelLoadError(f"FLUX.2 transformer: no BFL name for {left[0]!r} ({len(left)} tensors)")
    return {k: v.contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------- autoencoder

AE_PREFIXES = ("vae.", "first_stage_model.")


def ae_bfl_to_diffusers(sd: Mapping[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """BFL FLUX.2 ``ae.safetensors`` -> diffusers ``AutoencoderKLFlux2`` (diffusers' LDM VAE converter for the
    shared part; the quant convolutions and the latent batch norm moved by name)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    sd = dict(sd)
    for p in AE_PREFIXES:
        if any(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    extra = {}
    for k in list(sd):
        if k.startswith("encoder.quant_conv."):
            extra[k[len("encoder."):]] = sd.pop(k)
        elif k.startswith("decoder.post_quant_conv."):
            extra[k[len("decoder."):]] = sd.pop(k)
        elif k.startswith("bn."):
            extra[k] = sd.pop(k)
    out = convert_ldm_vae_checkpoint(sd, config)
    out.update(extra)
    return out


def ae_diffusers_to_bfl(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKLFlux2`` -> BFL ``ae.safetensors`` layout (the toy's single file)."""
    from lorakit.models.ldm_vae import ae_diffusers_to_bfl as ldm_layout  # the shared LDM part
    rest = {k: v for k, v in sd.items() if not k.startswith(("quant_conv.", "post_quant_conv.", "bn."))}
    out = ldm_layout(rest)
    for k, v in sd.items():
        if k.startswith("quant_conv."):
            out["encoder." + k] = v
        elif k.startswith("post_quant_conv."):
            out["decoder." + k] = v
        elif k.startswith("bn."):
            out[k] = v
    return out


def infer_ae_config(sd: Mapping[str, Any], base: Optional[dict[str, Any]] = None,
                    where: str = "FLUX.2 autoencoder") -> dict[str, Any]:
    """AutoencoderKLFlux2 config with widths, depth and latent channels read from BFL AE weights (``where``: how the
    errors name the file)."""
    cfg = dict(configs.ae_config())
    cfg.update(base or {})
    try:
        n = _count(sd, r"encoder\.down\.(\d+)\.")
        widths = [_shape(sd[f"encoder.down.{i}.block.0.conv1.weight"])[0] for i in range(n)]
        cfg["layers_per_block"] = _count(sd, r"encoder\.down\.0\.block\.(\d+)\.")
        cfg["latent_channels"] = _shape(sd["encoder.conv_out.weight"])[0] // 2
        groups = cfg.get("norm_num_groups", 32)
        if widths[0] % groups:
            groups = max(g for g in range(1, widths[0] + 1) if widths[0] % g == 0 and g <= 32)
    except KeyError as e:
        raise ModelLoadError(f"{where}: missing tensor {e.args[0]!r}; truncated file?") from None
    if "bn.running_mean" not in sd:
        raise ModelLoadError(f"{where}: no bn.running_mean; this looks like the FLUX.1 ae.safetensors "
                             "(16 channels); FLUX.2 needs its own ae.safetensors (32 channels, with batch norm)")
    cfg.update(block_out_channels=widths, down_block_types=["DownEncoderBlock2D"] * n,
               up_block_types=["UpDecoderBlock2D"] * n, norm_num_groups=groups)
    return cfg


# ----------------------------------------------------------------------------------------------- text encoders

WANTED_ENCODER = ("a Qwen3 / Mistral text encoder (FLUX.2 Klein 4B: Qwen3-4B, Klein 9B: Qwen3-8B, dev: Mistral Small "
                  "3.1)")


def text_encoder_state(sd: Mapping[str, torch.Tensor], where: str) -> tuple[str, dict[str, torch.Tensor]]:
    """('qwen3' | 'mistral', state dict in the names of transformers' bare decoder model (``layers.N...``)).

    Accepts HF causal-LM files (``model.layers``), bare ones (``layers``), and Mistral 3's multimodal names
    (``language_model.model.layers`` / ``model.language_model.layers``); the vision tower, the projector and
    ``lm_head`` (unused: only hidden states are taken) are dropped."""
    if any(k.endswith("layers.0.self_attn.q_proj.bias") for k in sd) and \
            not any(k.endswith("layers.0.self_attn.q_norm.weight") for k in sd):
        # a Qwen2 / Qwen2.5-VL encoder (biased q/k/v, no q/k norm: Qwen-Image's) would pass as a Mistral of wrong heads
        raise wrong_file("model.text_encoder", where, sd, WANTED_ENCODER)
    for p in ("model.language_model.", "language_model.model.", "model.", ""):
        if f"{p}layers.0.self_attn.q_proj.weight" in sd:
            out = {k[len(p):]: v for k, v in sd.items() if k.startswith(p) and k[len(p):].split(".")[0] in
                   ("embed_tokens", "layers", "norm")}
            kind = "qwen3" if "layers.0.self_attn.q_norm.weight" in out else "mistral"
            return kind, out
    raise wrong_file("model.text_encoder", where, sd, WANTED_ENCODER)
