"""The run folder <save.dir>/<save.name>/: what lives where, and never overwriting a user's earlier run.

Layout::

    <name>.safetensors                 final LoRA
    <name>-step00000500.safetensors    step checkpoints (the last save.keep_last kept)
    state/step00000500/                resume state (LoRA, optimizer, scheduler, RNG, data position)
    samples/                           preview PNGs and the before/after grid
    metrics.jsonl  loss.png  tensorboard/  config.toml  data_report.json  run.json
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from lorakit.errors import TrainingError
from lorakit.fsutil import remove_stale_temps, write_json

STATE_RE = re.compile(r"^step(\d{8})$")


class RunDir:
    """Paths and bookkeeping of one run folder."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self.samples = self.root / "samples"
        self.state_root = self.root / "state"

    # --------------------------------------------------------------------------------------- lifecycle
    def create(self) -> None:
        """Start a new run; refuse to reuse a folder that holds an earlier run's files."""
        if self.root.exists() and any(self.root.iterdir()):
            raise TrainingError(
                f"{self.root} already holds a run; nothing was overwritten. Continue it with "
                f"`lorakit train --resume {self.root}`, or choose another save.name / save.dir.")
        self.root.mkdir(parents=True, exist_ok=True)
        self.samples.mkdir(exist_ok=True)
        self.state_root.mkdir(exist_ok=True)

    def discard(self) -> bool:
        """Remove a run folder that a failed start left with nothing of value (no LoRA file, no complete resume
        state), so the corrected command starts cleanly; returns whether it was removed. Caches live outside."""
        import shutil

        if not self.root.is_dir() or self.complete_states() or any(self.root.glob("*.safetensors")):
            return False
        shutil.rmtree(self.root, ignore_errors=True)
        return not self.root.exists()

    def lora_path(self, step: Optional[int] = None) -> Path:
        if step is None:
            return self.root / f"{self.name}.safetensors"
        return self.root / f"{self.name}-step{step:08d}.safetensors"

    def state_path(self, step: int) -> Path:
        return self.state_root / f"step{step:08d}"

    def complete_states(self) -> list[Path]:
        """Complete resume states, oldest first (half-written ones from a kill mid-save are ignored)."""
        if not self.state_root.is_dir():
            return []
        found = sorted((int(m.group(1)), p) for p in self.state_root.iterdir()
                       if (m := STATE_RE.match(p.name)) and (p / "COMPLETE").exists())
        return [p for _, p in found]

    def latest_state(self) -> Optional[Path]:
        """The newest complete resume state (incomplete ones, e.g. from a kill mid-save, are ignored)."""
        states = self.complete_states()
        return states[-1] if states else None

    def prune(self, keep_last: int) -> None:
        """Keep the newest ``keep_last`` step checkpoints and resume states; leftovers of killed saves go too."""
        ckpts = sorted(self.root.glob(f"{glob_escape(self.name)}-step*.safetensors"))
        for old in ckpts[:-keep_last]:
            old.unlink(missing_ok=True)
        states = sorted(p for p in self.state_root.iterdir() if STATE_RE.match(p.name)) \
            if self.state_root.is_dir() else []
        complete = [p for p in states if (p / "COMPLETE").exists()]
        for old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for p in self.state_root.glob("*.tmp-*") if self.state_root.is_dir() else []:
            shutil.rmtree(p, ignore_errors=True)
        remove_stale_temps(self.root)
        remove_stale_temps(self.samples)

    def session(self) -> tuple[str, float]:
        """(session id, start time) of this run, created on first use and kept across resumes."""
        path = self.root / "run.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        if "session_id" not in data:
            import uuid

            self.write_status(session_id=uuid.uuid4().hex, started_at=time.time())
            data = json.loads(path.read_text())
        return data["session_id"], float(data["started_at"])

    def write_status(self, **fields: Any) -> None:
        path = self.root / "run.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(fields, updated_at=time.time(), pid=os.getpid())
        write_json(path, data)


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)
