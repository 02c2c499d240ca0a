"""Property-test your masks: hypothesis strategies and invariant checks.

``funcsparse.testing.strategies`` builds params pytrees, method configs and rules;
:func:`check_masks` runs every invariant the rules' methods promise. Together they make a
one-decorator property test of your own pruning config. Needs ``hypothesis`` for the
strategies (``pip install funcsparse[testing]``); :func:`check_masks` needs only torch.
"""

from funcsparse.methods._base import registered_methods
from funcsparse.testing._checks import check_leaf_mask, check_masks

__all__ = ["check_leaf_mask", "check_masks", "registered_methods"]
