"""The credential cloud: an HTTP service that enrols phones for vehicles and
issues the signed credentials, revocation lists and signed time that vehicles
verify offline.

Nothing a vehicle does depends on reaching this service: it only mints
objects the vehicle checks against the issuer public key it was provisioned
with. That is why the simulator can inject faults (``cloud_sim.faults``) and
the key must keep working.

The phone never imports this package: the signed credential request both
sides speak lives in ``protocol.cloud_request_auth``.
"""
