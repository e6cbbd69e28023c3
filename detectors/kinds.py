"""The names of the detector families and of the attention functions, as plain tuples without torch, so
that the command line's ``--help`` lists them without loading it. :mod:`detectors.registry` and
:mod:`detectors.blocks` implement exactly these (a test checks)."""

DETECTOR_KINDS = ("tabular", "vit", "sequence", "text")
ATTENTION_VARIANTS = ("softmax", "sparsemax", "entmax15", "additive")
