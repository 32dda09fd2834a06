"""The embedded stack: the whole platform on one machine (Triton, the gateway, one worker; SQLite, the
filesystem broker and local storage), for ``goha up`` (``up.py``), ``make demo`` (``demo.py``) and tests
(``stack.py``: ``EmbeddedStack``)."""
