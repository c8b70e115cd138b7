"""Floor 3, data jobs and the data folder: `DataFolder` (the folder's one owner), shard sets, ingest,
preprocess and annotate (Ray jobs), the annotation-version table, the cluster check, the demo corpus."""
