"""What a family tells the LoRA tools about its base model, as plain data (lora/ never imports models/).

A :class:`FamilyKeys` lists every module a LoRA may target, each under the names the ecosystem uses:

* ``native``: the module path in the distributed single file, without the component prefix (SDXL: SGM path
  ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``; FLUX.1: BFL path ``double_blocks.0.img_attn.qkv``;
  text encoders: the transformers path ``text_model.encoder.layers.0.self_attn.q_proj``). kohya's module
  name is ``kohya_prefix[component] + native`` with "." replaced by "_" (the canonical name of the tools),
  except for the components in ``kohya_diffusers``: sd-scripts names SD 1.x UNet modules by their diffusers
  path (``lora_unet_down_blocks_0_attentions_0_proj_in``), so there the diffusers path makes the name.
* ``diffusers``: the diffusers/transformers module path(s). A native module that diffusers splits (FLUX.1
  fused qkv / linear1) has several parts, each owning consecutive output rows of the native weight.
* ``out_features`` / ``in_features`` / ``kernel``: the weight's shape ([out, in, kh, kw]).
* ``parts_rule``: how the output rows divide between the diffusers parts, from the shape alone, so a tiny
  model and the full-size one share one table: "" (one part), "equal" (q/k/v of a fused qkv) or
  "in3_rest" (FLUX.1 single-block linear1: q, k, v of ``in`` rows each, the MLP takes the rest).

The family packages build these (``lorakit.models.<family>.keys.lora_keymap``); the CLI passes them in. A family
of several sizes (FLUX.2: Klein 4B, Klein 9B, dev) gives one map per size (``variant``); the readers pick the one
whose names and then shapes fit the file best.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Optional

COMPONENTS = ("denoiser", "te1", "te2", "te3")


@dataclass(frozen=True)
class BaseModule:
    component: str                       # "denoiser", "te1", "te2", "te3"
    native: str                          # single-file module path (no prefix)
    diffusers: tuple[str, ...]           # diffusers module path(s), no component prefix
    out_features: int
    in_features: int
    kernel: tuple[int, int] = (1, 1)
    parts_rule: str = ""                 # "", "equal", "in3_rest"
    checkpoint_key: str = ""             # the weight's key in the single-file checkpoint ("" = not in it)
    checkpoint_split: Optional[tuple[int, int]] = None  # (i, n): the module owns the i-th of n equal row blocks
    conv: bool = False                   # a Conv2d in diffusers (PEFT's LoRA factors are then 4-D, 1x1 included)

    def rows_in(self, out_rows: int) -> Optional[tuple[int, int]]:
        """Rows of the checkpoint tensor (``out_rows`` rows in all) this module owns; None = the whole tensor."""
        if self.checkpoint_split is None:
            return None
        i, n = self.checkpoint_split
        size = out_rows // n
        return i * size, (i + 1) * size

    def part_sizes(self, out_rows: Optional[int] = None) -> tuple[int, ...]:
        """Output rows of each diffusers part (sums to ``out_rows`` or ``out_features``)."""
        out = self.out_features if out_rows is None else out_rows
        n = len(self.diffusers)
        if n == 1:
            return (out,)
        if self.parts_rule == "equal":
            if out % n:
                raise ValueError(f"{self.native}: {out} output rows do not split into {n} equal parts")
            return (out // n,) * n
        if self.parts_rule == "in3_rest":
            rest = out - 3 * self.in_features
            if rest <= 0 or n != 4:
                raise ValueError(f"{self.native}: {out} output rows do not hold q, k, v of {self.in_features} and an MLP")
            return (self.in_features,) * 3 + (rest,)
        raise ValueError(f"{self.native}: unknown parts rule {self.parts_rule!r}")


@dataclass(frozen=True)
class FamilyKeys:
    family: str
    modules: tuple[BaseModule, ...]
    kohya_prefix: dict[str, str]          # component -> "lora_unet_", "lora_te1_", ...
    diffusers_prefix: dict[str, str]      # component -> "unet.", "transformer.", "text_encoder.", ...
    comfy_prefix: dict[str, str]          # component -> "diffusion_model.", "text_encoders.clip_l.transformer.", ...
    checkpoint_prefix: dict[str, str] = field(default_factory=dict)  # component -> prefix in the single file
    kohya_diffusers: frozenset = frozenset()   # components whose kohya names are built from the diffusers path
    variant: str = ""                          # the size these shapes are of ("klein-4b", ...; "" = the only one)
    # a family whose module names depend on the base's depth: header -> the map of that base (None: this one's)
    for_base: Optional[Callable[[dict], Optional["FamilyKeys"]]] = field(default=None, compare=False, repr=False)

    def kohya_name(self, m: BaseModule) -> str:
        path = m.diffusers[0] if m.component in self.kohya_diffusers and len(m.diffusers) == 1 else m.native
        return self.kohya_prefix[m.component] + path.replace(".", "_")

    @cached_property
    def by_kohya(self) -> dict[str, BaseModule]:
        return {self.kohya_name(m): m for m in self.modules}

    @cached_property
    def by_diffusers(self) -> dict[str, tuple[BaseModule, int]]:
        """``<prefix><diffusers path>`` -> (module, part index)."""
        out: dict[str, tuple[BaseModule, int]] = {}
        for m in self.modules:
            for i, path in enumerate(m.diffusers):
                out[self.diffusers_prefix[m.component] + path] = (m, i)
                if path.startswith("text_model."):  # transformers >= 5.6 names CLIPTextModel without text_model.
                    out.setdefault(self.diffusers_prefix[m.component] + path[len("text_model."):], (m, i))
        return out

    @cached_property
    def by_kohya_diffusers(self) -> dict[str, tuple[BaseModule, int]]:
        """The other kohya-style names: built from diffusers paths (``lora_unet_down_blocks_…``, which older SDXL
        trainers wrote) or, for ``kohya_diffusers`` components, from the single-file path (``lora_unet_input_blocks_…``
        of an SD 1.x file, which A1111, Forge and ComfyUI also read)."""
        out: dict[str, tuple[BaseModule, int]] = {}
        for m in self.modules:
            for i, path in enumerate(m.diffusers):
                out[self.kohya_prefix[m.component] + path.replace(".", "_")] = (m, i)
            if m.component in self.kohya_diffusers:
                out.setdefault(self.kohya_prefix[m.component] + m.native.replace(".", "_"), (m, -1))
        return out

    @cached_property
    def by_comfy(self) -> dict[str, BaseModule]:
        return {self.comfy_prefix[m.component] + m.native: m for m in self.modules}

    def fit(self, kohya_names: set[str]) -> int:
        return len(kohya_names & set(self.by_kohya))

    def with_shapes(self, shapes: dict[str, tuple[int, ...]]) -> "FamilyKeys":
        """The same names with the shapes of an actual base file (``shapes``: checkpoint key -> shape); modules
        whose weight the file lacks are left out."""
        mods = []
        for m in self.modules:
            shape = shapes.get(m.checkpoint_key)
            if not m.checkpoint_key or shape is None:
                continue
            rows = m.rows_in(int(shape[0]))
            out = (rows[1] - rows[0]) if rows else int(shape[0])
            kernel = (int(shape[2]), int(shape[3])) if len(shape) == 4 else (1, 1)
            mods.append(BaseModule(m.component, m.native, m.diffusers, out, int(shape[1]), kernel, m.parts_rule,
                                   m.checkpoint_key, m.checkpoint_split, m.conv or len(shape) == 4))
        return self.with_modules(tuple(mods))

    def with_modules(self, modules: tuple[BaseModule, ...]) -> "FamilyKeys":
        """The same names and prefixes over other modules (shapes of a base file, modules a pruned base adds)."""
        from dataclasses import replace

        return replace(self, modules=modules)

    def shape_fit(self, widths: dict[str, tuple[int, int]], lookup) -> int:
        """How many of a file's modules (stem -> (rows of up, columns of down)) have this map's shapes; ``lookup``
        (stem -> (module, part) or None) is the layout's name resolver."""
        n = 0
        for stem, (rows, cols) in widths.items():
            hit = lookup(stem, self)
            if hit is None:
                continue
            m, part = hit
            try:
                want = m.part_sizes()[part] if part >= 0 and len(m.diffusers) > 1 else m.out_features
            except ValueError:
                continue
            n += rows == want and cols == m.in_features * m.kernel[0] * m.kernel[1]
        return n
