"""ComfyUI, as far as lorakit's nodes meet it, re-derived from ComfyUI's source for tests (ComfyUI is no package, so
it cannot be installed in CI). Read, not copied, from comfyanonymous/ComfyUI at these commits:

* nodes.py @ e60e19b175f93f2c8fac037063de9f13259be9d4: the node API (INPUT_TYPES with required/optional/hidden,
  RETURN_TYPES, RETURN_NAMES, FUNCTION, CATEGORY, OUTPUT_NODE, IS_CHANGED), load_custom_node (a folder's
  __init__.py imported as a top-level module named after the folder; NODE_CLASS_MAPPINGS and
  NODE_DISPLAY_NAME_MAPPINGS read from it), the signatures of the core nodes the example workflows use, and
  LoraLoader (comfy.utils.load_torch_file + comfy.sd.load_lora_for_models).
* execution.py @ f599e5ca303746f8e1f1b842d4fe31a4c6a10d36: how a prompt runs (get_input_data: widget values
  wrapped in one-element lists, links [node_id, slot] to the producer's output lists; map_node_over_list;
  get_output_data: a dict result with "ui"/"result" or a tuple; the whole prompt under torch.inference_mode) and how
  it is validated (validate_inputs: required inputs present, linked RETURN_TYPES equal the input type, INT/FLOAT/
  STRING conversion, min/max, combo membership; validate_prompt: at least one OUTPUT_NODE).
* folder_paths.py @ 00db33f6b7fcb1a1321286d88c95cf138cabe9fe: folder_names_and_paths, get_filename_list
  (relative paths, filtered by extension), get_full_path, get_folder_paths.
* comfy/lora.py @ 41444b5236c613ee5ff7d09aa620f94b702f30eb: load_lora (the "lora_up/lora_down/alpha" triple, the
  LyCORIS "hada_*" (LoHa) and "lokr_*" (LoKr) sets and ".dora_scale" beside any of them; every other key logged
  "lora key not loaded"), and calculate_weight's "lora", "loha" and "lokr" branches (issue 23; the same maths as
  comfy/weight_adapter/loha.py @ 183b377588102d00131247aec399f8b34e1122b4 and lokr.py @
  e8f3bc5ab766ba0149ac8ba8f67c328f8bb3da7d). DoRA's weight_decompose from comfy/weight_adapter/base.py @
  9c0cf36cd7964978850fd40f8cf76ac2cf9f9e15 (the input-axis branch equals 41444b5's, which had no eps and no
  output-axis branch), model_lora_keys_unet ("lora_unet_" + the diffusion_model path with
  "." → "_"), model_lora_keys_clip (LORA_CLIP_MAP; lora_te1_ for clip_l, lora_te2_ for clip_g when clip_l is present).
* comfy/lora.py and comfy/utils.py @ 17358c8f73b581a0d22facc3c385822f09b8bfb1 (Comfy-Org/ComfyUI), for the families
  beyond SDXL: model_lora_keys_unet's generic names (``diffusion_model.<path>`` beside ``lora_unet_``), the SD UNet's
  diffusers names (unet_to_diffusers: ``lora_unet_<diffusers path>``, ``lycoris_``, ``.processor.to_`` names), the
  ``isinstance(model, Flux)`` branch (model_base.Flux2 is a Flux) through flux_to_diffusers (FLUX.2's ``ff.linear_in``
  / ``to_qkv_mlp_proj`` / ``attn.to_out`` included; q/k/v as row slices of the fused qkv), the ``Lumina2`` branch
  (Z-Image) through z_image_to_diffusers, the ``QwenImage`` branch (bare, ``transformer.`` and ``lycoris_`` names
  of every ``diffusion_model.`` weight), model_lora_keys_clip's ``lora_te_`` / ``text_encoder.`` names for clip_l
  and its generic ``text_encoders.<path>``; load_lora's (weight, (dim, offset, size)) targets (calculate_weight
  narrows the weight to the slice before patching).
* comfy/utils.py (ProgressBar.update_absolute(value, total=None, preview=None)), comfy/model_management.py
  (InterruptProcessingException, throw_exception_if_processing_interrupted clears the flag and raises).
* The registry's pyproject spec: docs.comfy.org/registry/specifications ([project] name/version/dependencies,
  [project.urls] Repository, [tool.comfy] PublisherId/DisplayName/Icon).
"""

from __future__ import annotations

import inspect
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

COMFYUI_COMMITS = {
    "nodes.py": "e60e19b175f93f2c8fac037063de9f13259be9d4",
    "execution.py": "f599e5ca303746f8e1f1b842d4fe31a4c6a10d36",
    "folder_paths.py": "00db33f6b7fcb1a1321286d88c95cf138cabe9fe",
    "comfy/lora.py": "41444b5236c613ee5ff7d09aa620f94b702f30eb",
    "comfy/weight_adapter/loha.py": "183b377588102d00131247aec399f8b34e1122b4",
    "comfy/weight_adapter/lokr.py": "e8f3bc5ab766ba0149ac8ba8f67c328f8bb3da7d",
    "comfy/weight_adapter/base.py": "9c0cf36cd7964978850fd40f8cf76ac2cf9f9e15",
}
PRIMITIVES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SECTIONS = ("required", "optional", "hidden")
SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


# ------------------------------------------------------------------------------------------ the node API

def contract_problems(name: str, cls: type) -> list[str]:
    """Every way ``cls`` breaks the node API as ComfyUI's nodes.py and execution.py use it (empty: none)."""
    bad: list[str] = []
    spec = cls.INPUT_TYPES()
    if not isinstance(spec, dict) or "required" not in spec:  # validate_inputs reads class_inputs['required']
        return [f"{name}: INPUT_TYPES() must be a dict with 'required'"]
    bad += [f"{name}: unknown INPUT_TYPES section {k!r}" for k in spec if k not in SECTIONS]
    for section in ("required", "optional"):
        for inp, entry in spec.get(section, {}).items():
            bad += [f"{name}.{inp}: {p}" for p in _entry_problems(entry)]
    for attr in ("RETURN_TYPES", "FUNCTION", "CATEGORY"):
        if not hasattr(cls, attr):
            bad.append(f"{name}: no {attr}")
    rt = getattr(cls, "RETURN_TYPES", ())
    if not isinstance(rt, tuple) or not all(isinstance(t, str) and t for t in rt):
        bad.append(f"{name}: RETURN_TYPES must be a tuple of type names")
    if hasattr(cls, "RETURN_NAMES") and len(cls.RETURN_NAMES) != len(rt):
        bad.append(f"{name}: RETURN_NAMES and RETURN_TYPES differ in length")
    if not isinstance(getattr(cls, "CATEGORY", None), str) or not cls.CATEGORY:
        bad.append(f"{name}: CATEGORY must be a non-empty string")
    if hasattr(cls, "OUTPUT_NODE") and not isinstance(cls.OUTPUT_NODE, bool):
        bad.append(f"{name}: OUTPUT_NODE must be True or False")
    fn = getattr(cls, getattr(cls, "FUNCTION", ""), None)
    if not callable(fn):
        return bad + [f"{name}: FUNCTION {getattr(cls, 'FUNCTION', None)!r} is no method"]
    # get_input_data passes every required input and the optional ones the graph gives, as keywords
    params = inspect.signature(fn).parameters
    required, optional = set(spec["required"]), set(spec.get("optional", {})) | set(spec.get("hidden", {}))
    for p in params.values():
        if p.name == "self" or p.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if p.name not in required | optional:
            bad.append(f"{name}.{cls.FUNCTION}: parameter {p.name!r} is no input")
        elif p.name in optional and p.default is inspect.Parameter.empty:
            bad.append(f"{name}.{cls.FUNCTION}: optional input {p.name!r} needs a default")
    has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = (required | optional) - set(params)
    if missing and not has_kwargs:
        bad.append(f"{name}.{cls.FUNCTION}: takes no {sorted(missing)}")
    if hasattr(cls, "IS_CHANGED"):  # called on the class (map_node_over_list(class_def, ..., "IS_CHANGED"))
        if not isinstance(inspect.getattr_static(cls, "IS_CHANGED"), (classmethod, staticmethod)):
            bad.append(f"{name}: IS_CHANGED must be a classmethod")
    return bad


def _entry_problems(entry: Any) -> list[str]:
    if not isinstance(entry, (tuple, list)) or not entry:
        return ["an input is (TYPE,) or (TYPE, options)"]
    kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
    if not isinstance(opts, dict):
        return ["options must be a dict"]
    if isinstance(kind, list):  # a combo
        if not kind or not all(isinstance(c, str) for c in kind):
            return ["a combo is a non-empty list of strings"]
        return [] if opts.get("default", kind[0]) in kind else ["the combo's default is not among its choices"]
    if not isinstance(kind, str) or not kind:
        return ["the type must be a name or a list of choices"]
    out = []
    if kind in ("INT", "FLOAT"):
        d, lo, hi = opts.get("default"), opts.get("min"), opts.get("max")
        want = int if kind == "INT" else (int, float)
        if not isinstance(d, want) or isinstance(d, bool):
            out.append(f"{kind} default {d!r}")
        elif (lo is not None and d < lo) or (hi is not None and d > hi):
            out.append(f"default {d} outside [{lo}, {hi}]")
    elif kind == "STRING" and not isinstance(opts.get("default", ""), str):
        out.append("STRING default must be a string")
    elif kind == "BOOLEAN" and not isinstance(opts.get("default", False), bool):
        out.append("BOOLEAN default must be True or False")
    elif kind not in PRIMITIVES and kind.upper() != kind:
        out.append(f"link types are upper-case names, got {kind!r}")
    return out


def is_widget(entry: Any) -> bool:
    """An input the page shows as a widget (its value stored in widgets_values), not only as a link socket."""
    return isinstance(entry[0], list) or entry[0] in PRIMITIVES


# ------------------------------------------------------------------------------------------ core nodes used in the examples

def core_nodes(folder_paths: Any) -> dict[str, type]:
    """Signatures of the ComfyUI core nodes the example workflows use (nodes.py), with dummy functions."""

    def node(name, required, returns, output=False, category="core", optional=None):
        spec = {"required": required, **({"optional": optional} if optional else {})}
        return type(name, (), {"INPUT_TYPES": classmethod(lambda cls: spec), "RETURN_TYPES": returns,
                               "FUNCTION": "run", "CATEGORY": category, "OUTPUT_NODE": output,
                               "run": lambda self, **kw: ({"ui": {"images": []}} if output else (None,) * len(returns))})

    flt = lambda d: ("FLOAT", {"default": d, "min": -100.0, "max": 100.0, "step": 0.01})
    seed = ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff})
    return {
        "PreviewImage": node("PreviewImage", {"images": ("IMAGE",)}, (), output=True),
        "SaveImage": node("SaveImage", {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                          (), output=True),
        "CheckpointLoaderSimple": node("CheckpointLoaderSimple",
                                       {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)},
                                       ("MODEL", "CLIP", "VAE")),
        "LoraLoader": node("LoraLoader", {"model": ("MODEL",), "clip": ("CLIP",),
                                          "lora_name": (folder_paths.get_filename_list("loras"),),
                                          "strength_model": flt(1.0), "strength_clip": flt(1.0)}, ("MODEL", "CLIP")),
        "CLIPTextEncode": node("CLIPTextEncode", {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)},
                               ("CONDITIONING",)),
        "EmptyLatentImage": node("EmptyLatentImage", {
            "width": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
            "height": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}, ("LATENT",)),
        "KSampler": node("KSampler", {
            "model": ("MODEL",), "seed": seed, "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
            "sampler_name": (["euler", "euler_ancestral", "dpmpp_2m"],), "scheduler": (["normal", "karras"],),
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0})}, ("LATENT",)),
        "VAEDecode": node("VAEDecode", {"samples": ("LATENT",), "vae": ("VAE",)}, ("IMAGE",)),
        "ImageBatch": node("ImageBatch", {"image1": ("IMAGE",), "image2": ("IMAGE",)}, ("IMAGE",)),
    }


# ------------------------------------------------------------------------------------------ workflows

def ui_to_api(workflow: dict, classes: dict[str, type]) -> dict[str, dict]:
    """A saved workflow (the page's format: nodes, links, widgets_values) as the API prompt the page queues: for each
    node, linked inputs become [origin id, origin slot], widget inputs take the next widgets_values entry in
    INPUT_TYPES order (an INT named seed/noise_seed, or with control_after_generate, is followed by the page's
    "control after generate" value, which is not an input)."""
    links = {lk[0]: lk for lk in workflow["links"]}
    prompt: dict[str, dict] = {}
    for n in workflow["nodes"]:
        if n.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        cls = classes[n["type"]]
        spec = cls.INPUT_TYPES()
        linked = {i["name"]: links[i["link"]] for i in n.get("inputs", []) if i.get("link") is not None}
        values = list(n.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                if name in linked:
                    lk = linked[name]
                    inputs[name] = [str(lk[1]), lk[2]]
                    if is_widget(entry):
                        values.pop(0)  # a widget turned into an input keeps its slot in widgets_values
                elif is_widget(entry):
                    if not values:
                        raise AssertionError(f"node {n['id']} ({n['type']}): no widget value for {name}")
                    inputs[name] = values.pop(0)
                    opts = entry[1] if len(entry) > 1 else {}
                    if entry[0] == "INT" and (name in ("seed", "noise_seed") or opts.get("control_after_generate")):
                        values.pop(0)
        if values:
            raise AssertionError(f"node {n['id']} ({n['type']}): {len(values)} widget values left over: {values}")
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def validate_prompt(prompt: dict, classes: dict[str, type]) -> list[str]:
    """execution.py's validate_prompt/validate_inputs, as error lines (empty: the prompt would be queued)."""
    errors = []
    if not any(getattr(classes[v["class_type"]], "OUTPUT_NODE", False) for v in prompt.values()
               if v["class_type"] in classes):
        errors.append("prompt has no output node")
    for nid, node in prompt.items():
        cls = classes.get(node["class_type"])
        if cls is None:
            errors.append(f"{nid}: node {node['class_type']} does not exist")
            continue
        spec = cls.INPUT_TYPES()
        known = {**spec["required"], **spec.get("optional", {})}
        for name in spec["required"]:
            if name not in node["inputs"]:
                errors.append(f"{nid}.{name}: required input missing")
        for name, val in node["inputs"].items():
            if name not in known:
                errors.append(f"{nid}.{name}: no such input")
                continue
            kind, opts = known[name][0], (known[name][1] if len(known[name]) > 1 else {})
            if isinstance(val, list):
                src = prompt.get(val[0])
                if src is None or src["class_type"] not in classes:
                    errors.append(f"{nid}.{name}: linked to a missing node {val[0]}")
                    continue
                rt = classes[src["class_type"]].RETURN_TYPES
                if val[1] >= len(rt) or rt[val[1]] != kind:
                    errors.append(f"{nid}.{name}: return type mismatch ({rt[val[1]] if val[1] < len(rt) else '?'} "
                                  f"!= {kind})")
                continue
            try:
                if kind == "INT":
                    val = int(val)
                elif kind == "FLOAT":
                    val = float(val)
                elif kind == "STRING":
                    val = str(val)
            except (TypeError, ValueError):
                errors.append(f"{nid}.{name}: {val!r} is no {kind}")
                continue
            if "min" in opts and val < opts["min"] or "max" in opts and val > opts["max"]:
                errors.append(f"{nid}.{name}: {val} outside [{opts.get('min')}, {opts.get('max')}]")
            if isinstance(kind, list) and val not in kind:
                errors.append(f"{nid}.{name}: {val!r} not in the list")
    return errors


# ------------------------------------------------------------------------------------------ the executor

def run_prompt(prompt: dict, classes: dict[str, type], outputs: dict | None = None) -> dict[str, list]:
    """Execute a prompt as execution.py does: output nodes first by dependency, each node's inputs from its
    producers' output lists, one call per list element, the whole under torch.inference_mode(). ``outputs`` are
    cached results kept between runs (ComfyUI keeps them while inputs and IS_CHANGED do not change)."""
    errors = validate_prompt(prompt, classes)
    assert not errors, errors
    outputs = {} if outputs is None else outputs
    objects: dict[str, Any] = {}

    def execute(nid: str) -> None:
        if nid in outputs:
            return
        node = prompt[nid]
        cls = classes[node["class_type"]]
        spec = cls.INPUT_TYPES()
        data: dict[str, list] = {}
        for name, val in node["inputs"].items():
            if isinstance(val, list):
                execute(val[0])
                data[name] = outputs[val[0]][val[1]]
            elif name in spec["required"] or name in spec.get("optional", {}):
                data[name] = [val]
        obj = objects.setdefault(nid, cls())
        longest = max((len(v) for v in data.values()), default=0)
        results = []
        for i in range(max(longest, 1)):
            kwargs = {k: v[i if len(v) > i else -1] for k, v in data.items()}
            results.append(getattr(obj, cls.FUNCTION)(**kwargs))
        flat = []
        for r in results:
            if isinstance(r, dict):
                if "result" in r:
                    flat.append(r["result"])
            else:
                flat.append(r)
        for o in flat:  # a FUNCTION returns one value per RETURN_TYPES entry
            assert isinstance(o, (tuple, list)) and len(o) == len(cls.RETURN_TYPES), (nid, cls.RETURN_TYPES, o)
        outputs[nid] = [[o[i] for o in flat] for i in range(len(cls.RETURN_TYPES))] if flat else []

    with torch.inference_mode():
        for nid, node in prompt.items():
            if getattr(classes[node["class_type"]], "OUTPUT_NODE", False):
                execute(nid)
    return outputs


# ------------------------------------------------------------------------------------------ host modules

class InterruptProcessingException(Exception):
    pass


def install_fake_comfy(monkeypatch: Any, models_dir: Path) -> types.SimpleNamespace:
    """Put ComfyUI's modules in sys.modules as lorakit's nodes import them: folder_paths over ``models_dir``
    (checkpoints/, diffusion_models/, vae/, text_encoders/, loras/), comfy.utils (ProgressBar recording its updates,
    load_torch_file), comfy.model_management (Cancel flag, memory calls recorded), comfy.sd (load_lora_for_models
    through the re-derived key map). Returns the recordings."""
    state = types.SimpleNamespace(bars=[], interrupt=False, unloaded=0, emptied=0, lora_calls=[])

    fp = types.ModuleType("folder_paths")
    fp.supported_pt_extensions = SUPPORTED_PT_EXTENSIONS
    fp.folder_names_and_paths = {
        name: ([str(models_dir / name)], SUPPORTED_PT_EXTENSIONS)
        for name in ("checkpoints", "vae", "text_encoders", "loras")}
    fp.folder_names_and_paths["diffusion_models"] = ([str(models_dir / "unet"), str(models_dir / "diffusion_models")],
                                                     SUPPORTED_PT_EXTENSIONS)

    def get_folder_paths(name):
        return fp.folder_names_and_paths[name][0][:]

    def get_filename_list(name):
        folders, exts = fp.folder_names_and_paths[name]
        out = set()
        for folder in folders:
            for root, _dirs, files in os.walk(folder, followlinks=True):
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), folder)
                    if os.path.splitext(rel)[-1].lower() in exts or not exts:
                        out.add(rel)
        return sorted(out)

    def get_full_path(name, filename):
        if name not in fp.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for folder in fp.folder_names_and_paths[name][0]:
            full = os.path.join(folder, filename)
            if os.path.isfile(full):
                return full
        return None

    fp.get_folder_paths, fp.get_filename_list, fp.get_full_path = get_folder_paths, get_filename_list, get_full_path

    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current, self.seen = total, 0, []
            state.bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            self.seen.append((self.current, self.total))

    def load_torch_file(path, safe_load=False, device=None):
        from safetensors.torch import load_file

        return load_file(path)

    utils.ProgressBar, utils.load_torch_file = ProgressBar, load_torch_file
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException

    def throw_exception_if_processing_interrupted():
        if state.interrupt:
            state.interrupt = False
            raise InterruptProcessingException()

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.unload_all_models = lambda: setattr(state, "unloaded", state.unloaded + 1)
    mm.soft_empty_cache = lambda force=False: setattr(state, "emptied", state.emptied + 1)
    sd = types.ModuleType("comfy.sd")

    def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
        state.lora_calls.append(lora)
        key_map = {**model_lora_keys_unet(model.state_dict()), **model_lora_keys_clip(clip.state_dict())}
        patches, not_loaded = load_lora(lora, key_map)
        state.not_loaded = not_loaded
        new_model, new_clip = model.clone(), clip.clone()
        for target, patch in patches.items():
            holder, strength = (new_model, strength_model) if target.startswith("diffusion_model.") else \
                (new_clip, strength_clip)
            holder.weights[target] = apply_lora(holder.weights[target], patch, strength)
        state.patched = set(patches)
        return new_model, new_clip

    sd.load_lora_for_models = load_lora_for_models
    comfy.utils, comfy.model_management, comfy.sd = utils, mm, sd
    for name, mod in (("folder_paths", fp), ("comfy", comfy), ("comfy.utils", utils),
                      ("comfy.model_management", mm), ("comfy.sd", sd)):
        monkeypatch.setitem(sys.modules, name, mod)
    return state


# ------------------------------------------------------------------------------------------ the LoRA key map

LORA_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                 "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                 "self_attn.out_proj": "self_attn_out_proj"}


def model_lora_keys_unet(sd: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k in sd:
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            out["lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")] = k
    return out


def model_lora_keys_clip(sd: dict[str, Any]) -> dict[str, str]:
    out, clip_l = {}, False
    for k in sd:                         # the generic form: text_encoders.<clip state dict path>
        if k.endswith(".weight"):
            out["text_encoders." + k[:-len(".weight")]] = k
    for b in range(32):
        for c, short in LORA_CLIP_MAP.items():
            k = f"clip_l.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in sd:
                out[f"lora_te_text_model_encoder_layers_{b}_{short}"] = k
                out[f"lora_te1_text_model_encoder_layers_{b}_{short}"] = k
                out[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
                clip_l = True
            k = f"clip_g.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in sd and clip_l:
                out[f"lora_te2_text_model_encoder_layers_{b}_{short}"] = k
    return out


LYCORIS_NAMES = {"loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
                 "lokr": ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")}


def model_lora_keys_unet_full(sd: dict[str, Any], model: str, diffusers_map: dict[str, Any]) -> dict[str, Any]:
    """model_lora_keys_unet for an SD UNet (``model="sd"``), a Flux / Flux2 (``"flux"``), a Lumina2 / Z-Image
    (``"lumina2"``) or a QwenImage (``"qwenimage"``: no diffusers map, its paths are diffusers') model.
    ``sd``: the model's state dict (``diffusion_model.*``); ``diffusers_map``: diffusers weight
    key -> ``diffusion_model.*`` target or (target, (dim, offset, size)): unet_to_diffusers / flux_to_diffusers /
    z_image_to_diffusers (:func:`flux_to_diffusers`, :func:`z_image_to_diffusers`, or the SD map read off diffusers'
    own LDM converter). Values: the target weight key, or (key, (dim, offset, size)) for a row slice."""
    out: dict[str, Any] = {}
    for k in sd:
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            out["lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")] = k
            out[k[:-len(".weight")]] = k                       # generic lora format
    if model == "qwenimage":               # the QwenImage branch: bare, transformer. and lycoris_ module paths
        for k in sd:
            if k.startswith("diffusion_model.") and k.endswith(".weight"):
                path = k[len("diffusion_model."):-len(".weight")]
                out[path] = out["transformer." + path] = out["lycoris_" + path.replace(".", "_")] = k
    for k, to in diffusers_map.items():
        if not k.endswith(".weight"):
            continue
        d = k[:-len(".weight")]
        if model == "sd":
            out["lora_unet_" + d.replace(".", "_")] = to
            out["lycoris_" + d.replace(".", "_")] = to
            proc = d.replace(".to_", ".processor.to_")
            proc = proc[:-2] if proc.endswith(".to_out.0") else proc
            out[proc] = to
            out["unet." + proc] = to
        elif model == "flux":
            out["transformer." + d] = to
            out["lycoris_" + d.replace(".", "_")] = to
            out["lora_transformer_" + d.replace(".", "_")] = to
            out[d] = to
        elif model == "lumina2":
            out["diffusion_model." + d] = to
            out["transformer." + d] = to
            out["lycoris_" + d.replace(".", "_")] = to
            out[d] = to
        else:
            raise ValueError(model)
    return out


def flux_to_diffusers(depth: int, depth_single: int, hidden: int) -> dict[str, Any]:
    """comfy.utils.flux_to_diffusers, weights only (biases and norms are no LoRA targets), output prefix
    ``diffusion_model.``: diffusers key -> BFL key or (BFL key, (0, offset, size))."""
    out: dict[str, Any] = {}
    for i in range(depth):
        f, t = f"transformer_blocks.{i}.", f"diffusion_model.double_blocks.{i}."
        for j, (img, txt) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            out[f"{f}attn.{img}.weight"] = (f"{t}img_attn.qkv.weight", (0, j * hidden, hidden))
            out[f"{f}attn.{txt}.weight"] = (f"{t}txt_attn.qkv.weight", (0, j * hidden, hidden))
        for d, b in (("attn.to_out.0", "img_attn.proj"), ("norm1.linear", "img_mod.lin"),
                     ("norm1_context.linear", "txt_mod.lin"), ("attn.to_add_out", "txt_attn.proj"),
                     ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"), ("ff_context.net.0.proj", "txt_mlp.0"),
                     ("ff_context.net.2", "txt_mlp.2"), ("ff.linear_in", "img_mlp.0"), ("ff.linear_out", "img_mlp.2"),
                     ("ff_context.linear_in", "txt_mlp.0"), ("ff_context.linear_out", "txt_mlp.2")):
            out[f"{f}{d}.weight"] = f"{t}{b}.weight"
    for i in range(depth_single):
        f, t = f"single_transformer_blocks.{i}.", f"diffusion_model.single_blocks.{i}."
        for j, p in enumerate(("to_q", "to_k", "to_v")):
            out[f"{f}attn.{p}.weight"] = (f"{t}linear1.weight", (0, j * hidden, hidden))
        out[f"{f}proj_mlp.weight"] = (f"{t}linear1.weight", (0, 3 * hidden, 4 * hidden))
        for d, b in (("norm.linear", "modulation.lin"), ("proj_out", "linear2"), ("attn.to_qkv_mlp_proj", "linear1"),
                     ("attn.to_out", "linear2")):
            out[f"{f}{d}.weight"] = f"{t}{b}.weight"
    for d, b in (("proj_out", "final_layer.linear"), ("x_embedder", "img_in"),
                 ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
                 ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"), ("context_embedder", "txt_in"),
                 ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
                 ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
                 ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
                 ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")):
        out[f"{d}.weight"] = f"diffusion_model.{b}.weight"
    return out


def z_image_to_diffusers(n_layers: int, dim: int, n_refiner: int = 2) -> dict[str, Any]:
    """comfy.utils.z_image_to_diffusers, weights only, output prefix ``diffusion_model.``."""
    out: dict[str, Any] = {}
    blocks = ([f"layers.{i}" for i in range(n_layers)] + [f"context_refiner.{i}" for i in range(n_refiner)]
              + [f"noise_refiner.{i}" for i in range(n_refiner)])
    for b in blocks:
        for j, p in enumerate(("to_q", "to_k", "to_v")):
            out[f"{b}.attention.{p}.weight"] = (f"diffusion_model.{b}.attention.qkv.weight", (0, j * dim, dim))
        for d, c in (("attention.to_out.0", "attention.out"), ("feed_forward.w1", "feed_forward.w1"),
                     ("feed_forward.w2", "feed_forward.w2"), ("feed_forward.w3", "feed_forward.w3"),
                     ("adaLN_modulation.0", "adaLN_modulation.0")):
            out[f"{b}.{d}.weight"] = f"diffusion_model.{b}.{c}.weight"
    for c, d in (("final_layer.linear", "all_final_layer.2-1.linear"),
                 ("final_layer.adaLN_modulation.1", "all_final_layer.2-1.adaLN_modulation.1"),
                 ("x_embedder", "all_x_embedder.2-1"), ("cap_embedder.1", "cap_embedder.1"),
                 ("t_embedder.mlp.0", "t_embedder.mlp.0"), ("t_embedder.mlp.2", "t_embedder.mlp.2")):
        out[f"{d}.weight"] = f"diffusion_model.{c}.weight"
    return out


def load_lora_sliced(lora: dict[str, torch.Tensor], key_map: dict[str, Any]) -> tuple[list[tuple], set[str]]:
    """load_lora with ComfyUI's sliced targets: [(target key, (dim, offset, size) or None, (up, down, alpha))] and the
    keys no rule consumed ("lora key not loaded"). The pair is ``lora_up``/``lora_down`` or, as
    comfy/weight_adapter/lora.py also reads (its "diffusers2" names), ``lora_B``/``lora_A``."""
    patches, loaded = [], set()
    for x, to in key_map.items():
        up, down, alpha = f"{x}.lora_up.weight", f"{x}.lora_down.weight", f"{x}.alpha"
        if up not in lora and f"{x}.lora_B.weight" in lora:
            up, down = f"{x}.lora_B.weight", f"{x}.lora_A.weight"
        if up in lora:
            a = lora[alpha].item() if alpha in lora else None
            target, offset = (to, None) if isinstance(to, str) else to
            patches.append((target, offset, ("lora", {"up": lora[up], "down": lora[down]}, a, None)))
            loaded |= {up, down} | ({alpha} if alpha in lora else set())
    return patches, set(lora) - loaded


def apply_sliced(weights: dict[str, torch.Tensor], patches: list[tuple], strength: float = 1.0) -> dict:
    """calculate_weight for "lora" patches, a (dim, offset, size) target narrowed first; returns new weights."""
    out = {k: v.clone() for k, v in weights.items()}
    for target, offset, patch in patches:
        w = out[target]
        view = w.narrow(offset[0], offset[1], offset[2]) if offset is not None else w
        view.copy_(apply_lora(view, patch, strength))
    return out


def load_lora(lora: dict[str, torch.Tensor], key_map: dict[str, str]) -> tuple[dict[str, tuple], set[str]]:
    """(target weight → (kind, {name: tensor}, alpha, dora_scale)), and the keys of the file no rule consumed
    ("lora key not loaded"). Kinds as load_lora tells them apart, per mapped name x: "lora" (x.lora_up.weight with
    x.lora_down.weight), "loha" (x.hada_w1_a present: w1_a/w1_b/w2_a/w2_b), "lokr" (any of x.lokr_w1, lokr_w2,
    lokr_w1_a, lokr_w2_a present); x.alpha and x.dora_scale are read for every kind."""
    patches, loaded = {}, set()
    for x, target in key_map.items():
        alpha = lora[f"{x}.alpha"].item() if f"{x}.alpha" in lora else None
        dora = lora.get(f"{x}.dora_scale")
        loaded |= {k for k in (f"{x}.alpha", f"{x}.dora_scale") if k in lora}
        up, down = f"{x}.lora_up.weight", f"{x}.lora_down.weight"
        if up in lora:
            patches[target] = ("lora", {"up": lora[up], "down": lora[down]}, alpha, dora)
            loaded |= {up, down}
        if f"{x}.hada_w1_a" in lora:
            t = {n: lora[f"{x}.{n}"] for n in LYCORIS_NAMES["loha"] if f"{x}.{n}" in lora}
            patches[target] = ("loha", t, alpha, dora)
            loaded |= {f"{x}.{n}" for n in t}
        t = {n: lora[f"{x}.{n}"] for n in LYCORIS_NAMES["lokr"] if f"{x}.{n}" in lora}
        if t:
            patches[target] = ("lokr", t, alpha, dora)
            loaded |= {f"{x}.{n}" for n in t}
    return patches, set(lora) - loaded


def lora_diff(patch: tuple, shape: torch.Size) -> tuple[torch.Tensor, float]:
    """(the unscaled ΔW reshaped to the weight, the alpha factor) as calculate_weight builds them per kind:
    lora: mm(up.flatten(1), down.flatten(1)), factor alpha / down.shape[0] (1 without alpha);
    loha: (w1_a @ w1_b) * (w2_a @ w2_b), factor alpha / w1_b.shape[0];
    lokr: kron(w1 or w1_a @ w1_b, w2 or w2_a @ w2_b) with w1 unsqueezed twice when w2 is 4-D; factor alpha / dim
    where dim is the rank of the last rank-decomposed factor (w2_b's, else w1_b's), 1 when both factors are full or
    no alpha is stored. (The Tucker forms hada_t1/t2, lokr_t2 are never written by lorakit and are refused here.)"""
    kind, t, alpha, _ = patch
    if kind == "lora":
        diff = torch.mm(t["up"].flatten(1).float(), t["down"].flatten(1).float())
        return diff.reshape(shape), (alpha / t["down"].shape[0]) if alpha is not None else 1.0
    assert "hada_t1" not in t and "lokr_t2" not in t, "Tucker forms are not re-derived"
    if kind == "loha":
        m1 = torch.mm(t["hada_w1_a"].float(), t["hada_w1_b"].float())
        m2 = torch.mm(t["hada_w2_a"].float(), t["hada_w2_b"].float())
        return (m1 * m2).reshape(shape), (alpha / t["hada_w1_b"].shape[0]) if alpha is not None else 1.0
    dim = None
    if "lokr_w1" in t:
        w1 = t["lokr_w1"].float()
    else:
        dim = t["lokr_w1_b"].shape[0]
        w1 = torch.mm(t["lokr_w1_a"].float(), t["lokr_w1_b"].float())
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].float()
    else:
        dim = t["lokr_w2_b"].shape[0]
        w2 = torch.mm(t["lokr_w2_a"].float(), t["lokr_w2_b"].float())
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    factor = (alpha / dim) if alpha is not None and dim is not None else 1.0
    return torch.kron(w1, w2).reshape(shape), factor


def weight_decompose(dora_scale: torch.Tensor, weight: torch.Tensor, diff: torch.Tensor, factor: float,
                     strength: float) -> torch.Tensor:
    """comfy/weight_adapter/base.py weight_decompose (float32, no function hook): W_c = W + factor·diff; a
    dora_scale whose dim 0 equals the weight's outputs is an output-axis scale normalised by the norm of the
    ORIGINAL weight's rows; otherwise an input-axis scale normalised by W_c's norm over dim 0 (and the kernel);
    eps = finfo(weight dtype).eps is added to the norm; W_c ·= dora_scale / norm; strength s gives W + s·(W_c − W)."""
    weight_calc = weight + factor * diff
    if dora_scale.shape[0] == weight_calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = weight_calc.transpose(0, 1).reshape(weight_calc.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1)).transpose(0, 1)
    norm = norm + torch.finfo(weight.dtype).eps
    weight_calc = weight_calc * (dora_scale.float() / norm)
    return weight + strength * (weight_calc - weight) if strength != 1.0 else weight_calc


def apply_lora(weight: torch.Tensor, patch: tuple, strength: float) -> torch.Tensor:
    """comfy's calculate_weight for one patch: weight + strength · factor · diff, or with a dora_scale the
    weight_decompose above (the same for every kind)."""
    diff, factor = lora_diff(patch, weight.shape)
    if patch[3] is not None:
        return weight_decompose(patch[3], weight.float(), diff, factor, strength).to(weight.dtype)
    return weight + (strength * factor * diff).to(weight.dtype)


class FakePatcher:
    """A MODEL/CLIP as far as load_lora_for_models needs one: a state dict that can be cloned and patched."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.weights = dict(weights)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.weights

    def clone(self) -> "FakePatcher":
        return FakePatcher(self.weights)


def comfy_layout(checkpoint: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """An SDXL single-file checkpoint's weights under the names ComfyUI's model and CLIP state dicts use:
    model.diffusion_model.* → diffusion_model.*; conditioner.embedders.0.transformer.* → clip_l.transformer.*;
    conditioner.embedders.1.model.* (open_clip) → clip_g.transformer.text_model.* with the fused attention
    in_proj split into q/k/v and the mlp/out_proj renamed (comfy.utils.clip_text_transformers_convert)."""
    unet = {k[len("model."):]: v.float() for k, v in checkpoint.items() if k.startswith("model.diffusion_model.")}
    clip = {}
    for k, v in checkpoint.items():
        if k.startswith("conditioner.embedders.0.transformer."):
            clip["clip_l.transformer." + k[len("conditioner.embedders.0.transformer."):]] = v.float()
        elif k.startswith("conditioner.embedders.1.model.transformer.resblocks."):
            rest = k[len("conditioner.embedders.1.model.transformer.resblocks."):]
            b, tail = rest.split(".", 1)
            base = f"clip_g.transformer.text_model.encoder.layers.{b}."
            if tail == "attn.in_proj_weight":
                for part, w in zip(("q", "k", "v"), v.float().chunk(3, 0)):
                    clip[f"{base}self_attn.{part}_proj.weight"] = w
            else:
                ren = {"attn.out_proj.weight": "self_attn.out_proj.weight", "mlp.c_fc.weight": "mlp.fc1.weight",
                       "mlp.c_proj.weight": "mlp.fc2.weight"}
                if tail in ren:
                    clip[base + ren[tail]] = v.float()
    return unet, clip


def toy_loader_node(checkpoint_path: Path) -> type:
    """A stand-in for CheckpointLoaderSimple on lorakit's toy SDXL checkpoint: MODEL and CLIP as FakePatchers."""

    def run(self):
        from safetensors.torch import load_file

        unet, clip = comfy_layout(load_file(str(checkpoint_path)))
        return (FakePatcher(unet), FakePatcher(clip))

    return type("ToyCheckpointLoader", (), {"INPUT_TYPES": classmethod(lambda cls: {"required": {}}),
                                            "RETURN_TYPES": ("MODEL", "CLIP"), "FUNCTION": "run",
                                            "CATEGORY": "test", "run": run})


def capture_node(store: list) -> type:
    """An output node that keeps what reaches it (MODEL and CLIP)."""

    def run(self, model, clip):
        store.append((model, clip))
        return {"ui": {}}

    return type("Capture", (), {"INPUT_TYPES": classmethod(lambda cls: {"required": {"model": ("MODEL",),
                                                                                    "clip": ("CLIP",)}}),
                                "RETURN_TYPES": (), "FUNCTION": "run", "CATEGORY": "test", "OUTPUT_NODE": True,
                                "run": run})

