"""The REST API against a running bridge (real HTTP, httpx): roles, filters and paging,
replay after a mapping fix, item history, manual items, translate, security."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from orders import orm
from web_rig import FAILING, PASSWORDS, Web, running_web


def client(web: Web, user: str | None = None) -> httpx.Client:
    auth = (user, PASSWORDS[user]) if user else None
    return httpx.Client(base_url=web.base, auth=auth, timeout=30)


pytestmark = pytest.mark.backends


@pytest.fixture
def web(tmp_path, store_target) -> Iterator[Web]:
    with running_web(tmp_path, store_target) as running:
        yield running


def test_roles(web: Web) -> None:
    anonymous = client(web)
    for path in ("/api/items", "/api/journal", "/api/status", "/api/users",
                 "/dicomweb/modality-scheduled-procedure-steps"):
        answer = anonymous.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Basic")
    # /metrics and /healthz stay open, as before.
    assert anonymous.get("/healthz").json()["status"] == "ok"
    assert "hl7bridge_messages_total" in anonymous.get("/metrics").text
    assert anonymous.get("/api/openapi.json").status_code == 200

    failed = client(web, "vera").get("/api/journal", params={"status": "failed"}).json()
    entry_id = failed["entries"][0]["id"]
    assert client(web, "vera").post(f"/api/journal/{entry_id}/replay").status_code == 403
    assert client(web, "vera").get("/api/users").status_code == 403
    assert client(web, "otto").get("/api/users").status_code == 403
    assert client(web, "otto").post(f"/api/journal/{entry_id}/replay").status_code == 200
    assert sorted(u["name"] for u in client(web, "ada").get("/api/users").json()) == \
        ["ada", "otto", "vera"]
    wrong = httpx.get(f"{web.base}/api/items", auth=("vera", "not her password"))
    assert wrong.status_code == 401


def test_journal_filters_and_paging(web: Web) -> None:
    api = client(web, "vera")
    everything = api.get("/api/journal").json()
    assert everything["total"] == 4
    ids = [e["id"] for e in everything["entries"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    failed = api.get("/api/journal", params={"status": "failed"}).json()
    assert [e["control_id"] for e in failed["entries"]] == [FAILING]
    assert "OBR-24" in failed["entries"][0]["error"]
    assert api.get("/api/journal", params={"control_id": "OK-0002"}).json()["total"] == 1
    assert [e["control_id"] for e in api.get("/api/journal", params={
        "patient_id": "PAT3"}).json()["entries"]] == ["OK-0003"]
    assert api.get("/api/journal", params={"accession": "ACC-A1"}).json()["total"] == 1
    assert api.get("/api/journal", params={"sender": "NOBODY"}).json()["total"] == 0
    assert api.get("/api/journal", params={"message_type": "ORM^O01"}).json()["total"] == 4
    page = api.get("/api/journal", params={"limit": 2, "offset": 1}).json()
    assert (page["total"], [e["id"] for e in page["entries"]]) == (4, ids[1:3])
    assert api.get("/api/journal", params={"until": "2000-01-01T00:00:00"}).json()[
        "total"] == 0

    detail = api.get(f"/api/journal/{failed['entries'][0]['id']}").json()
    assert detail["segments"][0][:3] == ["MSH", "|", "^~\\&"]
    assert "MSA|AE" in detail["ack"]
    assert "OBR-24" in (detail["trace"]["error"] + " ".join(detail["trace"]["notes"]))
    assert detail["items"] == []
    ok = api.get(f"/api/journal/{ids[-1]}").json()  # OK-0001
    assert ok["items"] and ok["trace"]["profile"] == "ihe-orm-o01"
    assert any(t["attribute"] == "AccessionNumber" and t["value"] == "ACC-A1"
               for t in ok["trace"]["traces"][0])
    assert api.get("/api/journal/999999").status_code == 404


def test_items_filters_paging_and_history(web: Web) -> None:
    api = client(web, "vera")
    every = api.get("/api/items").json()
    assert every["total"] == 3
    assert [i["dataset"]["AccessionNumber"] for i in every["items"]] == \
        ["ACC-A1", "ACC-A2", "ACC-A3"]  # by start
    ct = api.get("/api/items", params={"modality": "CT"}).json()
    assert sorted(i["dataset"]["AccessionNumber"] for i in ct["items"]) == ["ACC-A1", "ACC-A3"]
    assert api.get("/api/items", params={"patient_id": "PAT2"}).json()["total"] == 1
    assert api.get("/api/items", params={"accession": "ACC-A3"}).json()["total"] == 1
    days = api.get("/api/items", params={"date_from": "2024-01-16",
                                         "date_to": "2024-01-16"}).json()
    assert [i["dataset"]["AccessionNumber"] for i in days["items"]] == ["ACC-A2"]
    assert api.get("/api/items", params={"status": "SCHEDULED"}).json()["total"] == 3
    assert api.get("/api/items", params={"text": "DOE^JANE"}).json()["total"] == 3
    page = api.get("/api/items", params={"limit": 1, "offset": 2}).json()
    assert (page["total"], page["items"][0]["dataset"]["AccessionNumber"]) == (3, "ACC-A3")

    key = ct["items"][0]["key"]
    first = api.get(f"/api/items/{key}").json()
    assert [(h["status"], h["visible"]) for h in first["history"]] == [("SCHEDULED", True)]
    made_by = first["history"][0]["journal_id"]
    assert api.get(f"/api/journal/{made_by}").json()["control_id"] == "OK-0001"
    # The order changes: the history says which message made each change.
    assert web.send(orm("OK-0004", order="A1", accession="ACC-A1", patient_id="PAT1",
                        control="XO", modality="CT", description="CT head contrast",
                        start="202401151030")) == "AA"
    history = api.get(f"/api/items/{key}").json()["history"]
    assert len(history) == 2
    assert api.get(f"/api/journal/{history[1]['journal_id']}").json()["control_id"] == \
        "OK-0004"
    assert api.get("/api/items/no-such-key").status_code == 404


def test_replay_after_a_mapping_fix_delete_and_manual_item(web: Web, caplog) -> None:
    caplog.set_level(logging.INFO)
    viewer, operator = client(web, "vera"), client(web, "otto")
    failed_id = viewer.get("/api/journal", params={"status": "failed"}).json()[
        "entries"][0]["id"]
    still = operator.post(f"/api/journal/{failed_id}/replay").json()
    assert still["ack_code"] == "AE"
    web.fix_mapping()
    replayed = operator.post("/api/journal/replay", params={"status": "failed"}).json()
    assert [(r["id"], r["ack_code"]) for r in replayed] == [(failed_id, "AA")]
    entry = viewer.get(f"/api/journal/{failed_id}").json()
    assert (entry["status"], entry["replay_count"]) == ("replayed", 2)
    assert len(entry["items"]) == 1
    item = viewer.get(f"/api/items/{entry['items'][0]}").json()
    assert item["dataset"]["AccessionNumber"] == "ACC-F1"
    assert item["history"][0]["journal_id"] == failed_id
    assert f"user otto replayed journal {failed_id}: AA" in caplog.text

    # The SCP's index follows at once: DICOMweb (same index) finds it.
    found = viewer.get("/dicomweb/modality-scheduled-procedure-steps",
                       params={"AccessionNumber": "ACC-F1"}).json()
    assert len(found) == 1

    key = entry["items"][0]
    assert viewer.delete(f"/api/items/{key}").status_code == 403
    assert operator.delete(f"/api/items/{key}").status_code == 200
    assert viewer.get(f"/api/items/{key}").json()["status"] == "DISCONTINUED"
    assert f"user otto deleted item {key}" in caplog.text
    assert viewer.get("/dicomweb/modality-scheduled-procedure-steps",
                      params={"AccessionNumber": "ACC-F1"}).json() == []

    manual = {"PatientID": "DOWN1", "PatientName": "DOWNTIME^PAT",
              "AccessionNumber": "MAN-1", "RequestedProcedureID": "RPM1",
              "ScheduledProcedureStepSequence": [{
                  "Modality": "US", "ScheduledStationAETitle": "US01",
                  "ScheduledProcedureStepStartDate": "20240120",
                  "ScheduledProcedureStepStartTime": "0900",
                  "ScheduledProcedureStepID": "SPSM1"}]}
    assert viewer.post("/api/items", json=manual).status_code == 403
    assert operator.post("/api/items", json={"PatientID": "X"}).status_code == 422
    created = operator.post("/api/items", json=manual)
    assert created.status_code == 201
    new_key = created.json()["key"]
    stored = viewer.get(f"/api/items/{new_key}").json()
    assert stored["status"] == "SCHEDULED" and stored["dataset"]["StudyInstanceUID"]
    assert f"user otto created manual item {new_key}" in caplog.text
    found = viewer.get("/dicomweb/modality-scheduled-procedure-steps",
                       params={"ScheduledProcedureStepSequence.Modality": "US"}).json()
    assert [f["00080050"]["Value"] for f in found] == [["MAN-1"]]


def test_translate(web: Web) -> None:
    api = client(web, "vera")
    message = orm("T1", order="T1", accession="ACC-T1")
    good = api.post("/api/translate", content=message, headers={"content-type": "text/plain"})
    assert good.status_code == 200
    body = good.json()
    assert body["profile"] == "ihe-orm-o01" and body["error"] is None
    assert body["items"][0]["00080050"]["Value"] == ["ACC-T1"]
    trace = {t["attribute"]: t for t in body["traces"][0]}
    assert trace["AccessionNumber"]["source"].startswith("OBR-18")

    # An unsaved mapping with an error: the answer names the file and the line.
    broken = (web.mappings / "ihe-orm-o01.yaml").read_text().replace(
        "Modality: {from: OBR-24", "Modality: {from: OBR-999x", 1)
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if "OBR-999x" in text)
    bad = api.post("/api/translate", json={"message": message, "mapping": broken,
                                           "mapping_file": "ihe-orm-o01.yaml"})
    assert bad.status_code == 422
    assert f"ihe-orm-o01.yaml:{line}" in bad.json()["error"]
    assert str(web.tmp) not in bad.json()["error"].replace(str(web.mappings), "")
    # The same text with the fix: the failing message now maps.
    fixed = (web.mappings / "ihe-orm-o01.yaml").read_text().replace(
        "Modality: {from: OBR-24, required: true}", "Modality: {from: OBR-24, default: MR}")
    tried = api.post("/api/translate", json={
        "message": orm("T2", modality=""), "mapping": fixed,
        "mapping_file": "ihe-orm-o01.yaml"}).json()
    assert tried["error"] is None
    assert tried["items"][0]["00400100"]["Value"][0]["00080060"]["Value"] == ["MR"]
    # Not saved: the running bridge still uses its own mapping.
    assert api.post("/api/translate", content=orm("T3", modality="")).status_code == 422
    assert api.post("/api/translate", content="not HL7").json()["error"]
    assert api.post("/api/translate", params={"profile": "nope"}, content=message
                    ).json()["error"] == "no profile named 'nope'"


def test_status(web: Web) -> None:
    status = client(web, "vera").get("/api/status").json()
    assert status["listener"]["port"] == web.running.port
    assert status["scp"]["enabled"] and status["scp"]["worklist_items"] == 3
    # The .wl folder is per instance on a shared database: named folder@<instance> there.
    folder = web.running.bridge.sinks[0].name
    assert folder == ("folder" if web.running.config.store.url is None else
                      f"folder@{web.running.bridge.store.store.instance}")
    assert status["sinks"][folder]["dead"] == 0
    assert status["store"]["failed_last_hour"] == 1
    assert "ihe-orm-o01" in [p["name"] for p in status["mappings"]["profiles"]]
    assert status["mappings"]["load_error"] is None
    (web.mappings / "broken.yaml").write_text("profile: [\n")
    web.running.call(_reload(web.running.bridge))
    assert "broken.yaml" in client(web, "vera").get("/api/status").json()["mappings"][
        "load_error"]


async def _reload(bridge):
    return bridge.reload_mappings()


def test_failed_logins_are_limited(web: Web) -> None:
    for _ in range(5):
        assert httpx.get(f"{web.base}/api/items", auth=("vera", "guess")).status_code == 401
    # Now even the right password waits (the window is 15 minutes).
    assert client(web, "vera").get("/api/items").status_code == 429
    assert client(web, "otto").get("/api/items").status_code == 200  # another user


def test_sessions_csrf_and_expiry(web: Web) -> None:
    browser = httpx.Client(base_url=web.base, timeout=30)
    login = browser.post("/login", data={"name": "otto", "password": PASSWORDS["otto"]})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert browser.get("/api/items").status_code == 200
    failed_id = browser.get("/api/journal", params={"status": "failed"}).json()[
        "entries"][0]["id"]
    # A state-changing request with the session but without its CSRF token is refused.
    assert browser.post(f"/api/journal/{failed_id}/replay").status_code == 403
    assert browser.post(f"/api/journal/{failed_id}/replay",
                        headers={"X-CSRF-Token": "forged"}).status_code == 403
    sessions = web.running.bridge.http.app.state.sessions
    (token,) = sessions.by_token
    csrf = sessions.by_token[token].csrf
    assert browser.post(f"/api/journal/{failed_id}/replay",
                        headers={"X-CSRF-Token": csrf}).status_code == 200
    # Sessions expire.
    sessions.by_token[token].expires_at = 0
    assert browser.get("/api/items").status_code == 401
    assert sessions.by_token == {}
    wrong = httpx.post(f"{web.base}/login", data={"name": "otto", "password": "nope"})
    assert wrong.status_code == 303 and "error" in wrong.headers["location"]
    # A login form posted from another site is refused (login CSRF).
    assert httpx.post(f"{web.base}/login", data={"name": "otto",
                                                 "password": PASSWORDS["otto"]},
                      headers={"Origin": "https://evil.example"}).status_code == 403


def test_access_log_carries_no_patient_data(web: Web, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bridge.web.access")
    api = client(web, "vera")
    key = api.get("/api/items", params={"patient_id": "PAT1"}).json()["items"][0]["key"]
    api.get(f"/api/items/{key}")
    api.get("/dicomweb/modality-scheduled-procedure-steps", params={"PatientID": "PAT1"})
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.web.access"]
    assert any(line.startswith("GET /api/items/{key:path} 200 vera") for line in lines)
    assert lines and not any("PAT1" in line or "A1" in line for line in lines)


def test_console_pages_need_a_login_and_render(web: Web) -> None:
    browser = httpx.Client(base_url=web.base, timeout=30)
    assert browser.get("/").headers["location"] == "/login"
    assert browser.get("/messages").status_code == 303
    assert "user add NAME" not in browser.get("/login").text  # users exist
    browser.post("/login", data={"name": "vera", "password": PASSWORDS["vera"]})
    failed = browser.get("/api/journal", params={"status": "failed"}).json()["entries"][0]
    key = browser.get("/api/items").json()["items"][0]["key"]
    for path, expected in [("/", "Messages per minute"),
                           ("/messages?status=failed", FAILING),
                           (f"/messages/{failed['id']}", 'title="OBR-24"'),
                           ("/worklist?modality=CT", "ACC-A3"),
                           (f"/worklist/{key}", "made by"),
                           (f"/playground?journal={failed['id']}", "OBR-24"),
                           ("/playground?edit=ihe-orm-o01", "ihe-orm-o01.yaml")]:
        page = browser.get(path)
        assert page.status_code == 200, path
        assert expected in page.text, path
    # A viewer sees no replay button and cannot replay through the console either.
    assert 'id="replay"' not in browser.get(f"/messages/{failed['id']}").text
    csrf = web.running.bridge.http.app.state.sessions
    token = next(iter(csrf.by_token.values())).csrf
    assert browser.post(f"/messages/{failed['id']}/replay", data={"csrf": token}
                        ).status_code == 403


def test_console_without_users_says_how_to_create_one(tmp_path, store_target) -> None:
    from bridge.store import open_store, store_url

    with running_web(tmp_path, store_target) as web:
        store = open_store(store_url(web.running.config))
        for name in PASSWORDS:
            store.user_delete(name)
        store.close()
        assert "hl7-worklist-bridge user add NAME --role admin --password-stdin" in \
            httpx.get(f"{web.base}/login").text


def test_users_api_for_admins(web: Web, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bridge.audit")
    admin = client(web, "ada")
    created = admin.post("/api/users", json={"name": "nina", "role": "operator",
                                             "password": "nina-password"})
    assert created.status_code == 201
    assert httpx.get(f"{web.base}/api/items", auth=("nina", "nina-password")).status_code \
        == 200
    assert admin.post("/api/users", json={"name": "nina", "password": "another-one"}
                      ).status_code == 422
    assert admin.post("/api/users", json={"name": "x", "role": "root",
                                          "password": "long enough"}).status_code == 422
    assert client(web, "otto").post("/api/users", json={
        "name": "eve", "password": "eve-password"}).status_code == 403
    assert admin.delete("/api/users/nina").status_code == 200
    # A deleted user is refused at once.
    assert httpx.get(f"{web.base}/api/items", auth=("nina", "nina-password")).status_code \
        == 401
    assert admin.delete("/api/users/nina").status_code == 404
    assert "user ada added user nina (operator)" in caplog.text
    assert "user ada deleted user nina" in caplog.text


def test_operator_changes_are_history_without_a_message(web: Web) -> None:
    api, operator = client(web, "vera"), client(web, "otto")
    key = api.get("/api/items", params={"accession": "ACC-A2"}).json()["items"][0]["key"]
    assert operator.delete(f"/api/items/{key}").status_code == 200
    history = api.get(f"/api/items/{key}").json()["history"]
    assert [(h["status"], h["journal_id"] is None) for h in history] == \
        [("SCHEDULED", False), ("DISCONTINUED", True)]


def test_https(tmp_path) -> None:
    from tls_certs import TestCA

    ca = TestCA(tmp_path / "pki")
    server = ca.issue("localhost", server=True)
    with running_web(tmp_path / "run", http__tls__certfile=str(server.cert),
                     http__tls__keyfile=str(server.key)) as web:
        url = web.base.replace("http://127.0.0.1", "https://localhost")
        answer = httpx.get(f"{url}/healthz", verify=str(ca.ca_file), timeout=30)
        assert answer.json()["status"] == "ok"
        login = httpx.post(f"{url}/login", verify=str(ca.ca_file), timeout=30,
                           data={"name": "vera", "password": PASSWORDS["vera"]})
        assert "secure" in login.headers["set-cookie"].lower()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{web.base}/healthz", timeout=10)  # plain HTTP is not served


def test_manual_item_from_the_console(web: Web, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bridge.audit")
    browser = httpx.Client(base_url=web.base, timeout=30)
    browser.post("/login", data={"name": "otto", "password": PASSWORDS["otto"]})
    page = browser.get("/worklist").text
    assert 'id="manual-create"' in page
    sessions = web.running.bridge.http.app.state.sessions
    csrf = next(iter(sessions.by_token.values())).csrf
    form = {"PatientID": "DT1", "PatientName": "DOWN^TIME", "AccessionNumber": "MAN-7",
            "Modality": "CR", "ScheduledStationAETitle": "CR01",
            "ScheduledProcedureStepStartDate": "2024-02-01",
            "ScheduledProcedureStepStartTime": "09:30"}
    assert browser.post("/worklist-new", data=form).status_code == 403  # no CSRF token
    made = browser.post("/worklist-new", data={**form, "csrf": csrf})
    assert made.status_code == 303
    item = client(web, "vera").get("/api/items", params={"accession": "MAN-7"}).json()[
        "items"][0]
    step = item["dataset"]["ScheduledProcedureStepSequence"][0]
    assert (step["Modality"], step["ScheduledProcedureStepStartDate"],
            step["ScheduledProcedureStepStartTime"]) == ("CR", "20240201", "0930")
    assert f"user otto created manual item {item['key']}" in caplog.text
