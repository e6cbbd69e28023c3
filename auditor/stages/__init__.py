"""The stages of an audit, one module each, behind one interface (:mod:`auditor.stages.base`), run in the order
of :data:`auditor.stages.order.STAGES`. Each reads one streamed block of rows and adds per-sample values; the
metric facts they produce are declared in the catalogue (:mod:`auditor.catalogue`)."""
