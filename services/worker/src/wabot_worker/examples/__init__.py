"""Example handlers to start your bot from.

Plug one in with ``WORKER_HANDLER=wabot_worker.examples.<module>:<callable>``.
"""
