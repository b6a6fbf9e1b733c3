"""What runs a pool's calls: the protocol every backend implements (``_base``) and the
backends (``local``: worker processes on this machine).

Nothing is imported here: workers import ``anypool.backends.local.child``, which must not pull
anyio in.
"""
