"""Token budgets (dynamic batching): micro-batches sized by tokens instead of samples.

* :mod:`.budget` -- :class:`~.budget.TokenBudget`, the rules every batcher shares (row cap, truncation, packing, LR
  factor, step logs);
* :mod:`.lengths` -- the sample lengths of map-style data;
* :mod:`.sampler` -- :class:`~.sampler.TokenBudgetBatchSampler`, a DataLoader batch sampler over map-style data;
* :mod:`.stream` -- :class:`~.stream.StreamTokenBudget`, the selection hook of a streaming curriculum.
"""
