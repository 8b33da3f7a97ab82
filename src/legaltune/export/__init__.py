"""After training: merge a run's LoRA adapter into its base model, and export the result to GGUF."""
