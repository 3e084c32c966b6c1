"""`stepkit gcs-uploader`: a directory uploaded as content-addressed objects plus the manifest gcs-fetcher reads."""
