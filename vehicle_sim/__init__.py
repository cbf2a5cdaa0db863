"""The simulated vehicle key module: persistent state, GATT server, runtime and CLI.

Modules:

- `state_store`: `FileVehicleStore`, the vehicle's state on disk behind
  protocol's `VehicleStore` and `CredentialTrust` interfaces (whitelist and
  counters; issuer keys, revocation list and the floored clock for offline
  credentials) (`init_vehicle`, `open_store`).
- `state_schema`: the JSON form of the changing state, validated on load, with
  the migration from older formats.
- `atomic_file`, `state_lock`: durable file replacement and the single-writer lock.
- `advertising`: the vehicle's legacy advertising payload and its parser.
- `gatt_server`: the phonekey GATT service, one protocol session per connection.
- `runtime`: `VehicleRuntime`, which powers a bumble Device and keeps it advertising.
- `display`: short, key-safe text for ids and events (logs and CLI lines).
- `cli`: `phonekey vehicle init|add-key|provision|show|run`.
"""
