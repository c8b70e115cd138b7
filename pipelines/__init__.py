"""Ray jobs and the media stages they run: assets, face geometry, ingest, preprocess, annotate, shards."""
