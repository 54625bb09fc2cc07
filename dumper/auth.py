"""Passwords for asyncpg: an RDS IAM token (default) or PGPASSWORD for local use.

The provider is handed to asyncpg as `password=`, so every new connection
asks it. IAM tokens live 15 minutes; one is reused for new connections while
it has more than MARGIN left, which keeps a `--jobs 8` start at one signature
and stays far below RDS's ~200 new IAM connections/second throttle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .config import Settings
from .errors import ConfigError, ConnectError

TOKEN_LIFETIME = 900.0  # seconds, fixed by RDS
MARGIN = 300.0  # sign anew when less than this is left


class StaticPassword:
    """--auth password: PGPASSWORD (or none: trust/peer auth on a dev server)."""

    def __init__(self, password: str | None) -> None:
        self._password = password

    async def __call__(self) -> str | None:
        return self._password

    def __repr__(self) -> str:
        return "StaticPassword(***)"


class IamToken:
    """Signs RDS IAM auth tokens with the AWS SDK's default credential chain
    (IRSA web identity, EKS Pod Identity, profiles, env keys), caching one."""

    def __init__(self, settings: Settings, session: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 lifetime: float = TOKEN_LIFETIME, margin: float = MARGIN) -> None:
        if not settings.region:
            raise ConfigError("--region: IAM auth needs the database's AWS region "
                              "(set --region, DUMPER_REGION, AWS_REGION or AWS_DEFAULT_REGION)")
        self._settings = settings
        self._session = session
        self._clock = clock
        self._reuse_for = lifetime - margin
        self._token: str | None = None
        self._signed_at = 0.0
        self._lock = asyncio.Lock()
        self.signed = 0  # how many tokens were signed (observable in tests)

    def __repr__(self) -> str:
        s = self._settings
        return f"IamToken(host={s.host!r}, port={s.port}, user={s.user!r}, region={s.region!r})"

    async def __call__(self) -> str:
        async with self._lock:
            if self._token is None or self._clock() - self._signed_at >= self._reuse_for:
                self._token = await self._sign()
                self._signed_at = self._clock()
                self.signed += 1
            return self._token

    async def _sign(self) -> str:
        import aioboto3
        import botocore.exceptions

        s = self._settings
        session = self._session or aioboto3.Session()
        try:
            async with session.client("rds", region_name=s.region) as rds:
                token: str = await rds.generate_db_auth_token(
                    DBHostname=s.host, Port=s.port, DBUsername=s.user, Region=s.region)
                return token
        except botocore.exceptions.NoCredentialsError:
            raise ConnectError(
                "no AWS credentials found for the IAM token: on EKS, annotate the service account "
                "with eks.amazonaws.com/role-arn (IRSA) or use Pod Identity; locally, set AWS_PROFILE "
                "or AWS keys") from None
        except botocore.exceptions.ClientError as exc:
            raise ConnectError(f"AWS refused credentials for the IAM token: {exc}") from None


def password_provider(settings: Settings) -> StaticPassword | IamToken:
    if settings.auth == "password":
        return StaticPassword(settings.password)
    return IamToken(settings)
