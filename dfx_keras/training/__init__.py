"""Training: the distribution strategy, the fit loop with resume, the stages, the feature cache."""
