"""The Transformer trainer (PyTorch; install the ``train`` extra).

- :mod:`bayescale.train.model`: ``ModelConfig``, ``Transformer``, ``non_embedding_params``,
  ``flops_per_token``.
- :mod:`bayescale.train.data`: the default corpus (Shakespeare + KJV), .txt folders,
  train.bin/val.bin, byte-level BPE, held-out split of whole documents.
- :mod:`bayescale.train.trainer`: ``TrainConfig``, ``train_run`` (crash-safe, resumable).
- :mod:`bayescale.train.sweep`: ``load_plan``, ``run_sweep`` (grid and isoFLOP plans).
- :mod:`bayescale.train.cli`: ``add_commands`` registers ``bayescale train`` / ``sweep``.

Nothing here is imported by ``import bayescale``; torch loads only when a trainer module does.
"""
