"""Run reports: RUN_DIR/report.html with training curves, memory, evaluation and data summaries."""
