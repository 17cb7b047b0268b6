"""A running bridge with its HTTP server on a free port, users of each role, and a few
orders (one failing until its mapping is fixed): shared by the API and browser tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bridge import users
from bridge.store import open_store, store_url

from listener_rig import BridgeThread, RawClient, msa, rig_config
from orders import orm
from peers import ROOT

PASSWORDS = {"vera": "viewer-pass-1", "otto": "operator-pass-1", "ada": "admin-pass-1"}
ROLES = {"vera": "viewer", "otto": "operator", "ada": "admin"}
FAILING = "FAIL-0001"  # the control ID of the message without a modality


@dataclass
class Web:
    running: BridgeThread
    base: str
    mappings: Path
    tmp: Path

    def send(self, message: str) -> str:
        with RawClient(self.running.port) as client:
            return msa(client.exchange(message.encode("latin-1")))[0]

    def fix_mapping(self) -> None:
        """The mapping fix an integrator makes: a default modality."""
        path = self.mappings / "ihe-orm-o01.yaml"
        path.write_text(path.read_text().replace("Modality: {from: OBR-24, required: true}",
                                                 "Modality: {from: OBR-24, default: CT}"))
        bridge = self.running.bridge
        assert bridge is not None
        assert self.running.call(_reload(bridge))


async def _reload(bridge):
    return bridge.reload_mappings()


@contextmanager
def running_web(tmp: Path, database: str | None = None, **overrides: str) -> Iterator[Web]:
    """`database`: a store URL (PostgreSQL), else the SQLite file in the data folder."""
    mappings = tmp / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    if database:
        overrides["store__url"] = database
    config = rig_config(tmp, http__enabled="true", http__port="0",
                        mappings__dir=str(mappings), mappings__watch_seconds="0",
                        scp__enabled="true", scp__port="0", **overrides)
    store = open_store(store_url(config))
    for name, password in PASSWORDS.items():
        users.add(store, name, ROLES[name], password)
    store.close()
    with BridgeThread(config) as running:
        bridge = running.bridge
        assert bridge is not None and bridge.http_port
        web = Web(running, f"http://127.0.0.1:{bridge.http_port}", mappings, tmp)
        assert web.send(orm("OK-0001", order="A1", accession="ACC-A1", patient_id="PAT1",
                            modality="CT", start="202401151030")) == "AA"
        assert web.send(orm("OK-0002", order="A2", accession="ACC-A2", patient_id="PAT2",
                            modality="MR", start="202401161100")) == "AA"
        assert web.send(orm("OK-0003", order="A3", accession="ACC-A3", patient_id="PAT3",
                            modality="CT", start="202401171200")) == "AA"
        assert web.send(orm(FAILING, order="F1", accession="ACC-F1", patient_id="PAT9",
                            modality="")) == "AE"
        yield web
