"""Console and API users: names, roles and argon2id password hashes, kept in the store.

There is no default user and no default password: `hl7-worklist-bridge user add` creates
the first one. Roles grow: a viewer reads everything, an operator may also replay messages,
delete items and create manual items, an admin may also manage users.
"""

from __future__ import annotations

import re
from enum import IntEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from bridge.store import Store, User


class Role(IntEnum):
    viewer = 1
    operator = 2
    admin = 3


ROLES = [r.name for r in Role]
NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 8

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when the user does not exist, so that an unknown name takes as long as
# a wrong password.
_DUMMY = _hasher.hash("not a password of anyone")


class UserError(ValueError):
    """A name, role or password that cannot be used; the message says which."""


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UserError("a user name is 1 to 64 letters, digits or . _ @ -")
    return name


def check_role(role: str) -> Role:
    try:
        return Role[role]
    except KeyError:
        raise UserError(f"unknown role {role!r} (one of {', '.join(ROLES)})") from None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password has at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def add(store: Store, name: str, role: str, password: str) -> None:
    check_name(name)
    check_role(role)
    if store.user(name) is not None:
        raise UserError(f"user {name} exists (user passwd changes the password)")
    store.user_put(name, role, hash_password(password))


def set_password(store: Store, name: str, password: str) -> None:
    user = store.user(name)
    if user is None:
        raise UserError(f"no user {name}")
    store.user_put(name, user.role, hash_password(password))


def delete(store: Store, name: str) -> bool:
    return store.user_delete(name)


def verify(user: User | None, password: str) -> bool:
    """Whether `password` is the user's (the same work for no user: no timing hint)."""
    try:
        _hasher.verify(user.password_hash if user else _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return False
    return user is not None


def allowed(user: User, needed: Role) -> bool:
    return Role[user.role] >= needed
