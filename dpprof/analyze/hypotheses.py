"""The three hypotheses of the study, each tested by its own module (pure functions: no I/O, no printing).

- ``data_path`` (``hyp_data_path``): how much shorter GPU0's step would be without DP's data path, against the
  excess over the ideal.
- ``hardware`` (``hyp_hardware``): how much of the excess a slow device, uneven throttling or a slow link explains.
- ``hyperparameters`` (``hyp_hyperparameters``): whether DP's gap to DDP moves with batch size or loader workers.

Every Hypothesis states its rule and thresholds; the terms are µs per step and listed in its evidence.
"""

from dpprof.analyze.hyp_data_path import data_path
from dpprof.analyze.hyp_hardware import hardware
from dpprof.analyze.hyp_hyperparameters import hyperparameters

__all__ = ["data_path", "hardware", "hyperparameters"]
