"""Which LoRA key names each loader applies: the key maps of ComfyUI, Forge, diffusers and kohya's sd-scripts,
re-derived from their sources and kept here as data (with the commit each was read from).

A rule is (component, name template, pair style). Templates expand over a family's modules
(:class:`~lorakit.lora.formats.keymap.FamilyKeys`):

* ``{native}`` / ``{native_}``: the single-file module path, as is / with "." -> "_";
* ``{diff}`` / ``{diff_}``: each diffusers module path (a part of a fused module maps onto its rows);
* ``{diff_proc}``: the diffusers path with ".to_" -> ".processor.to_" and a final ".to_out.0" -> ".to_out"
  (the attention-processor names ComfyUI and Forge map for SDXL; PEFT-style ``attn1.to_q`` is not among them).

Pair styles: "kohya" = ``.lora_up.weight``/``.lora_down.weight``; "peft" = ``.lora_B.weight``/``.lora_A.weight``;
"any" = both (ComfyUI's LoRA adapter also reads ``_lora.up``, ``.lora.up`` and ``.lora_linear_layer.up``,
which lorakit never writes). ``.alpha`` is read wherever a pair is.

What each loader does with a key no rule names (``unknown``) is recorded with it: ComfyUI and Forge log
"lora key not loaded" and skip it, sd-scripts loads non-strictly (silently ignored), diffusers ignores or
raises depending on the path. Every rule below cites the function it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = {
    "comfyui": "Comfy-Org/ComfyUI@ec93dcacb96b922f7cb1417b3ba22bccb082df32 comfy/lora.py "
               "(load_lora, model_lora_keys_clip, model_lora_keys_unet), comfy/lora_convert.py@2bffe2f4",
    "forge": "lllyasviel/stable-diffusion-webui-forge@dfdcbab685e57677014f05a3309b48cc87383167 "
             "backend/patcher/lora.py, packages_3rdparty/comfyui_lora_collection/lora.py",
    "diffusers": "huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951 "
                 "src/diffusers/loaders/lora_conversion_utils.py (_convert_non_diffusers_lora_to_diffusers, "
                 "_convert_kohya_flux_lora_to_diffusers), loaders/lora_pipeline.py",
    "kohya": "kohya-ss/sd-scripts@48d368fa557731ad0488c07304dfeba8c07910eb networks/lora.py "
             "(create_network_from_weights, convert_diffusers_to_sai_if_needed), networks/lora_flux.py",
}

UNKNOWN = {
    "comfyui": "logs 'lora key not loaded' and skips the key",
    "forge": "prints '[LORA] Loading … with unmatched keys' and skips them",
    "diffusers": "drops it (T5 keys: 'Unsupported keys' warning) or refuses the file with a ValueError",
    "kohya": "loads the network with strict=False: the key is silently ignored",
}


@dataclass(frozen=True)
class Rule:
    component: str
    template: str
    style: str  # "kohya", "peft", "any"
    skip: tuple[str, ...] = ()  # native paths ending so are not named by this rule (the loader cannot split them)


# FLUX.2's Linears outside the blocks that flux_to_diffusers has no diffusers name for (its time/guidance embedders
# are FLUX.1's time_text_embed.*, FLUX.2 has no per-block modulation): ComfyUI reads them by BFL name only
_FLUX2_NO_DIFFUSERS = ("time_in.in_layer", "time_in.out_layer", "guidance_in.in_layer", "guidance_in.out_layer",
                       "double_stream_modulation_img.lin", "double_stream_modulation_txt.lin",
                       "single_stream_modulation.lin")

# model_lora_keys_unet for an SD UNet (SDXL, SD 1.x): every diffusion_model.* weight, then unet_to_diffusers
_SD_UNET_COMFY = (Rule("denoiser", "lora_unet_{native_}", "any"), Rule("denoiser", "diffusion_model.{native}", "any"),
                  Rule("denoiser", "lora_unet_{diff_}", "any"), Rule("denoiser", "lycoris_{diff_}", "any"),
                  Rule("denoiser", "{diff_proc}", "any"), Rule("denoiser", "unet.{diff_proc}", "any"))
# the Flux branch as FLUX.2 meets it (shared by ComfyUI and Forge's copy of its loader)
_FLUX2_COMFY = (Rule("denoiser", "lora_unet_{native_}", "any"), Rule("denoiser", "diffusion_model.{native}", "any"),
                Rule("denoiser", "transformer.{diff}", "any", _FLUX2_NO_DIFFUSERS),
                Rule("denoiser", "lycoris_{diff_}", "any", _FLUX2_NO_DIFFUSERS),
                Rule("denoiser", "lora_transformer_{diff_}", "any", _FLUX2_NO_DIFFUSERS))
# the Lumina2 branch (Z-Image): z_image_to_diffusers names under diffusion_model. and transformer.
_ZIMAGE_COMFY = (Rule("denoiser", "lora_unet_{native_}", "any"), Rule("denoiser", "diffusion_model.{native}", "any"),
                 Rule("denoiser", "diffusion_model.{diff}", "any"), Rule("denoiser", "transformer.{diff}", "any"))

_CLIP_L_COMFY = (Rule("te1", "lora_te_{native_}", "any"), Rule("te1", "lora_te1_{native_}", "any"),
                 Rule("te1", "text_encoder.{native}", "any"))

RULES: dict[str, dict[str, tuple[Rule, ...]]] = {
    "comfyui": {
        "sdxl": (
            # model_lora_keys_unet: every diffusion_model.* weight, then unet_to_diffusers for SD UNets
            *_SD_UNET_COMFY,
            # model_lora_keys_clip: clip_l then clip_g (te2 names only when clip_l is present: SDXL base)
            *_CLIP_L_COMFY, Rule("te1", "text_encoders.clip_l.transformer.{native}", "any"),
            Rule("te2", "lora_te2_{native_}", "any"), Rule("te2", "text_encoder_2.{native}", "any"),
            Rule("te2", "text_encoders.clip_g.transformer.{native}", "any"),
        ),
        "flux1": (
            Rule("denoiser", "lora_unet_{native_}", "any"), Rule("denoiser", "diffusion_model.{native}", "any"),
            # isinstance(model, Flux): flux_to_diffusers -> transformer.*, lycoris_*, lora_transformer_*, bare
            Rule("denoiser", "transformer.{diff}", "any"), Rule("denoiser", "lycoris_{diff_}", "any"),
            Rule("denoiser", "lora_transformer_{diff_}", "any"), Rule("denoiser", "{diff}", "any"),
            *_CLIP_L_COMFY, Rule("te1", "text_encoders.clip_l.transformer.{native}", "any"),
            # t5xxl with clip_l present: both lora_te2_ (OneTrainer) and lora_te3_
            Rule("te3", "lora_te2_{native_}", "any"), Rule("te3", "lora_te3_{native_}", "any"),
            Rule("te3", "text_encoders.t5xxl.transformer.{native}", "any"),
        ),
        "sd15": (
            # model_lora_keys_unet as for SDXL (unet_to_diffusers of the SD 1.x config); model_lora_keys_clip: clip_l
            # takes lora_te_ and lora_te1_ (sd-scripts' SD 1.x names are lora_unet_<diffusers path>, lora_te_)
            *_SD_UNET_COMFY,
            *_CLIP_L_COMFY, Rule("te1", "text_encoders.clip_l.transformer.{native}", "any"),
        ),
        "flux2": (
            # model_base.Flux2 is a Flux: the generic names plus flux_to_diffusers, which maps FLUX.2's block Linears
            # (to_q/k/v and add_*_proj as row slices of qkv, ff.linear_in/out, to_qkv_mlp_proj, attn.to_out) and
            # x_embedder / context_embedder / proj_out
            *_FLUX2_COMFY,
            Rule("denoiser", "{diff}", "any", _FLUX2_NO_DIFFUSERS),
        ),
        "zimage": (
            # model_base.Lumina2: the generic names plus z_image_to_diffusers (every Linear; to_q/k/v as row slices
            # of attention.qkv) under diffusion_model., transformer., lycoris_ and bare
            *_ZIMAGE_COMFY,
            Rule("denoiser", "lycoris_{diff_}", "any"), Rule("denoiser", "{diff}", "any"),
        ),
        "qwenimage": (
            # model_lora_keys_unet: the generic lora_unet_ / diffusion_model. names of every weight, then the
            # QwenImage branch (the model keeps diffusers' paths): bare, transformer. and lycoris_ (SimpleTuner)
            Rule("denoiser", "lora_unet_{native_}", "any"), Rule("denoiser", "diffusion_model.{native}", "any"),
            Rule("denoiser", "{native}", "any"), Rule("denoiser", "transformer.{native}", "any"),
            Rule("denoiser", "lycoris_{native_}", "any"),
        ),
        "sd3": (
            # model_base.SD3: the generic names plus mmdit_to_diffusers (to_q/k/v, add_*_proj as row slices of qkv)
            # under transformer., base_model.model., lora_transformer_ and lycoris_; model_lora_keys_clip: clip_l as
            # lora_te_/lora_te1_, clip_g (clip_l present) as lora_te2_, t5xxl as lora_te3_
            Rule("denoiser", "lora_unet_{native_}", "any"), Rule("denoiser", "diffusion_model.{native}", "any"),
            Rule("denoiser", "transformer.{diff}", "any"), Rule("denoiser", "base_model.model.{diff}", "any"),
            Rule("denoiser", "lora_transformer_{diff_}", "any"), Rule("denoiser", "lycoris_{diff_}", "any"),
            *_CLIP_L_COMFY, Rule("te1", "text_encoders.clip_l.transformer.{native}", "any"),
            Rule("te2", "lora_te2_{native_}", "any"), Rule("te2", "text_encoder_2.{native}", "any"),
            Rule("te2", "text_encoders.clip_g.transformer.{native}", "any"),
            Rule("te3", "lora_te3_{native_}", "any"), Rule("te3", "text_encoders.t5xxl.transformer.{native}", "any"),
        ),
    },
    "forge": {
        "sdxl": (
            *_SD_UNET_COMFY,
            *_CLIP_L_COMFY,
            Rule("te2", "lora_te2_{native_}", "any"), Rule("te2", "text_encoder_2.{native}", "any"),
        ),
        "flux1": (
            Rule("denoiser", "lora_unet_{native_}", "any"), Rule("denoiser", "diffusion_model.{native}", "any"),
            Rule("denoiser", "transformer.{diff}", "any"), Rule("denoiser", "lycoris_{diff_}", "any"),
            Rule("denoiser", "lora_transformer_{diff_}", "any"),
            *_CLIP_L_COMFY,
            # backend/patcher/lora.py adds lora_te1_/te2_/te3_ for every t5xxl.transformer.* weight
            Rule("te3", "lora_te1_{native_}", "any"), Rule("te3", "lora_te2_{native_}", "any"),
            Rule("te3", "lora_te3_{native_}", "any"),
        ),
        "sd15": (
            *_SD_UNET_COMFY,
            *_CLIP_L_COMFY,
        ),
        # Forge's FLUX loader is ComfyUI's (packages_3rdparty/comfyui_lora_collection); Z-Image it takes from its
        # z_image_to_diffusers copy (backend/utils.py)
        "flux2": (
            *_FLUX2_COMFY,
        ),
        "zimage": (
            *_ZIMAGE_COMFY,
        ),
        "qwenimage": (),  # Forge has no Qwen-Image model
        # SD3.5 (backend/diffusion_engine/sd35.py): comfyui_lora_collection/lora.py@00f1cd36 has ComfyUI's SD3 branch
        # (mmdit_to_diffusers) commented out: the generic names and the CLIP / T5 ones only
        "sd3": (
            Rule("denoiser", "lora_unet_{native_}", "any"), Rule("denoiser", "diffusion_model.{native}", "any"),
            *_CLIP_L_COMFY,
            Rule("te2", "lora_te2_{native_}", "any"), Rule("te2", "text_encoder_2.{native}", "any"),
            Rule("te3", "lora_te3_{native_}", "any"),
        ),
    },
    "diffusers": {
        "sdxl": (
            # kohya files: _convert_non_diffusers_lora_to_diffusers (lora_unet_ SGM or diffusers-named, lora_te1/2_)
            Rule("denoiser", "lora_unet_{native_}", "kohya"), Rule("denoiser", "lora_unet_{diff_}", "kohya"),
            Rule("te1", "lora_te_{native_}", "kohya"), Rule("te1", "lora_te1_{native_}", "kohya"),
            Rule("te2", "lora_te2_{native_}", "kohya"),
            # PEFT-style files, prefixed by component
            Rule("denoiser", "unet.{diff}", "peft"), Rule("te1", "text_encoder.{native}", "peft"),
            Rule("te2", "text_encoder_2.{native}", "peft"),
        ),
        "flux1": (
            # _convert_kohya_flux_lora_to_diffusers: block modules, in/time/vector/guidance layers, final_layer;
            # lora_te1_ for CLIP-L; lora_te3_ (T5) is left over and dropped with a warning
            Rule("denoiser", "lora_unet_{native_}", "kohya"), Rule("te1", "lora_te1_{native_}", "kohya"),
            Rule("te1", "lora_te_{native_}", "kohya"),
            Rule("denoiser", "transformer.{diff}", "any"), Rule("te1", "text_encoder.{native}", "peft"),
        ),
        "sd15": (
            # StableDiffusionLoraLoaderMixin: _maybe_map_sgm_blocks_to_diffusers (LDM names), then
            # _convert_non_diffusers_lora_to_diffusers (lora_unet_<diffusers path>, lora_te_)
            Rule("denoiser", "lora_unet_{native_}", "kohya"), Rule("denoiser", "lora_unet_{diff_}", "kohya"),
            Rule("te1", "lora_te_{native_}", "kohya"), Rule("te1", "lora_te1_{native_}", "kohya"),
            Rule("denoiser", "unet.{diff}", "peft"), Rule("te1", "text_encoder.{native}", "peft"),
        ),
        "flux2": (
            # Flux2LoraLoaderMixin: _convert_kohya_flux2_lora_to_diffusers (lora_unet_<BFL>),
            # _convert_non_diffusers_flux2_lora_to_diffusers (diffusion_model.<BFL>, ai-toolkit), transformer.<path>
            Rule("denoiser", "lora_unet_{native_}", "kohya"), Rule("denoiser", "diffusion_model.{native}", "any"),
            Rule("denoiser", "transformer.{diff}", "peft"),
        ),
        "zimage": (
            # ZImageLoraLoaderMixin: _convert_non_diffusers_z_image_lora_to_diffusers turns lora_unet_ / diffusion_model.
            # names into dotted diffusers paths (.out -> .to_out.0) but never splits a fused qkv
            Rule("denoiser", "lora_unet_{native_}", "kohya", skip=(".attention.qkv",)),
            Rule("denoiser", "lora_unet_{diff_}", "kohya"),
            Rule("denoiser", "diffusion_model.{native}", "any", skip=(".attention.qkv",)),
            Rule("denoiser", "diffusion_model.{diff}", "any"), Rule("denoiser", "transformer.{diff}", "any"),
        ),
        "qwenimage": (
            # QwenImageLoraLoaderMixin: _convert_non_diffusers_qwen_lora_to_diffusers for lora_unet_ names (musubi-tuner's,
            # what lorakit writes), PEFT-style transformer.<path> files as they are
            Rule("denoiser", "lora_unet_{native_}", "kohya"), Rule("denoiser", "transformer.{diff}", "peft"),
        ),
        "sd3": (
            # SD3LoraLoaderMixin.lora_state_dict converts no non-diffusers names: PEFT-style transformer., text_encoder.
            # (CLIP-L) and text_encoder_2. (CLIP-G) only
            Rule("denoiser", "transformer.{diff}", "peft"), Rule("te1", "text_encoder.{native}", "peft"),
            Rule("te2", "text_encoder_2.{native}", "peft"),
        ),
    },
    "kohya": {
        "sdxl": (
            # networks/lora.py: Transformer2DModel Linears + (with conv dims) resnet/sampler convs; SAI names,
            # diffusers-named lora_unet_ keys converted first (convert_diffusers_to_sai_if_needed)
            Rule("denoiser", "lora_unet_{native_}", "kohya"), Rule("denoiser", "lora_unet_{diff_}", "kohya"),
            Rule("te1", "lora_te1_{native_}", "kohya"), Rule("te2", "lora_te2_{native_}", "kohya"),
        ),
        "flux1": (
            # networks/lora_flux.py: Double/SingleStreamBlock Linears, in_dims layers; lora_te1_ CLIP, lora_te3_ T5
            Rule("denoiser", "lora_unet_{native_}", "kohya"), Rule("te1", "lora_te1_{native_}", "kohya"),
            Rule("te3", "lora_te3_{native_}", "kohya"),
        ),
        "sd15": (
            # networks/lora.py for SD 1.x: Transformer2DModel Linears / 1x1 convs (+ resnet convs with conv_dim), named
            # by the diffusers path; CLIP-L as lora_te_
            Rule("denoiser", "lora_unet_{diff_}", "kohya"), Rule("te1", "lora_te_{native_}", "kohya"),
        ),
        # no FLUX.2 or Z-Image network in sd-scripts (networks/lora_flux.py is FLUX.1's): every key is ignored
        "flux2": (), "zimage": (),
        # nor a Qwen-Image one (musubi-tuner trains it)
        "qwenimage": (),
        # networks/lora_sd3.py@077f6a4f: LORA_PREFIX_SD3 = "lora_unet" + the MMDiT module path, lora_te1_ / lora_te2_ /
        # lora_te3_ for CLIP-L / CLIP-G / T5
        "sd3": (
            Rule("denoiser", "lora_unet_{native_}", "kohya"), Rule("te1", "lora_te1_{native_}", "kohya"),
            Rule("te2", "lora_te2_{native_}", "kohya"), Rule("te3", "lora_te3_{native_}", "kohya"),
        ),
    },
}

# issue 23: the LyCORIS variants each loader applies under the names its rules give (kohya-style ``lora_unet_…``):
# ComfyUI's load_lora reads hada_w1_a/…, lokr_w1/…, dora_scale beside lora_up/lora_down for every mapped name
# (comfy/lora.py@41444b5236c613ee5ff7d09aa620f94b702f30eb; comfy/weight_adapter/loha.py@183b3775, lokr.py@e8f3bc5a,
# base.py@9c0cf36c weight_decompose), Forge the same (packages_3rdparty/comfyui_lora_collection/lora.py@5e1dcd35).
# diffusers 0.42.1's SD/SDXL loaders filter out every dora_scale key with a warning and have no LoHa/LoKr conversion
# (loaders/lora_pipeline.py: LoKr only for Z-Image and FLUX.2); sd-scripts' networks.lora loads lora_up/lora_down
# only (a LyCORIS file needs LyCORIS' own lycoris.kohya module).
VARIANTS: dict[str, tuple[str, ...]] = {"comfyui": ("loha", "lokr", "dora"), "forge": ("loha", "lokr", "dora"),
                                        "diffusers": (), "kohya": ()}
VARIANT_NOTES = {"diffusers": "its SD/SDXL loaders convert no LoHa/LoKr and drop dora_scale with a warning",
                 "kohya": "sd-scripts' networks.lora reads lora_up/lora_down only; LyCORIS' lycoris.kohya module "
                          "loads these"}

# modules a loader's rules name but that loader never creates a LoRA module for (kohya's FLUX network has no
# final_layer target; it only wraps the in_dims layers and the blocks)
EXCLUDED_NATIVE: dict[tuple[str, str], tuple[str, ...]] = {
    ("kohya", "flux1"): ("final_layer.",),
}

PAIRS = {"kohya": ((".lora_up.weight", ".lora_down.weight"),),
         "peft": ((".lora_B.weight", ".lora_A.weight"),),
         "any": ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"))}


def _proc(path: str) -> str:
    out = path.replace(".to_", ".processor.to_")
    return out[:-2] if out.endswith(".to_out.0") else out


def expand(template: str, native: str, diffusers: tuple[str, ...]) -> list[tuple[str, int]]:
    """Names a template gives one module: (name, part index or -1 for the whole module)."""
    if "{native" in template:
        return [(template.replace("{native_}", native.replace(".", "_")).replace("{native}", native), -1)]
    out = []
    for i, d in enumerate(diffusers):
        name = (template.replace("{diff_proc}", _proc(d)).replace("{diff_}", d.replace(".", "_"))
                .replace("{diff}", d))
        out.append((name, i if len(diffusers) > 1 else -1))
    return out
