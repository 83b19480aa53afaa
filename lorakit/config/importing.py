"""What every `lorakit import <trainer>` shares: the report (mapped / not carried over / notes), the family told by
the base model file, the loop that makes the output validate, and the files it writes.

An importer turns another trainer's config into a lorakit config dict and a report. Every source key is either
mapped (``mapped``: source key → lorakit key) or listed with the reason it was not carried over (``dropped``);
nothing is dropped silently. :func:`settle` then runs lorakit's own validator over the result: a value lorakit
refuses (a choice it lacks, a key the family does not have) is taken out and named with the validator's reason,
so the written run.toml always loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lorakit.errors import ConfigError

# keys without which no run starts: their problems are errors, never quietly dropped
_REQUIRED = frozenset({"model.family", "model.checkpoint", "data.dir", "data.config"})


@dataclass
class ImportResult:
    """The files an import writes (the run.toml first) and its report."""

    files: dict[Path, str]
    mapped: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return next(iter(self.files.values()))


def file_family(model: Any, candidates: list[str] | None = None) -> str | None:
    """The family a local base model file's header names (None: not a local .safetensors file, a damaged one, or a
    family outside ``candidates``)."""
    path = Path(str(model or "")).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    from lorakit.models.registry import identify

    try:
        named = identify(path).family
    except Exception:  # noqa: BLE001 - a damaged file: the run's loader says so; here only a hint is sought
        return None
    return named if named and (candidates is None or named in candidates) else None


def installed_families() -> list[str]:
    from lorakit.models.registry import families

    return list(families())


def set_key(out: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    section, name = key.split(".")
    out.setdefault(section, {})[name] = value


def settle(out: dict[str, dict[str, Any]], origin: Mapping[str, str], source: Path | str, *,
           required_is_error: bool = True) -> tuple[list[tuple[str, str]], list[str]]:
    """Validate ``out`` with lorakit's loader; take out each value it refuses (``origin``: lorakit key → the source
    key it came from) and return (dropped (source key, why), notes). A refused optimizer takes its learning rates
    with it (they were tuned for that optimizer). Problems with the model or the data folder are errors naming the
    file: without them no run can start (``required_is_error=False``: a note, for `lorakit import kohya`, whose
    configs often leave the model and the data to the command line)."""
    from lorakit.config.load import load_config

    dropped: list[tuple[str, str]] = []
    for _ in range(100):
        try:
            load_config(data=out)
            return dropped, []
        except ConfigError as exc:
            msg = str(exc)
            key = msg.split(":", 1)[0].split("[", 1)[0].strip()
            section, _, name = key.partition(".")
            if key in _REQUIRED and not required_is_error:
                return dropped, [f"lorakit refuses the imported config as it stands: {msg}"]
            if key in _REQUIRED:
                raise ConfigError(f"{source}: {msg} (after import; fix the source file, or pass --family where the "
                                  "family is the problem)") from None
            if not name or name not in out.get(section, {}):
                return dropped, [f"lorakit refuses the imported config as it stands: {msg}"]
            value = out[section].pop(name)
            dropped.append((origin.get(key, key), f"{value!r} not carried over, lorakit refuses it ({msg})"))
            if key == "optimizer.name":
                for lr_key in ("optimizer.lr", "network.text_encoder_lr"):
                    s, n = lr_key.split(".")
                    if n in out.get(s, {}):
                        lr = out[s].pop(n)
                        dropped.append((origin.get(lr_key, lr_key), f"{lr!r} not carried over: it was set for "
                                        f"optimizer {value!r}, which lorakit lacks; set optimizer.name and "
                                        f"{lr_key} yourself"))
    return dropped, ["lorakit refuses the imported config as it stands"]  # pragma: no cover - 100 refusals


def render(out: Mapping[str, Any], header: str) -> str:
    from lorakit.config.load import dump_toml

    return header + dump_toml({section: body for section, body in out.items() if body != {}})


def check_new(paths: list[Path]) -> None:
    """Nothing the user made is overwritten: every output must be new."""
    for path in paths:
        if path.exists() or path.is_symlink():
            raise ConfigError(f"{path}: already exists; choose another -o (lorakit import never overwrites a file)")


def write_new(files: Mapping[Path, str]) -> None:
    from lorakit.fsutil import write_text

    check_new(list(files))
    for path, text in files.items():
        write_text(path, text, overwrite=False)


def read_source(path: Path, what: str) -> str:
    """The text of an imported file (UTF-8, a BOM dropped), or one line naming it and ``what`` to pass instead."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); {what}") from None
