"""Where an audit's results go besides its folder, each only when asked: MLflow runs (:mod:`.mlflow_runs`),
a Hugging Face model card (:mod:`.card`) and GitHub Actions annotations (:mod:`.annotations`).

Nothing here runs an audit or imports a stage: each reads the results document (results.json) or the
files an audit wrote, so an export can be made again from a folder without the model.
"""
