"""An LDAP responder that checks RDS IAM auth tokens the way RDS does.

PostgreSQL's `ldap` method (simple bind mode) sends the client's password
in an LDAP simple bind; this server receives it and validates it as an RDS
IAM token: a SigV4 presigned URL for `Action=connect` signed for the right
host, port, user and region with temporary credentials that moto's STS
issued. It speaks just enough LDAPv3 (BER) for PostgreSQL: BindRequest and
UnbindRequest. Used by the test suite; no production code depends on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from devtools.background import BackgroundServer

SUCCESS, INVALID_CREDENTIALS, PROTOCOL_ERROR = 0, 49, 2
SIGV4_TIME = "%Y%m%dT%H%M%SZ"


# --- BER, the small part LDAP needs --------------------------------------


def _read_tlv(data: bytes, at: int) -> tuple[int, bytes, int]:
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[at : at + n], "big")
        at += n
    return tag, data[at : at + length], at + length


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + value


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def bind_response(message_id: int, code: int, message: str) -> bytes:
    op = _tlv(0x61, _tlv(0x0A, bytes([code])) + _tlv(0x04, b"") + _tlv(0x04, message.encode()))
    return _tlv(0x30, _int(message_id) + op)


# --- token checks -----------------------------------------------------------


@dataclass
class TokenCheck:
    host: str
    port: int
    region: str
    secret_for: Callable[[str], tuple[str, str] | None]  # access key -> (secret, session token)
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    max_age: float = 900.0  # RDS tokens live 15 minutes

    def reason_to_reject(self, token: str, user: str) -> str | None:
        """None if `token` is a valid RDS IAM token for `user`; else why not."""
        parts = urllib.parse.urlsplit("https://" + token)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        one = {k: v[0] for k, v in query.items() if len(v) == 1}
        if parts.netloc != f"{self.host}:{self.port}":
            return f"token is for {parts.netloc}, not {self.host}:{self.port}"
        if one.get("Action") != "connect" or one.get("DBUser") != user:
            return f"token is for user {one.get('DBUser')!r}, not {user!r}"
        if one.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or one.get("X-Amz-Expires") != "900":
            return "not an RDS IAM token (algorithm or expiry)"
        try:
            akid, day, region, service, terminal = one["X-Amz-Credential"].split("/")
            signed_at = dt.datetime.strptime(one["X-Amz-Date"], SIGV4_TIME).replace(tzinfo=dt.UTC)
        except (KeyError, ValueError):
            return "malformed credential scope or date"
        if day != one["X-Amz-Date"][:8]:
            return "credential scope date differs from X-Amz-Date"
        if (region, service, terminal) != (self.region, "rds-db", "aws4_request"):
            return f"credential scope {region}/{service} is not {self.region}/rds-db"
        age = (self.now() - signed_at).total_seconds()
        if age > self.max_age or age < -300:
            return f"token expired ({age:.0f}s old)"
        secret = self.secret_for(akid)
        if secret is None:
            return f"unknown access key {akid}"
        if one.get("X-Amz-Security-Token") != secret[1]:
            return "session token does not belong to the access key"
        unsigned = [
            (k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"
        ]
        request = AWSRequest(method="GET", url=f"https://{parts.netloc}/?{urllib.parse.urlencode(unsigned)}")
        request.context["timestamp"] = one["X-Amz-Date"]
        auth = SigV4QueryAuth(Credentials(akid, secret[0], secret[1]), "rds-db", region, expires=900)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if expected != one.get("X-Amz-Signature"):
            return "signature does not match"
        return None


# --- the server ---------------------------------------------------------------


@dataclass
class IamLdapServer:
    check: TokenCheck
    port: int = 0
    binds: list[tuple[str, str | None]] = field(default_factory=list)  # (user, rejection reason)
    tokens: list[str] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                length = head[1]
                extra = b""
                if length & 0x80:
                    extra = await reader.readexactly(length & 0x7F)
                    length = int.from_bytes(extra, "big")
                body = await reader.readexactly(length)
                _, message, _ = _read_tlv(head + extra + body, 0)
                _, msgid_bytes, at = _read_tlv(message, 0)
                message_id = int.from_bytes(msgid_bytes, "big")
                op_tag, op, _ = _read_tlv(message, at)
                if op_tag == 0x42:  # UnbindRequest
                    break
                if op_tag != 0x60:  # only BindRequest is expected
                    writer.write(bind_response(message_id, PROTOCOL_ERROR, "unsupported operation"))
                    break
                _, _, at = _read_tlv(op, 0)  # version
                _, dn, at = _read_tlv(op, at)
                _, password, _ = _read_tlv(op, at)
                user = dn.decode().split(",", 1)[0].removeprefix("cn=")
                token = password.decode()
                self.tokens.append(token)
                reason = self.check.reason_to_reject(token, user)
                self.binds.append((user, reason))
                code = SUCCESS if reason is None else INVALID_CREDENTIALS
                writer.write(bind_response(message_id, code, reason or ""))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> IamLdapServer:
        self._server = BackgroundServer(self._handle).start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        self._server.stop()
