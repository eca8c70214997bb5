"""Tokens: made with `secrets`, stored as SHA-256, compared by hash lookup.

Prefixes tell a token's kind at a glance (and in leaked-secret scanners):
``crl_`` user API tokens, ``crn_`` node tokens, ``crj_`` join tokens.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.core.errors import Unauthorized
from corral.store.models import ApiToken, JoinToken, Node, User

USER_PREFIX = "crl_"
NODE_PREFIX = "crn_"
JOIN_PREFIX = "crj_"


BAD_USER_TOKEN = "the token is not valid (expired, revoked or mistyped)"  # noqa: S105 (an error message)
BAD_NODE_TOKEN = "the node token is not valid: re-join the node with a join token"  # noqa: S105


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user_token(session: Session, user: User, now: datetime, description: str = "") -> str:
    token = new_secret(USER_PREFIX)
    session.add(
        ApiToken(
            user_id=user.id, token_hash=hash_token(token), description=description, created_at=now
        )
    )
    return token


def create_join_token(session: Session, now: datetime, expires_at: datetime | None) -> str:
    token = new_secret(JOIN_PREFIX)
    session.add(JoinToken(token_hash=hash_token(token), created_at=now, expires_at=expires_at))
    return token


def node_for_token(session: Session, token: str) -> Node:
    node = session.scalar(select(Node).where(Node.token_hash == hash_token(token)))
    if node is None:
        raise Unauthorized(BAD_NODE_TOKEN)
    return node


def caller_for_token(session: Session, token: str) -> tuple[int, str, str]:
    """(id, name, role) of the token's user, for every request: one small query."""
    row = session.execute(
        select(User.id, User.name, User.role)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == hash_token(token))
    ).first()
    if row is None:
        raise Unauthorized(BAD_USER_TOKEN)
    return row.id, row.name, row.role


def node_id_for_token(session: Session, token: str) -> int:
    """The id of the token's node, for every agent call: one small query (no ORM objects);
    `node_for_token` when the node row itself is needed."""
    node_id = session.scalar(select(Node.id).where(Node.token_hash == hash_token(token)))
    if node_id is None:
        raise Unauthorized(BAD_NODE_TOKEN)
    return node_id


def check_join_token(session: Session, token: str, now: datetime) -> None:
    row = session.scalar(select(JoinToken).where(JoinToken.token_hash == hash_token(token)))
    if row is None:
        raise Unauthorized("the join token is not valid: make one with `corral join-token`")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized("the join token has expired: make a new one with `corral join-token`")
