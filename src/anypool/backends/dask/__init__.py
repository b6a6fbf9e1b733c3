"""The Dask backend: ``Pool(backend=DaskBackend(client))`` runs each call as a Dask task, in a
child process of the Dask worker that runs it.

Nothing is imported here: Dask workers import ``anypool.backends.dask.remote``, which must not
pull anyio in, and importing anypool never imports Dask.
"""
