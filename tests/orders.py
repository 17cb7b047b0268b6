"""Build ORM^O01 messages for tests, field by field as ihe-orm-o01.yaml reads them."""

from __future__ import annotations


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: raw value}, so positions are explicit."""
    values = [""] * max(fields)
    for n, value in fields.items():
        values[n - 1] = value
    return "|".join([name, *values])


def orm(control_id: str, *, order: str = "PL1", control: str = "NW", status: str = "SC",
        patient_id: str = "P1", name: str = "DOE^JANE", accession: str = "ACC1",
        rp_id: str = "RP1", sps_id: str = "SPS1", modality: str = "CT",
        start: str = "202401151030", station_note: str = "", charset: str = "8859/1",
        placer: str | None = None, study_uid: str | None = None,
        description: str = "CT head plain", sender: str = "RIS") -> str:
    """One ORM^O01 with one ORC/OBR group; returns text with CR separators.

    `placer` is ORC-2 as raw text (default ``<order>^RIS``); `study_uid` ZDS-1.1 ("" for none).
    """
    placer = f"{order}^RIS" if placer is None else placer
    uid = f"1.2.3.{sum(map(ord, order))}.{len(order)}" if study_uid is None else study_uid
    segments = [
        f"MSH|^~\\&|{sender}|HOSP|BRIDGE|IMG|20240101120000||ORM^O01|{control_id}|P|2.3.1||||||"
        f"{charset}",
        f"PID|||{patient_id}^^^HOSP||{name}||19700101|F",
        "PV1||O|||||1234^WELBY^MARCUS",
        f"ORC|{control}|{placer}|F{order}^IMG||{status}||1^once^^{start}^^R",
        segment("OBR", {1: "1", 2: placer, 3: f"F{order}^IMG",
                        4: f"CTHEAD^CT Head^LOCAL^CTH1^{description}^LOCAL", 13: station_note,
                        18: accession, 19: rp_id, 20: sps_id, 24: modality}),
    ]
    if uid:
        segments.append(f"ZDS|{uid}^100^Application^DICOM")
    return "\r".join(segments) + "\r"
