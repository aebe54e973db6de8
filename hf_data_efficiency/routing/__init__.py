"""Data routing: random layerwise token dropping (random-LTD) for Hugging Face transformer layers.

``random_ltd`` patches layer instances (``apply_random_ltd`` / ``RandomLTDHandle``), ``architectures``
holds the layer-class registry, ``scheduler`` the kept-length schedule and layer-token counter
(DeepSpeed parity) and ``lr_schedule`` the layer-token learning-rate schedule. Nothing here imports
the curriculum package or the Trainer integration.
"""
