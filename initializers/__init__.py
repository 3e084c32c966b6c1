"""What runs before the steps of a build: nop, credentials, and source fetchers."""
