"""Floor 5, evaluation: metrics and the `tbd evaluate` job, above Draw (it generates with the exported
pipeline and scores against the data folder's held-out clips).
"""
