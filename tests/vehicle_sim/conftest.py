"""Registers the fixtures of ``vehicle_testkit`` for the vehicle_sim tests."""

from vehicle_testkit import (  # noqa: F401  (fixtures are found by name)
    card,
    make_phone,
    radio,
    state_dir,
    store,
    vehicle,
    vehicle_cli,
)
