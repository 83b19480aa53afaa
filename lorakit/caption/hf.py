"""transformers captioners, each loaded from a local folder (offline; nothing is fetched):

* Florence-2 through transformers' native ``Florence2ForConditionalGeneration`` (no remote code), with its task
  prompts (``<DETAILED_CAPTION>`` by default; ``<CAPTION>``, ``<MORE_DETAILED_CAPTION>``);
* chat VLMs of the Qwen2-VL / Qwen2.5-VL / Qwen3-VL classes, with an instruction per purpose;
* BLIP (``BlipForConditionalGeneration``) for the old recipes, and lorakit's toy captioner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from lorakit.caption.base import require
from lorakit.errors import ModelLoadError

WEIGHTS = "model.safetensors|model.safetensors.index.json"
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
VLM_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")

# What the guide asks of a caption: describe what should stay variable, leave out what the LoRA should learn.
INSTRUCTIONS = {
    "character": ("Write one sentence describing this photo for training an image model on the person in it. "
                  "Describe the clothing, pose, expression, setting, lighting and framing. Do not describe the "
                  "person's face, hair, body or identity; call them '{subject}'."),
    "style": ("Write one sentence describing what this image shows: the subjects, objects, setting and "
              "composition. Do not describe the art style, medium, colours, brushwork or mood."),
    "product": ("Write one sentence describing this photo for training an image model on the product in it. "
                "Describe the setting, background, lighting, camera angle and anything around the product. "
                "Do not describe the product's shape, colours, materials or branding; call it '{subject}'."),
}


def _config(folder: Path, what: str, where: str) -> dict:
    require(folder, ("config.json", WEIGHTS), what, where)
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder / 'config.json'}: not readable JSON ({e})") from None


def _dtype(device: str, dtype: Optional[str]):
    import torch

    if dtype:
        try:
            return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        except KeyError:
            raise ModelLoadError(f"--dtype: {dtype!r} is not one of fp32, fp16, bf16") from None
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _load(cls, folder: Path, device: str, dtype: Optional[str], what: str, processor=None):
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # lorakit prints its own progress

    try:
        processor = processor or AutoProcessor.from_pretrained(folder)
        model = cls.from_pretrained(folder, dtype=_dtype(device, dtype))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{folder}: the {what} cannot be loaded ({str(e).splitlines()[0]})") from None
    return processor, model.to(device).eval()


class QwenVLInputs:
    """The Qwen-VL processor's job done from its tokenizer and image processor: used where transformers cannot
    build the processor class itself (it insists on a video processor, which needs torchvision)."""

    def __init__(self, folder: Path):
        from transformers import AutoImageProcessor, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.image_processor = AutoImageProcessor.from_pretrained(folder)
        template = self.tokenizer.chat_template
        for name in ("chat_template.jinja", "chat_template.json"):
            if template is None and (folder / name).is_file():
                raw = (folder / name).read_text(encoding="utf-8")
                template = json.loads(raw)["chat_template"] if name.endswith(".json") else raw
        if template is None:
            raise ModelLoadError(f"{folder / 'chat_template.jinja'}: missing; the VLM folder needs its chat template")
        self.chat_template = template
        self.image_token = getattr(self.tokenizer, "image_token", None) or "<|image_pad|>"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                  add_generation_prompt=add_generation_prompt, tokenize=tokenize)

    def batch_decode(self, *a, **k):
        return self.tokenizer.batch_decode(*a, **k)

    def __call__(self, text: list[str], images: list, padding=True, return_tensors="pt"):
        vision = self.image_processor(images=images, return_tensors=return_tensors)
        merge = self.image_processor.merge_size ** 2
        counts = iter((vision["image_grid_thw"].prod(-1) // merge).tolist())
        expanded = []
        for t in text:
            while self.image_token in t:   # one image per prompt here; a placeholder keeps replaced tokens apart
                t = t.replace(self.image_token, "\0" * next(counts), 1)
            expanded.append(t.replace("\0", self.image_token))
        enc = self.tokenizer(expanded, padding=padding, return_tensors=return_tensors)
        return {**enc, **vision}


class _HF:
    kind = "sentence"

    def _generate(self, inputs, **kw):
        import torch

        inputs = {k: (v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if hasattr(v, "to")}
        with torch.inference_mode():
            return inputs, self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                               num_beams=self.num_beams, do_sample=False, **kw)


class BlipCaptioner(_HF):
    """BLIP image captioning (Salesforce/blip-image-captioning-base|large, or the toy captioner)."""

    name = "blip"
    WHERE = "a BLIP captioning folder, e.g. Salesforce/blip-image-captioning-large"

    def __init__(self, folder: Path, device: str = "cpu", dtype: Optional[str] = None, prompt: str = "",
                 max_new_tokens: int = 40, num_beams: int = 1):
        from transformers import BlipForConditionalGeneration

        cfg = _config(folder, "BLIP model", self.WHERE)
        if cfg.get("model_type") != "blip":
            raise ModelLoadError(f"{folder / 'config.json'}: model_type {cfg.get('model_type')!r} is not BLIP")
        self.processor, self.model = _load(BlipForConditionalGeneration, folder, device, dtype, "BLIP model")
        self.device, self.prompt = device, prompt
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        kw = {"text": [self.prompt] * len(images)} if self.prompt else {}
        inputs = self.processor(images=list(images), return_tensors="pt", **kw)
        _, out = self._generate(inputs)
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]


class Florence2Captioner(_HF):
    """Florence-2 through transformers' own Florence2 classes (a converted folder, no remote code)."""

    name = "florence2"
    WHERE = "a Florence-2 folder in transformers' native format, e.g. florence-community/Florence-2-large"

    def __init__(self, folder: Path, device: str = "cpu", dtype: Optional[str] = None,
                 task: str = "<DETAILED_CAPTION>", max_new_tokens: int = 256, num_beams: int = 3):
        from transformers import Florence2ForConditionalGeneration

        cfg = _config(folder, "Florence-2 model", self.WHERE)
        if "auto_map" in cfg or cfg.get("model_type") != "florence2":
            raise ModelLoadError(f"{folder / 'config.json'}: this is not a native transformers Florence-2 folder "
                                 f"(model_type {cfg.get('model_type')!r}{', remote code' if 'auto_map' in cfg else ''})"
                                 f"; lorakit runs no remote code: use {self.WHERE.split(', ')[1]}")
        if task not in FLORENCE_TASKS:
            raise ModelLoadError(f"--task: {task!r} is not a captioning task; use one of {', '.join(FLORENCE_TASKS)}")
        self.processor, self.model = _load(Florence2ForConditionalGeneration, folder, device, dtype,
                                           "Florence-2 model")
        self.device, self.task = device, task
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        inputs = self.processor(text=[self.task] * len(images), images=list(images), return_tensors="pt")
        _, out = self._generate(inputs)
        # the captioning tasks are plain text (no <loc_> tokens to parse): special tokens dropped, spaces tidied
        return [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]


class VLMCaptioner(_HF):
    """A chat VLM (Qwen2-VL / Qwen2.5-VL / Qwen3-VL classes) asked one instruction per image."""

    name = "vlm"
    WHERE = "a Qwen2.5-VL or Qwen3-VL folder, e.g. Qwen/Qwen2.5-VL-7B-Instruct"

    def __init__(self, folder: Path, device: str = "cpu", dtype: Optional[str] = None, purpose: str = "character",
                 instruction: Optional[str] = None, subject: str = "the subject", max_new_tokens: int = 160,
                 num_beams: int = 1):
        from transformers import AutoModelForImageTextToText

        cfg = _config(folder, "VLM", self.WHERE)
        if cfg.get("model_type") not in VLM_TYPES:
            raise ModelLoadError(f"{folder / 'config.json'}: model_type {cfg.get('model_type')!r} is not one of "
                                 f"{', '.join(VLM_TYPES)}")
        if instruction is None and purpose not in INSTRUCTIONS:
            raise ModelLoadError(f"--purpose: {purpose!r} is not one of {', '.join(INSTRUCTIONS)}")
        self.instruction = (instruction or INSTRUCTIONS[purpose]).replace("{subject}", subject)
        try:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(folder)
        except (ImportError, AttributeError, ValueError, TypeError):   # no torchvision: no video processor
            try:
                processor = QwenVLInputs(folder)
            except (OSError, ValueError, KeyError) as e:
                raise ModelLoadError(f"{folder}: the VLM's tokenizer or image processor cannot be loaded "
                                     f"({str(e).splitlines()[0]}); {self.WHERE}") from None
        self.processor, self.model = _load(AutoModelForImageTextToText, folder, device, dtype, "VLM", processor)
        self.processor.tokenizer.padding_side = "left"     # batched generation continues every row at its end
        self.device = device
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    def prompt(self) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.instruction}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        inputs = self.processor(text=[self.prompt()] * len(images), images=list(images), padding=True,
                                return_tensors="pt")
        sent, out = self._generate(inputs)
        new = out[:, sent["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
