"""Exceptions raised by Impressionist's core.

    ImpressionistError
    ├── StoreError
    │   ├── StoreBusy            the database stayed locked by another process too long
    │   └── NotFound             a row that was asked for does not exist
    ├── PermissionDenied         the signed-in user may not do this
    ├── AuthError                wrong credentials, throttled sign-in, weak password
    ├── ValidationError          a value given by a person or a file is not acceptable
    └── ImportValidationError    (core.ingest.formats) a file cannot be imported; names file/row/field
"""

from __future__ import annotations


class ImpressionistError(Exception):
    """Base class of every error Impressionist raises on purpose."""


class StoreError(ImpressionistError):
    """The database could not do what was asked."""


class StoreBusy(StoreError):
    """Another process held the database for longer than the lock timeout."""


class NotFound(StoreError):
    """A row that was asked for does not exist."""


class PermissionDenied(ImpressionistError):
    """The signed-in user's role or identity does not allow this action."""


class AuthError(ImpressionistError):
    """Sign-in failed: unknown user, wrong password, throttled, or a weak password."""


class ValidationError(ImpressionistError, ValueError):
    """A value given by a person (form field, CLI argument) is not acceptable."""
