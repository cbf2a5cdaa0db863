"""The shared Bluetooth LE layer of phonekey.

Modules, each importable on its own so that importing one never drags in the
others' dependencies:

- `uuids`: GATT and advertising identifiers of the phonekey profile.
- `advertising`: build legacy advertising payloads within the 31-byte limit.
- `virtual_link`: in-process virtual radio (bumble controllers on one link).
- `transports`: open a bumble `Device` from a transport spec string.
- `radio_hub`, `radio_cli`: the cross-process virtual radio (`phonekey radio`).
- `bleak_client`, `bleak_scanner` (re-exported by `bleak_backend`): a bleak
  backend that drives a bumble `Device`, so phone code only uses bleak's API.
- `errors`: exceptions raised by this package.
"""
