"""Helpers that family packages share; no family knowledge lives here.

* :class:`LazyPart`: a component attribute read by its loader on first access (text encoders, autoencoders and
  tokenizers that a cached run never needs); :class:`LazyParts`: their holder's ``loaded(name)``.
* :func:`block_indices` / :func:`chosen_blocks` / :func:`module_ranks`: ``network.train_blocks``, the block index
  lists and ``network.module_ranks`` for transformers built of two-stream ("double") and single-stream blocks.
* :func:`local_checkpoint` / :func:`shards` / :func:`need_file` / :func:`folder_parts` / :func:`component_files`: the
  weights files a ``model.*`` key names (split files, folders, required roles, a diffusers folder's components);
  :func:`tokenizer_folder`: where a family's tokenizer is read from.
* :func:`strip_prefix` / :func:`count_blocks` / :func:`tensor_shape` / :func:`layout` / :func:`what_else` /
  :func:`what_component`: reading a transformer's weights (ComfyUI's prefixes, block counts, header shapes, which
  layout, what a wrong file is);
  :func:`read_config`: a diffusers folder's component config.
* :func:`cache_root`: lorakit's cache folder (the one cache-location rule; shipped config folders are written there).
* :func:`flow_scheduler`: diffusers' flow-matching scheduler from a family's config.
* :func:`flow_metadata`: the ss_* keys of the flow-matching timestep settings.
* :func:`linear_widths`: output width of every Linear of a (LoRA-injected) model, for fusing exports.
* :func:`deferred_placement`: whether the memory settings leave the denoiser on the CPU after loading (the loop
  places it block by block).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from lorakit.errors import ConfigError
from lorakit.safetensors_header import is_safetensors

__all__ = ["cache_root", "LazyPart", "LazyParts", "block_indices", "chosen_blocks", "module_ranks",
           "deferred_placement",
           "local_checkpoint", "shards", "need_file", "folder_parts", "component_files", "tokenizer_folder",
           "strip_prefix", "count_blocks", "tensor_shape", "layout", "what_else", "what_component", "read_config",
           "flow_scheduler", "flow_metadata", "linear_widths", "ComponentsAdapter"]


class LazyPart:
    """A descriptor: ``obj.<name>`` calls ``obj._loaders[name]()`` once and keeps the result in ``obj._parts``; a
    ModelLoadError of the read (a truncated file) names the ``[model]`` key, ``key`` or ``model.<name>``."""

    def __init__(self, key: Optional[str] = None) -> None:
        self.key = key

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        if self.name not in obj._parts:
            with keyed(self.key or f"model.{self.name}"):
                obj._parts[self.name] = obj._loaders[self.name]()
        return obj._parts[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj._parts[self.name] = value


@contextlib.contextmanager
def keyed(key: str) -> Iterator[None]:
    """A ModelLoadError raised inside that names no ``model.`` key (the readers know the file, not the setting) is
    raised again with ``key`` in front, so the line says which setting to change."""
    from lorakit.errors import ModelLoadError
    try:
        yield
    except ModelLoadError as exc:
        if str(exc).startswith("model."):
            raise
        raise ModelLoadError(f"{key}: {exc}") from None


class LazyParts:
    """Base of a components holder whose :class:`LazyPart` attributes are read on first access."""

    _parts: dict[str, Any]

    def loaded(self, name: str) -> bool:
        """Whether a part is in memory (never reads it)."""
        return name in self._parts


def block_indices(value: Any, count: int, key: str) -> list[int]:
    """'0,2-5' / [0, 2] / None (all) / 'all' / 'none' -> sorted block indices, checked against ``count``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return list(range(count))
    if isinstance(value, str) and value.strip().lower() == "none":
        return []
    items: list[int] = []
    parts: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    for part in parts:
        s = str(part).strip()
        try:
            if "-" in s:
                a, b = (int(x) for x in s.split("-", 1))
                items.extend(range(a, b + 1))
            else:
                items.append(int(s))
        except ValueError:
            raise ConfigError(f"{key}: cannot read {s!r}; use indices like '0,2-5'") from None
    bad = [i for i in items if not 0 <= i < count]
    if bad:
        raise ConfigError(f"{key}: index {bad[0]} out of range; this model has {count} blocks (0-{count - 1})")
    return sorted(set(items))


def chosen_blocks(network: Any, num_double: int, num_single: int) -> set[str]:
    """Name prefixes (``double_blocks.I.`` / ``single_blocks.I.``) of the blocks that ``network.train_blocks`` and
    ``network.double_block_indices`` / ``single_block_indices`` select."""
    blocks = getattr(network, "train_blocks", "all") or "all"
    if blocks not in ("all", "double", "single"):
        raise ConfigError(f"network.train_blocks: {blocks!r}; use all, double or single")
    doubles = block_indices(getattr(network, "double_block_indices", None), num_double,
                            "network.double_block_indices") if blocks in ("all", "double") else []
    singles = block_indices(getattr(network, "single_block_indices", None), num_single,
                            "network.single_block_indices") if blocks in ("all", "single") else []
    return {f"double_blocks.{i}." for i in doubles} | {f"single_blocks.{i}." for i in singles}


def module_ranks(network: Any, types: Iterable[str], model: str) -> dict[str, int]:
    """``network.module_ranks`` checked against the family's module ``types`` (``model`` names it in the error)."""
    types = tuple(types)
    ranks = dict(getattr(network, "module_ranks", None) or {})
    unknown = sorted(set(ranks) - set(types))
    if unknown:
        raise ConfigError(f"network.module_ranks: {unknown[0]!r} is not a {model} module type; use "
                          f"{', '.join(types)}")
    for k, v in ranks.items():
        if not isinstance(v, int) or v < 0:
            raise ConfigError(f"network.module_ranks.{k}: must be an integer >= 0 (0 skips), got {v!r}")
    return ranks


def deferred_placement(memory: Any, *family_keys: str) -> bool:
    """Whether the denoiser stays on the CPU after load(): block swap, fp8 storage or a VRAM budget (the loop
    then places it block by block), or any of the family's own ``memory`` keys in ``family_keys``."""
    if memory is None:
        return False
    keys = ("blocks_to_swap", "fp8_base", "vram_gb") + family_keys
    return any(bool(getattr(memory, k, None)) for k in keys)


def shards(path: Path, key: str) -> list[Path]:
    """A file, the parts of a split file named by its first part (``x-00001-of-00003.safetensors``), or the
    .safetensors files of a folder; ``key`` (``model.text_encoder``) names the setting in the errors."""
    if path.is_dir():
        parts = folder_weights(path, key)
        if not parts:
            raise ConfigError(f"{key}: folder {path} holds no .safetensors file")
        if not any(path.glob("*.safetensors.index.json")):
            _one_model(parts, path, key)
        return parts
    m = re.match(r"(.*)-(\d+)-of-(\d+)\.safetensors$", path.name)
    if not m:
        return [path]
    width = len(m.group(2))
    parts = [path.with_name(f"{m.group(1)}-{i:0{width}d}-of-{m.group(3)}.safetensors")
             for i in range(1, int(m.group(3)) + 1)]
    absent = [p for p in parts if not p.is_file()]
    if absent:
        raise ConfigError(f"{key}: part {absent[0].name} of the split file is missing next to {path.name}")
    return parts


def _one_model(parts: list[Path], folder: Path, key: str) -> None:
    """The .safetensors files of a folder without an index json are read as the shards of one model: a file that is
    not one of them (a tensor another file holds too, names under other roots, other dtypes) is named (loadleft: the
    error named the folder, after the files were read as one model)."""
    if len(parts) < 2:
        return
    from lorakit.errors import LorakitError
    from lorakit.safetensors_header import read_safetensors_header

    heads: dict[Path, dict[str, str]] = {}
    for p in parts:
        try:
            heads[p] = {k: str(v["dtype"]) for k, v in read_safetensors_header(p)[0].items()}
        except LorakitError:
            return  # the reader that follows names the damaged file
    seen: dict[str, Path] = {}
    for p in parts:
        for k in heads[p]:
            if k in seen:
                raise ConfigError(f"{key}: {p} holds tensor {k!r}, which {seen[k].name} in the same folder holds too: "
                                  "two models (or two copies of one), not the shards of one; keep one model's files "
                                  f"in {folder} (or set {key} to the file itself)")
            seen[k] = p
    groups = {(m.group(1), m.group(2)) if (m := re.match(r"(.*)-\d+-of-(\d+)\.safetensors$", p.name)) else None
              for p in parts}
    if len(groups) == 1 and None not in groups and int(next(iter(groups))[1]) == len(parts):
        return  # the complete parts of one split file (x-0000N-of-0000M): a part may hold other names (lm_head only)
    floats = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")

    def odd(facts: dict[Path, set[str]]) -> list[Path]:
        return [p for p in parts if facts[p] and not facts[p] & set().union(*(facts[q] for q in parts if q != p))]

    for what, facts in (("names under", {p: {k.split(".")[0] for k in h} for p, h in heads.items()}),
                        ("dtype", {p: {d for d in h.values() if d in floats} for p, h in heads.items()})):
        bad = odd(facts)
        if bad and len(bad) == len(parts):  # no two agree (two files): each one named with its own
            each = "; ".join(f"{p.name}: {what} {', '.join(sorted(facts[p])[:4])}" for p in parts[:4]) + (
                f"; … {len(parts) - 4} more" if len(parts) > 4 else "")
            raise ConfigError(f"{key}: the files of {folder} are not the shards of one model ({each}); keep one "
                              f"model's files in the folder (or set {key} to the file itself)")
        if bad:
            rest = sorted(set().union(*(facts[q] for q in parts if q != bad[0])))
            raise ConfigError(f"{key}: {bad[0]} is not a shard of the model the other files of {folder} make (its "
                              f"{what} {', '.join(sorted(facts[bad[0]])[:6])}; theirs: {', '.join(rest[:6])}); keep one "
                              f"model's files in the folder (or set {key} to the file itself)")


def folder_weights(folder: Path, key: str) -> list[Path]:
    """The .safetensors files of one diffusers component folder (``transformer/``, ``text_encoder/``...) that make
    its weights: the shards its ``*.safetensors.index.json`` lists (one missing is a ConfigError naming it, not a
    "truncated?" guess after the others were read), else its files without a variant (``x.fp16.safetensors`` beside
    ``x.safetensors`` is the same weights again, not more of them), else all its files."""
    import json

    indexes = sorted(folder.glob("*.safetensors.index.json"), key=lambda p: (p.name.count("."), p.name))
    if indexes:
        index = indexes[0]  # the plain one before a variant's (x.safetensors.index.json before x.fp16....)
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = list(dict.fromkeys(str(v) for v in weight_map.values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{key}: {index} is damaged ({type(e).__name__}: {e}); download it again") from None
        parts = [folder / n for n in names]
        absent = [p for p in parts if not p.is_file()]
        if absent:
            raise ConfigError(f"{key}: {absent[0]} is missing ({len(absent)} of the {len(parts)} files {index.name} "
                              "lists are not there; an interrupted download?); download the folder again")
        return parts
    files = sorted(folder.glob("*.safetensors"))
    plain = [p for p in files if "." not in p.name[: -len(".safetensors")]]
    return plain or files


def local_checkpoint(model_cfg: Any, example: str, model: str) -> Path:
    """``model.checkpoint`` as an existing local path (a single file or a diffusers folder; ``example``: a file name
    to give, ``model``: the family's name in the message)."""
    if not getattr(model_cfg, "checkpoint", None):
        raise ConfigError(f"model.checkpoint: required ({example}, a diffusers folder, ...)")
    src = Path(model_cfg.checkpoint).expanduser()
    if not src.exists():
        raise ConfigError(f"model.checkpoint: {src} not found ({model} loads local files only)")
    if src.is_dir() and getattr(model_cfg, "family", None):  # another family's diffusers folder: name the family
        from lorakit.models.registry import require_base_folder

        require_base_folder(src, model_cfg.family)
    if src.is_file() and shards(src, "model.checkpoint") == [src]:
        with keyed("model.checkpoint"):  # a truncated file too
            refuse_unreadable(src, bool(getattr(model_cfg, "allow_pickle", False)))
            _refuse_other_family(model_cfg)  # another family's file, an encoder, a LoRA: the file, what it is, what to set
    return src


def refuse_unreadable(path: Path, allow_pickle: bool = True) -> None:
    """One ModelLoadError line for a file that is neither safetensors nor a pickle by its content (a GGUF, an empty
    or damaged file, whatever its name), or a pickle when ``allow_pickle`` is off; safetensors files pass (their
    readers check them)."""
    from lorakit.safetensors_header import read_safetensors_header, weights_format
    kind = weights_format(path)
    if kind == "pickle" and not allow_pickle:
        from lorakit.errors import ModelLoadError
        raise ModelLoadError(f"{path}: a pickle file, which can run code when loaded; only .safetensors files are "
                             "loaded: convert it, or set model.allow_pickle = true if you trust it")
    if kind not in ("safetensors", "pickle"):
        read_safetensors_header(path)  # raises the line saying what it is (GGUF, too short, ...)


def encoder_width(parts: Iterable[Path]) -> tuple[Optional[int], bool]:
    """(the width of a language-model text encoder, from its ``embed_tokens.weight`` in the headers of its files;
    whether it has Qwen3's ``q_norm``), read before any tensor: None when no file names the embedding (the loader
    then says what the file is)."""
    from lorakit.safetensors_header import read_safetensors_header
    width, qnorm = None, False
    for p in parts:
        if not is_safetensors(p):
            return None, False
        header, _ = read_safetensors_header(p)
        for k, v in header.items():
            if k.endswith("embed_tokens.weight") and len(v["shape"]) == 2 and width is None:
                width = int(v["shape"][1])
            qnorm = qnorm or "q_norm" in k
    return width, qnorm


def what_file(sd: Mapping[str, Any]) -> str:
    """What a weights file holds (its tensors or header entries, as read), for the one-line refusal of a wrong file:
    lorakit's one detector (:func:`lorakit.models.registry.identify_header`), never a family's own guess."""
    from lorakit.models.registry import identify_header
    return identify_header({k: {"shape": list(tensor_shape(v))} for k, v in sd.items() if k != "__metadata__"}).what


def wrong_file(key: str, where: str, sd: Mapping[str, Any], wanted: str) -> Exception:
    """The ModelLoadError for a file of another kind given as ``key`` (``model.text_encoder``): the key, the file
    (``where``), what it is and what to give there (``wanted``)."""
    from lorakit.errors import ModelLoadError
    head = key if not where or where == key else f"{key}: {where}"
    return ModelLoadError(f"{head}: this is {what_file(sd)}, not {wanted}")


def not_a_vae_of(path: Any, channels: int) -> str:
    """What the safetensors file ``path`` is when it is not a VAE of ``channels`` latent channels (its encoder's
    conv_out has 2 × channels rows, mean and log-variance), read from the header; "" when it is one."""
    from lorakit.models.registry import identify_header
    from lorakit.safetensors_header import read_safetensors_header

    header, _ = read_safetensors_header(path)
    out = [v["shape"] for k, v in header.items() if re.search(r"(^|\.)encoder\.conv_out\.weight$", k)]
    if out and int(out[0][0]) == 2 * channels:
        return ""
    what = identify_header(header, str(path)).what
    return f"{what} of {int(out[0][0]) // 2} latent channels" if out else what


def refuse_checkpoint_as(key: str, path: Any, families: tuple[str, ...], wanted: str) -> None:
    """``model.vae`` / ``model.ae`` naming a base model of a family not in ``families`` (an SD3.5 or SDXL checkpoint
    whose bundled VAE is another model's): one ModelLoadError line; other files pass (the loader checks them)."""
    from lorakit.errors import ModelLoadError
    from lorakit.models.registry import identify
    p = Path(path)
    if not is_safetensors(p):
        return
    kind = identify(p)
    if kind.family is not None and kind.family not in families:
        raise ModelLoadError(f"{key}: {p} is {kind.what}, not {wanted}")


def need_file(model_cfg: Any, role: str, what: str, model: str) -> Path:
    """``model.<role>``, required beside a single-file checkpoint of ``model`` (``what``: which file to give)."""
    value = getattr(model_cfg, role, None)
    if not value:
        raise ConfigError(f"model.{role}: required with a {model} single-file checkpoint ({what})")
    p = Path(value).expanduser()
    if not p.exists():
        raise ConfigError(f"model.{role}: not found: {p}")
    return p


# ComfyUI's and the original repositories' single files wrap a transformer's tensors in one of these prefixes
DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def strip_prefix(sd: Mapping[str, Any], prefixes: tuple[str, ...] = DIT_PREFIXES) -> dict[str, Any]:
    """The tensors (or header entries) under the first of ``prefixes`` any key has, prefix removed; else all."""
    for p in prefixes:
        if any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return dict(sd)


def count_blocks(keys: Iterable[str], prefix: str) -> int:
    """How many numbered blocks ``<prefix><i>.`` the keys name (highest index + 1)."""
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def tensor_shape(v: Any) -> tuple[int, ...]:
    """The shape of a tensor, of a header entry ({"shape": [...]}) or a shape itself."""
    if isinstance(v, Mapping):
        return tuple(v["shape"])
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def layout(sd: Mapping[str, Any], original_mark: str, diffusers_mark: str) -> str:
    """"original" / "diffusers" / "unknown": which of the two marks (tensor names) a stripped state dict holds."""
    if original_mark in sd:
        return "original"
    if diffusers_mark in sd:
        return "diffusers"
    return "unknown"


def what_transformer(ks: set[str], own: str) -> str:
    """Which other diffusion transformer lorakit trains a weights file holds (its stripped key names), "" for none:
    the shared middle of the families' ``what_is`` (``own``: the asking family, whose rules are its own)."""
    starts = lambda *ps: any(k.startswith(ps) for k in ks)  # noqa: E731
    rules = (("flux2", "a FLUX.2 transformer", lambda: "double_stream_modulation_img.lin.weight" in ks
              or "double_stream_modulation_img.linear.weight" in ks),
             ("flux1", "a FLUX.1 transformer", lambda: starts("double_blocks.", "single_transformer_blocks.")),
             ("zimage", "a Z-Image transformer", lambda: "layers.0.adaLN_modulation.0.weight" in ks
              or "layers.0.attention.qkv.weight" in ks),
             ("qwenimage", "a Qwen-Image transformer",
              lambda: "txt_norm.weight" in ks and starts("transformer_blocks.")),
             ("sd3", "an SD3 transformer", lambda: starts("joint_blocks.")))
    return next((what for family, what, test in rules if family != own and test()), "")


def refuse_unused_negative(sample: Any, label: str) -> None:
    """``sample.negative_prompt`` where the loaded variant samples without CFG (it would never be read)."""
    if str(getattr(sample, "negative_prompt", "") or "").strip():
        raise ConfigError(f"sample.negative_prompt: {label} samples without CFG, so a negative prompt is never used; "
                          "remove it")


def refuse_text_encoder_lora(network: Any, name: str) -> None:
    """A family that trains its transformer only refuses ``network.train_text_encoder`` (``name``: how the message
    names the family)."""
    if getattr(network, "train_text_encoder", False):
        raise ConfigError(f"network.train_text_encoder: text-encoder LoRA is not offered for {name}; set it to false")


def refuse_flux1_variant(model: Any, takes: str) -> None:
    """``model.variant`` dev / schnell (FLUX.1's) refused by another family; ``takes``: what it takes instead."""
    if getattr(model, "variant", "auto") in ("dev", "schnell"):
        raise ConfigError(f"model.variant: {model.variant!r} is a FLUX.1 choice; {takes}")


def what_else(ks: set[str]) -> str:
    """What a weights file holds (its stripped key names) that is no diffusion transformer: the end of a family's
    ``what_is`` for the one-line refusal of a wrong file."""
    starts = lambda *ps: any(k.startswith(ps) for k in ks)  # noqa: E731
    if starts("conditioner.embedders.", "input_blocks.", "model.diffusion_model.input_blocks.", "down_blocks.",
              "cond_stage_model."):
        return "an SD / SDXL U-Net checkpoint"
    if starts("model.layers.", "layers.") and any("self_attn" in k for k in ks):
        return "a Qwen3 text encoder" if any("q_norm" in k for k in ks) else "a Llama-type text encoder"
    return what_component(ks)


def what_component(ks: set[str]) -> str:
    """The last rules of :func:`what_else`: a T5 or CLIP text encoder, an autoencoder, else not recognised."""
    starts = lambda *ps: any(k.startswith(ps) for k in ks)  # noqa: E731
    if starts("encoder.block.", "shared."):
        return "a T5 text encoder"
    if starts("text_model.", "embeddings.token_embedding."):
        return "a CLIP text encoder"
    if starts("encoder.conv_in.", "decoder.conv_in.", "first_stage_model."):
        return "an autoencoder"
    return "not a recognised model file"


def read_config(config_dir: Any, sub: str, name: str = "config.json") -> Optional[dict[str, Any]]:
    """The JSON config of one component (``transformer``/``text_encoder``/``vae``...) of a diffusers folder, or
    None where the folder has none for it. A ``config_dir`` that is no folder, or a folder holding no component
    config at all (not a diffusers config folder), and a config.json that is not a JSON object are one ConfigError
    line naming ``model.config_dir`` (before: silently replaced by the shipped configs, or a traceback)."""
    import json

    if config_dir is None:
        return None
    folder = Path(config_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"model.config_dir: {folder} {'is a file' if folder.exists() else 'does not exist'}; give the "
                          "model's diffusers config folder (the one holding transformer/config.json, vae/config.json, "
                          "...), or leave model.config_dir out to use lorakit's shipped configs")
    path = folder / sub / name
    if not path.is_file():
        if not (folder / "model_index.json").is_file() and not any(folder.glob("*/config.json")) \
                and not any(folder.glob("*/*.safetensors")):  # (a checkpoint folder as its own config folder passes)
            raise ConfigError(f"model.config_dir: {folder} holds no component config (no model_index.json, no "
                              "*/config.json): not a diffusers config folder; give the model's config folder, or "
                              "leave model.config_dir out to use lorakit's shipped configs")
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"model.config_dir: {path} cannot be read as JSON ({e}); restore the file from the "
                          "model's repository") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model.config_dir: {path} is not a JSON object; restore the file from the model's "
                          "repository")
    return data


def folder_parts(src: Path, *subs: str) -> list[Optional[Path]]:
    """The component folders ``subs`` of a diffusers folder, each None where the folder has no such component."""
    return [src / s if (src / s).is_dir() else None for s in subs]


def component_files(model_cfg: Any, model: str, **roles: tuple[Optional[Path], str]) -> list[Path]:
    """Each role's source, in order: ``model.<role>`` when set (it must exist), else what the checkpoint's folder
    holds; a role with neither is refused in one line naming what to give. ``roles``: role = (the folder's
    component or None, what to give); ``model`` names the family in the messages."""
    found = {role: (need_file(model_cfg, role, "", model) if getattr(model_cfg, role, None) else part)
             for role, (part, _what) in roles.items()}
    for role, (_part, what) in roles.items():
        if found[role] is None:
            _refuse_other_family(model_cfg)  # an SDXL file under family = "zimage": say so, not "give a text encoder"
            need_file(model_cfg, role, what, model)
    return list(found.values())


def _refuse_other_family(model_cfg: Any) -> None:
    """One line naming what ``model.checkpoint`` is when another family (or a LoRA) is recognised in it."""
    src = Path(getattr(model_cfg, "checkpoint", "") or "").expanduser()
    if is_safetensors(src) and getattr(model_cfg, "family", None):
        from lorakit.models.registry import require_base

        require_base(src, model_cfg.family)


def tokenizer_folder(model_cfg: Any, folder: Optional[Path], missing: str,
                     marks: tuple[str, ...] = ("tokenizer.json", "vocab.json")) -> Path:
    """``model.tokenizer_dir`` when set, else the checkpoint folder's tokenizer/ (``folder``), checked to hold one of
    the tokenizer files ``marks``; ``missing``: the one-line refusal where there is neither."""
    where = Path(model_cfg.tokenizer_dir).expanduser() if getattr(model_cfg, "tokenizer_dir", None) else folder
    if where is None:
        raise ConfigError(missing)
    if not where.is_dir() or not any((where / n).is_file() for n in marks):
        raise ConfigError(f"model.tokenizer_dir: {where} is not a tokenizer folder (none of {' / '.join(marks)})")
    return where


def qwen_tokenizer_for(model_cfg: Any, folder: Optional[Path], variant: str, family: str,
                       log: Callable[[str], None] = print) -> Any:
    """A Qwen-encoder family's tokenizer: ``model.tokenizer_dir`` when set, else the checkpoint folder's tokenizer/
    (``folder``), else lorakit's shipped Qwen tokenizer of ``variant`` (single files and ComfyUI split files carry
    none), said in the log."""
    if folder is None and not getattr(model_cfg, "tokenizer_dir", None):
        from lorakit.models.tokenizers import shipped_qwen_tokenizer
        return shipped_qwen_tokenizer(variant, family, log)
    where = tokenizer_folder(model_cfg, folder, "")  # one of the two is set: never the empty refusal
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(where))


def linear_widths(model: Any) -> dict[str, int]:
    """Module path -> output width of every Linear (peft's ``.base_layer`` under its module's own path)."""
    from torch import nn

    return {n.removesuffix(".base_layer"): m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def flow_scheduler(config: Mapping[str, Any]) -> Any:
    """diffusers' FlowMatchEulerDiscreteScheduler made from a family's scheduler config (``_class_name`` etc.
    left out)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    return FlowMatchEulerDiscreteScheduler(**{k: v for k, v in config.items() if not k.startswith("_")})


def flow_metadata(training: Any, timestep_sampling: Optional[str] = None) -> dict[str, str]:
    """The ss_* keys of the flow-matching timestep settings, as sd-scripts and musubi-tuner write them
    (``timestep_sampling``: the name a family's trainer gives the mode, where it differs from lorakit's)."""
    t = training
    return {"ss_timestep_sampling": timestep_sampling or str(t.timestep_sampling),
            "ss_sigmoid_scale": str(float(t.sigmoid_scale)),
            "ss_logit_mean": str(float(t.logit_mean)),
            "ss_logit_std": str(float(t.logit_std)),
            "ss_discrete_flow_shift": str(float(t.discrete_flow_shift))}


class ComponentsAdapter:
    """What adapters share whose ``self.comps`` holds a ``transformer``, lazily read encoders (``loaded(name)``) and
    the ``files`` they came from: the SD3.5, Z-Image, Qwen-Image and FLUX.2 adapters. ``family`` names it in messages
    and cache keys. The defaults suit a flow-matching transformer on latents the VAE (``vae_role``) makes with the
    SPEC's scalar scale and shift; a family overrides what it does otherwise and keeps its own numbers and names."""

    family = "?"
    spec: Any = None
    encoders: tuple[str, ...] = ("text_encoder", "ae")
    vae_role = "ae"                    # the component that encodes / decodes images
    # the step-distilled variant that samples without CFG (sample_settings) and the two refusals of a CFG scale for
    # it: (set in the config, read at load; asked for at sampling)
    no_cfg_variant = ""
    no_cfg_refusal: tuple[str, str] = ("", "")
    # variant -> (preview steps, CFG scale) where neither the prompt nor sample.* set them (the first entry for a
    # variant the table does not list)
    sample_defaults: Mapping[str, tuple[int, float]] = {}
    comps: Any = None
    cfg: Any = None

    def __init__(self, cfg: Any) -> None:
        import torch

        self.cfg = cfg
        self.comps: Any = None
        self.device = torch.device("cpu")
        self.dtype = torch.bfloat16

    def _c(self) -> Any:
        if self.comps is None:
            raise RuntimeError(f"{self.family} adapter: load() must be called first")
        return self.comps

    # ------------------------------------------------------------------------------------------ loading
    def _load_components(self, model: Any, dtype: Any) -> Any:
        """The family's components read from ``ModelCfg`` (its ``load.load_components``)."""
        raise NotImplementedError

    def load(self, model: Any, memory: Any, device: Any, dtype: Any) -> None:
        import torch

        self.comps = self._load_components(model, dtype)
        self.device, self.dtype = torch.device(device), dtype
        self._check_loaded()
        if not deferred_placement(memory):
            self.comps.transformer.to(self.device)

    def _text_parts(self) -> tuple[Any, Any]:
        """(text encoder, tokenizer), checked once to go together: a tokenizer with more ids than the encoder embeds
        (the shipped full Qwen tokenizer beside a small or unrelated encoder) is one line, not an IndexError mid-run."""
        c = self._c()
        encoder, tokenizer = c.text_encoder, c.tokenizer
        if not getattr(self, "_vocab_checked", False):
            rows = int(encoder.get_input_embeddings().num_embeddings)
            if len(tokenizer) > rows:
                raise ConfigError(f"model.tokenizer_dir: the tokenizer has {len(tokenizer)} tokens, but the text "
                                  f"encoder {c.files.get('text_encoder', '')} embeds only {rows}; set "
                                  "model.tokenizer_dir to the tokenizer folder that comes with this encoder")
            self._vocab_checked = True
        return encoder, tokenizer

    def _check_loaded(self) -> None:
        """Settings refused once the variant is known: a CFG scale for ``no_cfg_variant``."""
        if self.no_cfg_variant and self._c().variant == self.no_cfg_variant and \
                getattr(self.cfg.sample, "cfg_scale", None) not in (None, 1.0):
            raise ConfigError(self.no_cfg_refusal[0])
        if self.no_cfg_variant and self._c().variant == self.no_cfg_variant:
            refuse_unused_negative(self.cfg.sample, f"{self.spec.display_name or self.family} {self._c().variant}")

    def before_placement(self, memory: Any, log: Any) -> None:
        """Nothing family-specific to apply."""

    @property
    def variant(self) -> str:
        return self._c().variant

    def cache_key(self, part: str, role: str, *settings: str) -> str:
        """The cache identity of ``part`` ("vae", "text", "model"): the identity (size, mtime, header hash) of the
        file ``role`` was read from and the encoding ``settings``."""
        import hashlib

        from lorakit.fsutil import path_identity  # the one file-identity algorithm

        p = self._c().files.get(role)
        parts = (part, path_identity(Path(p)) if p is not None else "none", *settings)
        return f"{self.family}-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def offload_encoders(self) -> None:
        c = self._c()
        for name in self.encoders:
            if c.loaded(name) and getattr(c, name) is not None:
                getattr(c, name).to("cpu")

    @contextlib.contextmanager
    def _on_device(self, module: Any) -> Iterator[Any]:
        module.to(self.device)
        yield self.device

    # ------------------------------------------------------------------------------------------ encoding
    def encode_images(self, pixels: Any) -> Any:
        """[B,3,H,W] in [-1,1] -> (mean − shift) · scale, [B,C,H/8,W/8]; sides must be multiples of 16."""
        import torch

        vae = self.vae_module()
        if pixels.shape[-1] % 16 or pixels.shape[-2] % 16:
            raise ValueError(f"{self.family}: image size {pixels.shape[-1]}x{pixels.shape[-2]} must be a multiple of "
                             "16")
        with torch.no_grad(), self._on_device(vae) as where:
            z = vae.encode(pixels.to(where, next(vae.parameters()).dtype)).latent_dist.mode().float()
        return ((z - self.spec.vae_shift) * self.spec.vae_scale).cpu()

    def decode(self, x: Any) -> Any:
        """Latents [1,C,h,w] -> PIL image (scale and shift undone, VAE decode)."""
        vae = self.vae_module()
        with self._on_device(vae) as where:
            z = x.float().to(where) / self.spec.vae_scale + self.spec.vae_shift
            img = vae.decode(z.to(next(vae.parameters()).dtype)).sample
        from lorakit.data.images import to_images
        return to_images(img[0])[0]

    # ------------------------------------------------------------------------------------------ objective
    def _sigmas(self, b: int, training: Any, generator: Any, seq_len: int) -> Any:
        """σ per sample from training.timestep_sampling (flux_shift with ``seq_len`` image tokens)."""
        from lorakit.diffusion.objectives import sample_sigmas
        return sample_sigmas(b, training.timestep_sampling, generator, sigmoid_scale=training.sigmoid_scale,
                             logit_mean=training.logit_mean, logit_std=training.logit_std,
                             shift=training.discrete_flow_shift, seq_len=seq_len)

    def noise(self, latents: Any, noise: Any, batch: Any, training: Any, generator: Any) -> Any:
        """σ from :meth:`_sigmas` (the transformer's token count: h·w / patch²); x_σ = (1−σ)·x0 + σ·ε; target
        ε − x0."""
        import torch

        from lorakit.diffusion.objectives import flow_noise, flow_target
        from lorakit.models.base import NoisedInput, to_gpu
        b, _, h, w = latents.shape
        p = self.spec.patch_size
        host = self._sigmas(b, training, generator, (h // p) * (w // p))
        sigmas = to_gpu(host, latents.device)
        return NoisedInput(model_input=flow_noise(latents, noise, sigmas), timesteps=sigmas,
                           target=flow_target(latents, noise),
                           weight=torch.ones(b, device=latents.device, dtype=torch.float32), host_timesteps=host)

    def predict(self, noised: Any, batch: Any) -> Any:
        return self._forward(noised.model_input, noised.timesteps, batch.text)

    # ------------------------------------------------------------------------------------------ sampling
    def sample_settings(self, prompt: Any) -> tuple[int, float]:
        """(steps, CFG scale): the variant's ``sample_defaults`` where neither the prompt nor ``sample.*`` set them;
        ``no_cfg_variant`` samples without CFG."""
        variant = self._c().variant
        steps_default, cfg_default = self.sample_defaults.get(variant, next(iter(self.sample_defaults.values())))
        steps = prompt.steps or getattr(self.cfg.sample, "steps", None) or steps_default
        cfg_set = getattr(self.cfg.sample, "cfg_scale", None) is not None or \
            prompt.cfg_scale != self.spec.default_cfg_scale
        if variant == self.no_cfg_variant:
            if cfg_set and prompt.cfg_scale != 1.0:
                raise ConfigError(self.no_cfg_refusal[1])
            return steps, 1.0
        return steps, (prompt.cfg_scale if cfg_set else cfg_default)

    def flow_sample(self, prompt: Any, generator: Any, channels: int, schedule: Any) -> Any:
        """A preview: noise of the prompt's size (multiples of 16, latents 1/8), ``schedule(steps)``'s sigmas through
        :meth:`euler_cfg` (CFG with the prompt's negative unless the scale is 1), then the adapter's ``decode``."""
        steps, cfg_scale = self.sample_settings(prompt)
        x = self.preview_noise(prompt, generator, channels)
        cond = self.encode_text([prompt.prompt])
        neg = self.encode_text([prompt.negative]) if cfg_scale != 1.0 else None
        return self.decode(self.euler_cfg(x, schedule(steps), steps, cond, neg, cfg_scale))

    def preview_noise(self, prompt: Any, generator: Any, channels: int) -> Any:
        """The starting noise of a preview, [1, channels, H/8, W/8] (the prompt's size, already a multiple of the
        spec's ``sample_multiple``: checked once where prompts are read), drawn on the generator's device, then moved to
        the adapter's."""
        import torch

        return torch.randn((1, channels, prompt.height // 8, prompt.width // 8), generator=generator, device=generator.device,
                           dtype=torch.float32).to(self.device)

    def euler_cfg(self, x: Any, sigmas: Any, steps: int, cond: Any, neg: Any, cfg_scale: float,
                  times: Any = None, forward: Any = None) -> Any:
        """``steps`` flow-match Euler steps along ``sigmas`` with classifier-free guidance (``neg`` None: none, else
        :meth:`_guide`), the denoiser in eval mode meanwhile; ``forward(x, t, text)`` (default: the adapter's
        ``_forward``) gives the velocity at ``t`` = ``times[i]`` (None: the step's sigma)."""
        forward = forward or self._forward
        tr = self._c().transformer
        was_training = tr.training
        tr.eval()
        try:
            for i in range(steps):
                s = (sigmas if times is None else times)[i].reshape(1)
                v = forward(x, s, cond)
                if neg is not None:
                    v = self._guide(v, forward(x, s, neg), cfg_scale)
                x = x + (sigmas[i + 1] - sigmas[i]).item() * v.to(x.device)
        finally:
            tr.train(was_training)
        return x

    def _guide(self, v: Any, v_neg: Any, cfg_scale: float) -> Any:
        """Classifier-free guidance: neg + s·(cond − neg)."""
        return v_neg + cfg_scale * (v - v_neg)

    def vae_module(self) -> Any:
        """The autoencoder: the planner may switch it to tiled encode / decode (train/autoplan.py)."""
        return getattr(self._c(), self.vae_role)

    def denoiser(self) -> Any:
        return self._c().transformer

    def text_encoder_modules(self) -> dict[str, Any]:
        return {}


def cache_root() -> Path:
    """lorakit's cache folder: $LORAKIT_CACHE, else $XDG_CACHE_HOME/lorakit, else ~/.cache/lorakit."""
    env = os.environ.get("LORAKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorakit"
