"""The simulated vehicle key module's firmware (docs/firmware.md).

Modules:

- `flash/`: the state on emulated NOR flash (`FlashVehicleStore`): journal with
  power-cut-safe commits, MAC'd records, wrapped fast-path keys, the
  tamper-evident event log ring, migration.
- `state_store`: `init_vehicle` / `open_store` for a state directory (identity,
  device key, flash image, writer lock); `state_schema` reads the old JSON
  state for migration; `state_lock`: the single-writer lock.
- `firmware_store`: the `FirmwareStore` interface the runtime needs, log kinds.
- `gatt_server`: the phonekey GATT service, one protocol session per connection,
  with `slots` (connection slots, eviction, timeouts), `backoff` (failed
  authentications) and `mcu` (the crypto latency of a real key module).
- `runtime`: `VehicleRuntime`: powers a bumble Device, rotates its private
  advertising (`advertising`), logs events (`event_log`), owns the pairing
  window and the keycard reader (`keycard`, `card_reader`).
- `control` / `control_client`: the console's unix socket to a running vehicle.
- `report`, `display`: `show`/`log` output and key-safe event lines.
- `drift_clock`: a wall clock that drifts by a configurable ppm.
- `cli`, `cli_console`: `phonekey vehicle ...`.
"""
