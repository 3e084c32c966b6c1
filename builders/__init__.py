"""What runs as a step: the SDK for builder authors and the typical builders (to come)."""
