"""``goha up``: the embedded stack (``services/embedded/stack.py``) in the foreground until Ctrl-C or
SIGTERM, then stopped within its grace period. The ``goha`` command (``goha/cli.py``) dispatches here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from shared.platform.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--var-dir", type=Path, default=None, help="state directory (default: GOHA_VAR_DIR or ./var)"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: models/goha-<profile>.pt")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--triton-threads", type=int, default=None, help="torch threads of the model server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="gateway port (0: any free port)")
    parser.add_argument("--tenant", default="demo", help="tenant that gets this session's API key")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from services.embedded.stack import EmbeddedStack

    def announce(message: str) -> None:
        print(f"# {message}", file=sys.stderr, flush=True)

    stack = EmbeddedStack(
        args.var_dir or settings.var_dir,
        checkpoint=args.checkpoint,
        profile=args.profile,
        host=args.host,
        port=args.port or None,
        tenant=args.tenant,
        triton_threads=args.triton_threads,
        announce=announce,
    )
    # SIGTERM (kill, systemd, a test harness) stops the stack as cleanly as Ctrl-C does. SIGINT is set
    # explicitly too: a process started in the background by a shell inherits it ignored.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        stack.start()
        print(
            f"GOHA embedded stack is up ({stack.timings['startup_s']:.0f} s). Ctrl-C stops it.\n"
            f"  web page  {stack.url}/   (paste the key below)\n"
            f"  API       {stack.url}   (reference: {stack.url}/docs)\n"
            f"  API key   {stack.api_key}   (tenant {args.tenant}; kept in {stack.key_file}, the same at every start)\n"
            f"  state     {stack.var_dir}\n"
            f"  logs      {stack.log_dir}/{{triton,gateway,worker}}.log\n"
            f"In another shell:  . {stack.env_file}   (or: export GOHA_API_URL={stack.url} GOHA_API_KEY=…)",
            flush=True,
        )
        stack.serve_forever()
    except KeyboardInterrupt:
        announce("stopping the embedded stack")
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop(requested_at=_INTERRUPTED_AT[0])  # the grace counts from the Ctrl-C
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    took = time.monotonic() - (_INTERRUPTED_AT[0] or time.monotonic())
    announce(f"stopped ({took:.1f} s after the signal)" if _INTERRUPTED_AT[0] else "stopped")
    if stack.timings.get("startup_s") is not None:
        # Every child is gone and nothing is left to save: leave now. Finalising the interpreter (torch
        # and the Triton client are loaded) took up to 2 s more, past the documented 15 s grace.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


_INTERRUPTED_AT: list[float | None] = [None]  # time.monotonic() of the first Ctrl-C / SIGTERM


def _raise_interrupt(_signum: int, _frame: object) -> None:
    if _INTERRUPTED_AT[0] is None:
        _INTERRUPTED_AT[0] = time.monotonic()
    raise KeyboardInterrupt
