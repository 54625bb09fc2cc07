"""Passwords for asyncpg: an RDS IAM token (default) or PGPASSWORD for local use.

The provider is handed to asyncpg as `password=`, so every new connection
asks it. IAM tokens live 15 minutes; one is reused for new connections while
it has more than MARGIN left, which keeps a `--jobs 8` start at one signature
and stays far below RDS's ~200 new IAM connections/second throttle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..core.errors import ConfigError, ConnectError
from ..core.settings import Settings

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

    def __init__(
        self,
        settings: Settings,
        session: Any = None,
        clock: Callable[[], float] = time.monotonic,
        lifetime: float = TOKEN_LIFETIME,
        margin: float = MARGIN,
    ) -> None:
        if not settings.region:
            raise ConfigError(
                "--region: IAM auth needs the database's AWS region "
                "(set --region, DUMPER_REGION, AWS_REGION or AWS_DEFAULT_REGION)"
            )
        import aioboto3  # deferred: only IAM auth needs the AWS SDK

        self._settings = settings
        # One session for the whole run: it caches and refreshes the credentials
        # (one STS call under IRSA, not one per token).
        self._session = session or aioboto3.Session()
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
        s = self._settings
        async with aws_errors(self._settings), self._session.client("rds", region_name=s.region) as rds:
            token: str = await rds.generate_db_auth_token(
                DBHostname=s.host, Port=s.port, DBUsername=s.user, Region=s.region
            )
        await _let_transports_close()
        return token

    async def identity(self) -> tuple[str, str]:
        """(credential source, caller ARN): which link of the chain answered, and as whom."""
        async with aws_errors(self._settings):
            credentials = await self._session.get_credentials()
            if credentials is None:
                raise _no_credentials()
            async with self._session.client("sts", region_name=self._settings.region) as sts:
                who = await sts.get_caller_identity()
        await _let_transports_close()
        return str(credentials.method), str(who["Arn"])


async def _let_transports_close() -> None:
    """aiohttp closes a session's sockets on the next loop iterations; without
    them, a loop that ends right after (asyncio.run) leaks the socket."""
    await asyncio.sleep(0.01)


def _no_credentials() -> ConnectError:
    return ConnectError(
        "no AWS credentials found for the IAM token: on EKS, annotate the service account with "
        "eks.amazonaws.com/role-arn (IRSA) or use EKS Pod Identity; elsewhere set AWS_PROFILE or "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or use --auth password against a dev server)"
    )


@contextlib.asynccontextmanager
async def aws_errors(settings: Settings) -> AsyncIterator[None]:
    """Turn AWS SDK failures into errors that say what to fix (never a secret)."""
    import botocore.exceptions as bx

    try:
        yield
    except bx.NoCredentialsError:
        raise _no_credentials() from None
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if exc.operation_name == "AssumeRoleWithWebIdentity":
            raise ConnectError(
                f"STS AssumeRoleWithWebIdentity was denied for role {settings.aws_role_arn or '?'} "
                f"({code}: {message}); check the role's trust policy names this cluster's OIDC "
                "provider and system:serviceaccount:<namespace>:<service account>"
            ) from None
        raise ConnectError(f"AWS {exc.operation_name} failed ({code}: {message})") from None
    except (bx.BotoCoreError, OSError) as exc:
        raise ConnectError(f"AWS credentials could not be resolved: {exc}") from None


def password_provider(settings: Settings) -> StaticPassword | IamToken:
    if settings.auth == "password":
        return StaticPassword(settings.password)
    return IamToken(settings)
