"""GATT and advertising identifiers of the phonekey profile, defined once.

The vehicle's GATT server and the phone's central both import these, so the
two sides can never disagree on a UUID.
"""

from typing import Final

# The phonekey service. Vehicles advertise it so phones can filter scans.
PHONEKEY_SERVICE_UUID: Final = "46eaf41f-0e1c-4b0a-acf8-7ecabec52ef8"
# Phone -> vehicle protocol frames (write and write-without-response).
COMMAND_CHAR_UUID: Final = "46eaf420-0e1c-4b0a-acf8-7ecabec52ef8"
# Vehicle -> phone protocol frames (notify).
EVENT_CHAR_UUID: Final = "46eaf421-0e1c-4b0a-acf8-7ecabec52ef8"

# Manufacturer-specific data in the advertisement uses the Bluetooth SIG's
# company identifier reserved for testing; a product would use its own.
ADV_COMPANY_ID: Final = 0xFFFF
