"""Sweeps: one run per point of a grid of config overrides, each a normal run folder under the sweep folder, and
one comparison of them all (grid image, overlaid loss curves, a ranking by validation loss).

``grid``: parsing ``section.key=v1,v2`` into points; ``run``: the sweep folder, its manifest (sweep.json), running
and resuming; ``report``: the comparison. `lorakit sweep` (cli.py) and the web UI's Sweeps tab use these.
"""
