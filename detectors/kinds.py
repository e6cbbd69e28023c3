"""The names of the detector families, the attention functions, the input kinds and the removal baselines,
as plain tuples without torch, so that the command line's ``--help`` lists them without loading it.
:mod:`detectors.registry`, :mod:`detectors.blocks` and :mod:`detectors.inputs` implement exactly these (a
test checks)."""

DETECTOR_KINDS = ("tabular", "vit", "sequence", "text")
ATTENTION_VARIANTS = ("softmax", "sparsemax", "entmax15", "additive")
INPUT_KIND_NAMES = ("tabular", "sequence", "image", "text")
REMOVAL_BASELINES = ("mean", "zero", "blur", "mask")
