"""Dataset loading, cleaning and formatting for Vietnamese legal QA."""
