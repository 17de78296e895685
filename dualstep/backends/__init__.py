"""Per-backend lowerings of the five functions; each module has the same five names.

They take arguments already validated by :mod:`dualstep._api` and are not public.
"""
