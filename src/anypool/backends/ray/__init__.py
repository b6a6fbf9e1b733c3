"""The Ray backend: ``Pool(backend=RayBackend())`` runs each call as a Ray task.

Nothing is imported here: Ray workers import ``anypool.backends.ray.remote``, which must not pull
anyio in, and importing anypool never imports Ray.
"""
