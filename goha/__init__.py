"""What a user installs to talk to the platform's API: the Python client (``goha.client``) and the
``goha`` command (``goha.cli``). The client and its commands load none of the server's modules beyond
its settings and error types (no ORM, no database); the admin commands load the server modules they
run, and ``goha up`` / ``goha demo`` dispatch to the embedded stack (``services/embedded/``).
"""
