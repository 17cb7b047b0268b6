"""Shared fixtures: a real Store and Processor on a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.mapping.loader import load_profiles
from bridge.processor import Processor
from bridge.store import AsyncStore, Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path):
    cfg = load_config(ROOT / "config.yaml", environ={"BRIDGE_DATA_DIR": str(tmp_path / "data")})
    return cfg


@pytest.fixture
async def processor(config):
    store = AsyncStore(Store(config.store_path, ["folder"]))
    proc = Processor(config, load_profiles(config.mappings.dir), store)
    yield proc
    store.close()
