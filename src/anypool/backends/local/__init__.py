"""The local backend: worker processes on this machine, each reached through a pipe.

Nothing is imported here: workers import ``anypool.backends.local.child``, which must not pull
anyio in.
"""
