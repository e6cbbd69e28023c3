from auditor.catalogue import catalogue_markdown

print(catalogue_markdown())
