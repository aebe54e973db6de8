"""Integrations with training libraries beyond ``transformers.Trainer``; each needs its optional extra.

* :mod:`hf_data_efficiency.integrations.trl` -- trl's SFT and GRPO trainers (``pip install 'hf-data-efficiency[trl]'``).
"""
