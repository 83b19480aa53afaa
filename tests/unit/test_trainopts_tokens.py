"""data.max_token_length = 150/225 (issue 23, SDXL): captions past 77 tokens are split into 75-token chunks, each
wrapped in BOS/EOS (padded), encoded separately and joined (the first BOS state, each chunk's 75 text states, the
last chunk's final state); the pooled embedding is the first chunk's. Checked against the tiny CLIPs run by hand."""

import pytest
import torch

from lorakit.config.schema import Config
from lorakit.models.sdxl import Adapter
from lorakit.models.sdxl.load import write_tiny_checkpoint


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    tiny = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=2)
    cfg = Config()
    cfg.model.family, cfg.model.checkpoint, cfg.model.config_dir = "sdxl", str(tiny["checkpoint"]), str(tiny["config"])
    cfg.data.max_token_length = 225
    ad = Adapter(cfg)
    ad.load(cfg.model, cfg.memory, torch.device("cpu"), torch.float32)
    return ad


def _by_hand(tokenizer, encoder, caption, n):
    """Chunk k = BOS, text tokens 75k … 75k+74, EOS, padding to 77; every chunk through the encoder on its own."""
    text = tokenizer(caption, add_special_tokens=False).input_ids[: 75 * n]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    states, pooled = [], None
    for k in range(n):
        body = text[75 * k: 75 * (k + 1)]
        ids = torch.tensor([[bos, *body, eos] + [pad] * (75 - len(body))])
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2][0])
        if k == 0:
            pooled = out.text_embeds[0] if hasattr(out, "text_embeds") else None
    joined = torch.cat([states[0][:1]] + [s[1:76] for s in states] + [states[-1][-1:]])
    return joined, pooled


@pytest.mark.parametrize("words", [160, 40])  # past two chunks (third partly empty), and a short caption
def test_chunked_encoding_matches_the_encoders_run_by_hand(adapter, words):
    caption = " ".join(f"tag{i % 37} red" for i in range(words // 2))
    got = adapter.encode_text([caption, "a cat"])
    assert got["context"].shape[1] == 227 and got["pooled"].shape[0] == 2
    with torch.no_grad():
        h1, _ = _by_hand(adapter.tokenizer1, adapter.te1, caption, 3)
        h2, pooled = _by_hand(adapter.tokenizer2, adapter.te2, caption, 3)
    torch.testing.assert_close(got["context"][0], torch.cat([h1, h2], dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["pooled"][0], pooled, rtol=1e-5, atol=1e-5)
    if words > 100:  # the text past 77 tokens reaches the conditioning (it did not before)
        assert len(adapter.tokenizer1(caption, add_special_tokens=False).input_ids) > 150


def test_cache_identity_changes_with_the_chunking(adapter):
    plain = Adapter.__new__(Adapter)
    plain.__dict__.update(adapter.__dict__)
    plain.max_token_length = 75
    assert plain.identity()["text"] != adapter.identity()["text"]
    assert plain.identity()["vae"] == adapter.identity()["vae"]
