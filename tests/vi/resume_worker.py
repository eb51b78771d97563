"""Run in a subprocess by test_checkpoint.py: a fit that is killed, resumed, or left alone.

usage: python -m tests.vi.resume_worker MODE CHECKPOINT OUT
MODE is "full" (uninterrupted), "killed" (hard exit right after the first checkpoint) or
"resume" (continue from CHECKPOINT in this fresh process).
"""

import os
import sys
import warnings

import torch

import pyrovi
import pyrovi._run as run_module
from tests.vi import models


def main(mode: str, path: str, out: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    X, y = models.regression_data()
    if mode == "resume":
        result = pyrovi.resume(path).run(X, y)
    else:
        if mode == "killed":
            save = run_module.save_checkpoint

            def save_then_die(*args, **kwargs):
                save(*args, **kwargs)
                os._exit(17)  # a hard kill: no clean-up, no result

            run_module.save_checkpoint = save_then_die
        vi = pyrovi.VI(
            models.regression, "fullrank", seed=3, num_steps=300, progress=False,
            checkpoint=path, checkpoint_every=100,
        )
        result = vi.run(X, y)
    torch.save(
        {"params": result.params, "trace": result.elbo_trace, "elbo": result.elbo}, out
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
