"""Read a training command line out of a shell script, a Windows .bat / .cmd / PowerShell file or a pasted text file:
the way sd-scripts, FluxGym and musubi-tuner users keep their settings when they have no config TOML.

``accelerate launch --mixed_precision bf16 sd-scripts/flux_train_network.py --network_dim 4 --optimizer_args
"relative_step=False" "scale_parameter=False" --fp8_base ...`` with backslash (sh), caret (.bat / .cmd) or backtick
(PowerShell) line continuations becomes the training script's name, the launcher's options and the script's options as
argparse would see them (``--flag`` alone: True; several values: a list; ``--key=value`` too). Variables the script
sets itself (``NAME=...``, ``export NAME=...``, ``set NAME=...``, ``$NAME = ...``) are expanded; lines that run no
training script (``cd``, ``source venv/bin/activate``, the cache scripts) are named in a note, never read as options.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError

COMMAND_SUFFIXES = (".sh", ".bash", ".bat", ".cmd", ".ps1", ".txt", ".command")
_TRAIN_NAME = re.compile(r"(^|_)train(_network|_db)?$|^fine_tune$")
_SPLIT = {"&&", "||", ";", "|", "&"}
_VAR_SH = re.compile(r"^(?:export\s+)?([A-Za-z_]\w*)=(.*)$")
_VAR_BAT = re.compile(r'^set\s+"?([A-Za-z_]\w*)=([^"]*)"?\s*$', re.I)
_VAR_PS = re.compile(r"^\$(?:env:)?([A-Za-z_]\w*)\s*=\s*(.*)$")
_REF = re.compile(r"\$\{(\w+)\}|\$env:(\w+)|\$(\w+)|%(\w+)%")
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class CommandLine:
    """One training command: the script's file name, the launcher's options, the script's options (argparse's view)."""

    path: Path
    script: str
    launcher: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def looks_like_command(path: Path) -> bool:
    """A script / text file holding a training command line (rather than a TOML of options)."""
    if path.suffix.lower() in COMMAND_SUFFIXES and path.suffix.lower() != ".txt":
        return True
    if path.suffix.lower() in (".toml", ".json", ".yaml", ".yml"):
        return False  # a config file that merely mentions a script in a comment
    try:
        head = path.read_bytes()[:65536].decode("utf-8", "replace")
    except OSError:
        return False
    return bool(re.search(r"(train(_network|_db)?|fine_tune)\.py\b|-m\s+\S*train", head))


def _windows(path: Path, text: str) -> bool:
    return path.suffix.lower() in (".bat", ".cmd", ".ps1") or bool(re.search(r"\^[ \t]*\r?\n", text))


def _logical_lines(text: str, windows: bool, powershell: bool) -> list[tuple[int, str]]:
    """(first physical line number, line) with continuations joined and comment lines left out."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        stripped = raw.strip()
        if not pending:
            start = number
        if not pending and (stripped.startswith("#") and not powershell or stripped.startswith("::")
                            or re.match(r"^@?rem(\s|$)", stripped, re.I) or stripped.startswith("#") and powershell):
            continue
        mark = "`" if powershell else "^" if windows else "\\"
        if stripped.endswith(mark) and not stripped.endswith(mark * 2):
            pending += stripped[:-1] + " "
            continue
        lines.append((start, pending + stripped))
        pending = ""
    if pending:
        lines.append((start, pending))
    return [(n, line) for n, line in lines if line.strip()]


def _tokens(line: str, windows: bool, powershell: bool, where: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=False)
    lex.whitespace_split = True
    lex.commenters = "" if windows else "#"
    if windows:
        lex.escape = "`" if powershell else ""  # a Windows path's backslashes are no escapes
        lex.quotes = "\"'" if powershell else '"'
    try:
        return list(lex)
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot split the command line ({exc}: an unclosed quote?); fix the quotes and "
                          "import again") from None


def _script_name(token: str, prev: str | None) -> str | None:
    """The training script a token runs: a ``*.py`` path, or ``-m package.module``."""
    if prev == "-m":
        name = token.rsplit(".", 1)[-1]
    elif token.lower().endswith(".py"):
        name = re.split(r"[\\/]", token)[-1][:-3]
    else:
        return None
    return name + ".py" if _TRAIN_NAME.search(name) else None


def _expand(token: str, env: dict[str, str], unknown: set[str]) -> str:
    def sub(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name in env:
            return env[name]
        unknown.add(match.group(0))
        return match.group(0)
    return _REF.sub(sub, token)


def _assignment(line: str, windows: bool, powershell: bool) -> tuple[str, str] | None:
    for pattern in ((_VAR_PS,) if powershell else (_VAR_BAT,) if windows else (_VAR_SH,)):
        m = pattern.match(line.strip())
        if m:
            value = m.group(2).strip()
            if windows:
                return m.group(1), value.strip("\"'")
            try:
                value = " ".join(shlex.split(value)) if value else ""
            except ValueError:
                pass
            return m.group(1), value
    return None


def parse_options(tokens: list[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """argparse's view of ``--key value ...`` tokens: (options, positional tokens, options given more than once)."""
    raw: dict[str, list[str]] = {}
    loose: list[str] = []
    repeated: list[str] = []
    key: str | None = None
    for tok in tokens:
        if tok.startswith("--") and len(tok) > 2 and not _FLOAT.match(tok):
            name, eq, value = tok[2:].partition("=")
            key = name.replace("-", "_")
            if key in raw:
                repeated.append(key)
            raw[key] = [value] if eq else []
        elif key is not None:
            raw[key].append(tok)
        else:
            loose.append(tok)
    options = {k: True if not v else v[0] if len(v) == 1 else v for k, v in raw.items()}
    return options, loose, repeated


def read_command(path: Path) -> CommandLine:
    """The one training command of a script / text file, or one line naming the file and what to do."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; pass the script (.sh / .bat) or text file that holds the training "
                          "command line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); save it as UTF-8 text and import again") from None
    windows, powershell = _windows(path, text), path.suffix.lower() == ".ps1"
    env: dict[str, str] = {}
    found: list[tuple[int, str, list[str], list[str]]] = []
    skipped: list[str] = []
    for number, line in _logical_lines(text, windows, powershell):
        assigned = _assignment(line, windows, powershell)
        if assigned and " --" not in line:
            env[assigned[0]] = assigned[1]
            continue
        tokens = _tokens(line, windows, powershell, f"{path}: line {number}")
        commands: list[list[str]] = [[]]
        for tok in tokens:
            (commands.append([]) if tok in _SPLIT else commands[-1].append(tok))
        for cmd in commands:
            at = next((i for i, tok in enumerate(cmd) if _script_name(tok, cmd[i - 1] if i else None)), None)
            if at is None:
                if any(tok.lower().endswith(".py") for tok in cmd):
                    skipped.append(next(re.split(r"[\\/]", t)[-1] for t in cmd if t.lower().endswith(".py")))
                continue
            found.append((number, _script_name(cmd[at], cmd[at - 1] if at else None) or "", cmd[:at], cmd[at + 1:]))
    if not found:
        raise ConfigError(f"{path}: no training command found (no *train_network.py line); pass the script or text "
                          "file whose command runs the training, e.g. `accelerate launch ... flux_train_network.py "
                          "--network_dim 16 ...`")
    if len(found) > 1:
        lines = ", ".join(f"line {n} ({s})" for n, s, _, _ in found)
        raise ConfigError(f"{path}: {len(found)} training commands ({lines}); keep the one to import in a file of "
                          "its own and import that")
    number, script, before, after = found[0]
    if before and before[-1] == "-m":  # `python -m package.module` / `accelerate launch ... -m package.module`
        before = before[:-1]
    unknown: set[str] = set()
    after = [_expand(t, env, unknown) for t in after]
    options, loose, repeated = parse_options(after)
    launch = before[before.index("launch") + 1:] if "launch" in before else [
        t for t in before[1:] if t != "-m" and "accelerate" not in t]
    launcher, _, _ = parse_options([_expand(t, env, unknown) for t in launch])
    cmd = CommandLine(path, script, launcher, options, loose)
    if skipped:
        cmd.notes.append(f"lines running {', '.join(dict.fromkeys(skipped))} were not read (only the training "
                         f"command, {script}, holds the training settings)")
    for key in dict.fromkeys(repeated):
        cmd.notes.append(f"--{key} is given more than once: the last value wins, as in argparse")
    for ref in sorted(unknown):
        cmd.notes.append(f"{ref} is not set in {path.name}: left as written; replace it in run.toml")
    return cmd


def typed(value: Any, text: bool = False) -> Any:
    """A command-line value as the option's type would read it: numbers become numbers (``text``: kept as written)."""
    if isinstance(value, list):
        return [typed(v, text) for v in value]
    if text or not isinstance(value, str):
        return value
    if _INT.match(value):
        return int(value)
    if _FLOAT.match(value):
        return float(value)
    return value
