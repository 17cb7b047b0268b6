"""Keys that escaped separators cannot make ambiguous (issue 14, item 9): item keys, the
duplicate check's whole MSH-10 and its sender part, each fed crafted identifiers."""

from __future__ import annotations

from bridge.keys import escape, field_key, item_key
from bridge.message import Separators

from orders import orm

SEPS = Separators()


def test_field_keys_keep_escaped_separators_apart_from_real_ones() -> None:
    # Plain values keep their plain form (file names and Orthanc IDs stay as they were).
    assert field_key("P1^RIS", SEPS) == "P1^RIS"
    assert item_key("P1^RIS", "RP1", "SPS1") == "P1^RIS|RP1|SPS1"
    # One component holding "^" (\S\) is not two components; same for & | and \.
    assert field_key("A\\S\\B", SEPS) != field_key("A^B", SEPS)
    assert field_key("A\\T\\B", SEPS) != field_key("A&B", SEPS)
    assert field_key("A\\E\\^B", SEPS) != field_key("A^\\E\\B", SEPS)
    assert item_key(field_key("T5K\\F\\R1", SEPS), "R2", "S") != \
        item_key("T5K", "R1|R2", "S")
    assert item_key("A", escape("B\\"), "C") != item_key("A", "B", escape("\\C"))
    # Trailing empty components and white space carry nothing in HL7.
    assert field_key("P1^RIS^^", SEPS) == field_key(" P1^RIS", SEPS) == "P1^RIS"


async def test_a_literal_bar_in_an_identifier_does_not_merge_two_orders(processor) -> None:
    """(a) ORC-2 `T5K\\F\\R1` + OBR-19 `R2` against ORC-2 `T5K` + OBR-19 `R1\\F\\R2`: the old
    key `T5K|R1|R2|S` was the same for both, and B overwrote A's item."""
    a = orm("KA", placer="T5K\\F\\R1", rp_id="R2", sps_id="S", patient_id="PA")
    b = orm("KB", placer="T5K", rp_id="R1\\F\\R2", sps_id="S", patient_id="PB")
    assert (await processor.handle(a.encode(), "t")).code == "AA"
    assert (await processor.handle(b.encode(), "t")).code == "AA"
    items = processor.store.store.items()
    assert sorted(i.dataset["PatientID"] for i in items) == ["PA", "PB"]
    assert len({i.item_key for i in items}) == 2


async def test_the_whole_msh_10_counts_for_duplicates(processor) -> None:
    """(b) A CA with MSH-10 `T3^B` after the NW with `T3^A` is a new message, applied."""
    nw = await processor.handle(orm("T3^A", order="DUP").encode(), "t")
    ca = await processor.handle(orm("T3^B", order="DUP", control="CA",
                                    status="CA").encode(), "t")
    assert ca.code == "AA" and ca.ack != nw.ack
    assert processor.store.store.journal_entry(ca.journal_id).status == "processed"
    [item] = processor.store.store.items()
    assert item.status == "CANCELED"
    # The very same MSH-10 again is still a duplicate.
    again = await processor.handle(orm("T3^B", order="DUP", control="CA",
                                       status="CA").encode(), "t")
    assert again.ack == ca.ack
    assert processor.store.store.journal_entry(again.journal_id).status == "duplicate"


def _from(app: str, facility: str, control_id: str, order: str) -> bytes:
    text = orm(control_id, order=order, sender=app)
    return text.replace("|HOSP|BRIDGE|", f"|{facility}|BRIDGE|", 1).encode()


async def test_senders_differing_only_in_escaped_bars_are_two_senders(processor) -> None:
    """(c) MSH-3 `A\\F\\B` + MSH-4 `C` and MSH-3 `A` + MSH-4 `B\\F\\C` shared the duplicate
    key `A|B|C`: the second sender's order got the first one's ACK and was dropped."""
    first = await processor.handle(_from("A\\F\\B", "C", "SAME1", "ONE"), "t")
    second = await processor.handle(_from("A", "B\\F\\C", "SAME1", "TWO"), "t")
    assert (first.code, second.code) == ("AA", "AA")
    assert processor.store.store.journal_entry(second.journal_id).status == "processed"
    assert sorted(i.order_key for i in processor.store.store.items()) == ["ONE^RIS", "TWO^RIS"]
    # Components of MSH-3 count too: RIS^1.2.3^ISO is not RIS^1.2.4^ISO.
    third = await processor.handle(_from("RIS^1.2.3^ISO", "H", "SAME2", "THREE"), "t")
    fourth = await processor.handle(_from("RIS^1.2.4^ISO", "H", "SAME2", "FOUR"), "t")
    assert processor.store.store.journal_entry(fourth.journal_id).status == "processed"
    assert third.code == fourth.code == "AA"
