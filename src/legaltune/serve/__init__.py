"""`legaltune serve`: an OpenAI-compatible HTTP server over a run or a base model (FastAPI + uvicorn).

``engine`` batches and bounds the work, ``rows`` tracks each answer inside a batch, ``protocol`` is the
wire format, ``prompt`` formats messages as in training, ``app`` the routes, ``server`` the command.
"""
