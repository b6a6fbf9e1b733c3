"""The Ray backend: ``Pool(backend=RayBackend())`` runs the calls in Ray actors, the pool's
workers.

Nothing is imported here: Ray workers import ``anypool.backends.ray.remote``, which must not pull
anyio in, and importing anypool never imports Ray.
"""
