"""The ``voicepool`` command: the composition root above ``api``, ``worker`` and ``shared``.

Nothing below imports this package; it imports the API and the worker lazily,
inside the commands that run them.
"""
