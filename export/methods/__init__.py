"""Speed-up methods, one package each, split like ToMe into model code and recipe.

A method's model code (``model.py``; ``folding.py``; ``pruning/groups.py``; ``merging/ops.py``) holds its
modules and an ``attach``/``apply`` that returns a new model and never mutates its argument; its recipe
(``recipe.py``) holds the training and export glue. Importing this package imports every method's model
code, never a recipe, so that the methods register their checkpoint extensions
(:mod:`segrt.export.model.extensions`) before :mod:`segrt.export.loading` loads a checkpoint.
"""

from segrt.export.methods import folding
from segrt.export.methods.early_exit import model as early_exit_model
from segrt.export.methods.gating import model as gating_model
from segrt.export.methods.merging import model as merging_model
from segrt.export.methods.pruning import groups as pruning_groups

__all__ = ["early_exit_model", "folding", "gating_model", "merging_model", "pruning_groups"]
