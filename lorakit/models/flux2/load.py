"""Loading FLUX.2 offline: BFL single files, ComfyUI's split files, or a diffusers folder.

* ``model.checkpoint``: the transformer: a BFL single file (``flux2-klein-4b.safetensors`` ..., bf16 or fp8, with or
  without ComfyUI's ``model.diffusion_model.`` prefix), a diffusers-layout transformer file, or a diffusers folder
  (``transformer/``, ``text_encoder/``, ``vae/``, ``tokenizer/``, ``model_index.json``).
* ``model.text_encoder``: Qwen3-4B (Klein 4B), Qwen3-8B (Klein 9B) or Mistral Small 3.x (dev): one file
  (ComfyUI's ``text_encoders/qwen_3_4b.safetensors``), the first of split files (``...-00001-of-00002.safetensors``,
  all parts are read) or a folder of them.
* ``model.ae``: the FLUX.2 ``ae.safetensors`` (BFL layout, or a diffusers-layout VAE file).
* ``model.tokenizer_dir``: the Qwen3 / Mistral tokenizer folder (with a diffusers folder its ``tokenizer/``); Klein
  without either uses lorakit's shipped Qwen3 tokenizer, dev needs it.

Models are built on the meta device and the tensors assigned, so no random init of 4-32 B parameters happens and
tiny test files go through the same code. Only the transformer is read at once; the text encoder, the AE and the
tokenizer on first use (a run whose caches are complete never reads them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from lorakit.errors import ConfigError, ModelLoadError
from lorakit.models.common import encoder_width, folder_weights
from lorakit.models.common import LazyPart, LazyParts, component_files, folder_parts, local_checkpoint, shards, \
    qwen_tokenizer_for, tokenizer_folder, wrong_file

from . import configs
from .convert import (Shape, ae_bfl_to_diffusers, bfl_to_diffusers, detect, infer_ae_config, layout, strip_prefix,
                      text_encoder_state, transformer_config, what_is)


NEEDED_ENCODER = {"klein-4b": "Qwen3-4B", "klein-9b": "Qwen3-8B", "dev": "Mistral Small 3.1"}


def _needs(shape) -> tuple[str, str]:
    """(what the transformer is, which encoder it takes) for the text-encoder messages; a custom size (a toy or tiny
    model) is named by its widths (loadleft: was "this FLUX.2 custom transformer … use its own encoder")."""
    if shape.size in NEEDED_ENCODER:
        return f"this FLUX.2 {shape.size} transformer", NEEDED_ENCODER[shape.size]
    return (f"this FLUX.2 transformer of a custom size (width {shape.hidden}, not Klein 4B / 9B or dev)",
            f"a Qwen3 encoder of width {shape.text_dim // 3}, the one the model was made with")


def _upcast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from lorakit.models.weights import upcast  # fp8 (+ ComfyUI scale_weight) -> dtype; shared helper
    return upcast(sd, dtype)


def read_file(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    from lorakit.models.weights import load_safetensors  # the one weights reader (pickle only when allowed)
    return load_safetensors(path, allow_pickle)


def header_shapes(path: Path) -> dict[str, Any]:
    """name -> {"shape", "dtype"} of a safetensors file, from its header alone."""
    from lorakit.lora.io import read_safetensors_header
    header, _meta = read_safetensors_header(path)
    return header


# ----------------------------------------------------------------------------------------------- assembling

def _assign(model: nn.Module, sd: dict[str, torch.Tensor], where: str, dtype: torch.dtype) -> nn.Module:
    """Load ``sd`` into a meta-device ``model`` (assign), rebuild non-persistent buffers (rotary tables), freeze."""
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if unexpected:
        raise ModelLoadError(f"{where}: unexpected tensors such as {sorted(unexpected)[0]!r} ({len(unexpected)} in "
                             "all); is this the right file for this role?")
    missing = [k for k in missing if not k.endswith(("num_batches_tracked", "position_ids"))]
    if missing:
        raise ModelLoadError(f"{where}: missing tensors such as {sorted(missing)[0]!r} ({len(missing)} in all); "
                             "truncated or wrong file?")
    for name, mod in list(model.named_modules()):
        metas = [b for b, t in mod.named_buffers(recurse=False) if t is not None and t.is_meta]
        if not metas:
            continue
        if type(mod).__name__.endswith("RotaryEmbedding"):          # transformers' rotary tables: recompute
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], type(mod)(config=mod.config))
        elif metas == ["num_batches_tracked"]:
            mod.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            raise ModelLoadError(f"{where}: internal error, buffer {name}.{metas[0]} was not loaded")
    model.to(dtype)
    model.requires_grad_(False)
    return model.eval()


def build_transformer(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.checkpoint",
                      base: Optional[dict[str, Any]] = None) -> tuple[nn.Module, Shape]:
    """Flux2Transformer2DModel from a BFL or diffusers-layout state dict; widths and depths from the weights."""
    from diffusers import Flux2Transformer2DModel
    shape = detect(sd, where)
    sd = strip_prefix(sd)
    sd = _upcast(sd, dtype)
    if layout(sd) == "bfl":
        sd = bfl_to_diffusers(sd)
    cfg = transformer_config(shape, base)
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    return _assign(model, sd, where, dtype), shape


def build_text_encoder(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.text_encoder",
                       base: Optional[dict[str, Any]] = None) -> tuple[nn.Module, str]:
    """(Qwen3Model | MistralModel, kind) from a text-encoder state dict; widths and depth from the weights."""
    kind, sd = text_encoder_state(sd, where)
    emb = sd["embed_tokens.weight"]
    q = sd["layers.0.self_attn.q_proj.weight"]
    k = sd["layers.0.self_attn.k_proj.weight"]
    cfg = dict(base or (configs.qwen3_config() if kind == "qwen3" else configs.mistral_config()))
    head_dim = int(cfg.get("head_dim") or 128)
    if kind == "qwen3":
        head_dim = int(sd["layers.0.self_attn.q_norm.weight"].shape[0])
    cfg.update(vocab_size=int(emb.shape[0]), hidden_size=int(emb.shape[1]), head_dim=head_dim,
               num_attention_heads=int(q.shape[0]) // head_dim, num_key_value_heads=int(k.shape[0]) // head_dim,
               intermediate_size=int(sd["layers.0.mlp.gate_proj.weight"].shape[0]),
               num_hidden_layers=max(int(m.group(1)) for n in sd if (m := re.match(r"layers\.(\d+)\.", n))) + 1)
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    for tok_key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(cfg.get(tok_key), int) and cfg[tok_key] >= cfg["vocab_size"]:   # a small test vocabulary
            cfg[tok_key] = None
    if kind == "qwen3":
        from transformers import Qwen3Config as Config, Qwen3Model as Model
    else:
        from transformers import MistralConfig as Config, MistralModel as Model
    with torch.device("meta"):
        model = Model(Config(**cfg))
    if kind == "mistral" and cfg["num_hidden_layers"] == max(configs.MISTRAL_LAYERS):
        # an encoder cut after layer 29 (ComfyUI's dev encoder files: embedding + layers 0-29, no final norm): hidden
        # state 30 is then its last, which transformers passes through the final norm; in the 40-layer model (diffusers,
        # BFL) it is layer 29's raw output, so the norm goes
        sd = {k: v for k, v in sd.items() if k != "norm.weight"}
        model.norm = nn.Identity()
    return _assign(model, _upcast(sd, dtype), where, dtype), kind


def build_ae(sd: dict[str, torch.Tensor], dtype: torch.dtype, where: str = "model.ae",
             base: Optional[dict[str, Any]] = None) -> nn.Module:
    """AutoencoderKLFlux2 from a BFL ``ae.safetensors`` or a diffusers-layout VAE file."""
    from diffusers import AutoencoderKLFlux2
    if "encoder.conv_in.weight" not in sd:  # exact: an SDXL / SD3 file's bundled VAE (first_stage_model.) is not it
        raise wrong_file("model.ae", where, sd, "the FLUX.2 autoencoder (BFL's FLUX.2 ae.safetensors)")
    if any(k.startswith("encoder.down_blocks.") for k in sd):          # diffusers layout already
        from .convert import ae_diffusers_to_bfl
        sd = ae_diffusers_to_bfl(sd)
    cfg = infer_ae_config(sd, base, f"model.ae: {where}" if where != "model.ae" else where)
    dsd = ae_bfl_to_diffusers(_upcast(sd, dtype), cfg)
    with torch.device("meta"):
        model = AutoencoderKLFlux2(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    return _assign(model, dsd, where, dtype)


# ----------------------------------------------------------------------------------------------- components

@dataclass
class Flux2Components(LazyParts):
    """The loaded FLUX.2 parts. ``text_encoder``, ``ae`` and ``tokenizer`` are read on first access."""

    transformer: nn.Module
    shape: Shape
    variant: str                                      # "klein-4b" | "klein-base-4b" | ... | "dev" | "klein-custom"...
    distilled: bool                                   # step-distilled Klein (4 steps, no CFG) or dev
    how: str                                          # how base/distilled was decided (for the log)
    files: dict[str, Path] = field(default_factory=dict)
    _loaders: dict[str, Callable[[], Any]] = field(default_factory=dict)
    _parts: dict[str, Any] = field(default_factory=dict)

    text_encoder = LazyPart()
    ae = LazyPart()
    tokenizer = LazyPart("model.tokenizer_dir")


def variant_name(shape: Shape, distilled: bool) -> str:
    if shape.size == "dev":
        return "dev"
    size = shape.size.split("-")[-1] if shape.size != "custom" else "custom"
    return f"klein-{size}" if distilled else f"klein-base-{size}"


def resolve_distilled(shape: Shape, wanted: str, index_flag: Optional[bool], name: str) -> tuple[bool, str]:
    """Base or distilled. The two Klein releases have identical tensors (names, shapes), so the weights cannot tell;
    in order: ``model.variant`` (base / distilled), a diffusers folder's ``model_index.json`` ``is_distilled``, BFL's
    file names (``flux2-klein-base-*`` are the base models), else distilled (BFL's other Klein names)."""
    if shape.size == "dev":
        if wanted in ("base", "distilled"):
            raise ConfigError(f"model.variant: {wanted!r} is for Klein; this is FLUX.2 dev (guidance-distilled, one "
                              "release); use 'auto'")
        return True, "dev (guidance embedder in the weights)"
    if wanted in ("base", "distilled"):
        if index_flag is not None and index_flag != (wanted == "distilled"):
            raise ConfigError(f"model.variant: {wanted!r}, but model_index.json says is_distilled = {index_flag}")
        return wanted == "distilled", "model.variant"
    if wanted == "dev":  # a FLUX.2 name, but the weights decide the size
        raise ConfigError(f"model.variant: 'dev', but {name} holds FLUX.2 Klein weights ({shape.size}, width "
                          f"{shape.hidden}; dev has 6144); use auto, base or distilled, or give the FLUX.2 dev file")
    if wanted not in ("auto", "", None):
        raise ConfigError(f"model.variant: {wanted!r} is not a FLUX.2 choice; use auto, base or distilled")
    if index_flag is not None:
        return index_flag, "model_index.json is_distilled"
    if "base" in name.lower():
        return False, f"file name {name!r} (base and distilled Klein weights look alike; set model.variant to be sure)"
    return True, (f"file name {name!r} has no 'base' (base and distilled Klein weights look alike; set "
                  "model.variant = 'base' if this is a base model)")


def _tokenizer_loader(model_cfg: Any, folder: Optional[Path], kind: Callable[[], str],
                      log: Callable[[str], None]) -> Callable[[], Any]:
    def load() -> Any:
        if kind() == "qwen3":  # Klein: model.tokenizer_dir, else the folder's tokenizer/, else lorakit's shipped one
            return qwen_tokenizer_for(model_cfg, folder, "qwen3", "FLUX.2 Klein", log)
        where = tokenizer_folder(model_cfg, folder, DEV_TOKENIZER_MISSING, DEV_TOKENIZER_FILES)
        from transformers import AutoProcessor
        try:
            tok = AutoProcessor.from_pretrained(str(where))
        except (OSError, ValueError):
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(where))
        if getattr(tok, "tokenizer", tok).pad_token is None:  # dev pads every prompt to its full length
            raise ConfigError(f"model.tokenizer_dir: the tokenizer in {where} has no pad token; FLUX.2 dev pads each "
                              "prompt to its full length: use the tokenizer/ folder of black-forest-labs/FLUX.2-dev")
        log(describe_dev_tokenizer(tok, where))
        return tok
    return load


# FLUX.2 dev's tokenizer is not shipped (docs/tokenizers.md says what could not be established offline); the folder
# diffusers' Flux2Pipeline loads is the FLUX.2-dev repository's tokenizer/ (a PixtralProcessor).
DEV_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tekken.json", "vocab.json")
DEV_TOKENIZER_MISSING = ("model.tokenizer_dir: FLUX.2 dev needs the Mistral tokenizer folder its pipeline loads, which "
                         "lorakit does not ship: download it once (huggingface-cli download black-forest-labs/FLUX.2-dev "
                         "--include 'tokenizer/*' --local-dir DIR) and set model.tokenizer_dir = 'DIR/tokenizer'")


def describe_dev_tokenizer(tok: Any, where: Path) -> str:
    """One log line saying what dev's prompts will be tokenized with: the padded positions are part of the prompt
    embedding, so the pad token and the padding side matter as much as the vocabulary."""
    inner = getattr(tok, "tokenizer", tok)  # a processor wraps the tokenizer
    kind = type(tok).__name__ if inner is tok else f"{type(tok).__name__} ({type(inner).__name__})"
    return (f"FLUX.2 dev: tokenizer from {where}: {kind}, prompts padded with {inner.pad_token!r} "
            f"(id {inner.pad_token_id}) on the {inner.padding_side}")


def load_components(model_cfg: Any, dtype: torch.dtype = torch.bfloat16,
                    log: Callable[[str], None] = print) -> Flux2Components:
    """Read the transformer now (any source), the rest on first use; variant decided and checked."""
    src = local_checkpoint(model_cfg, "flux2-klein-base-4b.safetensors", "FLUX.2")
    allow = bool(getattr(model_cfg, "allow_pickle", False))
    cdir = getattr(model_cfg, "config_dir", None)
    ae_dtype = torch.float32 if dtype == torch.float16 else dtype
    files: dict[str, Path] = {"checkpoint": src}
    index_flag: Optional[bool] = None
    te_src: Optional[Path] = None
    ae_src: Optional[Path] = None
    tok_folder: Optional[Path] = None
    if src.is_dir():
        if not (src / "transformer").is_dir():
            raise ConfigError(f"model.checkpoint: folder {src} is not a diffusers FLUX.2 model (no transformer/)")
        from lorakit.models.weights import check_weights_folder

        check_weights_folder(src, allow)  # .safetensors only unless allowed, for folders too
        index = src / "model_index.json"
        if index.is_file():
            data = json.loads(index.read_text(encoding="utf-8"))
            if data.get("_class_name") not in (None, "Flux2KleinPipeline", "Flux2Pipeline"):
                raise ConfigError(f"model.checkpoint: {src} is a {data.get('_class_name')} folder, not FLUX.2")
            if "is_distilled" in data:
                index_flag = bool(data["is_distilled"])
        tsd: dict[str, torch.Tensor] = {}
        for p in folder_weights(src / "transformer", "model.checkpoint"):
            tsd.update(read_file(p, allow))
        if not tsd:
            raise ConfigError(f"model.checkpoint: {src / 'transformer'} holds no .safetensors weights")
        te_src, ae_src, tok_folder = folder_parts(src, "text_encoder", "vae", "tokenizer")
        cdir = cdir or str(src)
    else:
        tsd = read_file(src, allow)
    te_src, ae_src = component_files(
        model_cfg, "FLUX.2", text_encoder=(te_src, "Klein 4B: Qwen3-4B, e.g. ComfyUI's text_encoders/qwen_3_4b"
                                           ".safetensors; Klein 9B: Qwen3-8B; dev: Mistral Small 3.1, the first of its "
                                           "split files"), ae=(ae_src, "the FLUX.2 ae.safetensors"))
    transformer, shape = build_transformer(tsd, dtype, "model.checkpoint", configs.read_config(cdir, "transformer"))
    del tsd
    distilled, how = resolve_distilled(shape, getattr(model_cfg, "variant", "auto") or "auto", index_flag, src.name)
    te_parts = shards(te_src, "model.text_encoder")
    width, qwen3 = encoder_width(te_parts)  # now, from the header: not after reading 16 GB at the first caption
    if width is not None and 3 * width != shape.text_dim:
        raise ModelLoadError(f"model.text_encoder: {te_src} is a {'qwen3' if qwen3 else 'mistral'} encoder of width "
                             f"{width} (prompt width {3 * width}); {_needs(shape)[0]} takes "
                             f"{shape.text_dim}: use {_needs(shape)[1]}")
    files.update(text_encoder=te_src, ae=ae_src)
    ae_file = ae_src if ae_src.is_file() else next(iter(folder_weights(ae_src, "model.ae")), ae_src)
    kind_box: dict[str, str] = {}

    def te() -> nn.Module:
        sd: dict[str, torch.Tensor] = {}
        for p in te_parts:
            sd.update(read_file(p, allow))
        model, kind = build_text_encoder(sd, dtype, str(te_src), configs.read_config(cdir, "text_encoder"))
        kind_box["kind"] = kind
        want = "mistral" if shape.size == "dev" else "qwen3"
        if kind != want or 3 * model.config.hidden_size != shape.text_dim:
            what, need = _needs(shape)
            raise ModelLoadError(f"model.text_encoder: {te_src} is a {kind} encoder of width {model.config.hidden_size}"
                                 f" (prompt width {3 * model.config.hidden_size}); {what} "
                                 f"takes {shape.text_dim}: use {need}")
        layers = configs.MISTRAL_LAYERS if kind == "mistral" else configs.QWEN3_LAYERS
        if max(layers) > int(model.config.num_hidden_layers):  # before any encoding, naming the file
            raise ModelLoadError(f"model.text_encoder: {te_src} has {model.config.num_hidden_layers} layers; FLUX.2 "
                                 f"takes its hidden states {layers}: use {_needs(shape)[1]}")
        return model

    def kind() -> str:
        return "mistral" if shape.size == "dev" else "qwen3"

    loaders = {"text_encoder": te,
               "ae": lambda: build_ae(read_file(ae_file, allow), ae_dtype, str(ae_file),
                                      configs.read_config(cdir, "vae")),
               "tokenizer": _tokenizer_loader(model_cfg, tok_folder, kind, log)}
    comps = Flux2Components(transformer, shape, variant_name(shape, distilled), distilled, how, files, loaders)
    log(f"FLUX.2 {comps.variant} ({shape.num_double} double / {shape.num_single} single blocks, width {shape.hidden}); "
        f"{'distilled' if distilled else 'base'} from {how}")
    return comps


# ----------------------------------------------------------------------------------------------- tiny fixture

def write_tiny_checkpoint(directory: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16
                          ) -> dict[str, Path]:
    """Tiny FLUX.2 (Klein layout) files as a ComfyUI user keeps them, plus a config folder; roles: checkpoint,
    text_encoder, ae, tokenizer, config (model.checkpoint / text_encoder / ae / tokenizer_dir / config_dir)."""
    from .tiny import TINY_TRANSFORMER, save_files, tiny_models
    root = Path(directory)
    files = save_files(root, tiny_models(seed), dtype)
    cfg_dir = root / "config"
    (cfg_dir / "transformer").mkdir(parents=True, exist_ok=True)
    (cfg_dir / "transformer" / "config.json").write_text(json.dumps(
        {**configs.transformer_config("klein-4b"), **TINY_TRANSFORMER}, indent=2), encoding="utf-8")
    return {**files, "config": cfg_dir}
