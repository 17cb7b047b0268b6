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
        start: str = "202401151030", station_note: str = "", charset: str = "8859/1") -> str:
    """One ORM^O01 with one ORC/OBR group; returns text with CR separators."""
    segments = [
        f"MSH|^~\\&|RIS|HOSP|BRIDGE|IMG|20240101120000||ORM^O01|{control_id}|P|2.3.1||||||"
        f"{charset}",
        f"PID|||{patient_id}^^^HOSP||{name}||19700101|F",
        "PV1||O|||||1234^WELBY^MARCUS",
        f"ORC|{control}|{order}^RIS|F{order}^IMG||{status}||1^once^^{start}^^R",
        segment("OBR", {1: "1", 2: f"{order}^RIS", 3: f"F{order}^IMG",
                        4: "CTHEAD^CT Head^LOCAL^CTH1^CT head plain^LOCAL", 13: station_note,
                        18: accession, 19: rp_id, 20: sps_id, 24: modality}),
        f"ZDS|1.2.3.{abs(hash(order)) % 10**8}^100^Application^DICOM",
    ]
    return "\r".join(segments) + "\r"
