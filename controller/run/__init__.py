"""`stepkit run`: a Build's Pod run through the Docker Engine API, as a kubelet would (SPEC §8)."""
