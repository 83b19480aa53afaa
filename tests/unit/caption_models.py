"""Tiny captioners of the real classes, built offline for the caption tests.

* a WD14-style tagger: an ONNX graph (built with ``onnx.helper``) + ``selected_tags.csv``. Its output is a known
  function of the picture: sigmoid(mean BGR colour / 255 · W + b), so tests can compute the expected tags;
* Florence-2, Qwen2.5-VL, Qwen3-VL and BLIP with tiny random configs, saved with ``save_pretrained`` together
  with tokenizers built in memory (byte-level BPE without merges / a WordPiece vocabulary).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# name, category, weights on (B, G, R) channel means in [0, 1], bias
TAGGER_TAGS = [
    ("general", 9, (0.0, 0.0, 0.0), 2.0),
    ("sensitive", 9, (0.0, 0.0, 0.0), -2.0),
    ("red_theme", 0, (-4.0, -4.0, 8.0), -2.0),
    ("blue_theme", 0, (8.0, -4.0, -4.0), -2.0),
    ("1girl", 0, (0.0, 0.0, 0.0), 3.0),
    ("^_^", 0, (0.0, 0.0, 0.0), 1.0),
    ("simple_background", 0, (0.0, 0.0, 0.0), -0.2),   # p = 0.45: above 0.35, below 0.5
    ("hatsune_miku", 4, (0.0, 0.0, 0.0), 2.0),         # p = 0.88: above the 0.85 character threshold
    ("other_character", 4, (0.0, 0.0, 0.0), 1.0),      # p = 0.73: below it
]


def tagger_probs(image_rgb: np.ndarray) -> np.ndarray:
    """What the tiny tagger outputs for one RGB uint8 picture already at the model's side (independent maths)."""
    bgr = image_rgb[:, :, ::-1].astype(np.float64).reshape(-1, 3).mean(0) / 255.0
    w = np.array([t[2] for t in TAGGER_TAGS]).T
    b = np.array([t[3] for t in TAGGER_TAGS])
    return 1.0 / (1.0 + np.exp(-(bgr @ w + b)))


def build_tagger(folder: Path, side: int = 32, tags=TAGGER_TAGS) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = (np.array([t[2] for t in tags], dtype=np.float32).T / 255.0).astype(np.float32)
    b = np.array([t[3] for t in tags], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input_1:0", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_wd14",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(tags)])],
        initializer=[numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
                     numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    with (folder / "selected_tags.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat, _, _) in enumerate(tags):
            out.writerow([1000 + i, name, cat, 100 - i])
    return folder


# ------------------------------------------------------------------------------------------ transformers

def _byte_vocab(specials: list[str]) -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {s: i for i, s in enumerate(specials)}
    for u in bytes_to_unicode().values():
        vocab.setdefault(u, len(vocab))
    return vocab


def build_blip(folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    from lorakit.caption.toy import build_model, build_processor

    processor = build_processor(image_size=32)
    model = build_model(len(processor.tokenizer.get_vocab()), image_size=32, hidden=16, layers=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_florence2(folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    from transformers import BartConfig, BartTokenizer, Florence2Config, Florence2ForConditionalGeneration, \
        Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = BartTokenizer(vocab=_byte_vocab(["<s>", "<pad>", "</s>", "<unk>"]), merges=[],
                        extra_special_tokens={"image_token": "<image>"})
    ip = CLIPImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                               do_center_crop=False, image_seq_length=5)
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 32], num_heads=[1, 1, 2, 2], num_groups=[1, 1, 2, 2],
                  window_size=2, projection_dim=32, drop_path_rate=0.0)
    text = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0)
    model = Florence2ForConditionalGeneration(Florence2Config(vision_config=vision, text_config=text.to_dict(),
                                                              image_token_id=tok.image_token_id))
    model.save_pretrained(folder)
    Florence2Processor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for c in m.content %}{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_qwen_vl(folder: Path, family: str = "qwen2_5_vl") -> Path:
    """A tiny Qwen2.5-VL or Qwen3-VL: model, tokenizer (with the chat template) and image processor.

    The processor class itself is not saved: transformers builds it only with a video processor, which needs
    torchvision; lorakit's VLM back-end then assembles the inputs from the tokenizer and image processor."""
    import torch

    torch.manual_seed(0)
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = Qwen2TokenizerFast(vocab=_byte_vocab([]), merges=[], unk_token=None, bos_token=None,
                             eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    tok.chat_template = CHAT_TEMPLATE
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=512, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model

        patch = 14
        vision = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=32,
                      patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[0])
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    else:
        from transformers import Qwen3VLConfig as Config, Qwen3VLForConditionalGeneration as Model

        patch = 16
        vision = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=32,
                      patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                      deepstack_visual_indexes=[0])
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                  "mrope_interleaved": True, "rope_theta": 10000.0})
    cfg = Config(vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
                 video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                 vision_end_token_id=ids["<|vision_end|>"])
    model = Model(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=4 * patch * patch * 4, max_pixels=16 * patch * patch * 4, patch_size=patch,
                             merge_size=2, temporal_patch_size=2).save_pretrained(folder)
    return folder
