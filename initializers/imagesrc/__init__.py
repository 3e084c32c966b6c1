"""`stepkit image-fetcher`: a Knative custom source that takes files out of a container image in a registry."""
