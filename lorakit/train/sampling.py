"""Preview prompts: kohya's prompt syntax, prompt files, and writing sample images.

A prompt line may carry flags after the text, as in kohya's prompt files:
``a photo of ohwx --n blurry --w 1024 --h 768 --s 28 --d 42 --l 7 --g 3.5 --ss euler``
(--n negative, --w/--h size, --s steps, --d seed, --l CFG scale, --g FLUX guidance, --ss sampler).
A prompt file is a .txt (one prompt per line, '#' comments) or a .toml with ``[[prompts]]`` tables whose
keys are prompt, negative_prompt, width, height, steps, seed, cfg_scale, guidance, sampler.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Optional

from lorakit.errors import ConfigError
from lorakit.models.base import SamplePrompt

_FLAG = re.compile(r"\s--(n|w|h|s|d|l|g|ss)\s+", re.IGNORECASE)   # sd-scripts matches its flags in any case
_TOML_KEYS = {"prompt", "negative_prompt", "width", "height", "steps", "seed", "cfg_scale", "guidance", "sampler"}
MAX_SIDE = 16384          # sample.width / sample.height's bound (lorakit/config/fields.py)
MAX_FILE_BYTES = 1 << 20  # a prompt file is text of a few lines: a bigger file is the wrong file


def _value(attr: str, value, what: str, multiple: int):
    """One prompt setting checked as the sample.* keys are (what: '--w' or 'width' and where, for the message)."""
    if attr in ("negative", "sampler"):
        if not isinstance(value, str):
            raise ConfigError(f"{what} must be text, got {value!r}")
        return value
    number = (int if attr in ("width", "height", "steps", "seed") else float)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{what} needs a number, got {value!r}")
    try:
        x = number(value) if not (number is int and isinstance(value, float) and not value.is_integer()) else None
    except ValueError:
        x = None
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        raise ConfigError(f"{what} needs {'a whole' if number is int else 'a'} number, got {value!r}")
    if attr in ("width", "height"):
        if not multiple <= x <= MAX_SIDE or x % multiple:
            near = max(multiple, min(MAX_SIDE, round(x / multiple) * multiple))
            raise ConfigError(f"{what} must be a multiple of {multiple} between {multiple} and {MAX_SIDE} (the "
                              f"sampler's latent grid), got {x}; use {near}")
    elif attr == "steps" and not 1 <= x <= 1000:
        raise ConfigError(f"{what} (steps) must be between 1 and 1000, got {x}")
    elif attr == "seed" and not 0 <= x < 2 ** 63:
        raise ConfigError(f"{what} (seed) must be a whole number ≥ 0, got {x}")
    elif attr in ("cfg_scale", "guidance") and not 0 <= x <= 100:
        raise ConfigError(f"{what} must be between 0 and 100, got {x}")
    return x


def _honoured(attr: str, value, what: str, family: Optional[str]) -> None:
    """--g / --ss (guidance, sampler) only for the families that take sample.guidance / sample.sampler, and a sampler
    among sample.sampler's choices; ``family`` None: not checked (a caller that knows no family)."""
    if family is None or attr not in ("guidance", "sampler"):
        return
    from lorakit.config import families
    from lorakit.config.load import field_specs

    takes = families.applies_to(f"sample.{attr}")
    if family not in takes:
        raise ConfigError(f"{what}: {family}'s previews take no {attr} (only {', '.join(takes)} do); remove it")
    choices = field_specs()["sample"][attr].meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{what}: the sampler must be one of {', '.join(choices)}, got {value!r}")


_FLAG_ATTR = {"n": "negative", "w": "width", "h": "height", "s": "steps", "d": "seed", "l": "cfg_scale",
              "g": "guidance", "ss": "sampler"}


def parse_prompt(line: str, defaults: SamplePrompt, where: str = "sample.prompts", multiple: int = 8,
                 family: Optional[str] = None) -> SamplePrompt:
    """One kohya-syntax prompt line → SamplePrompt (unset flags keep ``defaults``). ``multiple``: what --w / --h
    must be a multiple of (the family's ``ModelSpec.sample_multiple``)."""
    parts = _FLAG.split(" " + line.strip())
    text = parts[0].strip()
    p = SamplePrompt(**{**defaults.__dict__, "prompt": text})
    for flag, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        attr = _FLAG_ATTR[flag.lower()]
        if attr not in ("negative", "sampler"):
            try:
                float(value)
            except ValueError:
                raise ConfigError(f"{where}: --{flag} needs a number, got {value!r} in {line!r}") from None
        what = f"{where}: --{flag.lower()} in {line!r}"
        setattr(p, attr, _value(attr, value, what, multiple))
        _honoured(attr, getattr(p, attr), what, family)
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


def _read_text(path: Path) -> str:
    """A prompt file's text: UTF-8, or UTF-16 with its BOM (Windows Notepad's "Unicode"), as captions are read."""
    from lorakit.data.scan import decode_caption_bytes

    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"sample.prompts_file: {path} is {size / 2**20:.1f} MiB, not a prompt file (a few lines of "
                          "text, at most 1 MiB); check the path")
    try:
        return decode_caption_bytes(path.read_bytes())
    except UnicodeDecodeError:
        raise ConfigError(f"sample.prompts_file: {path} is not UTF-8 (nor UTF-16 with a BOM) text; save it as "
                          "UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"sample.prompts_file: cannot read {path} ({exc.strerror or exc})") from None


def _numeric(text: str) -> bool:
    """A quoted number in a prompt TOML (``width = "1024"``): refused as sample.width = "1024" is."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _seeded(defaults: SamplePrompt, index: int) -> SamplePrompt:
    """The defaults of the run's prompt ``index``: seed = sample.seed + index (ai-toolkit's walk_seed), so the
    previews differ from one another and each prompt keeps its seed at every step and across resumes."""
    return SamplePrompt(**{**defaults.__dict__, "seed": defaults.seed + index})


def _toml_prompts(path: Path, defaults: SamplePrompt, multiple: int, family: Optional[str],
                  first: int = 0) -> list[SamplePrompt]:
    try:
        doc = tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sample.prompts_file: {path}: {exc}") from None
    if "prompt" in doc and "prompts" not in doc:  # sd-scripts' layout: [prompt] with [[prompt.subset]]
        raise ConfigError(f"sample.prompts_file: {path} is in sd-scripts' [prompt] / [[prompt.subset]] layout; "
                          "lorakit reads [[prompts]] tables (prompt, negative_prompt, width, height, steps, seed, "
                          "cfg_scale, guidance, sampler), or a .txt of kohya prompt lines")
    other = sorted(set(doc) - {"prompts"})
    if other or not isinstance(doc.get("prompts", []), list):
        raise ConfigError(f"sample.prompts_file: {path}: only [[prompts]] tables are read, got "
                          f"{', '.join(other) or 'prompts as a single table'}")
    out = []
    for i, table in enumerate(doc.get("prompts", [])):
        unknown = set(table) - _TOML_KEYS if isinstance(table, dict) else {"?"}
        if unknown or "prompt" not in table:
            raise ConfigError(f"sample.prompts_file: {path}: prompts[{i}] needs 'prompt' and only "
                              f"{', '.join(sorted(_TOML_KEYS))} (got {', '.join(sorted(table))})")
        if not isinstance(table["prompt"], str):
            raise ConfigError(f"sample.prompts_file: {path}: prompts[{i}].prompt must be text, got {table['prompt']!r}")
        p = parse_prompt(table["prompt"], _seeded(defaults, first + i), f"{path}: prompts[{i}]", multiple, family)
        for key, attr in (("negative_prompt", "negative"), ("width", "width"), ("height", "height"),
                          ("steps", "steps"), ("seed", "seed"), ("cfg_scale", "cfg_scale"),
                          ("guidance", "guidance"), ("sampler", "sampler")):
            if key in table:
                what = f"sample.prompts_file: {path}: prompts[{i}].{key}"
                if attr not in ("negative", "sampler") and isinstance(table[key], str) and _numeric(table[key]):
                    raise ConfigError(f"{what} needs a number, got text {table[key]!r}; write {key} = "
                                      f"{table[key].strip()} without quotes")
                setattr(p, attr, _value(attr, table[key], what, multiple))
                _honoured(attr, getattr(p, attr), what, family)
        out.append(p)
    return out


def load_prompts(prompts: list[str], prompts_file: Optional[str], defaults: SamplePrompt,
                 multiple: int = 8, family: Optional[str] = None) -> list[SamplePrompt]:
    """All preview prompts of a run: the inline list, then the file's (a file without one prompt is refused).
    ``family``: --g / --ss are refused where its previews ignore them. Prompt i (inline first, then the file's) without
    its own seed (--d, seed =) draws with ``defaults.seed + i``."""
    out = [parse_prompt(line, _seeded(defaults, i), f"sample.prompts[{i}]", multiple, family)
           for i, line in enumerate(prompts)]
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise ConfigError(f"sample.prompts_file: {path} "
                              f"{'is a folder, not a file' if path.is_dir() else 'does not exist'}")
        if path.suffix.lower() == ".toml":
            found = _toml_prompts(path, defaults, multiple, family, len(out))
        else:
            lines = [(n, line) for n, line in enumerate(_read_text(path).splitlines(), 1)
                     if line.strip() and not line.lstrip().startswith("#")]
            found = [parse_prompt(line, _seeded(defaults, len(out) + k), f"{path}:{n}", multiple, family)
                     for k, (n, line) in enumerate(lines)]
        if not found:
            raise ConfigError(f"sample.prompts_file: {path} holds no prompt "
                              f"({'no [[prompts]] table' if path.suffix.lower() == '.toml' else 'only blank or # lines'})"
                              "; write one prompt per line, or remove the key")
        out += found
    return out


def sample_filename(name: str, step: int, index: int, seed: int, tag: str = "") -> str:
    """Sample file name: <name>_<tag or step>_<index>_<seed>.png (sorted by step in a file browser)."""
    label = tag or f"step{step:08d}"
    return f"{name}_{label}_{index:02d}_{seed}.png"
