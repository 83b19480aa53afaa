"""What a user copies from README.md and docs/*.md still works: every ```toml block parses and validates against the
config schema (config validation only, nothing is trained), and every `lorakit <subcommand> ... --option` written
in a code block or an inline code span names a subcommand and an option the CLI's parser has, every dotted override
in such a command (`network.rank=16`) is a config key, every `python -m lorakit.x` module exists, and every
`lorakit/…` path named in prose is in the repository.

A TOML block is a part of a run config: it is laid over a minimal run (an SDXL checkpoint and a dataset folder, which
no file needs to exist for) and must validate for its own `model.family`, or, when it names none, for at least one
installed family (the speed page's `[memory]` blocks are FLUX.1 settings). A block that is not a run config at all
(a `pyproject.toml` snippet) carries the comment `# not a run config` and is skipped."""

from __future__ import annotations

import argparse
import copy
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = "# not a run config"
BASE = {"model": {"checkpoint": "models/base.safetensors"}, "data": {"dir": "datasets/ohwx"}}


def _toml_blocks() -> list[tuple[str, str]]:
    out = []
    for f in DOCS:
        text = f.read_text(encoding="utf-8")
        for m in re.finditer(r"^[ \t]*```toml[ \t]*\n(.*?)^[ \t]*```", text, re.S | re.M):
            out.append((f"{f.name}:{text[:m.start()].count(chr(10)) + 1}", m.group(1)))
    return out


def _merge(base: dict, layer: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in layer.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _validate(body: str) -> str | None:
    """None when the block validates; else the reason (parse error, or each family's refusal)."""
    from lorakit.config import families
    from lorakit.config.load import load_config
    from lorakit.errors import ConfigError

    try:
        raw = tomllib.loads(body)
    except tomllib.TOMLDecodeError as e:
        return f"not TOML: {e}"
    named = (raw.get("model") or {}).get("family")
    errors = []
    for family in [named] if named else ["sdxl", *[f for f in families.installed() if f != "sdxl"]]:
        try:
            load_config(data=_merge(_merge(BASE, {"model": {"family": family}}), raw))
            return None
        except ConfigError as e:
            errors.append(f"{family}: {e}")
    return "; ".join(errors)


BLOCKS = _toml_blocks()


def test_the_docs_have_toml_examples():
    assert len(BLOCKS) >= 10 and any(name.startswith("README.md") for name, _ in BLOCKS)


@pytest.mark.parametrize("name,body", BLOCKS, ids=[n for n, _ in BLOCKS])
def test_toml_example_validates(name, body):
    if SKIP in body:
        pytest.skip("marked: not a run config")
    assert _validate(body) is None, name


def test_the_toml_check_catches_a_stale_key():
    assert _validate("[network]\nrank = 8\n") is None
    assert "network.rnak" in _validate("[network]\nrnak = 8\n")
    assert "not TOML" in _validate("[network\nrank = 8\n")


# ---- `lorakit <subcommand> --option` in code ----

CALL = re.compile(r"(?<![\w.\-])lorakit((?:[ \t]+[^\s`#|;&]+)+)")


def _code_lines(text: str) -> list[str]:
    lines = []
    for m in re.finditer(r"```[^\n]*\n(.*?)```", text, re.S):
        lines += m.group(1).splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += re.findall(r"`([^`\n]+)`", prose)
    return lines


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}


def _problems(lines: list[str], parser: argparse.ArgumentParser) -> list[str]:
    bad = []
    for line in lines:
        if re.search(r"\blorakit( [a-z]+)?: ", line):
            continue                                    # output: "lorakit: error: ...", "lorakit ui: http://..."
        for m in CALL.finditer(re.sub(r"(^|\s)#.*", "", line)):     # a comment is prose
            words = m.group(1).split()
            if not re.fullmatch(r"[a-z][a-z0-9-]*", words[0]):
                continue
            p, path = parser, ["lorakit"]
            for w in words:
                subs = _subparsers(p)
                if w in subs:
                    p, path = subs[w], path + [w]
                elif subs and len(path) == 1 and re.fullmatch(r"\s*(\$\s+)?(\w+=\S*\s+)*", line[:m.start()]):
                    bad.append(f"{' '.join(path)} {w}: no such subcommand ({line.strip()})")
                    break
                else:
                    break
            if len(path) == 1:
                continue
            for w in words:
                opt = w.split("=", 1)[0]
                if re.fullmatch(r"--[a-z][a-z0-9-]*", opt) and opt not in _options(p):
                    bad.append(f"{' '.join(path)} {opt}: no such option ({line.strip()})")
    return bad


def test_every_lorakit_command_in_the_docs_exists():
    from lorakit.cli import build_parser

    parser = build_parser()
    bad = []
    for f in DOCS:
        bad += [f"{f.name}: {b}" for b in _problems(_code_lines(f.read_text(encoding="utf-8")), parser)]
    assert bad == []


def test_the_command_check_finds_a_renamed_option_and_subcommand():
    from lorakit.cli import build_parser

    md = ("```\n$ lorakit train run.toml --resume out/x   # ok\nlorakit: error: output is fine\n```\n"
          "Run `lorakit caption DIR --overwrite` or `lorakit trian run.toml` or `lorakit demo --stpes 5`, "
          "`lorakit config show run.toml --flag`.\n")
    assert _problems(_code_lines(md), build_parser()) == [
        "lorakit trian: no such subcommand (lorakit trian run.toml)",
        "lorakit demo --stpes: no such option (lorakit demo --stpes 5)",
        "lorakit config show --flag: no such option (lorakit config show run.toml --flag)"]


def test_every_python_m_module_in_the_docs_runs():
    """`python -m lorakit.x.y` in the docs names a module that exists (a package needs its __main__)."""
    import importlib.util

    bad = []
    for f in DOCS:
        for name in sorted(set(re.findall(r"python -m (lorakit(?:\.\w+)*)", f.read_text(encoding="utf-8")))):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations is not None:
                spec = importlib.util.find_spec(name + ".__main__")
            if spec is None:
                bad.append(f"{f.name}: python -m {name}")
    assert bad == []


def _stale_overrides(lines: list[str], specs: dict) -> list[str]:
    bad = []
    for line in lines:
        line = re.sub(r"(^|\s)#.*", "", line)
        if re.search(r"(?<![\w.\-])lorakit\s+(train|plan|config show|data check|sweep)\b", line):
            for section, key in re.findall(r"(?<![\w./-])([a-z_]+)\.([a-z_0-9]+)=", line):
                if key not in specs.get(section, {}):
                    bad.append(f"{section}.{key} ({line.strip()})")
    return bad


def test_every_dotted_override_in_the_docs_is_a_config_key():
    """`lorakit train run.toml network.rank=16`: the key exists (bad-inputs.md shows wrong ones on purpose)."""
    from lorakit.config.fields import field_specs

    specs = field_specs()
    bad = [f"{f.name}: {b}" for f in DOCS if f.name != "bad-inputs.md"
           for b in _stale_overrides(_code_lines(f.read_text(encoding="utf-8")), specs)]
    assert bad == []
    assert _stale_overrides(["$ lorakit train run.toml network.rnak=3 optimizer.lr=1e-4"], specs) == [
        "network.rnak ($ lorakit train run.toml network.rnak=3 optimizer.lr=1e-4)"]


def test_every_lorakit_path_named_in_the_docs_exists():
    """`lorakit/caption/hf.py`, `presets/sdxl/…`, `benchmarks/…` in prose: the file or folder is there."""
    bad = []
    for f in DOCS:
        prose = re.sub(r"```.*?```", "", f.read_text(encoding="utf-8"), flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            for tok in span.split():
                tok = tok.rstrip(".,:;)")
                if re.fullmatch(r"(lorakit|benchmarks|presets)/[\w./-]+", tok) and not (ROOT / tok).exists():
                    bad.append(f"{f.name}: {tok}")
    assert bad == []
