"""Run directories: their layout, atomic writes, the writer's lock, checkpoints and resume.

``layout`` owns every file name inside a run directory; the other modules build on it:
``naming`` (run names, new runs, a config's own runs), ``lock`` (one writer per run),
``atomic`` (temp + rename writes, full-disk errors), ``checkpoint`` (sealed checkpoints written
through the Trainer's own saving), ``resume`` (which checkpoint a ``--resume`` continues from).
"""
