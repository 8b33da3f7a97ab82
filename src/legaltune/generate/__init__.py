"""Answering with a tuned run or a base model: batched answers (answers.py), a run loaded for it
(load.py), input rows as conversations (rows.py), `legaltune generate` over a JSONL file (file.py)
and `legaltune chat` (chat.py)."""
