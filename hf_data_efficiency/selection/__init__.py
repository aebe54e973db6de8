"""Model-based data selection: excess-loss token selection (RHO-1) against a reference model.

The reference model utilities and the ``reference_loss`` metric live in
:mod:`hf_data_efficiency.curriculum.reference`; this package holds what changes the training loss.
"""

from .excess_loss import ExcessLossSelection, label_count, selected_count, top_k_mask

__all__ = ["ExcessLossSelection", "label_count", "selected_count", "top_k_mask"]
