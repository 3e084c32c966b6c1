"""`stepkit gcs-fetcher`: a Build's GCS source (an archive or a manifest of objects) fetched into the workspace."""
