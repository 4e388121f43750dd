"""Sign-in, sessions, CSRF and the authorization matrix of every route."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_agent.db.orm import AuditEvent, User
from tests.web.factories import PASSWORD, add_job, add_series, add_study, csrf_of, login

PAGES = ["/", "/worklist/rows", "/worklist/version.json", "/studies/{sid}"]
IMAGES = ["/studies/{sid}/instances/{iid}/frames/1.png"]
ADMIN_PAGES = ["/admin", "/admin/exports", "/admin/routing", "/admin/status", "/admin/audit"]


@pytest.fixture
def study_ids(db: Session, web_settings) -> dict[str, int]:  # type: ignore[no-untyped-def]
    study = add_study(db)
    add_job(db, study)
    series = add_series(db, web_settings.storage_dir, study)
    db.commit()
    iid = series.instances[0].id
    return {"sid": study.id, "iid": iid}


def test_anonymous_reaches_only_the_login_page(client: TestClient, study_ids: dict[str, int]) -> None:
    for path in PAGES + IMAGES + ADMIN_PAGES:
        r = client.get(path.format(**study_ids), follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login"), path
    assert client.get("/login").status_code == 200
    assert client.get("/static/app.css").status_code == 200


def test_anonymous_post_is_refused(client: TestClient, study_ids: dict[str, int]) -> None:
    token = csrf_of(client.get("/login").text)
    for path in ("/studies/{sid}/sign", "/studies/{sid}/report", "/admin/exports/1/replay"):
        r = client.post(path.format(**study_ids), data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path


def test_radiologist_cannot_reach_admin(client: TestClient, users: dict[str, int], study_ids: dict[str, int]) -> None:
    token = login(client, "rad")
    for path in PAGES + IMAGES:
        assert client.get(path.format(**study_ids)).status_code == 200, path
    for path in ADMIN_PAGES:
        r = client.get(path)
        assert r.status_code == 403, path
        assert "not allowed" in r.text
    r = client.post("/admin/exports/1/replay", data={"csrf_token": token})
    assert r.status_code == 403
    assert "Admin" not in client.get("/").text.split("<main")[0]  # no admin link in the header


def test_admin_reaches_admin_pages(client: TestClient, users: dict[str, int]) -> None:
    login(client, "adm")
    for path in ADMIN_PAGES:
        assert client.get(path).status_code == 200, path


def test_wrong_password_and_unknown_user_fail_alike(client: TestClient, users: dict[str, int], db: Session) -> None:
    token = csrf_of(client.get("/login").text)
    bad = client.post("/login", data={"username": "rad", "password": "nope", "csrf_token": token})
    unknown = client.post("/login", data={"username": "ghost", "password": "nope", "csrf_token": token})
    assert bad.status_code == unknown.status_code == 401
    assert "Unknown user or wrong password" in bad.text and "Unknown user or wrong password" in unknown.text
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "login_failed")).all()
    assert len(events) == 2 and all(e.security for e in events)


def test_login_is_throttled_after_repeated_failures(client: TestClient, users: dict[str, int]) -> None:
    token = csrf_of(client.get("/login").text)
    codes = [
        client.post("/login", data={"username": "rad", "password": "x", "csrf_token": token}).status_code
        for _ in range(6)
    ]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    # even the right password is refused while throttled
    ok = client.post("/login", data={"username": "rad", "password": PASSWORD, "csrf_token": token})
    assert ok.status_code == 429


def test_disabled_user_loses_the_session(client: TestClient, users: dict[str, int], db: Session) -> None:
    login(client, "rad")
    assert client.get("/").status_code == 200
    user = db.get(User, users["rad"])
    assert user is not None
    user.active = False
    db.commit()
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303


def test_session_cookie_flags_and_rotation(client: TestClient, users: dict[str, int]) -> None:
    r = client.get("/login")
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert "Secure" not in cookie  # only in production
    before = csrf_of(r.text)
    after = login(client, "rad")
    assert before != after  # a new CSRF token (and session) at sign-in


def test_production_cookie_is_secure(web_settings, users: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    from dicom_agent.web.app import create_app

    prod = web_settings.model_copy(update={"production": True, "secret_key": "k" * 40})
    with TestClient(create_app(prod)) as c:
        assert "Secure" in c.get("/login").headers["set-cookie"]


def test_production_needs_a_secret_key(web_settings) -> None:  # type: ignore[no-untyped-def]
    from dicom_agent.web.app import create_app
    from dicom_agent.web.security import ConfigurationError

    with pytest.raises(ConfigurationError):
        create_app(web_settings.model_copy(update={"production": True, "secret_key": None}))


def test_tampered_cookie_is_anonymous(client: TestClient, users: dict[str, int]) -> None:
    login(client, "rad")
    value = client.cookies.get("da_session")
    assert value
    payload, _, _signature = value.rpartition(".")
    client.cookies.clear()
    client.cookies.set("da_session", payload + "." + "A" * 27)
    assert client.get("/", follow_redirects=False).status_code == 303


def test_csrf_missing_or_wrong_is_403(client: TestClient, users: dict[str, int], study_ids: dict[str, int]) -> None:
    token = login(client, "rad")
    url = "/studies/{sid}/report".format(**study_ids)
    data = {"report_en": "x", "report_zh": "y", "impression": ""}
    assert client.post(url, data=data).status_code == 403
    assert client.post(url, data={**data, "csrf_token": "forged"}).status_code == 403
    assert client.post(url, data={**data, "csrf_token": token}, follow_redirects=False).status_code == 303
    # the header form works for scripts
    assert client.post(url, data=data, headers={"X-CSRF-Token": token}, follow_redirects=False).status_code == 303


def test_login_form_needs_csrf(client: TestClient, users: dict[str, int]) -> None:
    client.get("/login")
    r = client.post("/login", data={"username": "rad", "password": PASSWORD})
    assert r.status_code == 403


def test_logout_needs_csrf_and_ends_session(client: TestClient, users: dict[str, int]) -> None:
    token = login(client, "rad")
    assert client.post("/logout").status_code == 403
    r = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example", "/\\evil"])
def test_next_parameter_cannot_leave_the_site(client: TestClient, users: dict[str, int], target: str) -> None:
    token = csrf_of(client.get("/login").text)
    r = client.post(
        "/login",
        data={"username": "rad", "password": PASSWORD, "csrf_token": token, "next": target},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"


def test_next_parameter_returns_to_the_page(client: TestClient, users: dict[str, int], study_ids) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/studies/{sid}".format(**study_ids), follow_redirects=False)
    assert r.headers["location"] == "/login?next=%2Fstudies%2F{sid}".format(**study_ids)
    page = client.get(r.headers["location"])
    token = csrf_of(page.text)
    target = "/studies/{sid}".format(**study_ids)
    r = client.post(
        "/login",
        data={"username": "rad", "password": PASSWORD, "csrf_token": token, "next": target},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/studies/{sid}".format(**study_ids)


def test_language_switch_changes_the_whole_interface(client: TestClient, users: dict[str, int]) -> None:
    login(client, "rad")
    assert "Worklist" in client.get("/").text
    r = client.get("/lang/zh?next=/", follow_redirects=True)
    assert "工作列表" in r.text and "Worklist" not in r.text
    assert 'lang="zh-CN"' in r.text
    client.get("/lang/en?next=/")
    assert "Worklist" in client.get("/").text


def test_security_headers(client: TestClient) -> None:
    r = client.get("/login")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


def test_bootstrap_admin_in_embedded_mode(web_settings, db: Session) -> None:  # type: ignore[no-untyped-def]
    from dicom_agent.web.app import create_app

    with TestClient(create_app(web_settings.model_copy(update={"web_admin_password": "first-admin-pw"}))) as c:
        login(c, "admin", "first-admin-pw")
        assert c.get("/admin").status_code == 200


def test_no_bootstrap_admin_in_production(web_settings, db: Session) -> None:  # type: ignore[no-untyped-def]
    from dicom_agent.web.app import create_app

    update = {"production": True, "secret_key": "s" * 40, "web_admin_password": "first-admin-pw"}
    create_app(web_settings.model_copy(update=update))
    assert db.scalar(select(User).where(User.username == "admin")) is None


def test_metrics_are_exposed_without_patient_data(client: TestClient) -> None:
    pytest.importorskip("dicom_agent.metrics")
    r = client.get("/metrics", follow_redirects=False)
    assert r.status_code == 200 and "dicom_agent_" in r.text
