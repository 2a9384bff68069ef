"""Run by tests/test_training_resume.py: saves step 1 completely, starts an async save of a large step 2, says
so, and waits to be killed (SIGKILL) while that save is still being written."""
import sys
import time

import jax
import numpy as np

from ivg_jax.training.checkpoint import Checkpoints

directory = sys.argv[1]
ckpt = Checkpoints(directory, keep_last=3)
small = {"w": jax.numpy.arange(8.0)}
ckpt.save(1, small, {"data": {"epoch": 0, "batch": 1}}, wait=True)
big = {"w": jax.numpy.asarray(np.random.default_rng(0).standard_normal((64, 1024, 1024), np.float32))}  # 256 MB
ckpt.save(2, big, {"data": {"epoch": 0, "batch": 2}})
print("SAVING", flush=True)
time.sleep(60)
