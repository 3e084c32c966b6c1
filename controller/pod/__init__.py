"""`stepkit pod`: Knative Builds, BuildTemplates and ClusterBuildTemplates turned into the Pods its controller made."""
