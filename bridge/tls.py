"""TLS for MLLP: the listener's server context, and a client context for `send` and tests."""

from __future__ import annotations

import ssl
from pathlib import Path

from bridge.config import ConfigError, TlsConfig


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """A server context from `mllp.tls`: TLS 1.2 or later, client certificates on demand."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert cfg.certfile is not None  # checked by the configuration
    try:
        ctx.load_cert_chain(cfg.certfile, cfg.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mllp.tls: cannot load certfile {cfg.certfile} / keyfile "
                          f"{cfg.keyfile}: {exc}") from exc
    if cfg.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(cfg.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mllp.tls: cannot load ca_file {cfg.ca_file}: {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else (
        ssl.CERT_OPTIONAL if cfg.ca_file is not None else ssl.CERT_NONE)
    return ctx


def client_context(ca_file: Path | None = None, certfile: Path | None = None,
                   keyfile: Path | None = None, check_hostname: bool = True) -> ssl.SSLContext:
    """A client context that trusts `ca_file` (else the system CAs) and may present a cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def peer_subject(peercert: dict | None) -> str:
    """The commonName of a verified peer certificate, for the logs ("" when none)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""
