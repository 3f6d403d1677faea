"""peftjob's Kubernetes operator. It imports the trainer's API model only, never torch."""
