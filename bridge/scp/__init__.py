"""The built-in Modality Worklist SCP: C-FIND answered from an in-memory index, MPPS.

Modules, in the order a query flows through them: `server.py` (pynetdicom: associations,
C-FIND, MPPS, Verification), `query.py` (the request identifier as keys), `index.py`
(candidate items by selective keys), `matching.py` (PS3.4 C.2.2.2 matching and the
requested keys of each answer), `charset.py` (answers in a modality's character set),
`encoding.py` (answers straight to bytes), `direct.py` (pending responses written to the
socket, identifiers cached), `importing.py` (existing `.wl` files into the
store), `service.py` (the SCP inside the running bridge).
"""
