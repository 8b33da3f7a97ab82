"""Evaluation of generated answers: text metrics and legal citation scores."""
