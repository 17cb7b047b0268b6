"""Status back to the RIS: outbound HL7 messages built from MPPS events and sent over MLLP.

The flow, in module order:

- `profile.py` loads an *outbound profile* (YAML, docs/mapping.md "Outbound profiles"):
  which segments the message has and where each HL7 field comes from.
- `builder.py` builds one message from a queued event (store table `outbound`): the order's
  original message (journal), its identifiers, the worklist items and the MPPS instance.
- `sender.py` is the MLLP client: one message, one ACK, the ACK read.
- `worker.py` is the outbox consumer: in order per order, retries with backoff while the
  RIS is down or silent, dead on AE/AR with the RIS's error text.
- `commands.py` is `hl7-worklist-bridge outbound list|show|replay|preview`.
"""
