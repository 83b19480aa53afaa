"""``python -m lorakit.comfy install /path/to/ComfyUI [--name lorakit-nodes]``: link the node pack into ComfyUI.

Run it with ComfyUI's Python (the one that has lorakit installed). It links ``custom_nodes/<name>`` to the pack folder
inside the installed lorakit (a copy of the two small files where links are impossible) and never replaces a
different folder already there. ``python -m lorakit.comfy path`` prints the pack folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def install(comfy_root: Path, name: str = "lorakit-nodes") -> Path:
    from lorakit.comfy import pack_dir
    from lorakit.errors import LorakitError

    if name.strip().lower() == "lorakit":
        raise LorakitError("--name: 'lorakit' would hide the lorakit package inside ComfyUI; use another name")
    custom = comfy_root / "custom_nodes"
    if not custom.is_dir():
        raise LorakitError(f"{comfy_root}: no custom_nodes/ folder; give ComfyUI's own folder")
    dst, src = custom / name, pack_dir()
    if dst.exists() or dst.is_symlink():
        if dst.resolve() == src.resolve():
            return dst
        raise LorakitError(f"{dst} already exists and is not lorakit's pack; nothing was changed (use --name)")
    try:
        os.symlink(src, dst, target_is_directory=True)
    except OSError:
        shutil.copytree(src, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    from lorakit.errors import LorakitError

    ap = argparse.ArgumentParser(prog="python -m lorakit.comfy")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ins = sub.add_parser("install", help="link the node pack into ComfyUI's custom_nodes/")
    ins.add_argument("comfyui", help="ComfyUI's folder (the one holding main.py and custom_nodes/)")
    ins.add_argument("--name", default="lorakit-nodes")
    sub.add_parser("path", help="print the node pack's folder")
    args = ap.parse_args(argv)
    if args.cmd == "path":
        from lorakit.comfy import pack_dir

        print(pack_dir())
        return 0
    try:
        dst = install(Path(args.comfyui).expanduser().resolve(), args.name)
    except LorakitError as exc:
        print(f"lorakit: {exc}", file=sys.stderr)
        return 2
    print(f"lorakit nodes: {dst} (restart ComfyUI; the nodes are under 'lorakit' in the node menu)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
