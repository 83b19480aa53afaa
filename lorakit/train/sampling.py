"""Preview prompts: kohya's prompt syntax, prompt files, and writing sample images.

A prompt line may carry flags after the text, as in kohya's prompt files:
``a photo of ohwx --n blurry --w 1024 --h 768 --s 28 --d 42 --l 7 --g 3.5 --ss euler``
(--n negative, --w/--h size, --s steps, --d seed, --l CFG scale, --g FLUX guidance, --ss sampler).
A prompt file is a .txt (one prompt per line, '#' comments) or a .toml with ``[[prompts]]`` tables whose
keys are prompt, negative_prompt, width, height, steps, seed, cfg_scale, guidance, sampler.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Optional

from lorakit.errors import ConfigError
from lorakit.models.base import SamplePrompt

_FLAG = re.compile(r"\s--(n|w|h|s|d|l|g|ss)\s+")
_TOML_KEYS = {"prompt", "negative_prompt", "width", "height", "steps", "seed", "cfg_scale", "guidance", "sampler"}


def parse_prompt(line: str, defaults: SamplePrompt, where: str = "sample.prompts") -> SamplePrompt:
    """One kohya-syntax prompt line → SamplePrompt (unset flags keep ``defaults``)."""
    parts = _FLAG.split(" " + line.strip())
    text = parts[0].strip()
    p = SamplePrompt(**{**defaults.__dict__, "prompt": text})
    for flag, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        try:
            if flag == "n":
                p.negative = value
            elif flag == "w":
                p.width = int(value)
            elif flag == "h":
                p.height = int(value)
            elif flag == "s":
                p.steps = int(value)
            elif flag == "d":
                p.seed = int(value)
            elif flag == "l":
                p.cfg_scale = float(value)
            elif flag == "g":
                p.guidance = float(value)
            elif flag == "ss":
                p.sampler = value
        except ValueError:
            raise ConfigError(f"{where}: --{flag} needs a number, got {value!r} in {line!r}") from None
    if not text:
        raise ConfigError(f"{where}: empty prompt in {line!r}")
    for piece in [text, *parts[2::2]]:  # walk8: `--seed 3` stayed in the prompt text, and the seed was the default
        m = _UNKNOWN_FLAG.search(" " + piece)
        if m:
            name = m.group(1)
            hint = f"; write --{_ALIASES[name.lower()]} instead" if name.lower() in _ALIASES else ""
            raise ConfigError(f"{where}: --{name} is not a prompt flag in {line!r} (the flags: --n negative prompt, "
                              f"--w width, --h height, --s steps, --d seed, --l CFG scale, --g guidance, --ss "
                              f"sampler){hint}")
    return p


_UNKNOWN_FLAG = re.compile(r"\s--([A-Za-z][\w-]*)")
_ALIASES = {"seed": "d", "steps": "s", "step": "s", "cfg": "l", "scale": "l", "cfg_scale": "l", "neg": "n",
            "negative": "n", "width": "w", "height": "h", "guidance": "g", "sampler": "ss"}


def load_prompts(prompts: list[str], prompts_file: Optional[str], defaults: SamplePrompt) -> list[SamplePrompt]:
    """All preview prompts of a run: the inline list, then the file's."""
    out = [parse_prompt(line, defaults, f"sample.prompts[{i}]") for i, line in enumerate(prompts)]
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise ConfigError(f"sample.prompts_file: {path} does not exist")
        if path.suffix.lower() == ".toml":
            try:
                doc = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"sample.prompts_file: {path}: {exc}") from None
            for i, table in enumerate(doc.get("prompts", [])):
                unknown = set(table) - _TOML_KEYS
                if unknown or "prompt" not in table:
                    raise ConfigError(f"sample.prompts_file: {path}: prompts[{i}] needs 'prompt' and only "
                                      f"{', '.join(sorted(_TOML_KEYS))} (got {', '.join(sorted(table))})")
                p = parse_prompt(str(table["prompt"]), defaults, f"{path}: prompts[{i}]")
                for key, attr in (("negative_prompt", "negative"), ("width", "width"), ("height", "height"),
                                  ("steps", "steps"), ("seed", "seed"), ("cfg_scale", "cfg_scale"),
                                  ("guidance", "guidance"), ("sampler", "sampler")):
                    if key in table:
                        setattr(p, attr, table[key])
                out.append(p)
        else:
            for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    out.append(parse_prompt(line, defaults, f"{path}:{n}"))
    return out


def sample_filename(name: str, step: int, index: int, seed: int, tag: str = "") -> str:
    """Sample file name: <name>_<tag or step>_<index>_<seed>.png (sorted by step in a file browser)."""
    label = tag or f"step{step:08d}"
    return f"{name}_{label}_{index:02d}_{seed}.png"
