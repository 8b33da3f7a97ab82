"""Data files read into records: formats, text encodings, and file:line on every error.

Below everything that reads a user's or the corpus's files (data preparation, the law corpus,
generation inputs); it imports only :mod:`legaltune.text`."""
