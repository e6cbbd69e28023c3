"""The outputs of an audit, drawn from the results document and the catalogue alone (never from the stages):
results.json, JUnit and Markdown (:mod:`~auditor.report.document`), the HTML report (:mod:`~auditor.report.html`,
:mod:`~auditor.report.views`, :mod:`~auditor.report.render`), ``audit compare`` and atomic writes."""
