"""Registers the vehicle-and-phones fixtures of ``phone_issue4_rig`` (shared with
the phone tests) for the e2e tests; a module with its own fixture of the same
name (test_private_advertising's ``radio``) keeps its own."""

from tests.phone_client.phone_issue4_rig import (  # noqa: F401  (fixtures are found by name)
    make_phone,
    radio,
    sessions,
    vehicle,
)
