"""Whose rows are whose: the one check behind every "yours, or 404"."""

from __future__ import annotations

from typing import Protocol, TypeVar

from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import not_found
from shared.ids import MAX_ID_LENGTH
from shared.models import User


def is_admin(user: User) -> bool:
    return user.role == "admin"


class Owned(Protocol):
    user_id: str


Row = TypeVar("Row", bound=Owned)


async def fetch(db: AsyncSession, model: type[Row], row_id: str) -> Row | None:
    """The row with this id, or None."""
    return await db.get(model, row_id) if len(row_id) <= MAX_ID_LENGTH else None


async def owned(
    db: AsyncSession, model: type[Row], row_id: str, user: User, *, what: str, admins: bool = True
) -> Row:
    """The row if ``user`` owns it (or, with ``admins``, is an admin); else 404
    ``{what}_not_found``, the same whether it does not exist or belongs to someone else."""
    row = await fetch(db, model, row_id)
    if row is None or not (row.user_id == user.id or (admins and is_admin(user))):
        raise not_found(what)
    return row
