"""What the archived Knative Build controller did, done without a cluster: Build to Pod (`stepkit pod`)."""
