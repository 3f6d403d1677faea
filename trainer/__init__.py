"""peftjob's in-pod trainer. Importing this package must stay cheap: torch loads only where training starts."""
