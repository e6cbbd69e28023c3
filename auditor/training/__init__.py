"""Training detectors: AdamW, seeded, early stopping on the validation split, defenses, CUDA with bf16
autocast, and data-parallel training under torchrun.

It sits in the auditor's layer, above :mod:`attacks`: the defenses train on this tool's attacks.

``config``    the training and defense settings, their defaults and checks (no torch: the CLI's help reads them)
``defenses``  the training objective of each defense (:class:`~auditor.training.defenses.DefenseLoss`)
``loop``      the epoch loop: early stopping, resume, data-parallel gradients
``job``       ``audit train``: load and split the data, train, write the checkpoint
``text``      ``audit train --detector text``: messages, the tokeniser in the checkpoint

Run ``torchrun --nproc-per-node N -m auditor train ...`` (the options of ``audit train``) for
DistributedDataParallel: gloo on CPUs, NCCL on GPUs; each rank trains on its shard of every global batch,
only rank 0 writes files.
"""
