"""Choose whether W&B runs online: offline when there is no API key or its server cannot be reached.

Shared by ``li2 fit`` (through the CLI) and ``li2 report --wandb``. ``WANDB_BASE_URL`` names a
self-hosted server: that host is probed, and the key is looked up in ``~/.netrc`` under it.

From Python, call it once before creating a ``WandbLogger`` (which, with no key, fails at its first
use instead of going offline)::

    from li2_lightning.wandb_mode import choose_wandb_mode
    reason = choose_wandb_mode()  # None: the mode was left as it was
    logger = WandbLogger(project="li2", save_dir="runs/python")
"""

from __future__ import annotations

import netrc
import os
import socket
from typing import Optional
from urllib.parse import urlparse

DEFAULT_BASE_URL = "https://api.wandb.ai"


def wandb_server() -> tuple[str, int]:
    """Host and port of the W&B server: ``WANDB_BASE_URL`` if set, else the public one."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    if not url.hostname:
        raise ValueError(f"WANDB_BASE_URL={os.environ['WANDB_BASE_URL']!r} has no host; accepted: a URL "
                         "such as https://wandb.example.org")
    return url.hostname, url.port or (80 if url.scheme == "http" else 443)


def has_wandb_key(host: str) -> bool:
    """True if ``WANDB_API_KEY`` is set or ``~/.netrc`` (or ``$NETRC``) holds a login for ``host``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_wandb_mode() -> Optional[str]:
    """Set WANDB_MODE=offline when W&B has no API key or its server cannot be reached.

    A mode the user set is kept.

    Returns:
        The reason for going offline, or None when the mode was left as it was.
    """
    if os.environ.get("WANDB_MODE"):
        return None
    host, port = wandb_server()
    if not has_wandb_key(host):
        reason = f"no W&B API key for {host} (set WANDB_API_KEY or run `wandb login`)"
    elif not wandb_reachable(host, port):
        reason = f"the W&B server {host}:{port} cannot be reached"
    else:
        return None
    os.environ["WANDB_MODE"] = "offline"
    return reason
