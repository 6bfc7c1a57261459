"""``otplug train``: lerobot-train plus an OT section, one room per part of the step.

=================  ===========================================================================================
``config``         :class:`OTTrainConfig` = lerobot's ``TrainPipelineConfig`` + the validated ``ot`` section
``cli``            short flags, draccus parsing, resume, :func:`main`
``setup``          accelerator, datasets, policy processors, BC dataloader, sinks, ``run_info.json``
``run_data``       :class:`RunData`: what a run trains on (BC mixture, OT sources, target pool, their pairs and
                   caches), built once by :func:`open_run_data`; everything after only reads it
``batches``        uint8 -> float, ``[src | tgt | bc]`` concatenation, row slices
``ot_step``        :class:`OTSide`: pair and pool loaders, OT loss (capture / separate / scope)
``step``           :func:`update_policy`: forward, loss, backward, clip, finiteness vote, optimizer
``metrics``        log window, cross-process reduction, finiteness vote
``loop``           :func:`train`: the loop that ties them together
=================  ===========================================================================================
"""

from otplug.lerobot.train.cli import main, parse_config, run
from otplug.lerobot.train.loop import train

__all__ = ["main", "parse_config", "run", "train"]
