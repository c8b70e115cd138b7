"""Cluster tooling that needs a source checkout: render/validate the Kubernetes overlays, image pins,
Ray job submission (`python -m infra ...`). The top floor: it may import the `tbd` CLI to parse entrypoints.
"""
