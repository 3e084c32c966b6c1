"""creds-init (SPEC §1): turns mounted Kubernetes secrets into git, ssh and docker credentials in $HOME."""
