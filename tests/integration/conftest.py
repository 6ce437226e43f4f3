"""Fixtures more than one integration module uses."""

from tests.integration.test_tls import pki  # noqa: F401  (a test CA, broker and client certs)
