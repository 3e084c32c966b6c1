"""git-init (SPEC §2): fetches one revision of a git repository into the workspace."""
