"""``otplug train``: lerobot-train plus an OT section, one room per part of the step.

=================  ===========================================================================================
``config``         :class:`OTTrainConfig` = lerobot's ``TrainPipelineConfig`` + the validated ``ot`` section
``cli``            short flags, draccus parsing, resume, :func:`main`
``setup``          accelerator, datasets, policy processors, BC dataloader, sinks, ``run_info.json``
``batches``        uint8 -> float, ``[src | tgt | bc]`` concatenation, row slices
``ot_step``        :class:`OTSide`: pair loader, OT loss (capture / separate / scope)
``step``           :func:`update_policy`: forward, loss, backward, clip, finiteness vote, optimizer
``metrics``        log window, cross-process reduction, finiteness vote
``loop``           :func:`train`: the loop that ties them together
=================  ===========================================================================================
"""

from otplug.lerobot.train.cli import main, parse_config, run
from otplug.lerobot.train.loop import train

__all__ = ["main", "parse_config", "run", "train"]
