"""git-push: commit what a build changed, tag it, push it with creds-init's credentials."""
