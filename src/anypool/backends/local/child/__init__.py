"""The worker side of anypool: the loop that runs in each worker process.

Nothing here imports anyio or trio, so a worker starts fast and stays small.
"""
