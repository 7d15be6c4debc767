"""Evaluation (DESIGN.md 1.5): metrics, the classifier a model is seen through, the test protocols, the reports."""
